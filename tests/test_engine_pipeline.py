"""mtlguard-engine end to end on real UTKFace images: the L-inf bound on every written pixel,
labels (UTKFace names, labels.csv, none), the tree mirror, safety rules, JPEG reporting,
passthrough, backends and the CLI's exit codes."""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from test_engine_standin import copy_utk, exported_onnx, saved_checkpoint, shared_generator

from mtlguard.engine import protect_directory
from mtlguard.engine.cli import main as engine_main
from mtlguard.engine.journal import STATE_DIR
from mtlguard.engine.perturb import apply_delta, model_input

BOUND = math.ceil(8 / 255 * 255)


def _tree_digest(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def utk_tree(utkface_root, tmp_path_factory):
    """12 real UTKFace images, 4 of them in a nested subdirectory, plus a non-image file."""
    root = tmp_path_factory.mktemp("utk_in")
    copy_utk(utkface_root, root, 8)
    copy_utk(utkface_root, root / "nested" / "deeper", 4, offset=3)
    (root / "README.txt").write_text("not an image")
    return root


def _read(p: Path) -> np.ndarray:
    with Image.open(p) as im:
        return np.asarray(im.convert("RGB"))


def test_protect_utkface_tree_bound_mirror_and_report(utk_tree, tmp_path):
    before = _tree_digest(utk_tree)
    out = tmp_path / "out"
    rep = protect_directory(utk_tree, out, model=exported_onnx(), dataset="utkface", batch_size=5, workers=2,
                            progress=False)
    assert _tree_digest(utk_tree) == before, "the input tree was modified"
    assert rep["done"] == 12 and rep["failed"] == 0 and rep["skipped"] == 0 and rep["ignored_non_images"] == 1
    assert rep["backend"] == "onnxruntime" and rep["device"] == "cpu" and rep["images_per_s"] > 0
    assert set(rep["stage_seconds"]) == {"decode", "inference", "encode_write"}
    assert rep["bound_uint8"] == BOUND and 0 < rep["max_abs_delta_written_uint8"] <= BOUND
    srcs = sorted(p.relative_to(utk_tree) for p in utk_tree.rglob("*.jpg"))
    outs = sorted(p.relative_to(out) for p in out.rglob("*.png"))
    assert outs == sorted(s.with_suffix(".png") for s in srcs)  # mirrored tree, png by default
    worst = 0
    for s in srcs:
        orig, prot = _read(utk_tree / s), _read(out / s.with_suffix(".png"))
        assert prot.shape == orig.shape  # native size (200x200), not the generator's 32x32
        worst = max(worst, int(np.abs(prot.astype(int) - orig.astype(int)).max()))
    assert 0 < worst <= BOUND and worst == rep["max_abs_delta_written_uint8"]
    saved = json.loads((out / STATE_DIR / "report.json").read_text())
    assert saved["done"] == 12


def test_written_pixels_equal_the_generator_delta_applied_at_native_size(utk_tree, tmp_path):
    """The engine's output = torch generator's delta on the resized input, upsampled and added."""
    out = tmp_path / "out"
    protect_directory(utk_tree, out, model=exported_onnx(), dataset="utkface", batch_size=4, progress=False)
    from mtlguard.data.utkface import age_to_bin, parse_utkface_name

    name = sorted(p.name for p in utk_tree.glob("*.jpg"))[0]
    orig = _read(utk_tree / name)
    a, g, r = parse_utkface_name(name)
    x = torch.from_numpy(model_input(orig, (32, 32)))[None]
    with torch.no_grad():
        _, d = shared_generator()(x, torch.tensor([[age_to_bin(a), g, r]]))
    expect, _ = apply_delta(orig, d[0].numpy(), 8 / 255)
    got = _read(out / Path(name).with_suffix(".png"))
    assert np.abs(got.astype(int) - expect.astype(int)).max() <= 1  # onnxruntime vs torch rounding


def test_labels_change_the_perturbation_and_none_warns(utk_tree, tmp_path):
    a = protect_directory(utk_tree, tmp_path / "a", model=exported_onnx(), dataset="utkface", progress=False)
    with pytest.warns(UserWarning, match="protection is weak"):
        b = protect_directory(utk_tree, tmp_path / "b", model=exported_onnx(), no_labels=True, progress=False)
    assert a["done"] == b["done"] == 12 and b["labels"]["source"] == "none"
    name = sorted(p.name for p in utk_tree.glob("*.jpg"))[0]
    pa, pb = _read(tmp_path / "a" / Path(name).with_suffix(".png")), _read(tmp_path / "b" / Path(name).with_suffix(".png"))
    assert np.abs(pa.astype(int) - pb.astype(int)).max() > 0


def test_labels_csv_indices_names_and_missing_rows(utk_tree, tmp_path):
    names = sorted(p.name for p in utk_tree.glob("*.jpg"))
    csv = tmp_path / "labels.csv"
    csv.write_text("path,age,gender,race\n"
                   f"{names[0]},3,female,Asian\n"
                   f"{names[1]},,-1,0\n"
                   f"nested/deeper/{sorted(p.name for p in (utk_tree / 'nested/deeper').glob('*.jpg'))[0]},20-29,male,\n")
    rep = protect_directory(utk_tree, tmp_path / "out", model=exported_onnx(), labels=csv, progress=False)
    lab = rep["labels"]
    assert rep["done"] == 12 and lab["source"] == "csv" and lab["images_without_labels"] == 9
    assert len(lab["images_without_labels_first"]) == 5 and lab["rows_without_images"] == 0
    assert lab["unprotected_tasks"] == []
    from mtlguard.engine.labels import CsvLabels
    from mtlguard.export import read_onnx_facts

    src = CsvLabels(csv, utk_tree, read_onnx_facts(exported_onnx()).tasks)
    assert src(names[0]).tolist() == [3, 1, 2] and src(names[1]).tolist() == [-1, -1, 0]


@pytest.mark.parametrize("row,match", [
    ("../escape.jpg,1,0,0", "escapes the root"),
    ("/etc/passwd,1,0,0", "absolute"),
    ("x.jpg,99,0,0", "row 2, column 'age'.*out of range"),
    ("x.jpg,1,robot,0", "row 2, column 'gender'.*'robot'"),
])
def test_labels_csv_rejects_bad_rows(utk_tree, tmp_path, row, match):
    csv = tmp_path / "labels.csv"
    csv.write_text("path,age,gender,race\n" + row + "\n")
    with pytest.raises(ValueError, match=match):
        protect_directory(utk_tree, tmp_path / "out", model=exported_onnx(), labels=csv, progress=False)
    assert not (tmp_path / "out").exists()


def test_labels_csv_rejects_symlink_escaping_root(tmp_path):
    from mtlguard.engine.labels import CsvLabels
    from mtlguard.export import read_onnx_facts

    root = tmp_path / "in"
    root.mkdir()
    (tmp_path / "secret.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "secret.jpg", root / "link.jpg")
    csv = tmp_path / "labels.csv"
    csv.write_text("path,age\nlink.jpg,1\n")
    with pytest.raises(ValueError, match="outside the root"):
        CsvLabels(csv, root, read_onnx_facts(exported_onnx()).tasks)


def test_never_writes_inside_the_input_tree(utk_tree, tmp_path):
    before = _tree_digest(utk_tree)
    for bad in (utk_tree, utk_tree / "out", utk_tree / "nested" / "o"):
        with pytest.raises(ValueError, match="inside the input tree"):
            protect_directory(utk_tree, bad, model=exported_onnx(), dataset="utkface", progress=False)
    with pytest.raises(ValueError, match="contains the input tree"):
        protect_directory(utk_tree, utk_tree.parent, model=exported_onnx(), dataset="utkface", progress=False)
    assert _tree_digest(utk_tree) == before
    assert engine_main(["protect", "--model", str(exported_onnx()), "--input", str(utk_tree), "--output",
                        str(utk_tree / "x"), "--no-progress", "--no-labels"]) == 2


def test_jpeg_output_warns_and_reports_measured_error(utk_tree, tmp_path):
    with pytest.warns(UserWarning, match="JPEG output re-encodes"):
        rep = protect_directory(utk_tree, tmp_path / "out", model=exported_onnx(), dataset="utkface",
                                format="jpeg", quality=90, progress=False)
    j = rep["jpeg"]
    assert j["quality"] == 90 and j["max_linf_vs_intended_uint8"] > 0 and 25 < j["min_psnr_db"] <= j["mean_psnr_db"]
    outs = sorted(p.name for p in (tmp_path / "out").glob("*.jpg"))
    assert len(outs) == 8  # UTKFace names keep their .jpg suffix


def test_passthrough_is_decode_encode_only(utk_tree, tmp_path):
    rep = protect_directory(utk_tree, tmp_path / "out", passthrough=True, progress=False)
    assert rep["mode"] == "passthrough" and rep["done"] == 12 and rep["max_abs_delta_written_uint8"] == 0
    name = sorted(p.name for p in utk_tree.glob("*.jpg"))[0]
    assert np.array_equal(_read(tmp_path / "out" / Path(name).with_suffix(".png")), _read(utk_tree / name))


def test_torch_backend_matches_onnxruntime(utk_tree, tmp_path):
    a = protect_directory(utk_tree, tmp_path / "ort", model=exported_onnx(), dataset="utkface", progress=False)
    b = protect_directory(utk_tree, tmp_path / "torch", model=saved_checkpoint(), backend="torch",
                          dataset="utkface", progress=False)
    assert b["backend"] == "torch" and a["done"] == b["done"] == 12
    for p in (tmp_path / "ort").rglob("*.png"):
        q = tmp_path / "torch" / p.relative_to(tmp_path / "ort")
        assert np.abs(_read(p).astype(int) - _read(q).astype(int)).max() <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA GPU not available on this machine")
def test_torch_backend_on_cuda(utk_tree, tmp_path):
    rep = protect_directory(utk_tree, tmp_path / "out", model=saved_checkpoint(), backend="torch", device="cuda",
                            dataset="utkface", progress=False)
    assert rep["device"] == "cuda" and rep["done"] == 12 and rep["max_abs_delta_written_uint8"] <= BOUND


def test_cli_protect_json_report_and_exit_codes(utk_tree, tmp_path, capsys):
    bad = tmp_path / "in"
    bad.mkdir()
    copy = sorted(utk_tree.glob("*.jpg"))[0]
    (bad / copy.name).write_bytes(copy.read_bytes())
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    args = ["protect", "--model", str(exported_onnx()), "--input", str(bad), "--dataset", "utkface", "--no-progress"]
    assert engine_main(args + ["--output", str(tmp_path / "o1")]) == 1
    captured = capsys.readouterr()
    rep = json.loads(captured.out)
    assert rep["done"] == 1 and rep["failed"] == 1 and rep["failures"][0]["file"] == "broken.png"
    assert "broken.png" in captured.err
    assert engine_main(args + ["--output", str(tmp_path / "o2"), "--allow-failures"]) == 0


def test_default_model_protects_the_bundled_samples(tmp_path, capsys):
    """The README's first command: no --model -> the bundled default generator."""
    import mtlguard
    from mtlguard.engine import default_model

    if not default_model().is_file():
        pytest.skip(f"bundled default generator missing: {default_model()}")
    samples = Path(mtlguard.__file__).parent / "assets" / "samples"
    out = tmp_path / "protected"
    assert engine_main(["protect", "--input", str(samples), "--output", str(out),
                        "--labels", str(samples / "labels.csv"), "--no-progress"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["done"] == 4 and rep["failed"] == 0 and rep["labels"]["images_without_labels"] == 0
    assert rep["model"] == str(default_model())
    for src in [samples / "grace_hopper.jpg", *sorted((samples / "rendered").rglob("*.png"))]:
        rel = src.relative_to(samples).with_suffix(".png")
        orig, prot = _read(src), _read(out / rel)
        assert prot.shape == orig.shape
        assert np.abs(prot.astype(int) - orig.astype(int)).max() <= rep["bound_uint8"]
