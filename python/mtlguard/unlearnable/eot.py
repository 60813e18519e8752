"""Expectation over transformations (EOT) for robust MTL-UE fitting: what a victim's pipeline does to a
protected file, written as differentiable (or straight-through) torch ops.

A protected image is written once, at its native resolution, as uint8.  A victim's training code then
re-encodes or filters it (the ISS / APBench defenses: grayscale, JPEG, bit-depth reduction, blur), and
its data loader random-resized-crops, flips and resizes it to the victim's input size (32-224 px).
A perturbation fitted only at the generator's own resolution, behind crop + flip (Alg. 1, A.2), does not
have to survive any of this.  :class:`VictimView` draws one such pipeline per sample and applies it, so
Alg. 1's ``L_b`` becomes ``E_T[L_b(F', T(x + delta), y)]`` (Athalye et al., 2018, "EOT"), the design
used by robust unlearnable examples against ISS (Liu et al., 2023) and by DUNE's transformation
ensembles.

Gradients: rounding steps (uint8 storage, JPEG coefficient quantization, bit-depth reduction) use the
straight-through estimator (identity gradient); resizing uses antialiased bilinear interpolation as
``torchvision.transforms.Resize(antialias=True)`` and Pillow do; JPEG follows libjpeg's baseline
(BT.601 YCbCr, 4:2:0 chroma subsampling, the Annex K quantization tables scaled by quality).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from ..color import BT601_LUMA as LUMA  # Pillow's convert("L"), the ISS grayscale defense

# JPEG Annex K tables (libjpeg's std_luminance_quant_tbl / std_chrominance_quant_tbl), row-major 8x8
_LUMA_Q = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
           14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
           49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
_CHROMA_Q = (17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
             47, 66, 99, 99, 99, 99, 99, 99) + (99,) * 32


def straight_through_round(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, identity gradient backward."""
    return x + (torch.round(x) - x).detach()


def quantize_uint8(x: torch.Tensor) -> torch.Tensor:
    """A [0, 1] image as stored in uint8 (``round(255 x) / 255``), straight-through."""
    return straight_through_round(x.clamp(0, 1) * 255.0) / 255.0


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luma replicated to every channel (1-channel input is returned unchanged)."""
    if x.shape[1] == 1:
        return x
    w = x.new_tensor(LUMA).view(1, 3, 1, 1)
    return (x[:, :3] * w).sum(1, keepdim=True).expand(-1, x.shape[1], -1, -1)


def bit_depth(x: torch.Tensor, bits: int | torch.Tensor) -> torch.Tensor:
    """Bit-depth reduction to ``bits`` bits per channel (``round(x (2^b - 1)) / (2^b - 1)``), straight-through.
    ``bits``: int or per-sample tensor ``[B]``."""
    levels = (2.0 ** torch.as_tensor(bits, dtype=x.dtype, device=x.device) - 1).reshape(-1, 1, 1, 1)
    return straight_through_round(x * levels) / levels


def gaussian_blur(x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with per-sample ``sigma`` (pixels), kernel radius ``ceil(3 sigma)``, reflect padding."""
    b, c, h, w = x.shape
    sig = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(b)
    r = max(1, int(math.ceil(3 * float(sig.max()))))
    r = min(r, (min(h, w) - 1))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t[None, :] / sig[:, None].clamp_min(1e-3)) ** 2)
    k = k / k.sum(1, keepdim=True)  # [B, 2r+1]
    xp = F.pad(x, (r, r, r, r), mode="reflect").reshape(1, b * c, h + 2 * r, w + 2 * r)
    kk = k.repeat_interleave(c, 0)  # [B*C, 2r+1]
    out = F.conv2d(xp, kk[:, None, None, :], groups=b * c)
    out = F.conv2d(out, kk[:, None, :, None], groups=b * c)
    return out.reshape(b, c, h, w)


# --- differentiable JPEG -----------------------------------------------------------------------------
def _dct_matrix(device, dtype) -> torch.Tensor:
    """The orthonormal 8-point DCT-II matrix (JPEG's FDCT, up to libjpeg's integer approximation)."""
    n = torch.arange(8, dtype=torch.float64)
    m = torch.cos((2 * n[None, :] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    m[0] /= math.sqrt(2)
    return m.to(device=device, dtype=dtype)


def jpeg_quant_tables(quality: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """libjpeg's ``jpeg_quality_scaling`` of the Annex K tables: per-sample ``[B, 64]`` luma and chroma tables."""
    q = quality.to(torch.float64).clamp(1, 100)
    scale = torch.where(q < 50, 5000.0 / q, 200.0 - 2.0 * q)
    tabs = []
    for base in (_LUMA_Q, _CHROMA_Q):
        t = torch.tensor(base, dtype=torch.float64, device=q.device)
        tabs.append(torch.floor((t[None, :] * scale[:, None] + 50) / 100).clamp(1, 255))
    return tabs[0].to(torch.float32), tabs[1].to(torch.float32)


def _jpeg_plane(p: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Quantize one level-shifted plane ``[B, 1, H, W]`` (H, W multiples of 8) in the 8x8 DCT domain."""
    b, _, h, w = p.shape
    d = _dct_matrix(p.device, p.dtype)
    blocks = p.reshape(b, h // 8, 8, w // 8, 8).permute(0, 1, 3, 2, 4)  # [B, bh, bw, 8, 8]
    coef = d @ blocks @ d.T
    q = table.view(b, 1, 1, 8, 8).to(p.dtype)
    coef = straight_through_round(coef / q) * q
    blocks = d.T @ coef @ d
    return blocks.permute(0, 1, 3, 2, 4).reshape(b, 1, h, w)


def jpeg(x: torch.Tensor, quality: int | torch.Tensor) -> torch.Tensor:
    """JPEG compress + decompress of RGB (or 1-channel) ``x`` in [0, 1] with per-sample ``quality``; the
    coefficient rounding is straight-through, so gradients reach ``x``.  Chroma is 4:2:0 subsampled
    (2x2 mean) and upsampled bilinearly, as libjpeg's default encoder and fancy-upsampling decoder."""
    b, c, h, w = x.shape
    qual = torch.as_tensor(quality, device=x.device).reshape(-1).expand(b)
    tl, tc = jpeg_quant_tables(qual.cpu())
    tl, tc = tl.to(x.device), tc.to(x.device)
    ph, pw = (-h) % 16, (-w) % 16
    v = F.pad(x * 255.0, (0, pw, 0, ph), mode="replicate") if (ph or pw) else x * 255.0
    if c == 1:
        y = _jpeg_plane(v - 128.0, tl) + 128.0
        return (y[:, :, :h, :w] / 255.0).clamp(0, 1)
    r, g, bl = v[:, 0:1], v[:, 1:2], v[:, 2:3]
    y = LUMA[0] * r + LUMA[1] * g + LUMA[2] * bl
    cb = -0.168736 * r - 0.331264 * g + 0.5 * bl
    cr = 0.5 * r - 0.418688 * g - 0.081312 * bl
    y = _jpeg_plane(y - 128.0, tl) + 128.0
    hh, ww = v.shape[-2:]
    chroma = []
    for ch in (cb, cr):
        small = F.avg_pool2d(ch, 2)
        small = _jpeg_plane(small, tc)
        chroma.append(F.interpolate(small, size=(hh, ww), mode="bilinear", align_corners=False))
    cb, cr = chroma
    rgb = torch.cat([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], 1)
    return (rgb[:, :, :h, :w] / 255.0).clamp(0, 1)


# --- resizing ------------------------------------------------------------------------------------------
def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Antialiased bilinear resize (half-pixel centres), as ``transforms.Resize(antialias=True)`` / Pillow."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def random_resized_crop(x: torch.Tensor, size: int, scale: Sequence[float], ratio: Sequence[float],
                        flip: bool, rng: torch.Generator | None) -> torch.Tensor:
    """Per-sample ``RandomResizedCrop(size, scale, ratio)`` (torchvision's sampling, 10 tries then the
    centre crop) + horizontal flip, resized with antialiasing; returns ``[B, C, size, size]``."""
    b, _, h, w = x.shape
    area = h * w
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    out = []
    for i in range(b):
        box = None
        for _ in range(10):
            s = float(torch.empty(1).uniform_(scale[0], scale[1], generator=rng))
            r = math.exp(float(torch.empty(1).uniform_(log_r[0], log_r[1], generator=rng)))
            cw = int(round(math.sqrt(area * s * r)))
            ch = int(round(math.sqrt(area * s / r)))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (1,), generator=rng))
                left = int(torch.randint(0, w - cw + 1, (1,), generator=rng))
                box = (top, left, ch, cw)
                break
        if box is None:
            ch = cw = min(h, w)
            box = ((h - ch) // 2, (w - cw) // 2, ch, cw)
        top, left, ch, cw = box
        crop = resize(x[i:i + 1, :, top:top + ch, left:left + cw], (size, size))
        if flip and float(torch.rand(1, generator=rng)) < 0.5:
            crop = crop.flip(3)
        out.append(crop)
    return torch.cat(out, 0)


# --- the victim pipeline --------------------------------------------------------------------------------
#: the file-level transformations of a victim pipeline, in the order their probabilities are cumulated
#: (``EOTConfig.p_<name>``; ``--eot-defenses NAME=P``)
FILE_TRANSFORMS = ("gray", "jpeg", "blur", "bdr")


@dataclass
class EOTConfig:
    """Distribution of victim pipelines :class:`VictimView` draws from.

    Args:
        sizes: victim input sides (one is drawn per batch; a batch shares its size).
        crop_scale / crop_ratio: ``RandomResizedCrop`` area fraction and aspect-ratio ranges.
        flip: random horizontal flip.
        p_gray, p_jpeg, p_blur, p_bdr: per-sample probability of each file-level transformation, applied
            at the native resolution before cropping (at most one per sample, drawn in this order of
            cumulative probability; the rest get none).
        jpeg_quality: JPEG quality range (uniform integers).
        blur_sigma: Gaussian-blur sigma range, in pixels at the native resolution.
        bdr_bits: bit-depth range (uniform integers).
        quantize: round the protected image to uint8 first (the engine writes uint8 files).
    """

    sizes: Sequence[int] = (32, 40, 48, 56, 64)
    crop_scale: Sequence[float] = (0.35, 1.0)
    crop_ratio: Sequence[float] = (3 / 4, 4 / 3)
    flip: bool = True
    p_gray: float = 0.15
    p_jpeg: float = 0.2
    p_blur: float = 0.1
    p_bdr: float = 0.1
    jpeg_quality: Sequence[int] = (10, 75)
    blur_sigma: Sequence[float] = (0.5, 3.0)
    bdr_bits: Sequence[int] = (2, 4)
    quantize: bool = True

    def __post_init__(self):
        self.sizes = tuple(int(s) for s in self.sizes)
        if not self.sizes or min(self.sizes) < 8:
            raise ValueError(f"EOTConfig.sizes must be sides >= 8, got {self.sizes}")
        for name in ("crop_scale", "crop_ratio", "jpeg_quality", "blur_sigma", "bdr_bits"):
            lo, hi = getattr(self, name)
            if not (0 < lo <= hi):
                raise ValueError(f"EOTConfig.{name} must be a range 0 < lo <= hi, got {(lo, hi)}")
            setattr(self, name, (type(lo)(lo), type(hi)(hi)))
        if self.crop_scale[1] > 1:
            raise ValueError(f"EOTConfig.crop_scale must lie in (0, 1], got {self.crop_scale}")
        ps = self.probabilities()
        if min(ps) < 0 or sum(ps) > 1:
            raise ValueError(f"EOTConfig: transformation probabilities must be >= 0 and sum to <= 1, got {ps}")

    def probabilities(self) -> tuple[float, ...]:
        """``p_<name>`` for each name of :data:`FILE_TRANSFORMS`, in that order."""
        return tuple(getattr(self, f"p_{n}") for n in FILE_TRANSFORMS)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "EOTConfig":
        return cls(**d)


@dataclass
class VictimView:
    """``view(x_native, rng) -> [B, C, s, s]``: one random victim pipeline per sample (see :class:`EOTConfig`).

    ``file_transforms(x, rng)`` alone applies the file-level part (grayscale / JPEG / blur / BDR) at the
    input's resolution; ``crop(x, size, rng)`` the loader part.
    """

    config: EOTConfig = field(default_factory=EOTConfig)

    def draw_size(self, rng: torch.Generator | None) -> int:
        sizes = self.config.sizes
        return sizes[int(torch.randint(0, len(sizes), (1,), generator=rng))]

    def file_transforms(self, x: torch.Tensor, rng: torch.Generator | None) -> torch.Tensor:
        cfg = self.config
        b = x.shape[0]
        u = torch.rand(b, generator=rng)
        edges = torch.tensor(cfg.probabilities()).cumsum(0)
        kind = torch.bucketize(u, edges, right=True)  # index into FILE_TRANSFORMS; len(FILE_TRANSFORMS) = none
        out = x
        for k, fn in enumerate(getattr(self, f"_{n}") for n in FILE_TRANSFORMS):
            idx = (kind == k).nonzero().flatten()
            if idx.numel():
                sub = fn(x[idx.to(x.device)], rng)
                out = out.index_copy(0, idx.to(x.device), sub)
        return out

    def _gray(self, x, rng):
        return grayscale(x)

    def _jpeg(self, x, rng):
        lo, hi = self.config.jpeg_quality
        return jpeg(x, torch.randint(lo, hi + 1, (x.shape[0],), generator=rng))

    def _blur(self, x, rng):
        lo, hi = self.config.blur_sigma
        return gaussian_blur(x, torch.empty(x.shape[0]).uniform_(lo, hi, generator=rng).to(x.device))

    def _bdr(self, x, rng):
        lo, hi = self.config.bdr_bits
        return bit_depth(x, torch.randint(lo, hi + 1, (x.shape[0],), generator=rng).to(x.device))

    def crop(self, x: torch.Tensor, size: int, rng: torch.Generator | None) -> torch.Tensor:
        cfg = self.config
        return random_resized_crop(x, size, cfg.crop_scale, cfg.crop_ratio, cfg.flip, rng)

    def __call__(self, x: torch.Tensor, rng: torch.Generator | None = None, size: int | None = None) -> torch.Tensor:
        if self.config.quantize:
            x = quantize_uint8(x)
        x = self.file_transforms(x, rng)
        return self.crop(x, size or self.draw_size(rng), rng)


def fixed_view(x: torch.Tensor, size: int) -> torch.Tensor:
    """The deterministic victim view used for accuracy checks: uint8 storage, full-image resize to ``size``."""
    return resize(quantize_uint8(x), (size, size))
