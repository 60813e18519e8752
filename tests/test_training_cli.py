"""``mtlguard train`` end to end on generated data (tiny sizes) and on a real UTKFace subset."""
from __future__ import annotations

import json

import pytest

from mtlguard.cli.main import main
from mtlguard.training import load_model


pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_cli_synthetic_mtl_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--data", "synthetic", "--synthetic-n", "16", "8", "--image-size", "16", "--arch", "small_cnn",
            "--epochs", "1", "--batch-size", "8", "--weighting", "pcgrad", "--eval-before", "--out", str(out),
            "--no-progress"]
    assert main(argv) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["tasks"] == ["segmentation", "depth", "normal"] and res["train_size"] == 16 and res["test_size"] == 8
    assert set(res["initial"]) >= {"segmentation", "depth", "normal"} and "miou" in res["final"]["segmentation"]
    assert load_model(out).tasks[0].name == "segmentation"
    with pytest.raises(FileExistsError):
        main(argv)
    assert main(argv + ["--resume"]) == 0  # already complete: nothing to train, same final metrics
    assert json.loads((out / "result.json").read_text())["final"] == res["final"]


def test_train_cli_rejects_unknown_task(tmp_path):
    with pytest.raises(SystemExit, match="nope"):
        main(["train", "--data", "synthetic", "--synthetic-n", "4", "4", "--image-size", "16", "--tasks", "depth,nope",
              "--arch", "small_cnn", "--epochs", "1", "--out", str(tmp_path / "x"), "--no-progress"])


def test_train_cli_utkface_stl_subset(utkface_root, tmp_path):
    out = tmp_path / "stl"
    assert main(["train", "--data", "utkface", "--data-root", str(utkface_root), "--tasks", "gender", "--image-size", "16",
                 "--subset", "64", "--test-subset", "32", "--arch", "small_cnn", "--epochs", "1", "--batch-size", "32",
                 "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["tasks"] == ["gender"] and res["train_size"] == 64 and res["test_size"] == 32
    assert 0.0 <= res["final"]["gender"]["accuracy"] <= 1.0
