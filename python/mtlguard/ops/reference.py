"""Pure-PyTorch reference implementations of mtlguard's fused ops.

These define the semantics.  The compiled kernels in ``mtlguard._C`` must match them (tests compare
the two), and when the extension is missing ``mtlguard.ops`` falls back to these functions.  They
are also the path taken during ONNX export (standard ops only).
"""
from __future__ import annotations

from typing import Sequence

import torch

#: Losses at or below this value are clamped to it in ``balanced_sign`` ("gbmta" mode), so a
#: (nearly) zero, or negative, loss never divides by zero.  NaN/inf losses drop that task for
#: that sample (weight 0).
LOSS_FLOOR = 1e-6

MODES = ("gbmta", "total", "signtotal", "weighted")


def _per_sample(v: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor | float:
    """Broadcast a float or a per-sample tensor [B] against ``like`` [B, ...]."""
    if isinstance(v, torch.Tensor):
        if v.dim() == 0:
            return v.to(like.dtype)
        if v.dim() != 1 or v.shape[0] != like.shape[0]:
            raise ValueError(f"per-sample value must have shape [B]={like.shape[0]}, got {tuple(v.shape)}")
        return v.to(like.dtype).reshape((-1,) + (1,) * (like.dim() - 1))
    return float(v)


def project_linf(x: torch.Tensor, delta: torch.Tensor, eps, lo: float = 0.0, hi: float = 1.0):
    """``(x_adv, delta_out)`` with ``delta_c = clamp(delta, -eps, eps)``, ``x_adv = clamp(x + delta_c, lo, hi)``
    and ``delta_out = x_adv - x``.  ``eps``: float or per-sample tensor [B]."""
    if x.shape != delta.shape:
        raise ValueError(f"project_linf: x {tuple(x.shape)} and delta {tuple(delta.shape)} differ in shape")
    e = _per_sample(eps, x)
    if isinstance(e, torch.Tensor):
        d = torch.maximum(torch.minimum(delta, e), -e)
    else:
        d = delta.clamp(-e, e)
    x_adv = (x + d).clamp(lo, hi)
    return x_adv, x_adv - x


def pgd_step(x_adv: torch.Tensor, x: torch.Tensor, direction: torch.Tensor, step, eps, lo: float = 0.0, hi: float = 1.0):
    """``clamp(clamp(x_adv + step * direction, x - eps, x + eps), lo, hi)`` (out of place).

    ``step`` and ``eps``: floats or per-sample tensors [B]; ``direction``: int8 or float."""
    if not (x_adv.shape == x.shape == direction.shape):
        raise ValueError(
            f"pgd_step: shapes differ: x_adv {tuple(x_adv.shape)}, x {tuple(x.shape)}, direction {tuple(direction.shape)}"
        )
    s = _per_sample(step, x)
    e = _per_sample(eps, x)
    y = x_adv + s * direction.to(x_adv.dtype)
    y = torch.minimum(torch.maximum(y, x - e), x + e)
    return y.clamp(lo, hi)


def _as_task_list(grads) -> list[torch.Tensor]:
    if isinstance(grads, torch.Tensor):
        if grads.dim() < 2:
            raise ValueError(f"balanced_sign: grads must be [T, B, ...], got shape {tuple(grads.shape)}")
        return list(grads.unbind(0))
    grads = list(grads)
    if not grads:
        raise ValueError("balanced_sign: empty list of task gradients")
    shape = grads[0].shape
    for i, g in enumerate(grads):
        if g.shape != shape:
            raise ValueError(f"balanced_sign: task gradient {i} has shape {tuple(g.shape)}, task 0 has {tuple(shape)}")
    return grads


def task_weights(losses: torch.Tensor, mode: str, weights: torch.Tensor | None = None) -> torch.Tensor | None:
    """Per-task, per-sample weights [T, B] used by ``balanced_sign`` (None for ``signtotal``)."""
    if mode == "gbmta":
        finite = torch.isfinite(losses)
        w = 1.0 / losses.clamp_min(LOSS_FLOOR)
        return torch.where(finite, w, torch.zeros_like(w))
    if mode == "total":
        return torch.ones_like(losses)
    if mode == "weighted":
        if weights is None:
            raise ValueError("balanced_sign: mode 'weighted' needs weights ([T] or [T, B])")
        if weights.dim() == 1:
            weights = weights[:, None].expand_as(losses)
        if weights.shape != losses.shape:
            raise ValueError(f"balanced_sign: weights shape {tuple(weights.shape)} != losses shape {tuple(losses.shape)}")
        return weights.to(losses.dtype)
    if mode == "signtotal":
        return None
    raise ValueError(f"balanced_sign: unknown mode {mode!r}; expected one of {MODES}")


def balanced_sign(grads, losses: torch.Tensor, mode: str = "gbmta", weights: torch.Tensor | None = None) -> torch.Tensor:
    """int8 sign of an aggregate of T task gradients (GB-MTA Eq. 8-9 and baselines).

    * ``gbmta``:     sign(sum_t g_t / max(L_t, LOSS_FLOOR)) with per-sample losses (Eq. 9)
    * ``total``:     sign(sum_t g_t)
    * ``signtotal``: sign(sum_t sign(g_t))
    * ``weighted``:  sign(sum_t w_t g_t) with given weights [T] or [T, B]

    ``grads``: [T, B, ...] tensor or a list of T tensors [B, ...]; ``losses``: [T, B].
    Accumulates in float32 (float64 for float64 inputs).
    """
    gl = _as_task_list(grads)
    t, b = len(gl), gl[0].shape[0]
    if losses.shape != (t, b):
        raise ValueError(f"balanced_sign: losses must be [T, B] = [{t}, {b}], got {tuple(losses.shape)}")
    acc_dtype = torch.float64 if gl[0].dtype == torch.float64 else torch.float32
    w = task_weights(losses.to(acc_dtype), mode, weights)
    acc = torch.zeros(gl[0].shape, dtype=acc_dtype, device=gl[0].device)
    view = (b,) + (1,) * (gl[0].dim() - 1)
    for i, g in enumerate(gl):
        g = g.to(acc_dtype)
        acc += torch.sign(g) if w is None else g * w[i].reshape(view)
    return torch.sign(acc).to(torch.int8)


def check_labels(labels: torch.Tensor, offsets: torch.Tensor, task_names: Sequence[str] | None = None) -> None:
    """Raise IndexError naming the task and value of the first label outside [-1, C_k)."""
    sizes = (offsets[1:] - offsets[:-1]).to(labels.device)
    bad = (labels < -1) | (labels >= sizes[None, :])
    if bool(bad.any()):
        idx = bad.nonzero()[0]
        task = int(idx[1])
        name = task_names[task] if task_names is not None else f"#{task}"
        raise IndexError(
            f"embed_concat: label {int(labels[idx[0], task])} of task {name} (sample {int(idx[0])}) is out of "
            f"range [-1, {int(sizes[task])})"
        )


def embed_concat(z: torch.Tensor, table: torch.Tensor, labels: torch.Tensor, offsets: torch.Tensor, emb_shape):
    """``concat(z, e^1_{y1}, ..., e^K_{yK})`` along channels (MTL-UE generator input, Sec. 4.1).

    * ``z``: [B, Cz, h, w]; ``table``: [sum_k C_k, E*h*w] (all tasks' class embeddings packed);
    * ``labels``: [B, K] int64, ``-1`` = task not protected -> mean of that task's class embeddings;
    * ``offsets``: [K + 1] int64, rows ``offsets[k]:offsets[k+1]`` of ``table`` belong to task k;
    * ``emb_shape``: ``(E, h, w)``.  Returns [B, Cz + K*E, h, w].
    """
    e, h, w = (int(v) for v in emb_shape)
    if z.dim() != 4 or tuple(z.shape[2:]) != (h, w):
        raise ValueError(f"embed_concat: z must be [B, Cz, {h}, {w}], got {tuple(z.shape)}")
    if table.dim() != 2 or table.shape[1] != e * h * w:
        raise ValueError(f"embed_concat: table must be [rows, {e * h * w}], got {tuple(table.shape)}")
    k = offsets.numel() - 1
    if labels.dim() != 2 or labels.shape != (z.shape[0], k):
        raise ValueError(f"embed_concat: labels must be [B, K] = [{z.shape[0]}, {k}], got {tuple(labels.shape)}")
    if int(offsets[-1]) != table.shape[0]:
        raise ValueError(f"embed_concat: offsets[-1]={int(offsets[-1])} != table rows {table.shape[0]}")
    check_labels(labels, offsets)
    b = z.shape[0]
    parts = [z]
    for t in range(k):
        lo, hi = int(offsets[t]), int(offsets[t + 1])
        rows = table[lo:hi]
        lab = labels[:, t]
        picked = rows[lab.clamp_min(0)]
        mean = rows.mean(0, keepdim=True).expand(b, -1)
        emb = torch.where((lab >= 0)[:, None], picked, mean)
        parts.append(emb.reshape(b, e, h, w).to(z.dtype))
    return torch.cat(parts, dim=1)


# ---------------------------------------------------------------------------------------------- apply_delta_u8


def _pairwise_sum(a: Sequence[float], lo: int = 0, n: int | None = None) -> float:
    """numpy's pairwise summation of float64 (what ``ndarray.sum()`` returns for a contiguous float64 array)."""
    n = len(a) - lo if n is None else n
    if n < 8:
        res = 0.0
        for i in range(lo, lo + n):
            res += a[i]
        return res
    if n <= 128:
        r = list(a[lo: lo + 8])
        i = 8
        while i < n - (n % 8):
            for j in range(8):
                r[j] += a[lo + i + j]
            i += 8
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        while i < n:
            res += a[lo + i]
            i += 1
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return _pairwise_sum(a, lo, n2) + _pairwise_sum(a, lo + n2, n - n2)


def bilinear_taps(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pillow's BILINEAR weights from ``n_in`` to ``n_out`` samples: ``(index int64 [n_out, K], weight float32
    [n_out, K])``, ``out[i] = sum_k w[i, k] * in[idx[i, k]]``; built exactly as
    :func:`mtlguard.engine.perturb.bilinear_taps` builds them (float64, numpy's pairwise normalization sum,
    zero-weight padding taps reading the row's first index)."""
    if n_in < 1 or n_out < 1:
        raise ValueError(f"bilinear_taps: sizes must be >= 1, got {n_in} -> {n_out}")
    scale = n_in / n_out
    filterscale = max(scale, 1.0)
    support = filterscale
    rows = []
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = max(min(int(center + support + 0.5), n_in), lo + 1)
        wts = [max(0.0, 1.0 - abs((x - center + 0.5) / filterscale)) for x in map(float, range(lo, hi))]
        nz = [j for j, v in enumerate(wts) if v != 0.0]
        if not nz:
            wts, nz = [1.0], [0]
        wts = wts[nz[0]: nz[-1] + 1]
        total = _pairwise_sum(wts)
        rows.append((lo + nz[0], [v / total for v in wts]))
    k = max(len(w) for _, w in rows)
    idx = [[s + j if j < len(w) else s for j in range(k)] for s, w in rows]
    wt = [[w[j] if j < len(w) else 0.0 for j in range(k)] for _, w in rows]
    return torch.tensor(idx, dtype=torch.int64), torch.tensor(wt, dtype=torch.float64).to(torch.float32)


def apply_delta_u8(image: torch.Tensor, delta: torch.Tensor, eps: float) -> torch.Tensor:
    """The engine's native-resolution step: ``image`` uint8 [N, H, W, C], ``delta`` float32 [N, C, h, w] (or
    [N, 1, h, w]: a luma delta added to every channel) -> protected uint8 [N, H, W, C].

    ``u`` = the delta upsampled to H x W with Pillow's BILINEAR weights (W pass first, then H, each a left-to-right
    sum of rounded float32 products, the H weights scaled to uint8 steps as ``float32(w * 255)``);
    ``out = uint8(clip(rint(clip(u, -e, e) + image), 0, 255))`` with ``e = float32(eps * 255)`` and rint rounding
    half to even; a NaN delta gives 0.  Bit-identical to :func:`mtlguard.engine.perturb.apply_delta_batch`."""
    if image.dim() != 4 or image.dtype != torch.uint8:
        raise ValueError(f"apply_delta_u8: image must be uint8 [N, H, W, C], got {image.dtype} {tuple(image.shape)}")
    if delta.dim() != 4:
        raise ValueError(f"apply_delta_u8: delta must be [N, C, h, w], got {tuple(delta.shape)}")
    n, hh, ww, c = image.shape
    _, cd, h, w = delta.shape
    if delta.shape[0] != n:
        raise ValueError(f"apply_delta_u8: image has {n} images, delta {delta.shape[0]}")
    if cd not in (c, 1):
        raise ValueError(f"apply_delta_u8: delta has {cd} channels, the image {c} (expected {c}, or 1 for a luma delta)")
    if not eps >= 0:
        raise ValueError(f"apply_delta_u8: eps must be >= 0, got {eps}")
    if image.numel() == 0:
        return torch.empty_like(image, memory_format=torch.contiguous_format)
    if h < 1 or w < 1:
        raise ValueError(f"apply_delta_u8: delta must have h, w >= 1, got {tuple(delta.shape)}")
    dev = image.device
    d = delta.to(dev, torch.float32).permute(0, 2, 3, 1)  # [N, h, w, Cd]
    iw, tw = (t.to(dev) for t in bilinear_taps(w, ww))
    t = d[:, :, iw[:, 0], :] * tw[:, 0].reshape(1, 1, ww, 1)
    for k in range(1, iw.shape[1]):
        t = t + d[:, :, iw[:, k], :] * tw[:, k].reshape(1, 1, ww, 1)
    ih, th = (t_.to(dev) for t_ in bilinear_taps(h, hh))
    th = th * 255.0  # float32 products: numpy's wt * np.float32(255)
    u = t[:, ih[:, 0]] * th[:, 0].reshape(1, hh, 1, 1)
    for k in range(1, ih.shape[1]):
        u = u + t[:, ih[:, k]] * th[:, k].reshape(1, hh, 1, 1)
    e = torch.tensor(eps * 255.0, dtype=torch.float32).item()
    u = u.clamp(-e, e)
    if cd != c:
        u = u.expand(n, hh, ww, c)
    v = torch.round(u + image.to(torch.float32)).clamp(0.0, 255.0)
    v = torch.where(torch.isnan(v), torch.zeros_like(v), v)
    return v.to(torch.uint8)
