"""Decode / encode / atomic write for the engine, with per-file failure reasons.

Decoding rules (each image is protected at its native size):

* JPEG: simplejpeg (libjpeg-turbo) when the file is plain YCbCr/gray without an EXIF rotation
  (measured faster than Pillow, see bench/engine.py); Pillow otherwise.
* EXIF orientation is applied (the output is upright and carries no orientation tag).
* CMYK / YCbCr / palette / 1-bit / LA are converted to RGB (a note is recorded); RGBA keeps its
  alpha channel unchanged (only RGB is perturbed; PNG output only).
* Failures (the file is skipped and reported): zero-byte, corrupt, truncated, 16-bit or float
  images (``I;16*``, ``I``, ``F``: writing them back as 8-bit would silently lose precision),
  other unsupported modes, and images above ``max_pixels`` (Pillow's decompression-bomb limit by
  default).
"""
from __future__ import annotations

import io
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from mtlguard.atomic import atomic_write_bytes

try:  # optional fast JPEG codec (installed with mtlguard's environment)
    import simplejpeg
except ImportError:  # pragma: no cover
    simplejpeg = None

#: Pillow's own limit (the decompression-bomb *error* threshold is twice this).
DEFAULT_MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)
UNSUPPORTED_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F", "BGR;15", "BGR;16", "BGR;24")
TMP_MARK = ".mtlg-tmp-"
_ORIENTATION = 0x0112


class DecodeError(Exception):
    """A file the engine cannot protect; ``str(e)`` is the reason reported for it."""


@dataclass
class Decoded:
    """A decoded image: ``rgb`` uint8 [H, W, C]; ``alpha`` uint8 [H, W] or None; ``fmt``: source format;
    ``decoder``: ``simplejpeg`` or ``pillow``."""

    rgb: np.ndarray
    alpha: np.ndarray | None
    fmt: str
    notes: list[str] = field(default_factory=list)
    decoder: str = "pillow"


def _check_pixels(w: int, h: int, max_pixels: int) -> None:
    if w * h > max_pixels:
        raise DecodeError(f"decompression bomb: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")


def _to_channels(img: Image.Image, channels: int, notes: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    mode = img.mode
    if mode in UNSUPPORTED_MODES or mode.startswith("I;16"):
        raise DecodeError(f"unsupported mode {mode} (16-bit / 32-bit images are not supported: writing them back "
                          f"as 8-bit would lose precision; convert to 8-bit first)")
    alpha = None
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        notes.append("palette converted to RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        alpha = np.asarray(img)[:, :, 3].copy()
        img = img.convert("RGB")
        mode = "RGB"
    target = "RGB" if channels == 3 else "L"
    if mode != target:
        if mode not in ("RGB", "L", "1", "CMYK", "YCbCr", "LAB", "HSV"):
            raise DecodeError(f"unsupported mode {mode}")
        if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            notes.append(f"{mode} converted to {target}")
        img = img.convert(target)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr, alpha


def _decode_pillow(data: bytes, channels: int, max_pixels: int) -> Decoded:
    notes: list[str] = []
    try:
        with Image.open(io.BytesIO(data)) as img:
            _check_pixels(img.width, img.height, max_pixels)
            fmt = (img.format or "").upper()
            img.load()
            orientation = img.getexif().get(_ORIENTATION, 1)
            if orientation not in (1, None):
                img = ImageOps.exif_transpose(img)
                notes.append(f"EXIF orientation {orientation} applied")
            rgb, alpha = _to_channels(img, channels, notes)
    except DecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise DecodeError(f"decompression bomb: {e}") from e
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError) as e:
        raise DecodeError(f"cannot decode: {e}") from e
    return Decoded(rgb, alpha, fmt, notes)


def _jpeg_orientation(data: bytes) -> int:
    with Image.open(io.BytesIO(data)) as img:  # header only
        return int(img.getexif().get(_ORIENTATION, 1) or 1)


def decode_bytes(data: bytes, channels: int = 3, max_pixels: int = DEFAULT_MAX_PIXELS, decoder: str = "auto") -> Decoded:
    """Decode encoded image bytes (see the module docstring); raises :class:`DecodeError`."""
    if not data:
        raise DecodeError("empty file (0 bytes)")
    if decoder in ("auto", "simplejpeg") and simplejpeg is not None and data[:2] == b"\xff\xd8" and channels == 3:
        try:
            h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)  # (height, width, colorspace, subsampling)
        except ValueError as e:
            raise DecodeError(f"cannot decode: corrupt JPEG header ({e})") from e
        _check_pixels(w, h, max_pixels)
        if colorspace in ("YCbCr", "Gray") and _jpeg_orientation(data) == 1:
            try:
                rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
            except ValueError as e:
                raise DecodeError(f"cannot decode: {e}") from e
            return Decoded(rgb, None, "JPEG", decoder="simplejpeg")
    return _decode_pillow(data, channels, max_pixels)


def decode_file(path, channels: int = 3, max_pixels: int = DEFAULT_MAX_PIXELS, decoder: str = "auto") -> Decoded:
    with open(path, "rb") as f:
        data = f.read()
    return decode_bytes(data, channels, max_pixels, decoder)


#: Default PNG zlib level (``--png-compression``) and strategy (``--png-strategy``) of the engine's output.
#: Measured on 96 protected UTKFace images (200x200, Pillow 13, one thread, bench/results/engine_cpu.json
#: "png_options"): zlib's default strategy gives 59 KB in 4.1 ms at level 1, 57 KB / 6.1 ms at level 3,
#: 55 KB / 16 ms at level 6; the RLE strategy (LZ77 matches at distance 1 only: standard deflate that
#: any PNG reader decodes) gives 52 KB in 3.6 ms at every level 1-9 -- smaller than level 6 at level-1
#: speed, because the protected pixels are noisy and long-distance matches barely exist (clean photos:
#: 45 KB vs 50 KB at level 1, same speed).  Level 0 stores uncompressed (120 KB, 2 ms).
DEFAULT_PNG_COMPRESSION = 1
DEFAULT_PNG_STRATEGY = "rle"
PNG_STRATEGIES = {"rle": zlib.Z_RLE, "default": zlib.Z_DEFAULT_STRATEGY, "filtered": zlib.Z_FILTERED,
                  "huffman": zlib.Z_HUFFMAN_ONLY}


def check_png_compression(level) -> int:
    """``level`` as an int in 0..9, or a ValueError naming the bad value."""
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= int(level) <= 9:
        raise ValueError(f"png_compression must be an integer zlib level 0-9 (0 = store, 1 = fastest, 9 = smallest), "
                         f"got {level!r}")
    return int(level)


def check_png_strategy(strategy) -> str:
    if strategy not in PNG_STRATEGIES:
        raise ValueError(f"png_strategy must be one of {sorted(PNG_STRATEGIES)}, got {strategy!r}")
    return strategy


def encode(rgb: np.ndarray, fmt: str, alpha: np.ndarray | None = None, quality: int = 95,
           png_compression: int = DEFAULT_PNG_COMPRESSION, png_strategy: str = DEFAULT_PNG_STRATEGY) -> bytes:
    """Encode ``rgb`` uint8 [H, W, C] (+ alpha) as ``png`` or ``jpeg`` bytes.

    PNG (lossless at every setting): Pillow, zlib level ``png_compression`` (0-9) and strategy
    ``png_strategy`` (see :data:`DEFAULT_PNG_STRATEGY`; with ``rle`` or ``huffman`` zlib ignores the
    level except 0 = store).  JPEG: simplejpeg (libjpeg-turbo, 4:4:4 chroma) or Pillow."""
    fmt = fmt.lower()
    if fmt == "jpeg":
        if simplejpeg is not None and rgb.shape[2] == 3:
            return simplejpeg.encode_jpeg(np.ascontiguousarray(rgb), quality=quality, colorspace="RGB",
                                          colorsubsampling="444")
        img = Image.fromarray(rgb[:, :, 0] if rgb.shape[2] == 1 else rgb)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality, subsampling=0)
        return buf.getvalue()
    if fmt != "png":
        raise ValueError(f"unknown output format {fmt!r}")
    level = check_png_compression(png_compression)
    strategy = PNG_STRATEGIES[check_png_strategy(png_strategy)]
    if alpha is not None:
        img = Image.fromarray(np.dstack([rgb if rgb.shape[2] == 3 else np.repeat(rgb, 3, 2), alpha]))
    else:
        img = Image.fromarray(rgb[:, :, 0] if rgb.shape[2] == 1 else rgb)
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=level, compress_type=strategy)
    return buf.getvalue()


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory + ``os.replace``: a reader
    (or a resumed run) sees either no file or the complete file.  Temp names carry :data:`TMP_MARK` so a
    resumed run can find and remove the partial files of a killed one."""
    atomic_write_bytes(path, data, prefix=f".{path.name}{TMP_MARK}", suffix="")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 arrays (inf when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)
