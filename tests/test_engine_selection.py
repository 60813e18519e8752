"""Leaving images alone (``--exclude-split``, ``--include`` / ``--exclude``) and the labels the engine writes
into its output (``labels.csv`` + ``tasks.json``, read back by mtlguard's own FolderDataset), on real
UTKFace images through the real engine."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from test_engine_standin import copy_utk, exported_onnx, tree_digest, utk_labels

from mtlguard.engine import protect_directory
from mtlguard.engine.cli import main as engine_main
from mtlguard.engine.discovery import PathFilter, glob_regex

AGE = ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+")


@pytest.fixture(scope="module")
def dataset(utkface_root, tmp_path_factory):
    """A folder dataset: 8 images (2 in sub/), labels.csv with class NAMES for age and a split column
    (every third row is 'test'), plus a raw/ folder and a non-image."""
    root = tmp_path_factory.mktemp("ds")
    names = copy_utk(utkface_root, root, 6) + [f"sub/{n}" for n in copy_utk(utkface_root, root / "sub", 2, offset=6)]
    copy_utk(utkface_root, root / "raw", 1, offset=9)
    (root / "notes.txt").write_text("x")
    lab = utk_labels([Path(n).name for n in names])
    split = ["test" if i % 3 == 0 else "train" for i in range(len(names))]
    lines = ["file,age,gender,race,split,comment"] + [
        f"{n},{AGE[a]},{g},{r},{s},any" for n, (a, g, r), s in zip(names, lab.tolist(), split)]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root, names, lab, split


def _outputs(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and ".mtlguard-engine" not in p.parts)


@pytest.mark.parametrize("pattern,path,match", [
    ("*.png", "a.png", True), ("*.png", "x/y/a.png", True), ("*.png", "a.jpg", False),
    ("sub/*.jpg", "sub/a.jpg", True), ("sub/*.jpg", "sub/x/a.jpg", False), ("sub/*.jpg", "x/sub/a.jpg", False),
    ("sub/**/*.jpg", "sub/a.jpg", True), ("sub/**/*.jpg", "sub/x/y/a.jpg", True),
    ("raw/", "raw/a/b.jpg", True), ("raw/**", "rawx/b.jpg", False), ("./raw/*", "raw/b.jpg", True),
    ("img_?.jpg", "d/img_1.jpg", True), ("img_?.jpg", "img_12.jpg", False),
    ("[!a]*.jpg", "b.jpg", True), ("[!a]*.jpg", "a.jpg", False), ("[ab].jpg", "b.jpg", True),
    ("a+b (1).jpg", "a+b (1).jpg", True),
])
def test_glob_semantics(pattern, path, match):
    assert bool(glob_regex(pattern).match(path)) is match


def test_path_filter_reasons():
    f = PathFilter(include=["*.jpg"], exclude=["raw/"])
    assert f.reason("a.jpg") is None and f.reason("a.png") == "include" and f.reason("raw/a.jpg") == "exclude"
    assert PathFilter().reason("anything.png") is None


def test_exclude_split_leaves_test_rows_alone_and_writes_labels_for_folder_dataset(dataset, tmp_path, capsys):
    from mtlguard.data.folder import FolderDataset

    root, names, lab, split = dataset
    before = tree_digest(root)
    out = tmp_path / "out"
    model = exported_onnx()
    capsys.readouterr()
    rc = engine_main(["protect", "--model", str(model), "--input", str(root), "--out", str(out),
                      "--labels", str(root / "labels.csv"), "--exclude-split", "test", "--exclude", "raw/", "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    rep = json.loads(cap.out)
    train = [n for n, s in zip(names, split) if s == "train"]
    test = sorted(n for n, s in zip(names, split) if s == "test")
    assert rep["done"] == len(train) == 5 and rep["failed"] == 0
    assert rep["excluded"] == {"total": 4, "by_split": 3, "by_include": 0, "by_exclude": 1,
                               "first": sorted(test + [p.relative_to(root).as_posix() for p in (root / "raw").iterdir()])[:5]}
    assert "4 image(s) excluded (split 3, --include 0, --exclude 1)" in cap.err
    assert rep["labels"]["rows_without_images"] == 0 and rep["options"]["exclude_split"] == ["test"]
    assert _outputs(out) == sorted([str(Path(n).with_suffix(".png")) for n in train] + ["labels.csv", "tasks.json"])
    assert tree_digest(root) == before
    # labels.csv: output names, class INDICES used (the input had age names), the split column
    rows = (out / "labels.csv").read_text().splitlines()
    assert rows[0] == "file,age,gender,race,split"
    want = {str(Path(n).with_suffix(".png")): ",".join(map(str, lab[names.index(n)])) + ",train" for n in train}
    assert {r.split(",", 1)[0]: r.split(",", 1)[1] for r in rows[1:]} == want
    assert json.loads((out / "tasks.json").read_text())["num_channels"] == 3
    # mtlguard's folder loader reads the output directly, with the labels the generator used
    ds = FolderDataset(out, split="train", image_size=32, progress=False)
    assert [t.name for t in ds.tasks] == ["age", "gender", "race"] and len(ds) == 5
    got = {f: [int(ds.label_arrays[t][i]) for t in ("age", "gender", "race")] for i, f in enumerate(ds.files)}
    assert got == {k: [int(v) for v in w.split(",")[:3]] for k, w in want.items()}
    # rerun = resume: nothing redone, labels.csv / tasks.json rewritten identically, not "unrelated files"
    meta = {k: (out / k).read_bytes() for k in ("labels.csv", "tasks.json")}
    again = protect_directory(root, out, model=exported_onnx(), labels=root / "labels.csv", exclude_split="test",
                              exclude=["raw/"], progress=False)
    assert again["done"] == 0 and again["skipped"] == 5
    assert {k: (out / k).read_bytes() for k in meta} == meta
    assert again["quality"]["images"] == 5  # measured when written, kept in the journal


def test_include_and_exclude_globs(dataset, tmp_path):
    root, names, _, _ = dataset
    rep = protect_directory(root, tmp_path / "out", model=exported_onnx(), labels=root / "labels.csv",
                            include=["sub/*", "raw/**"], exclude="raw/", progress=False)
    assert rep["done"] == 2 and rep["excluded"]["by_include"] == 6 and rep["excluded"]["by_exclude"] == 1
    assert _outputs(tmp_path / "out") == sorted(
        [str(Path(n).with_suffix(".png")) for n in names if n.startswith("sub/")] + ["labels.csv", "tasks.json"])
    # the selection is part of the job: resuming with other filters is refused
    with pytest.raises(ValueError, match="different settings.*include"):
        protect_directory(root, tmp_path / "out", model=exported_onnx(), labels=root / "labels.csv", progress=False)


def test_everything_excluded_is_refused(dataset, tmp_path, capsys):
    root, _, _, _ = dataset
    rc = engine_main(["protect", "--model", str(exported_onnx()), "--input", str(root), "--output", str(tmp_path / "o"),
                      "--labels", str(root / "labels.csv"), "--include", "*.gif", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no images left to protect" in err[0] and "--include 9" in err[0]
    assert not (tmp_path / "o").exists()


def test_labels_csv_written_without_split_column_and_for_no_labels(dataset, tmp_path):
    root, names, _, _ = dataset
    with pytest.warns(UserWarning, match="protection is weak"):
        protect_directory(root, tmp_path / "out", model=exported_onnx(), no_labels=True, exclude="raw/", progress=False)
    rows = (tmp_path / "out" / "labels.csv").read_text().splitlines()
    assert rows[0] == "file,age,gender,race" and len(rows) == 1 + len(names)
    assert all(r.endswith(",-1,-1,-1") for r in rows[1:])
    assert np.all([(tmp_path / "out" / r.split(",")[0]).is_file() for r in rows[1:]])
