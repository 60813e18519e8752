"""Phone-size photos in the engine (issue 15): batches bounded by a pixel budget (in-order admission, no
deadlock, the same output bytes as an unbounded run), the fast lossless PNG writer for large images, and the
PSNR/SSIM measurements in bounded memory with unchanged values."""
from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from mtlguard.engine import imageio, local_executor, quality
from mtlguard.engine.options import EngineOptions
from mtlguard.engine.work import PixelBudget, header_pixels


# --------------------------------------------------------------------------------------------- PixelBudget

def test_budget_admits_in_ticket_order_and_a_big_image_alone():
    b = PixelBudget(100)
    order = []

    def job(ticket, px, hold):
        b.acquire(ticket, px)
        order.append(ticket)
        time.sleep(hold)
        b.release(px)

    tickets = [b.ticket() for _ in range(4)]
    pxs = [60, 60, 500, 10]  # 500 > the whole budget: admitted alone
    threads = [threading.Thread(target=job, args=(t, p, 0.05)) for t, p in zip(tickets[::-1], pxs[::-1])]
    for th in threads:  # started in reverse order: admission still follows the tickets
        th.start()
        time.sleep(0.01)
    for th in threads:
        th.join(10)
    assert order == [0, 1, 2, 3]
    assert b.used == 0 and b.peak == 500


def test_budget_blocked_flag_and_close():
    b = PixelBudget(10)
    t0, t1 = b.ticket(), b.ticket()
    b.acquire(t0, 8)
    th = threading.Thread(target=b.acquire, args=(t1, 5))
    th.start()
    time.sleep(0.1)
    assert b.blocked and th.is_alive()
    b.release(8)
    th.join(5)
    assert not th.is_alive() and b.used == 5 and not b.blocked
    t2 = b.ticket()
    th = threading.Thread(target=b.acquire, args=(t2 + 1, 1))  # a ticket whose predecessor never comes
    th.start()
    b.close()
    th.join(5)
    assert not th.is_alive()


def test_header_pixels():
    for fmt in ("PNG", "JPEG", "WEBP"):
        buf = io.BytesIO()
        Image.new("RGB", (37, 21)).save(buf, format=fmt)
        assert header_pixels(buf.getvalue()) == 37 * 21
    assert header_pixels(b"not an image") == 0


def test_pixel_budget_option_is_validated():
    assert EngineOptions().validated().pixel_budget > 0
    for bad in (0, -1, float("inf"), "12", True):
        with pytest.raises(ValueError, match="pixel_budget"):
            EngineOptions(pixel_budget=bad).validated()


# --------------------------------------------------------------------------------------------- engine runs

def _images(root, sizes, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i, (w, h) in enumerate(sizes):
        small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))
        Image.fromarray(img).save(root / f"{20 + i}_{i % 2}_{i % 5}_2017011{i:010d}.jpg.chip.jpg", quality=92)


def _run(inp, out, **kw):
    from mtlguard.engine import protect_directory

    rep = protect_directory(inp, out, dataset="utkface", progress=False, workers=2, **kw)
    assert rep["done"] == len(list(inp.iterdir())), rep["failures"][:3]
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


class _Recording(PixelBudget):
    instances: list = []

    def __init__(self, limit):
        super().__init__(limit)
        _Recording.instances.append(self)


def test_tiny_budget_same_bytes_and_never_exceeded(tmp_path, monkeypatch):
    """A budget of ~2 images with mixed sizes (one larger than the whole budget) gives the same files as an
    unbounded run, and the pixels held never exceed the budget except for that image alone."""
    sizes = [(200, 200)] * 6 + [(640, 480), (200, 200), (150, 260)] + [(200, 200)] * 5
    _images(tmp_path / "in", sizes)
    ref = _run(tmp_path / "in", tmp_path / "ref", pixel_budget=1000.0)
    monkeypatch.setattr(local_executor, "PixelBudget", _Recording)
    _Recording.instances = []
    got = _run(tmp_path / "in", tmp_path / "small", pixel_budget=0.09, batch_size=4)
    assert got == ref
    (budget,) = _Recording.instances
    assert budget.limit == 90_000 and budget.used == 0
    assert budget.peak <= max(budget.limit, 640 * 480)


def test_budget_with_corrupt_files_does_not_leak(tmp_path):
    _images(tmp_path / "in", [(200, 200)] * 5)
    (tmp_path / "in" / "30_1_1_20170110000000000.jpg.chip.jpg").write_bytes(b"\xff\xd8 truncated")
    from mtlguard.engine import protect_directory

    rep = protect_directory(tmp_path / "in", tmp_path / "out", dataset="utkface", progress=False, pixel_budget=0.05,
                            batch_size=2)
    assert rep["done"] == 5 and len(rep["failures"]) == 1


# --------------------------------------------------------------------------------------------- encoder / metrics

def _check_png_chunks(data: bytes) -> list[bytes]:
    """Every chunk's CRC is right (Pillow does not check IDAT's); returns the chunk types."""
    import struct
    import zlib

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    kinds, i = [], 8
    while i < len(data):
        (n,) = struct.unpack(">I", data[i: i + 4])
        kind, body = data[i + 4: i + 8], data[i + 8: i + 8 + n]
        (crc,) = struct.unpack(">I", data[i + 8 + n: i + 12 + n])
        assert crc == zlib.crc32(body, zlib.crc32(kind)), kind
        kinds.append(kind)
        i += 12 + n
    return kinds


@pytest.mark.parametrize("channels,alpha", [(3, False), (3, True), (1, False), (1, True)])
def test_fast_png_is_lossless(channels, alpha):
    rng = np.random.default_rng(channels)
    h, w = 300, 517
    base = rng.integers(0, 256, (8, 8, channels), dtype=np.uint8)
    img = np.asarray(Image.fromarray(base[:, :, 0] if channels == 1 else base).resize((w, h)))
    img = img.reshape(h, w, channels)
    a = rng.integers(0, 256, (h, w), dtype=np.uint8) if alpha else None
    for level, strategy in ((1, "rle"), (0, "rle"), (6, "default")):
        data = imageio.encode_png_fast(img, a, level, imageio.PNG_STRATEGIES[strategy])
        assert _check_png_chunks(data) == [b"IHDR", b"IDAT", b"IEND"]
        back = np.asarray(Image.open(io.BytesIO(data)))
        back = back.reshape(h, w, -1)
        want = img if a is None else np.dstack([img, a])
        assert np.array_equal(back, want)


def test_encode_uses_the_fast_writer_for_large_images_only():
    rng = np.random.default_rng(1)
    big = rng.integers(0, 256, (1024, 1100, 3), dtype=np.uint8)
    small = big[:200, :200]
    data = imageio.encode(big, "png")
    assert data == imageio.encode_png_fast(big, None, imageio.DEFAULT_PNG_COMPRESSION, imageio.PNG_STRATEGIES["rle"])
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), big)
    buf = io.BytesIO()
    Image.fromarray(small).save(buf, format="PNG", compress_level=1, compress_type=imageio.PNG_STRATEGIES["rle"])
    assert imageio.encode(small, "png") == buf.getvalue()  # small images: Pillow, bytes as before
    # metadata to embed: Pillow, whatever the size
    meta = imageio.encode(big, "png", icc=b"\0" * 200)
    assert meta != data and np.array_equal(np.asarray(Image.open(io.BytesIO(meta))), big)


def _psnr_old(a, b):
    d = (np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).ravel().astype(np.int64)
    mse = float(np.dot(d, d)) / max(1, d.size)
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


@pytest.mark.parametrize("shape", [(200, 200, 3), (1500, 1100, 3), (777, 1333, 1), (2100, 600, 3)])
def test_bounded_memory_metrics_equal_the_full_size_formulas(shape):
    rng = np.random.default_rng(sum(shape))
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    b = np.clip(a.astype(np.int16) + rng.integers(-3, 4, shape), 0, 255).astype(np.uint8)
    assert imageio.psnr(a, b) == _psnr_old(a, b)
    assert imageio.psnr(a, a) == float("inf")
    f = max(1, round(min(shape[0], shape[1]) / 256))
    assert np.array_equal(quality._luma_reduced(a, f), quality._reduce(quality.luma(a), f))
