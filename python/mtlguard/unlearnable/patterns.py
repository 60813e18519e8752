"""Surrogate-free class-wise baselines LSP and AR with the multi-task fusions of MTL-UE Sec. 4.2 / A.1.

* LSP (Yu et al., 2022a, "Availability attacks create shortcuts"): per class, a patch-wise constant
  random colour pattern (patches of ``patch`` pixels, colours ~ U(-1, 1) per channel), i.e. a
  linearly separable synthetic shortcut.
* AR (Sandoval-Segura et al., 2022): per class and channel, a 2-D autoregressive process with a
  causal 3x3 window (8 random coefficients, normalized to unit L1 norm so the process is stable),
  started from Gaussian noise in the first two rows/columns.
* Both are scaled to ``l2 = 1 * (H/32) * (W/32)`` (A.1: ``l2 = 1`` at 32x32, scaled for larger inputs).

Multi-task fusion of the per-task class-wise perturbations ``delta^k_{y^k}``:

* ``"average"``: ``delta = mean_k delta^k_{y^k}`` (each ``delta^k`` has the full image shape);
* ``"patch"``: the image is split into ``N x N`` patches with ``N = 2^ceil(log2(ceil(sqrt K)))``;
  task k owns patch k (row-major, the first K patches) of size ``H//N x W//N`` and its class-wise
  pattern lives there (each patch pattern has l2 = bound / sqrt(K), so the fused one has l2 = bound);
  the ``N*(H//N) x N*(W//N)`` canvas is bilinearly resized to ``H x W`` when they differ.

Label ``-1`` (task not protected) contributes nothing (averaging: mean over protected tasks).
The fused perturbation is projected onto the l2 ball of the bound and, when ``linf`` is given,
clipped to ``[-linf, linf]`` as well.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..data.tasks import TaskSpec

FUSIONS = ("average", "patch")
KINDS = ("lsp", "ar")


def num_patches(k: int) -> int:
    """``N = 2^ceil(log2(ceil(sqrt(K))))`` (A.1): patches per side for K tasks."""
    if k < 1:
        raise ValueError(f"num_patches: K must be >= 1, got {k}")
    return 2 ** math.ceil(math.log2(math.ceil(math.sqrt(k))))


def l2_bound(image_size: Sequence[int]) -> float:
    """``1 * H/32 * W/32`` (A.1)."""
    h, w = image_size
    return 1.0 * (h / 32) * (w / 32)


def _scale_l2(p: torch.Tensor, norm: float) -> torch.Tensor:
    flat = p.reshape(p.shape[0], -1)
    return (flat * (norm / flat.norm(dim=1, keepdim=True).clamp_min(1e-12))).reshape(p.shape)


def lsp_patterns(n: int, channels: int, size: Sequence[int], g: torch.Generator, patch: int | None = None) -> torch.Tensor:
    """``n`` LSP patterns ``[n, C, H, W]`` (unnormalized): constant random colours on ``patch``-pixel cells."""
    h, w = size
    p = patch or max(1, min(h, w) // 4)
    gh, gw = math.ceil(h / p), math.ceil(w / p)
    cells = torch.rand(n, channels, gh, gw, generator=g) * 2 - 1
    return cells.repeat_interleave(p, 2).repeat_interleave(p, 3)[:, :, :h, :w].contiguous()


def ar_patterns(n: int, channels: int, size: Sequence[int], g: torch.Generator) -> torch.Tensor:
    """``n`` AR patterns ``[n, C, H, W]`` (unnormalized): causal 3x3 autoregressive processes."""
    h, w = size
    coef = torch.randn(n, channels, 8, generator=g)
    coef = coef / coef.abs().sum(-1, keepdim=True)
    x = torch.zeros(n, channels, h + 2, w + 2)
    x[:, :, :, :2] = torch.randn(n, channels, h + 2, 2, generator=g)
    x[:, :, :2, :] = torch.randn(n, channels, 2, w + 2, generator=g)
    for i in range(2, h + 2):
        for j in range(2, w + 2):
            win = x[:, :, i - 2:i + 1, j - 2:j + 1].reshape(n, channels, 9)[..., :8]
            x[:, :, i, j] = (win * coef).sum(-1)
    return x[:, :, 2:, 2:].contiguous()


class ClasswisePatterns(torch.nn.Module):
    """Class-wise LSP/AR perturbations for every classification task, fused ``"average"`` or ``"patch"``.

    ``forward(labels [B, K]) -> delta [B, C, H, W]``; :meth:`protect` adds it to images and clips to [0, 1].
    """

    def __init__(self, tasks: Sequence[TaskSpec], kind: str = "ar", fusion: str = "patch", in_channels: int = 3,
                 image_size: int | Sequence[int] = 32, seed: int = 0, linf: float | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"ClasswisePatterns: kind must be one of {KINDS}, got {kind!r}")
        if fusion not in FUSIONS:
            raise ValueError(f"ClasswisePatterns: fusion must be one of {FUSIONS}, got {fusion!r}")
        self.tasks = tuple(t for t in tasks if t.is_classification)
        if not self.tasks:
            raise ValueError("ClasswisePatterns: LSP/AR need classification tasks")
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        self.image_size = tuple(int(v) for v in image_size)
        self.kind, self.fusion, self.in_channels, self.seed, self.linf = kind, fusion, int(in_channels), int(seed), linf
        self.bound = l2_bound(self.image_size)
        k = len(self.tasks)
        self.n_side = num_patches(k)
        h, w = self.image_size
        self.patch_size = (h // self.n_side, w // self.n_side)
        if fusion == "patch" and min(self.patch_size) < 1:
            raise ValueError(f"ClasswisePatterns: image {self.image_size} too small for {k} task patches")
        g = torch.Generator().manual_seed(self.seed)
        size = self.patch_size if fusion == "patch" else self.image_size
        norm = self.bound / math.sqrt(k) if fusion == "patch" else self.bound
        make = lsp_patterns if kind == "lsp" else ar_patterns
        for i, t in enumerate(self.tasks):
            pats = make(t.num_classes, self.in_channels, size, g)
            self.register_buffer(f"patterns_{i}", _scale_l2(pats, norm))

    def task_patterns(self, k: int) -> torch.Tensor:
        """``[C_k, C, h, w]`` class patterns of task ``k`` (patch-sized for patch fusion)."""
        return getattr(self, f"patterns_{k}")

    def patch_box(self, k: int) -> tuple[int, int, int, int]:
        """``(top, left, height, width)`` of task k's patch on the ``N*(H//N) x N*(W//N)`` canvas."""
        ph, pw = self.patch_size
        r, c = divmod(k, self.n_side)
        return r * ph, c * pw, ph, pw

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        k = len(self.tasks)
        if labels.dim() != 2 or labels.shape[1] != k:
            raise ValueError(f"ClasswisePatterns: labels must be [B, {k}], got {tuple(labels.shape)}")
        b = labels.shape[0]
        h, w = self.image_size
        dev = labels.device
        if self.fusion == "average":
            acc = torch.zeros(b, self.in_channels, h, w, device=dev)
            cnt = torch.zeros(b, 1, 1, 1, device=dev)
            for i in range(k):
                lab = labels[:, i]
                on = (lab >= 0).to(acc.dtype)[:, None, None, None]
                acc = acc + self.task_patterns(i).to(dev)[lab.clamp_min(0)] * on
                cnt = cnt + on
            delta = acc / cnt.clamp_min(1)
        else:
            ph, pw = self.patch_size
            canvas = torch.zeros(b, self.in_channels, ph * self.n_side, pw * self.n_side, device=dev)
            for i in range(k):
                lab = labels[:, i]
                on = (lab >= 0).to(canvas.dtype)[:, None, None, None]
                top, left, _, _ = self.patch_box(i)
                canvas[:, :, top:top + ph, left:left + pw] = self.task_patterns(i).to(dev)[lab.clamp_min(0)] * on
            delta = canvas if canvas.shape[-2:] == (h, w) else F.interpolate(canvas, size=(h, w), mode="bilinear",
                                                                              align_corners=False)
        flat = delta.reshape(b, -1)
        scale = (self.bound / flat.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
        delta = delta * scale[:, None, None, None]
        if self.linf is not None:
            delta = delta.clamp(-self.linf, self.linf)
        return delta

    def protect(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(clip(x + delta, 0, 1), effective delta)``."""
        xp = (x + self.forward(labels).to(x.dtype)).clamp(0, 1)
        return xp, xp - x
