"""Output formats through the real engine on real UTKFace images: lossless WebP (decoded pixels = the
protected pixels), ``--format same``, ``--keep-metadata`` (EXIF artist / copyright / sub-IFD tags and the
ICC profile survive; the orientation is applied and dropped) and the run's PSNR / SSIM."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from test_engine_standin import copy_utk, exported_onnx, tree_digest

from mtlguard.engine import protect_directory
from mtlguard.engine.cli import main as engine_main
from mtlguard.engine.quality import psnr, ssim

ARTIST, COPYRIGHT, DATETIME_ORIGINAL, EXIF_IFD, ORIENTATION = 0x013B, 0x8298, 0x9003, 0x8769, 0x0112


def _pixels(p: Path) -> np.ndarray:
    with Image.open(p) as im:
        return np.asarray(im)


@pytest.fixture(scope="module")
def mixed(utkface_root, tmp_path_factory):
    """3 UTKFace JPEGs, an RGBA PNG and a gray PNG."""
    root = tmp_path_factory.mktemp("mixed")
    copy_utk(utkface_root, root, 3)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (24, 30, 4), dtype=np.uint8)).save(root / "rgba.png")
    Image.fromarray(rng.integers(0, 256, (33, 45), dtype=np.uint8)).save(root / "gray.png")
    return root


def test_webp_is_lossless_and_equals_the_png_pixels(mixed, tmp_path, capsys):
    before = tree_digest(mixed)
    for fmt in ("png", "webp"):
        assert engine_main(["protect", "--model", str(exported_onnx()), "--input", str(mixed), "--output",
                            str(tmp_path / fmt), "--no-labels", "--format", fmt, "--no-progress"]) == 0
    rep = json.loads(capsys.readouterr().out.split("\n}\n")[-2] + "\n}")
    assert rep["format"] == "webp" and rep["done"] == 5 and "jpeg" not in rep and rep["png_compression"] is None
    webps = sorted((tmp_path / "webp").glob("*.webp"))
    assert len(webps) == 5
    for w in webps:
        with Image.open(w) as im:
            assert im.format == "WEBP" and im.info.get("lossless", True)
        png = _pixels(tmp_path / "png" / w.with_suffix(".png").name)
        got = _pixels(w)
        assert got.shape == png.shape and np.array_equal(got, png), w.name  # = the written protected pixels
    assert _pixels(tmp_path / "webp" / "rgba.webp").shape[2] == 4  # alpha kept
    assert tree_digest(mixed) == before


def test_format_same_keeps_jpeg_and_writes_the_rest_as_png(mixed, tmp_path):
    with pytest.warns(UserWarning, match="protection is weak"):
        rep = protect_directory(mixed, tmp_path / "o", model=exported_onnx(), no_labels=True, format="same",
                                progress=False)
    outs = sorted(p.name for p in (tmp_path / "o").iterdir() if p.is_file())
    jpgs = sorted(p.name for p in mixed.glob("*.jpg"))
    assert outs == sorted(jpgs + ["gray.png", "rgba.png", "labels.csv", "tasks.json"])
    assert rep["jpeg"]["quality"] == 95 and rep["jpeg"]["min_psnr_db"] > 30


@pytest.fixture(scope="module")
def tagged(utkface_root, tmp_path_factory):
    """Two UTKFace photos re-saved with EXIF (artist, copyright, DateTimeOriginal) and an sRGB ICC profile;
    one also carries orientation 6 (rotate on display)."""
    root = tmp_path_factory.mktemp("tagged")
    names = copy_utk(utkface_root, root / "tmp", 2)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for i, name in enumerate(names):
        with Image.open(root / "tmp" / name) as im:
            img = im.crop((0, 0, 200, 120)).copy()
        exif = Image.Exif()
        exif[ARTIST], exif[COPYRIGHT] = f"Jane Doe {i}", f"(c) 2024 Jane Doe {i}"
        exif.get_ifd(EXIF_IFD)[DATETIME_ORIGINAL] = "2024:01:02 03:04:05"
        if i == 1:
            exif[ORIENTATION] = 6
        img.save(root / f"photo{i}.jpg", quality=95, exif=exif.tobytes(), icc_profile=icc)
    for p in (root / "tmp").iterdir():
        p.unlink()
    (root / "tmp").rmdir()
    return root, icc


@pytest.mark.parametrize("fmt,suffix", [("png", ".png"), ("webp", ".webp"), ("jpeg", ".jpg")])
def test_keep_metadata_keeps_exif_and_icc_and_applies_orientation(tagged, tmp_path, fmt, suffix):
    root, icc = tagged
    kw = dict(model=exported_onnx(), no_labels=True, format=fmt, progress=False)
    with pytest.warns(UserWarning):
        protect_directory(root, tmp_path / "keep", keep_metadata=True, **kw)
        protect_directory(root, tmp_path / "drop", **kw)
    for i in range(2):
        with Image.open(tmp_path / "keep" / f"photo{i}{suffix}") as im:
            exif = im.getexif()
            assert exif.get(ARTIST) == f"Jane Doe {i}" and exif.get(COPYRIGHT) == f"(c) 2024 Jane Doe {i}"
            assert exif.get_ifd(EXIF_IFD).get(DATETIME_ORIGINAL) == "2024:01:02 03:04:05"
            assert ORIENTATION not in exif and im.info.get("icc_profile") == icc
            assert im.size == ((120, 200) if i == 1 else (200, 120))  # orientation 6 applied: upright
            kept = np.asarray(im)
        with Image.open(tmp_path / "drop" / f"photo{i}{suffix}") as im:
            assert len(im.getexif()) == 0 and not im.info.get("icc_profile")  # dropped by default
            dropped = np.asarray(im)
        if fmt != "jpeg":  # lossless: the metadata does not change a pixel
            assert np.array_equal(kept, dropped)


def _naive_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Direct 2-D Gaussian-window SSIM on BT.601 luma (float64), no downsampling: an independent reference."""
    def luma(x):
        x = x.astype(np.float64)
        return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114

    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    x, y = luma(a), luma(b)
    h, wd = x.shape[0] - 10, x.shape[1] - 10

    def filt(m):
        return sum(w[i, j] * m[i:i + h, j:j + wd] for i in range(11) for j in range(11))

    mx, my = filt(x), filt(y)
    sxx, syy, sxy = filt(x * x) - mx ** 2, filt(y * y) - my ** 2, filt(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    return float(np.mean((2 * mx * my + c1) * (2 * sxy + c2) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))))


def test_ssim_matches_a_direct_implementation():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (60, 70, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    assert ssim(a, b) == pytest.approx(_naive_ssim(a, b), abs=1e-4) and ssim(a, b) == pytest.approx(ssim(b, a), abs=1e-6)
    big = np.kron(a, np.ones((8, 8, 1), np.uint8))  # 480x560: reduced 2x (min side / 256) first, as ssim.m does
    big2 = np.kron(b, np.ones((8, 8, 1), np.uint8))
    assert ssim(big, big2) == pytest.approx(_naive_ssim(big[::2, ::2], big2[::2, ::2]), abs=1e-4)
    assert psnr(a, a) == math.inf and psnr(a, b) == pytest.approx(
        10 * np.log10(255 ** 2 / np.mean((a.astype(float) - b) ** 2)), abs=1e-9)


def test_report_gives_psnr_and_ssim_of_the_written_images(utkface_root, tmp_path):
    src = tmp_path / "in"
    names = copy_utk(utkface_root, src, 4)
    rep = protect_directory(src, tmp_path / "o", model=exported_onnx(), dataset="utkface", progress=False)
    ps, ss = [], []
    for n in names:
        with Image.open(src / n) as im:
            orig = np.asarray(im.convert("RGB"))
        prot = _pixels(tmp_path / "o" / Path(n).with_suffix(".png"))
        ps.append(10 * np.log10(255 ** 2 / np.mean((orig.astype(float) - prot) ** 2)))
        ss.append(_naive_ssim(orig, prot))
    q = rep["quality"]
    assert q["images"] == 4 and q["identical_images"] == 0
    assert q["psnr_db"]["mean"] == pytest.approx(np.mean(ps), abs=2e-3) and q["psnr_db"]["min"] == pytest.approx(min(ps), abs=2e-3)
    assert q["ssim"]["mean"] == pytest.approx(np.mean(ss), abs=1e-4) and q["ssim"]["min"] == pytest.approx(min(ss), abs=1e-4)
    assert 25 < q["psnr_db"]["min"] and 0.5 < q["ssim"]["min"] < 1.0
    off = protect_directory(src, tmp_path / "o2", model=exported_onnx(), dataset="utkface", metrics=False, progress=False)
    assert off["quality"] is None


def test_jpeg_quality_metrics_use_the_decoded_file(utkface_root, tmp_path):
    src = tmp_path / "in"
    names = copy_utk(utkface_root, src, 2)
    with pytest.warns(UserWarning, match="JPEG output"):
        rep = protect_directory(src, tmp_path / "o", model=exported_onnx(), dataset="utkface", format="jpeg",
                                quality=80, progress=False)
    ps = []
    for n in names:
        with Image.open(src / n) as a, Image.open(tmp_path / "o" / n) as b:
            ps.append(psnr(np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB"))))
    assert rep["quality"]["psnr_db"]["min"] == pytest.approx(min(ps), abs=2e-3)
    data = io.BytesIO((tmp_path / "o" / names[0]).read_bytes())
    assert Image.open(data).format == "JPEG"
