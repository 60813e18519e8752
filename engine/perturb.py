"""Model-resolution input and native-resolution application of the generator's perturbation.

The generator runs at its fixed resolution ``(h, w)``; its ``delta`` is upsampled bilinearly to each
image's native ``(H, W)``, re-clipped to ``[-eps, eps]`` (the MTL-UE budget, Alg. 1) and added to the
original pixels, then rounded and clipped to uint8.  Since ``|round(x + d) - x| <= round(|d|)`` for
integer ``x``, every written pixel satisfies ``|protected - original| <= ceil(eps * 255)``.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image


def bound_uint8(eps: float) -> int:
    """The guaranteed per-pixel bound in uint8 steps: ``ceil(eps * 255)``."""
    return int(math.ceil(eps * 255.0 - 1e-9))


def model_input(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, C] -> float32 [C, h, w] in [0, 1] (Pillow antialiased bilinear, as the data loaders)."""
    h, w = size
    if rgb.shape[:2] != (h, w):
        img = Image.fromarray(rgb[:, :, 0] if rgb.shape[2] == 1 else rgb)
        small = np.asarray(img.resize((w, h), Image.Resampling.BILINEAR), dtype=np.uint8)
        if small.ndim == 2:
            small = small[:, :, None]
    else:
        small = rgb
    return np.ascontiguousarray(small.transpose(2, 0, 1), dtype=np.float32) / np.float32(255.0)


def upsample_delta(delta: np.ndarray, height: int, width: int) -> np.ndarray:
    """float32 [C, h, w] -> [H, W, C] (bilinear, half-pixel centres)."""
    c = delta.shape[0]
    if delta.shape[1:] == (height, width):
        return np.ascontiguousarray(delta.transpose(1, 2, 0))
    out = np.empty((height, width, c), dtype=np.float32)
    for i in range(c):
        out[:, :, i] = np.asarray(Image.fromarray(np.ascontiguousarray(delta[i], dtype=np.float32))
                                  .resize((width, height), Image.Resampling.BILINEAR))
    return out


def apply_delta(rgb: np.ndarray, delta: np.ndarray, eps: float) -> tuple[np.ndarray, int]:
    """``(protected uint8 [H, W, C], max |protected - rgb|)`` for a model-resolution ``delta`` [C, h, w]."""
    h, w = rgb.shape[:2]
    d = upsample_delta(delta, h, w)
    np.clip(d, -eps, eps, out=d)
    d *= np.float32(255.0)
    d += rgb
    np.rint(d, out=d)
    np.clip(d, 0.0, 255.0, out=d)
    out = d.astype(np.uint8)
    max_abs = int(np.abs(out.astype(np.int16) - rgb.astype(np.int16)).max()) if out.size else 0
    return out, max_abs
