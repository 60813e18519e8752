"""Image decoding, parallel bulk decoding, the decoded-image cache, and safe path / atomic-write helpers.

Every loader decodes images through :func:`decode_image` so that they all agree on:

* **EXIF orientation** is applied (:func:`PIL.ImageOps.exif_transpose`).
* **Channels**: the result has ``channels`` (1 or 3) channels.  Grayscale is replicated to RGB,
  RGB is converted to luma (ITU-R 601-2, Pillow's ``convert("L")``), alpha is dropped (RGBA/LA/PA),
  CMYK/YCbCr/palette/1-bit are converted by Pillow, 16-bit grayscale (``I;16*``/``I``) is scaled
  ``v / 257`` (0..65535 -> 0..255) and 32-bit float (``F``) is clipped to 0..255.
* **Resizing** to ``(H, W)`` stretches (no aspect-ratio preservation) with Pillow's antialiased
  bilinear filter (as ``torchvision.transforms.Resize(antialias=True)``).  JPEGs are first
  DCT-downscaled with ``img.draft`` to the smallest 1/2^k scale that is still at least ``max(H, W)``
  on each side: that is most of the speed of bulk decoding.  Resized JPEGs without EXIF data are
  decoded by ``simplejpeg`` (the same libjpeg-turbo DCT scaling, less overhead) when it is installed.

The result is always ``uint8 [H, W, C]`` (HWC, like Pillow / numpy images).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageOps

from ..atomic import atomic_write

try:  # optional fast JPEG path (libjpeg-turbo with DCT scaling); Pillow is the fallback
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover
    _simplejpeg = None

log = logging.getLogger("mtlguard.data")

#: bump when decoding changes, so stale cache files are not reused
DECODE_VERSION = 2

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_WITH_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


def _as_size(image_size) -> tuple[int, int] | None:
    """``None``, an int ``s`` (-> ``(s, s)``) or ``(H, W)`` -> ``(H, W)`` or ``None``."""
    if image_size is None:
        return None
    if isinstance(image_size, (int, np.integer)):
        h = w = int(image_size)
    else:
        h, w = (int(v) for v in image_size)
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size must be positive, got {image_size!r}")
    return h, w


def to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Convert a Pillow image of any mode to ``L`` (channels=1) or ``RGB`` (channels=3)."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    target = "L" if channels == 1 else "RGB"
    if img.mode == target:
        return img
    if img.mode in _SIXTEEN_BIT:
        arr = np.asarray(img).astype(np.float32) / 257.0
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    elif img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in _WITH_ALPHA:
        img = img.convert("RGBA").convert("RGB") if target == "RGB" else img.convert("LA").convert("L")
    return img if img.mode == target else img.convert(target)


def decode_image(path: str | os.PathLike, image_size=None, channels: int = 3) -> np.ndarray:
    """Decode one image file to ``uint8 [H, W, channels]`` (see the module docstring for the rules).

    Args:
        path: image file.
        image_size: ``None`` (keep the stored size), an int or ``(H, W)``.
        channels: 1 or 3.

    Raises:
        ValueError: naming ``path`` when the file cannot be opened or decoded.
    """
    size = _as_size(image_size)
    if _simplejpeg is not None and size is not None and str(path).lower().endswith((".jpg", ".jpeg")):
        arr = _decode_jpeg_fast(path, size, channels)
        if arr is not None:
            return arr
    try:
        with Image.open(path) as img:
            if size is not None and img.format == "JPEG":
                m = max(size)
                img.draft("L" if channels == 1 and img.mode == "RGB" else img.mode, (m, m))
            img.load()
            img = ImageOps.exif_transpose(img)
            img = to_mode(img, channels)
            if size is not None and (img.height, img.width) != size:
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot decode image {str(path)!r}: {e}") from e
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def _decode_jpeg_fast(path, size: tuple[int, int], channels: int) -> np.ndarray | None:
    """libjpeg-turbo DCT-scaled decode through simplejpeg (~1.4x faster than Pillow's draft mode).

    Returns ``None`` (use the Pillow path) for files with EXIF data (possible orientation), CMYK or
    anything simplejpeg cannot decode.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
        if b"Exif" in data[:65536]:
            return None
        m = max(size)
        arr = _simplejpeg.decode_jpeg(data, colorspace="GRAY" if channels == 1 else "RGB",
                                      min_height=m, min_width=m)
    except Exception:  # noqa: BLE001 - any failure falls back to Pillow, which reports errors well
        return None
    img = Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr)
    if (img.height, img.width) != size:
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    out = np.asarray(img, dtype=np.uint8)
    return out[:, :, None] if out.ndim == 2 else out


def default_num_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def decode_many(
    paths: Sequence[str | os.PathLike],
    image_size=None,
    channels: int = 3,
    num_workers: int | None = None,
    progress: bool = True,
    desc: str = "decoding images",
) -> np.ndarray:
    """Decode ``paths`` in a thread pool (Pillow releases the GIL) to one ``uint8 [N, H, W, C]`` array.

    With ``image_size=None`` every image must have the size of the first one (else a ValueError
    names the first file that differs and suggests passing ``image_size``).
    """
    from tqdm.auto import tqdm

    n = len(paths)
    size = _as_size(image_size)
    if n == 0:
        h, w = size or (0, 0)
        return np.zeros((0, h, w, channels), np.uint8)
    first = decode_image(paths[0], size, channels)
    out = np.empty((n,) + first.shape, np.uint8)
    out[0] = first
    fixed = size or first.shape[:2]

    def work(i: int) -> None:
        arr = decode_image(paths[i], fixed if size is not None else None, channels)
        if arr.shape != first.shape:
            raise ValueError(
                f"image {str(paths[i])!r} has size {arr.shape[:2]} but {str(paths[0])!r} has "
                f"{first.shape[:2]}; pass image_size=(H, W) to resize all images"
            )
        out[i] = arr

    workers = num_workers or default_num_workers()
    with tqdm(total=n, desc=desc, disable=not progress, unit="img", initial=1) as bar:
        if workers <= 1:
            for i in range(1, n):
                work(i)
                bar.update(1)
        else:
            with ThreadPoolExecutor(workers) as ex:
                chunk = 256
                for start in range(1, n, chunk):
                    idx = range(start, min(n, start + chunk))
                    for _ in ex.map(work, idx):
                        bar.update(1)
    return out


# --------------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$MTLGUARD_CACHE`` if set, else ``~/.cache/mtlguard``."""
    env = os.environ.get("MTLGUARD_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mtlguard"


def file_list_key(root: str | os.PathLike, files: Sequence[str], extra: dict) -> str:
    """sha256 over the resolved root, each file's name, size and mtime, and ``extra`` (size, channels, ...).

    Size and mtime make a protected copy written under the same names (or an edited image) miss
    the cache of the clean data.
    """
    h = hashlib.sha256()
    root = Path(root)
    h.update(json.dumps({"root": str(root.resolve()), "v": DECODE_VERSION, **extra}, sort_keys=True).encode())
    for f in files:
        st = os.stat(root / f)
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """``np.save`` to a temp file in the same folder, then ``os.replace`` (never a half-written file)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to a bare temp name
            np.save(f, array, allow_pickle=False)

    atomic_write(path, write)


def cached_array(
    cache_path: Path | None,
    expected_shape: tuple[int, ...] | None,
    build: Callable[[], np.ndarray],
) -> tuple[np.ndarray, bool]:
    """Load ``cache_path`` (memory-mapped, read-only) if it exists with ``expected_shape``, else
    ``build()`` it and save it atomically.  Returns ``(array, cache_hit)``.  ``cache_path=None``
    disables the cache."""
    if cache_path is not None and cache_path.is_file():
        try:
            arr = np.load(cache_path, mmap_mode="r", allow_pickle=False)
            if arr.dtype == np.uint8 and (expected_shape is None or arr.shape == tuple(expected_shape)):
                return arr, True
            log.warning("ignoring cache %s: shape %s dtype %s, expected %s uint8",
                        cache_path, arr.shape, arr.dtype, expected_shape)
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable cache %s: %s", cache_path, e)
    arr = build()
    if cache_path is not None:
        try:
            atomic_save_npy(cache_path, arr)
        except OSError as e:  # a read-only cache dir must not break loading
            log.warning("could not write cache %s: %s", cache_path, e)
    return arr, False


# --------------------------------------------------------------------------------------------------
# paths
# --------------------------------------------------------------------------------------------------
def safe_join(root: str | os.PathLike, rel: str, what: str = "file") -> Path:
    """``root / rel`` after checking that ``rel`` is relative and stays inside ``root``.

    Rejects absolute paths, ``..`` components, drive letters, and symlinks that resolve outside
    ``root``.  Raises ValueError naming ``rel``.
    """
    if not isinstance(rel, str) or not rel.strip():
        raise ValueError(f"empty {what} path")
    norm = rel.replace("\\", "/")
    if norm.startswith("/") or os.path.isabs(rel) or (len(norm) > 1 and norm[1] == ":"):
        raise ValueError(f"{what} path {rel!r} is absolute; paths must be relative to the root")
    if ".." in norm.split("/"):
        raise ValueError(f"{what} path {rel!r} escapes the root (contains '..')")
    root_r = Path(root).resolve()
    full = Path(root) / norm
    resolved = full.resolve()
    if resolved != root_r and root_r not in resolved.parents:
        raise ValueError(f"{what} path {rel!r} resolves outside the root {str(root_r)!r} (symlink?)")
    return full


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)
