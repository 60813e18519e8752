"""``mtlguard verify`` on a real folder dataset (UTKFace faces written in the folder format, with a split
column) and a protected copy made by the real engine: verdict lines, report files, cache reuse, and
one-line errors for bad input."""
import json

import numpy as np
import pytest
import torch

from mtlguard.data.folder import write_folder_dataset
from mtlguard.data.utkface import UTKFace

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(utkface_root, tmp_path_factory):
    from mtlguard.engine import protect_directory
    from mtlguard.export import export_onnx
    from mtlguard.unlearnable import MTLUEGenerator

    tmp = tmp_path_factory.mktemp("verify")
    ds = UTKFace(utkface_root, split="train", image_size=64, subset=36, seed=0, cache_dir=tmp / "cache", progress=False)
    imgs = np.stack([ds.load_uint8(i) for i in range(len(ds))])
    split = ["train"] * 24 + ["test"] * 12
    clean = write_folder_dataset(tmp / "clean", [f"img/{i:03d}.png" for i in range(36)], imgs, ds.label_arrays,
                                 ds.tasks, split=split, progress=False)
    torch.manual_seed(0)
    export_onnx(MTLUEGenerator(ds.tasks, image_size=16).eval(), tmp / "gen.onnx")
    protect_directory(clean, tmp / "protected", model=tmp / "gen.onnx", labels=clean / "labels.csv", progress=False)
    return tmp, clean, tmp / "protected"


def test_verify_reports_pr_and_verdicts(folders, capsys):
    from mtlguard.cli.main import main

    tmp, clean, prot = folders
    argv = ["verify", "--clean", str(clean), "--protected", str(prot), "--victims", "small_cnn@16",
            "--defenses", "standard,grayscale", "--epochs", "2", "--batch-size", "8", "--average-last", "1",
            "--out", str(tmp / "rep"), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out[:3]] == ["age", "gender", "race"]
    assert all(("protected" in line or "undetermined" in line) for line in out[:3])
    rep = json.loads((tmp / "rep" / "verify.json").read_text())
    assert rep["train_images"] == 24 and rep["test_images"] == 12  # the split column decides
    assert {r["defense"] for r in rep["summary"]} == {"standard", "grayscale"}
    assert len(rep["runs"]) == 4  # (clean, protected) x (standard, grayscale)
    md = (tmp / "rep" / "verify.md").read_text()
    assert "Verdict" in md and "PR age" in md and (tmp / "rep" / "verify.png").stat().st_size > 1000
    before = {p: p.stat().st_mtime_ns for p in (tmp / "rep" / "work").rglob("result.json")}
    assert main(argv) == 0  # cached: nothing retrained
    assert {p: p.stat().st_mtime_ns for p in (tmp / "rep" / "work").rglob("result.json")} == before


@pytest.mark.parametrize("change,match", [
    (lambda a, t: a.__setitem__(a.index("--protected") + 1, str(t / "nope")), "folder not found"),
    (lambda a, t: a.__setitem__(a.index("--victims") + 1, "resnet99@32"), "unknown architecture"),
    (lambda a, t: a.__setitem__(a.index("--defenses") + 1, "jpeg"), "unknown defense"),
    (lambda a, t: a.__setitem__(a.index("--out") + 1, str(t / "clean" / "rep")), "inside the input folder"),
])
def test_verify_bad_input_is_one_line(folders, change, match):
    from mtlguard.cli.main import main

    tmp, clean, prot = folders
    argv = ["verify", "--clean", str(clean), "--protected", str(prot), "--victims", "small_cnn@16",
            "--defenses", "standard", "--epochs", "1", "--out", str(tmp / "rep2"), "--no-progress"]
    change(argv, tmp)
    listing = sorted(p.relative_to(tmp) for p in tmp.rglob("*") if "rep" not in p.parts[len(tmp.parts)])
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert match in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.relative_to(tmp) for p in tmp.rglob("*") if "rep" not in p.parts[len(tmp.parts)]) == listing
