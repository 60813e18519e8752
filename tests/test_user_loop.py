"""The user's loop from the command line alone (issue 13): an own 1-channel folder dataset with a split
column -> train -> fit -> export -> engine with the test split left alone -> verify.  Everything runs for
real, small: 48 grayscale faces at 24x24 (made from UTKFace, two tasks, written in the folder format)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from mtlguard.data.folder import write_folder_dataset
from mtlguard.data.tasks import TaskSpec
from mtlguard.data.utkface import UTKFace

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(*args, tool="mtlguard"):
    cmd = [sys.executable, "-m", "mtlguard.cli.main"] if tool == "mtlguard" else \
        [sys.executable, "-m", "mtlguard.engine.cli"]
    r = subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True,
                       env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    assert r.returncode == 0, (args[:2], r.stderr[-2000:])
    return r


def test_own_gray_folder_dataset_train_fit_export_engine_verify(utkface_root, tmp_path):
    utk = UTKFace(utkface_root, split="train", image_size=24, subset=48, seed=0, cache_dir=tmp_path / "c", progress=False)
    gray = np.stack([utk.load_uint8(i) for i in range(len(utk))]).astype(np.float32) @ np.array([0.299, 0.587, 0.114])
    imgs = np.clip(np.round(gray), 0, 255).astype(np.uint8)[..., None]
    tasks = [TaskSpec("gender", "multiclass", 2, ("male", "female")), TaskSpec("race", "multiclass", 5)]
    split = ["train"] * 36 + ["test"] * 12
    ds = write_folder_dataset(tmp_path / "own", [f"img/{i:03d}.png" for i in range(48)], imgs,
                              {"gender": utk.label_arrays["gender"], "race": utk.label_arrays["race"]}, tasks,
                              split=split, progress=False)
    tasks_json = json.loads((ds / "tasks.json").read_text())
    assert (tasks_json.get("num_channels") if isinstance(tasks_json, dict) else 1) == 1
    _run("train", "--data", "folder", "--root", ds, "--image-size", 24, "--arch", "small_cnn", "--epochs", 1,
         "--batch-size", 12, "--out", tmp_path / "victim", "--no-progress")
    _run("fit", "--data", "folder", "--root", ds, "--image-size", 24, "--base", "tap", "--surrogate-arch", "small_cnn",
         "--surrogate-epochs", 1, "--epochs", 1, "--batch-size", 12, "--out", tmp_path / "gen", "--no-progress")
    _run("export", "--model", tmp_path / "gen", "--out", tmp_path / "gen.onnx")
    _run("protect", "--model", tmp_path / "gen.onnx", "--input", ds, "--out", tmp_path / "prot", "--labels",
         ds / "labels.csv", "--exclude-split", "test", "--no-progress", tool="engine")
    written = sorted(p.name for p in (tmp_path / "prot" / "img").glob("*.png"))
    assert len(written) == 36 and "036.png" not in written  # the test split was left alone
    from PIL import Image
    assert Image.open(tmp_path / "prot" / "img" / "000.png").mode == "L"  # a gray dataset stays gray
    out = _run("verify", "--clean", ds, "--protected", tmp_path / "prot", "--victims", "small_cnn@16",
               "--epochs", 1, "--batch-size", 12, "--average-last", 1, "--out", tmp_path / "verify", "--no-progress")
    assert [line.split(":")[0] for line in out.stdout.splitlines()[:2]] == ["gender", "race"]
    rep = json.loads((tmp_path / "verify" / "verify.json").read_text())
    assert rep["train_images"] == 36 and rep["test_images"] == 12
