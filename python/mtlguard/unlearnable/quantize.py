"""uint8 storage of protected images (as the official MTL-UE code does).

A protected image is stored as ``clip(x_uint8 + round(delta * 255), 0, 255)``.  Because
``|delta| <= eps`` and rounding is monotone, ``|stored - x_uint8| <= round(eps * 255)`` (8 for the
default 8/255): :func:`check_linf_bound` verifies it before anything is written.
"""
from __future__ import annotations

import math

import torch


def eps_levels(eps: float) -> int:
    """Largest allowed uint8 change for an L-inf bound ``eps`` (in [0, 1] units): ``ceil(eps*255)``
    computed with a float tolerance so 8/255 gives 8."""
    return int(math.ceil(float(eps) * 255.0 - 1e-4))


def quantize_protected(x_uint8: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``clip(x_uint8 + round(delta * 255), 0, 255)`` as uint8 (same shape as ``x_uint8``)."""
    if x_uint8.dtype != torch.uint8:
        raise TypeError(f"quantize_protected: x_uint8 must be uint8, got {x_uint8.dtype}")
    if delta.shape != x_uint8.shape:
        raise ValueError(f"quantize_protected: delta {tuple(delta.shape)} and image {tuple(x_uint8.shape)} differ")
    q = x_uint8.to(torch.int16) + torch.round(delta.detach().to(torch.float32) * 255.0).to(torch.int16)
    return q.clamp(0, 255).to(torch.uint8)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """A [0, 1] float image as uint8 (round to nearest)."""
    return torch.round(x.detach().clamp(0, 1) * 255.0).to(torch.uint8)


def check_linf_bound(original: torch.Tensor, protected: torch.Tensor, eps: float, name: str = "image") -> int:
    """Raise ``ValueError`` (naming the sample/pixel) if ``|protected - original| > ceil(eps*255)``
    on uint8 images; returns the max absolute change in uint8 levels."""
    if original.dtype != torch.uint8 or protected.dtype != torch.uint8:
        raise TypeError("check_linf_bound: both images must be uint8")
    if original.shape != protected.shape:
        raise ValueError(f"check_linf_bound: {name}: shapes differ {tuple(original.shape)} vs {tuple(protected.shape)}")
    diff = (protected.to(torch.int16) - original.to(torch.int16)).abs()
    worst = int(diff.max()) if diff.numel() else 0
    limit = eps_levels(eps)
    if worst > limit:
        idx = tuple(int(i) for i in (diff == worst).nonzero()[0])
        raise ValueError(f"{name}: perturbation {worst}/255 at index {idx} exceeds the bound eps={eps:.6f} "
                         f"({limit}/255)")
    return worst
