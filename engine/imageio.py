"""Decode / encode / atomic write for the engine, with per-file failure reasons.

Decoding rules (each image is protected at its native size):

* JPEG: simplejpeg (libjpeg-turbo) when the file is plain YCbCr/gray without an EXIF rotation
  (measured faster than Pillow, see bench/engine.py); Pillow otherwise.
* EXIF orientation is applied (the output is upright and carries no orientation tag).
* CMYK / YCbCr / palette / 1-bit are converted to RGB (a note is recorded); RGBA keeps its
  alpha channel unchanged (only RGB is perturbed; PNG / WebP output only).
* Colour mode: a grayscale image fed to a 3-channel generator becomes RGB (a note says so);
  with ``keep_color=True`` (a 1-channel generator) colour images stay RGB: the generator sees their
  luma and its delta is added to every channel (:func:`mtlguard.engine.perturb.apply_delta_batch`).
* ``metadata=True`` also returns the EXIF block (without the orientation tag, which is applied) and
  the ICC profile, for ``--keep-metadata``.
* Failures (the file is skipped and reported): zero-byte, corrupt, truncated, 16-bit or float
  images (``I;16*``, ``I``, ``F``: writing them back as 8-bit would silently lose precision),
  other unsupported modes, and images above ``max_pixels`` (Pillow's decompression-bomb limit by
  default).
"""
from __future__ import annotations

import io
import struct
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

try:  # optional ISA-L deflate (installed with mtlguard's environment): 3x faster than zlib at level 1
    from isal import isal_zlib
except ImportError:  # pragma: no cover
    isal_zlib = None

#: Pillow's own limit (the decompression-bomb *error* threshold is twice this).
DEFAULT_MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)
UNSUPPORTED_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F", "BGR;15", "BGR;16", "BGR;24")
TMP_MARK = ".mtlg-tmp-"
_ORIENTATION = 0x0112
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


class DecodeError(Exception):
    """A file the engine cannot protect; ``str(e)`` is the reason reported for it."""


@dataclass
class Decoded:
    """A decoded image: ``rgb`` uint8 [H, W, C]; ``alpha`` uint8 [H, W] or None; ``fmt``: source format;
    ``decoder``: ``simplejpeg`` or ``pillow``; ``exif`` / ``icc``: the metadata to keep (only read with
    ``metadata=True``; the EXIF block has no orientation tag)."""

    rgb: np.ndarray
    alpha: np.ndarray | None
    fmt: str
    notes: list[str] = field(default_factory=list)
    decoder: str = "pillow"
    exif: bytes | None = None
    icc: bytes | None = None


def _check_pixels(w: int, h: int, max_pixels: int) -> None:
    if w * h > max_pixels:
        raise DecodeError(f"decompression bomb: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")


def _split_alpha(img: Image.Image, channels: int) -> tuple[Image.Image, np.ndarray]:
    """``(image without alpha, alpha uint8 [H, W])``; gray+alpha stays gray for a 1-channel generator."""
    rgba = img.convert("RGBA")
    alpha = np.asarray(rgba)[:, :, 3].copy()
    if img.mode in ("LA", "La") and channels == 1:
        return img.convert("L"), alpha
    return rgba.convert("RGB"), alpha


def _target_mode(mode: str, channels: int, keep_color: bool) -> str:
    if channels == 3:
        return "RGB"
    return "RGB" if keep_color and mode not in ("L", "1") else "L"


def _to_channels(img: Image.Image, channels: int, notes: list[str],
                 keep_color: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    mode = img.mode
    if mode in UNSUPPORTED_MODES or mode.startswith("I;16"):
        raise DecodeError(f"unsupported mode {mode} (16-bit / 32-bit images are not supported: writing them back "
                          f"as 8-bit would lose precision; convert to 8-bit first)")
    alpha = None
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        notes.append("palette converted to RGB")
        mode = img.mode
    if mode in _ALPHA_MODES:
        img, alpha = _split_alpha(img, channels)
        mode = img.mode
    target = _target_mode(mode, channels, keep_color)
    if mode != target:
        if mode not in ("RGB", "L", "1", "CMYK", "YCbCr", "LAB", "HSV"):
            raise DecodeError(f"unsupported mode {mode}")
        if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            notes.append(f"{mode} converted to {target}")
        elif mode == "1":
            notes.append(f"1-bit image converted to {target}")
        elif mode == "L":
            notes.append("grayscale image written as RGB (the generator has 3 channels)")
        img = img.convert(target)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr, alpha


def _metadata(img: Image.Image) -> tuple[bytes | None, bytes | None]:
    """``(EXIF block without the orientation tag, ICC profile)`` of an open image (None when absent)."""
    exif = img.getexif()  # the image's own cached object: restore the tag after serializing without it
    orientation = exif.pop(_ORIENTATION, None)
    data = exif.tobytes() if len(exif) else None
    if orientation is not None:
        exif[_ORIENTATION] = orientation
    return data, (img.info.get("icc_profile") or None)


def _decode_pillow(data: bytes, channels: int, max_pixels: int, keep_color: bool = False,
                   metadata: bool = False) -> Decoded:
    notes: list[str] = []
    exif = icc = None
    try:
        with Image.open(io.BytesIO(data)) as img:
            _check_pixels(img.width, img.height, max_pixels)
            fmt = (img.format or "").upper()
            img.load()
            if metadata:
                exif, icc = _metadata(img)
            orientation = img.getexif().get(_ORIENTATION, 1)
            if orientation not in (1, None):
                img = ImageOps.exif_transpose(img)
                notes.append(f"EXIF orientation {orientation} applied")
            rgb, alpha = _to_channels(img, channels, notes, keep_color)
    except DecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise DecodeError(f"decompression bomb: {e}") from e
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError) as e:
        raise DecodeError(f"cannot decode: {e}") from e
    return Decoded(rgb, alpha, fmt, notes, exif=exif, icc=icc)


def _jpeg_header(data: bytes, metadata: bool) -> tuple[int, bytes | None, bytes | None]:
    """``(EXIF orientation, EXIF block, ICC profile)`` of a JPEG (reads the header only)."""
    with Image.open(io.BytesIO(data)) as img:
        orientation = int(img.getexif().get(_ORIENTATION, 1) or 1)
        exif, icc = _metadata(img) if metadata else (None, None)
    return orientation, exif, icc


def _decode_simplejpeg(data: bytes, channels: int, max_pixels: int, metadata: bool) -> Decoded | None:
    """The fast path for plain JPEGs (None: not applicable, use Pillow)."""
    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)  # (height, width, colorspace, subsampling)
    except ValueError as e:
        raise DecodeError(f"cannot decode: corrupt JPEG header ({e})") from e
    _check_pixels(w, h, max_pixels)
    if not (colorspace == "YCbCr" or (colorspace == "Gray" and channels == 3)):
        return None
    orientation, exif, icc = _jpeg_header(data, metadata)
    if orientation != 1:
        return None
    try:
        rgb = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except ValueError as e:
        raise DecodeError(f"cannot decode: {e}") from e
    notes = ["grayscale image written as RGB (the generator has 3 channels)"] if colorspace == "Gray" else []
    return Decoded(rgb, None, "JPEG", notes, decoder="simplejpeg", exif=exif, icc=icc)


def decode_bytes(data: bytes, channels: int = 3, max_pixels: int = DEFAULT_MAX_PIXELS, decoder: str = "auto",
                 keep_color: bool = False, metadata: bool = False) -> Decoded:
    """Decode encoded image bytes (see the module docstring); raises :class:`DecodeError`.

    ``channels``: the generator's input channels (3: RGB; 1: gray, or with ``keep_color`` colour images
    stay RGB).  ``metadata``: also read the EXIF block and ICC profile."""
    if not data:
        raise DecodeError("empty file (0 bytes)")
    fast_ok = channels == 3 or keep_color
    if decoder in ("auto", "simplejpeg") and simplejpeg is not None and data[:2] == b"\xff\xd8" and fast_ok:
        dec = _decode_simplejpeg(data, channels, max_pixels, metadata)
        if dec is not None:
            return dec
    return _decode_pillow(data, channels, max_pixels, keep_color, metadata)


def decode_file(path, channels: int = 3, max_pixels: int = DEFAULT_MAX_PIXELS, decoder: str = "auto",
                keep_color: bool = False, metadata: bool = False) -> Decoded:
    with open(path, "rb") as f:
        data = f.read()
    return decode_bytes(data, channels, max_pixels, decoder, keep_color, metadata)


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


#: Lossless WebP settings of ``--format webp`` (libwebp ``method`` 0-6 and ``quality`` = effort 0-100).
#: Measured on 60 protected UTKFace images (200x200, Pillow 13, one thread): method 1 / effort 0 gives
#: 38 KB in 3.7 ms per image, vs PNG (level 1, RLE) 54 KB in 2.6 ms; method 0: 45 KB / 1.8 ms;
#: method 4: 37 KB / 16 ms; every setting is lossless (``exact=True`` keeps RGB under transparent alpha).
WEBP_METHOD = 1
WEBP_EFFORT = 0


def _pil_image(rgb: np.ndarray, alpha: np.ndarray | None) -> Image.Image:
    """uint8 [H, W, C] (+ alpha [H, W]) as a Pillow image: L, LA, RGB or RGBA."""
    if alpha is None:
        return Image.fromarray(rgb[:, :, 0] if rgb.shape[2] == 1 else rgb)
    if rgb.shape[2] == 1:
        return Image.fromarray(np.dstack([rgb[:, :, 0], alpha]))  # [H, W, 2] -> LA
    return Image.fromarray(np.dstack([rgb, alpha]))


def _metadata_kwargs(exif: bytes | None, icc: bytes | None) -> dict:
    out = {}
    if exif:
        out["exif"] = exif
    if icc:
        out["icc_profile"] = icc
    return out


def _encode_jpeg(rgb: np.ndarray, quality: int, meta: dict) -> bytes:
    if simplejpeg is not None and rgb.shape[2] == 3 and not meta:
        return simplejpeg.encode_jpeg(np.ascontiguousarray(rgb), quality=quality, colorspace="RGB",
                                      colorsubsampling="444")
    buf = io.BytesIO()
    _pil_image(rgb, None).save(buf, format="JPEG", quality=quality, subsampling=0, **meta)
    return buf.getvalue()


def encode(rgb: np.ndarray, fmt: str, alpha: np.ndarray | None = None, quality: int = 95,
           png_compression: int = DEFAULT_PNG_COMPRESSION, png_strategy: str = DEFAULT_PNG_STRATEGY,
           exif: bytes | None = None, icc: bytes | None = None) -> bytes:
    """Encode ``rgb`` uint8 [H, W, C] (+ alpha) as ``png``, ``webp`` or ``jpeg`` bytes.

    PNG (lossless at every setting): Pillow, zlib level ``png_compression`` (0-9) and strategy
    ``png_strategy`` (see :data:`DEFAULT_PNG_STRATEGY`; with ``rle`` or ``huffman`` zlib ignores the
    level except 0 = store).  WebP: lossless (:data:`WEBP_METHOD`); it has no gray mode, so a gray
    image is stored as RGB with equal channels.  JPEG (lossy, no alpha): simplejpeg (libjpeg-turbo,
    4:4:4 chroma), or Pillow (4:4:4) when there is metadata to embed.  ``exif`` / ``icc``: EXIF block
    and ICC profile to embed (``--keep-metadata``)."""
    fmt = fmt.lower()
    meta = _metadata_kwargs(exif, icc)
    if fmt == "jpeg":
        return _encode_jpeg(rgb, quality, meta)
    buf = io.BytesIO()
    if fmt == "webp":
        _pil_image(rgb, alpha).save(buf, format="WEBP", lossless=True, quality=WEBP_EFFORT, method=WEBP_METHOD,
                                    exact=True, **meta)
        return buf.getvalue()
    if fmt != "png":
        raise ValueError(f"unknown output format {fmt!r}")
    level = check_png_compression(png_compression)
    strategy = PNG_STRATEGIES[check_png_strategy(png_strategy)]
    if not meta and rgb.shape[0] * rgb.shape[1] >= FAST_PNG_MIN_PIXELS:
        return encode_png_fast(rgb, alpha, level, strategy)  # no Pillow copy of the image (4 bytes per pixel)
    _pil_image(rgb, alpha).save(buf, format="PNG", compress_level=level, compress_type=strategy, **meta)
    return buf.getvalue()


#: Images of at least this many pixels (without metadata to embed) are written by :func:`encode_png_fast`;
#: smaller ones by Pillow (their bytes are unchanged from earlier versions).
FAST_PNG_MIN_PIXELS = 1 << 20
_PNG_COLOR_TYPE = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> gray, gray+alpha, RGB, RGBA
_PNG_BLOCK_ROWS = 256


def _png_deflater(level: int, strategy: int):
    """A compressobj: ISA-L level 1 for the fast settings when python-isal is installed, else zlib."""
    if isal_zlib is not None and 1 <= level <= 3 and strategy in (zlib.Z_RLE, zlib.Z_DEFAULT_STRATEGY):
        return isal_zlib.compressobj(1)
    return zlib.compressobj(level, zlib.DEFLATED, 15, 9, strategy)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def encode_png_fast(rgb: np.ndarray, alpha: np.ndarray | None = None, level: int = DEFAULT_PNG_COMPRESSION,
                    strategy: int = zlib.Z_RLE) -> bytes:
    """Lossless 8-bit PNG of uint8 [H, W, C] (+ alpha [H, W]) for photo-size images, ~3x less CPU than Pillow's
    encoder and without holding the GIL (numpy + zlib release it, so encode threads run in parallel).

    Every row uses PNG filter 2 ("Up": the byte above is subtracted), then deflate in blocks of rows (bounded
    extra memory): ISA-L (python-isal) at its level 1 for the fast settings (``level`` 1-3 with the ``rle`` or
    ``default`` strategy), else zlib at ``level`` / ``strategy``.  Measured on a protected 12 MP photo (one core,
    bench/results/engine_photos_cpu.json "encoders_12MP"): Up + ISA-L 13.4 MB in 0.08 CPU-s, Up + zlib RLE 13.0 MB
    in 0.25 s, Pillow (adaptive filters, zlib RLE) 12.2 MB in 0.67 s, imagecodecs/libpng 14.1 MB in 0.52 s,
    libvips 31.7 MB in 0.23 s, lossless WebP (method 0) 9.3 MB in 0.58 s.  Standard PNG: any reader decodes
    exactly ``rgb`` (tests compare Pillow's decode)."""
    a = np.asarray(rgb, dtype=np.uint8)
    if a.ndim == 2:
        a = a[:, :, None]
    if alpha is not None:
        a = np.dstack([a, np.asarray(alpha, dtype=np.uint8)])
    h, w, c = a.shape
    if c not in _PNG_COLOR_TYPE:
        raise ValueError(f"encode_png_fast: {c} channels")
    rows = np.ascontiguousarray(a).reshape(h, w * c)
    co = _png_deflater(int(level), int(strategy))
    parts = []
    buf = np.empty((min(h, _PNG_BLOCK_ROWS), 1 + w * c), dtype=np.uint8)
    buf[:, 0] = 2  # filter type Up (on the first row "above" is zero: the row itself)
    for r0 in range(0, h, _PNG_BLOCK_ROWS):
        r1 = min(h, r0 + _PNG_BLOCK_ROWS)
        blk = buf[: r1 - r0]
        if r0 == 0:
            blk[0, 1:] = rows[0]
            np.subtract(rows[1:r1], rows[: r1 - 1], out=blk[1:, 1:])
        else:
            np.subtract(rows[r0:r1], rows[r0 - 1: r1 - 1], out=blk[:, 1:])
        parts.append(co.compress(blk))
    parts.append(co.flush())
    del buf
    ihdr = struct.pack(">IIBBBBB", w, h, 8, _PNG_COLOR_TYPE[c], 0, 0, 0)
    crc = zlib.crc32(b"IDAT")
    for p in parts:
        crc = zlib.crc32(p, crc)
    # one allocation of the file's size (no joined copy of the compressed data first)
    return b"".join([b"\x89PNG\r\n\x1a\n", _png_chunk(b"IHDR", ihdr),
                     struct.pack(">I", sum(len(p) for p in parts)), b"IDAT", *parts, struct.pack(">I", crc),
                     _png_chunk(b"IEND", b"")])


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory + ``os.replace``: a reader
    (or a resumed run) sees either no file or the complete file.  Temp names carry :data:`TMP_MARK` so a
    resumed run can find and remove the partial files of a killed one."""
    atomic_write_bytes(path, data, prefix=f".{path.name}{TMP_MARK}", suffix="")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 arrays (inf when identical); the squared error is summed exactly in integers,
    a block of rows at a time (bounded memory for photo-size images)."""
    a, b = np.asarray(a), np.asarray(b)
    size = a.size
    rows = a.shape[0] if a.ndim else 1
    step = max(1, (1 << 20) // max(1, size // max(1, rows)))
    total = 0
    for r0 in range(0, rows, step):
        d = (a[r0: r0 + step].astype(np.int16) - b[r0: r0 + step].astype(np.int16)).ravel().astype(np.int64)
        total += int(np.dot(d, d))
    mse = float(total) / max(1, size)
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)
