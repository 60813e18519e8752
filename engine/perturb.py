"""Model-resolution input and native-resolution application of the generator's perturbation.

The generator runs at its fixed resolution ``(h, w)``; its ``delta`` is upsampled bilinearly to each
image's native ``(H, W)``, re-clipped to ``[-eps, eps]`` (the MTL-UE budget, Alg. 1) and added to the
original pixels, then rounded and clipped to uint8.  Since ``|round(x + d) - x| <= round(|d|)`` for
integer ``x``, every written pixel satisfies ``|protected - original| <= ceil(eps * 255)``.

The upsampling uses Pillow's bilinear weights (half-pixel centres, antialiased when shrinking) as a
precomputed sparse tap table (2 taps per output when enlarging).  :func:`apply_delta_batch` runs the whole
step -- upsample, clip, add, round, uint8 -- as the fused op :func:`mtlguard.ops.apply_delta_u8` (one pass, no
full-size float temporaries; CPU or CUDA kernel) when the compiled ``mtlguard._C`` is available, else this
module's numpy path (:func:`apply_delta_batch_numpy`: numpy gathers on a whole group of same-size images, 0.7 ms
per 200x200 image single-threaded; numpy's OpenBLAS ran the equivalent skinny matmuls ~20x slower).  Both give
the same bytes (tests/test_ops_apply_delta.py); ``MTLGUARD_ENGINE_NUMPY_APPLY=1`` forces the numpy path.
"""
from __future__ import annotations

import math
import os
import threading
from functools import lru_cache

import numpy as np
from PIL import Image


def bound_uint8(eps: float) -> int:
    """The guaranteed per-pixel bound in uint8 steps: ``ceil(eps * 255)``."""
    return int(math.ceil(eps * 255.0 - 1e-9))


def model_input(rgb: np.ndarray, size: tuple[int, int], channels: int | None = None) -> np.ndarray:
    """uint8 [H, W, C] -> float32 [channels, h, w] in [0, 1] (Pillow antialiased bilinear, as the data loaders).

    ``channels=1`` with a colour image: the generator sees its luma (Pillow's ``convert("L")``, BT.601)."""
    h, w = size
    if channels == 1 and rgb.shape[2] == 3:
        rgb = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.uint8)[:, :, None]
    if rgb.shape[:2] != (h, w):
        img = Image.fromarray(rgb[:, :, 0] if rgb.shape[2] == 1 else rgb)
        small = np.asarray(img.resize((w, h), Image.Resampling.BILINEAR), dtype=np.uint8)
        if small.ndim == 2:
            small = small[:, :, None]
    else:
        small = rgb
    return np.ascontiguousarray(small.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)


@lru_cache(maxsize=64)
def bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's BILINEAR resampling weights from ``n_in`` to ``n_out`` samples as a tap table:
    ``(index int64 [n_out, K], weight float32 [n_out, K])`` with ``out[i] = sum_k w[i, k] * in[idx[i, k]]``.

    Same formula as Pillow's ``precompute_coeffs`` (triangle filter, support scaled by the shrink
    factor, weights normalized per output), so it equals ``Image.resize(..., BILINEAR)`` on float
    images.  Weights are >= 0 and sum to 1: a resampled delta stays inside ``[-eps, eps]``."""
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = filterscale  # bilinear support 1.0, widened when shrinking (antialias)
    if n_in < 1 or n_out < 1:
        raise ValueError(f"bilinear_taps: sizes must be >= 1, got {n_in} -> {n_out}")
    rows: list[tuple[int, np.ndarray]] = []
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = max(min(int(center + support + 0.5), n_in), lo + 1)
        x = np.arange(lo, hi, dtype=np.float64)
        wts = np.maximum(0.0, 1.0 - np.abs((x - center + 0.5) / filterscale))
        nz = np.flatnonzero(wts)
        if nz.size == 0:  # cannot happen for bilinear; keep one tap rather than divide by zero
            wts, nz = np.ones(1), np.zeros(1, dtype=np.int64)
        wts = wts[nz[0]: nz[-1] + 1]  # drop zero-weight end taps
        rows.append((lo + int(nz[0]), wts / wts.sum()))
    k = max(len(w) for _, w in rows)
    idx = np.zeros((n_out, k), dtype=np.int64)
    wt = np.zeros((n_out, k), dtype=np.float32)
    for i, (start, w) in enumerate(rows):
        idx[i] = start  # padding taps keep weight 0 (any valid index)
        idx[i, : len(w)] = np.arange(start, start + len(w))
        wt[i, : len(w)] = w
    return idx, wt


def _resample_axis(a: np.ndarray, axis: int, n_out: int, scale: float = 1.0) -> np.ndarray:
    """Resample ``a`` along ``axis`` to ``n_out`` samples (Pillow bilinear), times ``scale``."""
    idx, wt = bilinear_taps(a.shape[axis], n_out)
    shape = [1] * a.ndim
    shape[axis] = n_out
    out = np.take(a, idx[:, 0], axis=axis)
    out *= (wt[:, 0] * np.float32(scale)).reshape(shape)
    tmp = None
    for j in range(1, idx.shape[1]):
        tmp = np.take(a, idx[:, j], axis=axis, out=tmp)
        tmp *= (wt[:, j] * np.float32(scale)).reshape(shape)
        out += tmp
    return out


def upsample_delta(delta: np.ndarray, height: int, width: int, scale: float = 1.0) -> np.ndarray:
    """float32 delta [C, h, w] -> [H, W, C], or [N, C, h, w] -> [N, H, W, C] (bilinear, half-pixel
    centres, = Pillow's BILINEAR), multiplied by ``scale``."""
    single = delta.ndim == 3
    d = np.asarray(delta, dtype=np.float32)[None] if single else np.asarray(delta, dtype=np.float32)
    # channels last first, on the small array: the full-size result comes out as [N, H, W, C]
    d = np.ascontiguousarray(d.transpose(0, 2, 3, 1))
    if d.shape[1:3] == (height, width):
        out = d * np.float32(scale) if scale != 1.0 else d
    else:
        out = _resample_axis(_resample_axis(d, 2, width), 1, height, scale)  # W first (as Pillow), then H
    return out[0] if single else out


_FUSED_LOCK = threading.Lock()
_FUSED: list = []  # [mtlguard.ops or None], resolved once per process


def fused_ops():
    """:mod:`mtlguard.ops` when its compiled ``apply_delta_u8`` kernel can be used, else None (numpy path).

    Imports torch on first use (the engine's onnxruntime path does not otherwise need it)."""
    if _FUSED:
        return _FUSED[0]
    with _FUSED_LOCK:
        if not _FUSED:
            mod = None
            if os.environ.get("MTLGUARD_ENGINE_NUMPY_APPLY", "0") != "1":
                try:
                    import warnings

                    with warnings.catch_warnings():  # a missing extension is reported by ops.backend_info()
                        warnings.simplefilter("ignore", RuntimeWarning)
                        from mtlguard import ops
                        from mtlguard.ops._dispatch import _has_kernel
                    if ops.extension_loaded() and _has_kernel("apply_delta_u8"):
                        mod = ops
                        # decoded images are read-only numpy arrays; the op only reads them (torch warns once)
                        warnings.filterwarnings("ignore", message="The given NumPy array is not writable",
                                                category=UserWarning)
                except Exception:  # noqa: BLE001 - no torch / broken build: the numpy path
                    mod = None
            _FUSED.append(mod)
    return _FUSED[0]


def max_abs_diff(out: np.ndarray, rgb: np.ndarray, eps: float) -> np.ndarray:
    """``max |out - rgb|`` per image, int64 [N] (both uint8 [N, H, W, C]); photo-size images a block of rows at a
    time (bounded temporaries)."""
    n = out.shape[0]
    if n == 0 or out.size == 0:
        return np.zeros(n, dtype=np.int64)
    if out.shape[1] * out.shape[2] * out.shape[3] > _DIFF_BLOCK:
        rows = max(1, _DIFF_BLOCK // (out.shape[2] * out.shape[3]))
        return np.array([max(int(max_abs_diff(out[i:i + 1, r:r + rows], rgb[i:i + 1, r:r + rows], eps)[0])
                             for r in range(0, out.shape[1], rows)) for i in range(n)], dtype=np.int64)
    if bound_uint8(eps) <= 127:  # |diff| <= 127: the wrapped uint8 difference read as int8 is exact
        diff = np.subtract(out, rgb).view(np.int8).reshape(n, -1)
        return np.maximum(diff.max(axis=1).astype(np.int64), -diff.min(axis=1).astype(np.int64))
    diff16 = np.abs(out.astype(np.int16) - rgb.astype(np.int16)).reshape(n, -1)
    return diff16.max(axis=1).astype(np.int64)


_DIFF_BLOCK = 1 << 22  # bytes of one image's difference computed at once


def apply_delta_batch(rgb: np.ndarray, delta: np.ndarray, eps: float, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Protect a group of same-size images at once.

    Args:
        rgb: uint8 [N, H, W, C] originals.  delta: float32 [N, C, h, w] at the generator's resolution, or
            [N, 1, h, w] on C = 3 images: a luma delta, added to every channel (the colour mode is kept).
        device: where the fused op runs (``cuda``: the torch backend on a GPU; falls back to the CPU kernel).
    Returns:
        ``(protected uint8 [N, H, W, C], max |protected - rgb| per image, int64 [N])``.

    The fused :func:`mtlguard.ops.apply_delta_u8` when available, else :func:`apply_delta_batch_numpy`: the same
    bytes either way."""
    ops = fused_ops()
    if ops is None or rgb.ndim != 4 or np.asarray(delta).ndim != 4 or rgb.shape[0] == 0:
        return apply_delta_batch_numpy(rgb, delta, eps)
    import torch

    img = torch.from_numpy(np.ascontiguousarray(rgb, dtype=np.uint8))
    d = torch.from_numpy(np.ascontiguousarray(delta, dtype=np.float32))
    if device == "cuda" and ops.cuda_kernels_compiled() and torch.cuda.is_available():
        out = ops.apply_delta_u8(img.cuda(non_blocking=True), d.cuda(non_blocking=True), eps).cpu().numpy()
    else:
        out = ops.apply_delta_u8(img, d, eps).numpy()
    return out, max_abs_diff(out, rgb, eps)


def apply_delta_batch_numpy(rgb: np.ndarray, delta: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`apply_delta_batch` in numpy (the definition the fused op is tested against)."""
    n, h, w, c = rgb.shape
    e = np.float32(eps * 255.0)
    up = upsample_delta(delta, h, w, scale=255.0)  # float32 [N, H, W, C], in uint8 steps
    np.clip(up, -e, e, out=up)  # re-clip to eps at native size
    if up.shape[3] != c:  # a 1-channel (luma) delta on colour images: the same delta on every channel
        up = np.repeat(up, c, axis=3)
    up += rgb
    np.rint(up, out=up)
    np.clip(up, 0.0, 255.0, out=up)
    out = up.astype(np.uint8)
    return out, max_abs_diff(out, rgb, eps)


def apply_delta(rgb: np.ndarray, delta: np.ndarray, eps: float) -> tuple[np.ndarray, int]:
    """``(protected uint8 [H, W, C], max |protected - rgb|)`` for a model-resolution ``delta`` [C, h, w]."""
    out, max_abs = apply_delta_batch(rgb[None], np.asarray(delta)[None], eps)
    return out[0], int(max_abs[0]) if out.size else 0
