"""No silent failure (issue 13): each bad input goes through the real ``mtlguard-engine`` and must give
exit status 2 with ONE line on stderr naming the file and the problem (no traceback), leaving the input
and every unrelated output file unchanged -- or, where the run can go on safely, keep going and say so
(colour mode, unlabelled images, label rows for missing files)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_engine_standin import (copy_utk, engine_cli, exported_onnx, one_channel_onnx, one_error_line, tree_digest,
                                 utk_labels, write_labels_csv)

from mtlguard.engine import protect_directory, validate_labels
from mtlguard.engine.journal import STATE_DIR


@pytest.fixture(scope="module")
def photos(utkface_root, tmp_path_factory):
    """4 real UTKFace photos (RGB JPEG), 2 more in a subfolder, and their labels.csv beside the folder."""
    base = tmp_path_factory.mktemp("photos")
    src = base / "in"
    names = copy_utk(utkface_root, src, 4) + [f"sub/{n}" for n in copy_utk(utkface_root, src / "sub", 2, offset=4)]
    write_labels_csv(base / "labels.csv", names)
    return src, base / "labels.csv", names


def _read(p: Path) -> np.ndarray:
    with Image.open(p) as im:
        return np.asarray(im)


# --- colour mode ---------------------------------------------------------------------------------------
def test_one_channel_generator_keeps_rgb_photos_rgb_and_says_so(photos, tmp_path, capsys):
    src, csv, names = photos
    (tmp_path / "in").mkdir()
    for n in names[:3]:
        shutil.copyfile(src / n, tmp_path / "in" / Path(n).name)
    gray = np.random.default_rng(0).integers(0, 256, (30, 40), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "in" / "gray.png")
    before = tree_digest(tmp_path / "in")
    rc, out, err = engine_cli(capsys, "--model", one_channel_onnx(), "--input", tmp_path / "in", "--output", tmp_path / "o",
                        "--data", "utkface", "--allow-unprotected")
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["done"] == 4 and rep["color"] == {"generator_channels": 1, "luma_delta_images": 3}
    assert any("luma delta" in n and "colour mode is kept" in n for n in rep["run_notes"])
    assert "note: the generator has 1 channel" in err
    for n in names[:3]:
        orig = _read(tmp_path / "in" / Path(n).name).astype(int)
        with Image.open(tmp_path / "o" / Path(n).with_suffix(".png").name) as im:
            assert im.mode == "RGB"  # not silently converted to grayscale
            prot = np.asarray(im).astype(int)
        d = prot - orig
        assert 0 < np.abs(d).max() <= rep["bound_uint8"]
        inside = ((orig > 8) & (orig < 247)).all(axis=2)  # no clipping at 0 / 255: the same delta on every channel
        assert (d[inside][:, 0] == d[inside][:, 1]).all() and (d[inside][:, 1] == d[inside][:, 2]).all()
    with Image.open(tmp_path / "o" / "gray.png") as im:
        assert im.mode == "L"  # a gray image stays gray
    assert tree_digest(tmp_path / "in") == before


def test_gray_image_with_rgb_generator_is_noted(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 40), dtype=np.uint8)).save(tmp_path / "in" / "g.png")
    rc, out, _ = engine_cli(capsys, "--model", exported_onnx(), "--input", tmp_path / "in", "--output", tmp_path / "o",
                      "--no-labels")
    assert rc == 0
    notes = json.loads(out)["notes"]
    assert notes == [{"file": "g.png", "note": "grayscale image written as RGB (the generator has 3 channels)"}]


# --- labels ----------------------------------------------------------------------------------------------
def test_misspelled_task_column_is_refused_unless_allowed(photos, tmp_path, capsys):
    src, _, names = photos
    csv = write_labels_csv(tmp_path / "labels.csv", names, header="path,age,gendr,race")
    before = tree_digest(src)
    rc, _, err = engine_cli(capsys, "--model", exported_onnx(), "--input", src, "--output", tmp_path / "o", "--labels", csv)
    one_error_line(rc, err, str(csv), "['gender']", "did you mean column 'gendr'", "--allow-unprotected")
    assert not (tmp_path / "o").exists() and tree_digest(src) == before

    rc, out, err = engine_cli(capsys, "--model", exported_onnx(), "--input", src, "--output", tmp_path / "o", "--labels", csv,
                        "--allow-unprotected")
    assert rc == 0, err
    rep = json.loads(out)
    assert rep["labels"]["unprotected_tasks"] == ["gender"] and "unprotected task(s): gender" in err
    rows = (tmp_path / "o" / "labels.csv").read_text().splitlines()
    assert rows[0] == "file,age,gender,race" and all(r.split(",")[2] == "-1" for r in rows[1:])


def test_unlabelled_images_and_rows_for_missing_files_are_listed(photos, tmp_path, capsys):
    src, _, names = photos
    ghosts = [f"ghost{i}.jpg,1,0,0" for i in range(7)]
    csv = write_labels_csv(tmp_path / "labels.csv", names[:3], extra=ghosts)  # 3 of 6 images have a row
    rc, out, err = engine_cli(capsys, "--model", exported_onnx(), "--input", src, "--output", tmp_path / "o", "--labels", csv)
    assert rc == 0, err
    lab = json.loads(out)["labels"]
    assert lab["images_without_labels"] == 3 and lab["images_without_labels_first"] == sorted(names[3:])
    assert lab["rows_without_images"] == 7 and lab["rows_without_images_first"] == [f"ghost{i}.jpg" for i in range(5)]
    assert "3 image(s) without a labels.csv row (unprotected): " + ", ".join(sorted(names[3:])) in err
    assert "7 labels.csv row(s) naming files that are not in --input: ghost0.jpg" in err and "ghost4.jpg, ..." in err


@pytest.mark.parametrize("cell,needle", [("12", "class index 12 out of range [0, 9)"),
                                         ("-5", "class index -5 out of range [0, 9)")])
def test_out_of_range_label_in_csv_is_refused_naming_the_row(photos, tmp_path, capsys, cell, needle):
    src, _, names = photos
    lab = utk_labels([Path(n).name for n in names[:2]])
    csv = tmp_path / "labels.csv"
    csv.write_text(f"path,age,gender,race\n{names[0]},{lab[0][0]},{lab[0][1]},{lab[0][2]}\n{names[1]},{cell},0,0\n")
    rc, _, err = engine_cli(capsys, "--model", exported_onnx(), "--input", src, "--output", tmp_path / "o", "--labels", csv)
    one_error_line(rc, err, str(csv), "row 3", "'age'", needle)
    assert not (tmp_path / "o").exists()


def test_validate_labels_catches_what_the_onnx_graph_clamps():
    """The exported graph clamps labels: class 12 of the 9-class age task acts as class 8 and -5 as -1;
    validate_labels refuses both, naming the row and the task."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(exported_onnx()), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    run = lambda y: sess.run(None, {"image": x, "labels": np.asarray([y], np.int64)})[1]  # noqa: E731
    assert np.array_equal(run([12, 0, 0]), run([8, 0, 0])) and np.array_equal(run([-5, 0, 0]), run([-1, 0, 0]))
    ok = validate_labels([[8, 1, 4], [-1, -1, -1]], meta)
    assert ok.dtype == np.int64 and ok.tolist() == [[8, 1, 4], [-1, -1, -1]]
    for bad, needle in (([[12, 0, 0]], "row 0 (a.jpg), task 'age': class 12 is out of range (expected 0..8"),
                        ([[0, 0, -5]], "task 'race': class -5 is out of range (expected 0..4, or -1 = unprotected)"),
                        ([[0, 2, 0]], "task 'gender': class 2")):
        with pytest.raises(ValueError) as e:
            validate_labels(bad, meta, rows=["a.jpg"])
        assert needle in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"labels must be \[N, 3\]"):
        validate_labels([[1, 0]], exported_onnx())  # also from the .onnx path
    with pytest.raises(ValueError, match="not an integer class index"):
        validate_labels(np.array([[1.5, 0, 0]]), meta)
    assert validate_labels([3, 1, 0], meta).tolist() == [[3, 1, 0]]  # one image
    assert validate_labels([["20-29", "female", None], ["3", "male", "-1"]], meta).tolist() == [[3, 1, -1], [3, 0, -1]]
    with pytest.raises(ValueError, match=r"row 0, task 'gender': 'robot' is neither a class index nor a class name"):
        validate_labels([["20-29", "robot", -1]], meta)


# --- output directory ------------------------------------------------------------------------------------
def test_unrelated_file_in_output_is_refused_unless_overwrite(photos, tmp_path, capsys):
    src, csv, names = photos
    out = tmp_path / "o"
    out.mkdir()
    (out / Path(names[1]).with_suffix(".png")).write_bytes(b"someone else's file")
    (out / "notes.txt").write_text("unrelated, never touched")
    before, in_before = tree_digest(out), tree_digest(src)
    args = ["--model", exported_onnx(), "--input", src, "--output", out, "--labels", csv]
    rc, _, err = engine_cli(capsys, *args)
    one_error_line(rc, err, str(out), "1 existing file(s) were not written by this job", str(Path(names[1]).with_suffix(".png")),
             "--overwrite")
    assert tree_digest(out) == before and tree_digest(src) == in_before  # no state dir either

    rc, out_text, err = engine_cli(capsys, *args, "--overwrite")
    assert rc == 0, err
    rep = json.loads(out_text)
    assert rep["overwritten"]["count"] == 1 and "--overwrite: replaced 1 existing file(s)" in err
    assert (out / "notes.txt").read_text() == "unrelated, never touched"
    with Image.open(out / Path(names[1]).with_suffix(".png")) as im:
        assert im.size == (200, 200)
    rc, out_text, err = engine_cli(capsys, *args)  # the same job again: resumes, labels.csv / tasks.json are its own
    assert rc == 0 and json.loads(out_text)["skipped"] == 6, err


def test_foreign_labels_csv_in_output_is_refused(photos, tmp_path, capsys):
    src, csv, _ = photos
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "labels.csv").write_text("mine\n")
    rc, _, err = engine_cli(capsys, "--model", exported_onnx(), "--input", src, "--output", tmp_path / "o", "--labels", csv)
    one_error_line(rc, err, "labels.csv", "were not written by this job")
    assert (tmp_path / "o" / "labels.csv").read_text() == "mine\n"


def test_killed_run_resumes_outputs_it_started(photos, tmp_path):
    """An output renamed into place whose done line was never written (killed in between) has a started line:
    the rerun regenerates it without --overwrite."""
    src, csv, names = photos
    out = tmp_path / "o"
    protect_directory(src, out, model=exported_onnx(), labels=csv, progress=False)
    target = out / Path(names[0]).with_suffix(".png")
    good = target.read_bytes()
    target.write_bytes(b"half-written")
    journal = out / STATE_DIR / "journal.jsonl"
    lines = journal.read_text().splitlines()
    journal.write_text("\n".join(l for l in lines if '"file": "' + names[0] not in l) + "\n")
    assert any('"started"' in l and target.name in l for l in journal.read_text().splitlines())
    rep = protect_directory(src, out, model=exported_onnx(), labels=csv, progress=False)
    assert rep["done"] == 1 and rep["skipped"] == 5 and target.read_bytes() == good


def _drop_privileges() -> list[str] | None:
    """A command prefix that makes root obey file permissions (None: not root, nothing needed)."""
    if os.geteuid() != 0:
        return None
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a read-only directory cannot be enforced")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all"]


@pytest.mark.parametrize("where", ["output", "parent"])
def test_read_only_output_directory_is_one_line_exit_2(photos, tmp_path, where):
    src, csv, _ = photos
    ro = tmp_path / "ro"
    ro.mkdir()
    out = ro if where == "output" else ro / "new"
    argv = [sys.executable, "-m", "mtlguard.engine.cli", "protect", "--no-progress", "--model", str(exported_onnx()),
            "--input", str(src), "--output", str(out), "--labels", str(csv)]
    ro.chmod(0o555)
    try:
        proc = subprocess.run((_drop_privileges() or []) + argv, capture_output=True, text=True, timeout=300)
    finally:
        ro.chmod(0o755)
    one_error_line(proc.returncode, proc.stderr, str(out), "not writable")
    assert list(ro.iterdir()) == []


# --- model files ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cut", [0.0, 0.02, 0.5, 0.97])
def test_corrupt_or_truncated_onnx_is_one_line_naming_the_file(photos, tmp_path, capsys, cut):
    src, csv, _ = photos
    data = exported_onnx().read_bytes()
    model = tmp_path / "gen.onnx"
    model.write_bytes(data[: int(len(data) * cut)] if cut else np.random.default_rng(0).bytes(5000))
    rc, _, err = engine_cli(capsys, "--model", model, "--input", src, "--output", tmp_path / "o", "--labels", csv)
    one_error_line(rc, err, str(model))
    assert not (tmp_path / "o").exists()


def test_model_with_unknown_suffix_says_so(photos, tmp_path, capsys):
    src, csv, _ = photos
    model = tmp_path / "model.txt"
    model.write_text("not a model")
    rc, _, err = engine_cli(capsys, "--model", model, "--input", src, "--output", tmp_path / "o", "--labels", csv)
    line = one_error_line(rc, err, str(model), "unknown model format '.txt'", ".onnx")
    assert "safetensors not found" not in line


# --- input ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [[], ["notes.txt", "sub/readme.md"]])
def test_input_without_images_says_no_images_found(tmp_path, capsys, content):
    inp = tmp_path / "in"
    inp.mkdir()
    for rel in content:
        (inp / rel).parent.mkdir(parents=True, exist_ok=True)
        (inp / rel).write_text("x")
    rc, _, err = engine_cli(capsys, "--model", exported_onnx(), "--input", inp, "--output", tmp_path / "o", "--no-labels")
    one_error_line(rc, err, f"no images found in {inp}")
    assert not (tmp_path / "o").exists()


def test_exclude_split_needs_an_existing_split(photos, tmp_path, capsys):
    src, csv, names = photos
    args = ["--model", exported_onnx(), "--input", src, "--output", tmp_path / "o"]
    rc, _, err = engine_cli(capsys, *args, "--labels", csv, "--exclude-split", "test")
    one_error_line(rc, err, str(csv), "has no 'split' column")
    split_csv = tmp_path / "split.csv"
    lab = utk_labels([Path(n).name for n in names])
    split_csv.write_text("file,age,gender,race,split\n" + "".join(
        f"{n},{a},{g},{r},{'test' if i % 2 else 'train'}\n" for i, (n, (a, g, r)) in enumerate(zip(names, lab.tolist()))))
    rc, _, err = engine_cli(capsys, *args, "--labels", split_csv, "--exclude-split", "tset")
    one_error_line(rc, err, "--exclude-split tset", "its splits: ['test', 'train']")
    rc, _, err = engine_cli(capsys, *args, "--no-labels", "--exclude-split", "test")
    one_error_line(rc, err, "needs --labels")
    assert not (tmp_path / "o").exists()


def test_any_size_onnx_is_refused_up_front(photos, tmp_path, capsys):
    """The any-size variant (one image per call, for services) is not a batch model: one line, exit 2, nothing written."""
    import torch

    from mtlguard.data.utkface import UTKFACE_TASKS
    from mtlguard.export import export_onnx
    from mtlguard.unlearnable import MTLUEGenerator

    src, _, _ = photos
    torch.manual_seed(0)
    any_onnx = export_onnx(MTLUEGenerator(UTKFACE_TASKS, image_size=16).eval(), tmp_path / "any.onnx", any_size=True)
    before = tree_digest(src)
    rc, _, err = engine_cli(capsys, "--model", any_onnx, "--input", src, "--output", tmp_path / "out", "--no-labels")
    one_error_line(rc, err, "any.onnx", "--any-size")
    assert tree_digest(src) == before and not any((tmp_path / "out").glob("**/*.png"))
