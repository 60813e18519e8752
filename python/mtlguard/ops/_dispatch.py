"""Route each public op to the compiled kernel (``torch.ops.mtlguard.*``) or to its reference.

The compiled kernels are used when ``mtlguard._C`` is loaded, :func:`mtlguard.ops.use_reference` is not
active, the tensors are on a device with compiled kernels (CPU; CUDA when built with nvcc; meta/fake
tensors under ``torch.compile``/``torch.export``) and of a floating dtype.  Otherwise the pure-PyTorch
reference (:mod:`mtlguard.ops.reference`) runs.  Both paths validate the same way and raise the same
clear errors (``ValueError`` for shapes/modes, ``IndexError`` naming task and value for labels).
"""
from __future__ import annotations

from typing import Sequence

import torch

from . import _forced_reference
from . import reference as _ref
from ._loader import cuda_kernels_compiled, extension_loaded

_FLOATS = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _kernel_devices() -> tuple[str, ...]:
    return ("cpu", "meta", "cuda") if cuda_kernels_compiled() else ("cpu", "meta")


def _use_extension(*tensors: torch.Tensor) -> bool:
    if not extension_loaded() or _forced_reference():
        return False
    devices = _kernel_devices()
    return all(t.device.type in devices and t.dtype in _FLOATS for t in tensors)


def _split_per_sample(name: str, v, x: torch.Tensor, op: str) -> tuple[float, torch.Tensor | None]:
    """A float or per-sample tensor ([B] or scalar) -> (float, optional tensor) for the op schema."""
    if isinstance(v, torch.Tensor):
        if not (v.dim() == 0 or (v.dim() == 1 and v.shape[0] == x.shape[0])):
            raise ValueError(f"{op}: per-sample {name} must have shape [B]={x.shape[0]}, got {tuple(v.shape)}")
        return 0.0, v
    v = float(v)
    if name == "eps" and v < 0:
        raise ValueError(f"{op}: eps must be >= 0, got {v}")
    return v, None


def _check_shapes(op: str, **tensors: torch.Tensor) -> None:
    items = list(tensors.items())
    name0, t0 = items[0]
    for name, t in items[1:]:
        if t.shape != t0.shape:
            raise ValueError(f"{op}: {name0} {tuple(t0.shape)} and {name} {tuple(t.shape)} differ in shape")


def project_linf(x: torch.Tensor, delta: torch.Tensor, eps, lo: float = 0.0, hi: float = 1.0):
    """``(x_adv, delta_out)``: ``d = clamp(delta, -eps, eps)``, ``x_adv = clamp(x + d, lo, hi)``,
    ``delta_out = x_adv - x`` in one pass (MTL-UE Alg. 1 ``Clip``).  ``eps``: float or per-sample [B].
    Differentiable w.r.t. ``x`` and ``delta`` (masked derivative of the clamps)."""
    _check_shapes("project_linf", x=x, delta=delta)
    e, e_t = _split_per_sample("eps", eps, x, "project_linf")
    if not _use_extension(x, delta):
        return _ref.project_linf(x, delta, eps, lo, hi)
    if delta.dtype != x.dtype:
        dt = torch.promote_types(x.dtype, delta.dtype)
        x, delta = x.to(dt), delta.to(dt)
    return _lib().project_linf(x, delta, e, e_t, float(lo), float(hi))


def _pgd_args(op, x_adv, x, direction, step, eps):
    _check_shapes(op, x_adv=x_adv, x=x, direction=direction)
    if x_adv.dtype != x.dtype:
        raise ValueError(f"{op}: x_adv ({x_adv.dtype}) and x ({x.dtype}) differ in dtype")
    s, s_t = _split_per_sample("step", step, x, op)
    e, e_t = _split_per_sample("eps", eps, x, op)
    return s, s_t, e, e_t


def pgd_step(x_adv: torch.Tensor, x: torch.Tensor, direction: torch.Tensor, step, eps, lo: float = 0.0,
             hi: float = 1.0) -> torch.Tensor:
    """``clamp(clamp(x_adv + step * direction, x - eps, x + eps), lo, hi)`` (new tensor), GB-MTA Alg. 3
    ``P(x + eta * beta)``.  ``direction``: int8 sign (or float); ``step``/``eps``: float or per-sample [B]."""
    s, s_t, e, e_t = _pgd_args("pgd_step", x_adv, x, direction, step, eps)
    if not _use_extension(x_adv, x):
        return _ref.pgd_step(x_adv, x, direction, step, eps, lo, hi)
    return _lib().pgd_step(x_adv, x, direction, s, s_t, e, e_t, float(lo), float(hi))


def pgd_step_(x_adv: torch.Tensor, x: torch.Tensor, direction: torch.Tensor, step, eps, lo: float = 0.0,
              hi: float = 1.0) -> torch.Tensor:
    """In-place :func:`pgd_step` on ``x_adv``; returns ``x_adv``."""
    s, s_t, e, e_t = _pgd_args("pgd_step_", x_adv, x, direction, step, eps)
    if not _use_extension(x_adv, x):
        return x_adv.copy_(_ref.pgd_step(x_adv, x, direction, step, eps, lo, hi))
    _lib().pgd_step_(x_adv, x, direction, s, s_t, e, e_t, float(lo), float(hi))
    return x_adv


def balanced_sign(grads, losses: torch.Tensor, mode: str = "gbmta", weights: torch.Tensor | None = None) -> torch.Tensor:
    """int8 ``sign`` of an aggregate of T task gradients (GB-MTA Eq. 8-9 and baselines; see
    :func:`mtlguard.ops.reference.balanced_sign`).  ``grads``: [T, B, ...] tensor (unbound, no copy) or a
    list of T tensors [B, ...]; ``losses``: [T, B]; ``mode``: gbmta | total | signtotal | weighted."""
    if mode not in _ref.MODES:
        raise ValueError(f"balanced_sign: unknown mode {mode!r}; expected one of {_ref.MODES}")
    gl = _ref._as_task_list(grads)
    t, b = len(gl), gl[0].shape[0] if gl[0].dim() else None
    if gl[0].dim() < 1:
        raise ValueError(f"balanced_sign: task gradients must be [B, ...], got shape {tuple(gl[0].shape)}")
    if losses.shape != (t, b):
        raise ValueError(f"balanced_sign: losses must be [T, B] = [{t}, {b}], got {tuple(losses.shape)}")
    if mode == "weighted":
        if weights is None:
            raise ValueError("balanced_sign: mode 'weighted' needs weights ([T] or [T, B])")
        if tuple(weights.shape) not in ((t,), (t, b)):
            raise ValueError(f"balanced_sign: weights shape {tuple(weights.shape)} != losses shape {(t, b)} (or [T])")
    dtypes = {g.dtype for g in gl}
    if len(dtypes) != 1 or not _use_extension(*gl):
        return _ref.balanced_sign(gl, losses, mode, weights)
    dev = gl[0].device
    losses = losses.to(dev)
    if weights is not None and mode == "weighted":
        weights = weights.to(dev)
    return _lib().balanced_sign(gl, losses, mode, weights if mode == "weighted" else None)


def embed_concat(z: torch.Tensor, table: torch.Tensor, labels: torch.Tensor, offsets: torch.Tensor,
                 emb_shape: Sequence[int]) -> torch.Tensor:
    """``concat(z, e^1_{y1}, ..., e^K_{yK})`` along channels (MTL-UE Sec. 4.3).  ``z`` [B, Cz, h, w];
    ``table`` [sum_k C_k, E*h*w]; ``labels`` [B, K] int64 (-1 = unprotected task: mean embedding);
    ``offsets`` [K+1]; ``emb_shape`` (E, h, w).  Out-of-range labels raise IndexError naming task and value.
    Differentiable w.r.t. ``z`` and ``table``."""
    e, h, w = (int(v) for v in emb_shape)
    if z.dim() != 4 or tuple(z.shape[2:]) != (h, w):
        raise ValueError(f"embed_concat: z must be [B, Cz, {h}, {w}], got {tuple(z.shape)}")
    if table.dim() != 2 or table.shape[1] != e * h * w:
        raise ValueError(f"embed_concat: table must be [rows, {e * h * w}], got {tuple(table.shape)}")
    if offsets.dim() != 1 or offsets.numel() < 1:
        raise ValueError(f"embed_concat: offsets must be [K + 1], got {tuple(offsets.shape)}")
    k = offsets.numel() - 1
    if labels.dim() != 2 or labels.shape != (z.shape[0], k):
        raise ValueError(f"embed_concat: labels must be [B, K] = [{z.shape[0]}, {k}], got {tuple(labels.shape)}")
    if not _use_extension(z):
        return _ref.embed_concat(z, table, labels, offsets, emb_shape)
    if table.dtype != z.dtype:
        table = table.to(z.dtype)
    return _lib().embed_concat(z, table, labels, offsets, [e, h, w])


def _has_kernel(name: str) -> bool:
    """The loaded extension defines op ``name`` (False for a build older than the op)."""
    try:
        getattr(_lib(), name)
        return True
    except (AttributeError, RuntimeError):
        return False


def apply_delta_u8(image: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """The engine's native-resolution step in one pass: ``image`` uint8 [N, H, W, C] and a model-resolution
    ``delta`` [N, C, h, w] (or [N, 1, h, w], a luma delta added to every channel) -> protected uint8 [N, H, W, C]:
    Pillow-bilinear upsampling of ``delta`` to H x W, clip to ``[-eps, eps]`` (in [0, 1] units), add, round half
    to even, clip to [0, 255].  Bit-identical to :func:`mtlguard.engine.perturb.apply_delta_batch` (semantics:
    :func:`mtlguard.ops.reference.apply_delta_u8`).  Not differentiable."""
    if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.dtype != torch.uint8:
        raise ValueError(f"apply_delta_u8: image must be a uint8 tensor [N, H, W, C], got "
                         f"{getattr(image, 'dtype', type(image).__name__)} {tuple(getattr(image, 'shape', ()))}")
    if not isinstance(delta, torch.Tensor) or delta.dim() != 4 or not delta.is_floating_point():
        raise ValueError(f"apply_delta_u8: delta must be a floating tensor [N, C, h, w], got "
                         f"{getattr(delta, 'dtype', type(delta).__name__)} {tuple(getattr(delta, 'shape', ()))}")
    if delta.shape[0] != image.shape[0]:
        raise ValueError(f"apply_delta_u8: image has {image.shape[0]} images, delta {delta.shape[0]}")
    if delta.shape[1] not in (image.shape[3], 1):
        raise ValueError(f"apply_delta_u8: delta has {delta.shape[1]} channels, the image {image.shape[3]} "
                         f"(expected {image.shape[3]}, or 1 for a luma delta)")
    eps = float(eps)
    if not eps >= 0:
        raise ValueError(f"apply_delta_u8: eps must be >= 0, got {eps}")
    if delta.dtype != torch.float32:
        delta = delta.to(torch.float32)
    if delta.device != image.device:
        delta = delta.to(image.device)
    if (not extension_loaded() or _forced_reference() or image.device.type not in _kernel_devices()
            or not _has_kernel("apply_delta_u8")):
        return _ref.apply_delta_u8(image, delta, eps)
    return _lib().apply_delta_u8(image, delta, eps)


def _lib():
    return torch.ops.mtlguard
