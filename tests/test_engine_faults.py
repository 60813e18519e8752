"""Fault handling: a fixture directory with every bad input the engine must survive, resuming after
SIGKILL, stale temp files / torn journal lines, and a refused settings change on resume."""
from __future__ import annotations

import math
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_engine_standin import copy_utk, exported_onnx

from mtlguard.engine import protect_directory
from mtlguard.engine.imageio import TMP_MARK
from mtlguard.engine.journal import STATE_DIR

BOUND = math.ceil(8 / 255 * 255)


def _png_with_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width x height`` (a decompression bomb's header) and no pixel data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def fault_tree(utkface_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    good = copy_utk(utkface_root, root, 2)
    real = (root / good[0]).read_bytes()
    rng = np.random.default_rng(0)
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + rng.bytes(400))
    (root / "garbage.png").write_bytes(rng.bytes(300))
    (root / "truncated.jpg").write_bytes(real[: len(real) // 2])
    (root / "empty.jpg").write_bytes(b"")
    Image.fromarray(rng.random((20, 20), dtype=np.float32)).save(root / "float32.tif")  # mode F: unsupported
    Image.fromarray((rng.random((24, 30)) * 65535).astype(np.uint16)).save(root / "sixteen.png")  # 16-bit
    Image.fromarray(rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)).convert("CMYK").save(root / "cmyk.jpg", quality=95)
    rgba = rng.integers(0, 256, (24, 30, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(root / "rgba.png")
    base = Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8))  # 40 wide, 24 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    base.save(root / "exif_rotated.jpg", quality=95, exif=exif.tobytes())
    (root / "bomb.png").write_bytes(_png_with_header_only(40000, 40000))
    (root / "notes.txt").write_text("ignored")
    return root


EXPECTED_FAILURES = {
    "corrupt.jpg": "corrupt|cannot decode",
    "garbage.png": "cannot decode|cannot identify",
    "truncated.jpg": "cannot decode",
    "empty.jpg": "empty file",
    "float32.tif": "unsupported mode F",
    "sixteen.png": "unsupported mode I;16",
    "bomb.png": "decompression bomb",
}


def test_every_bad_input_is_reported_and_the_rest_is_protected(fault_tree, tmp_path):
    import re

    with pytest.warns(UserWarning, match="protection is weak"):
        rep = protect_directory(fault_tree, tmp_path / "out", model=exported_onnx(), no_labels=True, batch_size=3,
                                progress=False)
    failed = {f["file"]: f["reason"] for f in rep["failures"]}
    assert set(failed) == set(EXPECTED_FAILURES), failed
    for name, pattern in EXPECTED_FAILURES.items():
        assert re.search(pattern, failed[name]), (name, failed[name])
    assert rep["done"] == 5 and rep["failed"] == 7 and rep["ignored_non_images"] == 1  # 2 UTKFace + cmyk, rgba, exif
    out = tmp_path / "out"
    assert not any((out / Path(n).with_suffix(".png")).exists() for n in EXPECTED_FAILURES)
    notes = {(n["file"], n["note"]) for n in rep["notes"]}
    assert ("cmyk.jpg", "CMYK converted to RGB") in notes
    assert ("exif_rotated.jpg", "EXIF orientation 6 applied") in notes
    # RGBA: alpha kept byte-exact, colour perturbed within the bound
    src = np.asarray(Image.open(fault_tree / "rgba.png"))
    with Image.open(out / "rgba.png") as im:
        assert im.mode == "RGBA"
        got = np.asarray(im)
    assert np.array_equal(got[..., 3], src[..., 3])
    assert np.abs(got[..., :3].astype(int) - src[..., :3].astype(int)).max() <= BOUND
    # EXIF: written upright (24x40 stored + orientation 6 -> 40 high x 24 wide), no orientation tag
    with Image.open(out / "exif_rotated.png") as im:
        assert im.size == (24, 40) and im.getexif().get(0x0112) is None
        upright = np.asarray(Image.open(fault_tree / "exif_rotated.jpg").transpose(Image.Transpose.ROTATE_270))
        assert np.abs(np.asarray(im).astype(int) - upright.astype(int)).max() <= BOUND
    assert not list(out.rglob(f"*{TMP_MARK}*"))


def test_decompression_bomb_limit_is_configurable(fault_tree, tmp_path):
    rep = protect_directory(fault_tree, tmp_path / "out", passthrough=True, max_pixels=30 * 30, progress=False)
    bombs = {f["file"] for f in rep["failures"] if "decompression bomb" in f["reason"]}
    assert {"bomb.png"} | {p.name for p in fault_tree.glob("*.chip.jpg")} <= bombs  # 200x200 > 900 pixels
    assert "rgba.png" not in bombs  # 24x30 = 720 pixels is under the limit


def _run_cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "mtlguard.engine.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, **kw)


def test_resume_after_sigkill_finishes_without_duplicates_or_partials(utkface_root, tmp_path):
    src = tmp_path / "in"
    copy_utk(utkface_root, src, 40)
    copy_utk(utkface_root, src / "sub", 12, offset=5)
    total = len(list(src.rglob("*.jpg")))
    out = tmp_path / "out"
    args = ["protect", "--model", str(exported_onnx()), "--input", str(src), "--output", str(out),
            "--dataset", "utkface", "--batch-size", "2", "--workers", "1", "--png-compression", "9", "--no-progress"]
    proc = _run_cli(args)
    deadline = time.time() + 90
    while time.time() < deadline and len(list(out.rglob("*.png"))) < 6 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = len(list(out.rglob("*.png")))
    assert proc.returncode == -signal.SIGKILL and 6 <= partial < total, (proc.returncode, partial, total)
    # what a crash can leave behind: a temp file and a torn journal line
    (out / f".{sorted(src.glob('*.jpg'))[-1].with_suffix('.png').name}{TMP_MARK}99999-1").write_bytes(b"partial")
    with open(out / STATE_DIR / "journal.jsonl", "a") as f:
        f.write('{"file": "torn')
    rep = protect_directory(src, out, model=exported_onnx(), dataset="utkface", batch_size=8, png_compression=9,
                            progress=False)
    assert rep["failed"] == 0 and rep["done"] + rep["skipped"] == total and rep["skipped"] >= 1
    assert any(TMP_MARK in p for p in rep["partials_removed"])
    outs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and STATE_DIR not in p.parts)
    assert outs == sorted([p.relative_to(src).with_suffix(".png").as_posix() for p in src.rglob("*.jpg")]
                          + ["labels.csv", "tasks.json"])  # the labels the job used, for FolderDataset
    # identical to an uninterrupted run
    ref = tmp_path / "ref"
    protect_directory(src, ref, model=exported_onnx(), dataset="utkface", batch_size=8, png_compression=9, progress=False)
    for rel in outs:
        assert (out / rel).read_bytes() == (ref / rel).read_bytes(), rel
    # a second rerun does nothing
    again = protect_directory(src, out, model=exported_onnx(), dataset="utkface", png_compression=9, progress=False)
    assert again["done"] == 0 and again["skipped"] == total


def test_resume_refuses_different_settings(utkface_root, tmp_path):
    src = tmp_path / "in"
    copy_utk(utkface_root, src, 2)
    protect_directory(src, tmp_path / "out", model=exported_onnx(), dataset="utkface", progress=False)
    with pytest.raises(ValueError, match="different settings"):
        protect_directory(src, tmp_path / "out", model=exported_onnx(), dataset="utkface", format="jpeg",
                          progress=False)


def test_output_without_journal_line_is_regenerated(utkface_root, tmp_path):
    src = tmp_path / "in"
    names = copy_utk(utkface_root, src, 3)
    out = tmp_path / "out"
    protect_directory(src, out, model=exported_onnx(), dataset="utkface", progress=False)
    target = out / Path(names[0]).with_suffix(".png")
    good = target.read_bytes()
    target.write_bytes(b"not a finished output")  # renamed into place, done line lost (its started line remains)
    lines = (out / STATE_DIR / "journal.jsonl").read_text().splitlines()
    (out / STATE_DIR / "journal.jsonl").write_text("\n".join(l for l in lines if names[0] not in l) + "\n")
    rep = protect_directory(src, out, model=exported_onnx(), dataset="utkface", progress=False)
    assert rep["done"] == 1 and rep["skipped"] == 2 and target.read_bytes() == good
