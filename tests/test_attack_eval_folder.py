"""``mtlguard attack-eval --data folder``: a user's folder dataset (real UTKFace faces with a split column),
the near-chance warning (one line) and the table legend explaining nan / negative ARP cells."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folder_and_victim(utkface_root, tmp_path_factory):
    from mtlguard.data.folder import write_folder_dataset
    from mtlguard.data.utkface import UTKFace
    from mtlguard.models import build_model, save_model

    tmp = tmp_path_factory.mktemp("attackfolder")
    ds = UTKFace(utkface_root, split="train", image_size=32, subset=20, seed=0, cache_dir=tmp / "cache", progress=False)
    imgs = np.stack([ds.load_uint8(i) for i in range(len(ds))])
    root = write_folder_dataset(tmp / "faces", [f"{i:02d}.png" for i in range(20)], imgs, ds.label_arrays, ds.tasks,
                                split=["train"] * 12 + ["test"] * 8, progress=False)
    torch.manual_seed(0)
    save_model(build_model(ds.tasks, arch="small_cnn", image_size=32), tmp / "victim")  # untrained: near chance
    return tmp, root


def test_attack_eval_on_a_folder_dataset_warns_near_chance(folder_and_victim):
    tmp, root = folder_and_victim
    cmd = [sys.executable, "-c", "import sys; from mtlguard.cli.main import main; sys.exit(main())",
           "attack-eval", "--model", str(tmp / "victim"), "--data", "folder", "--root", str(root), "--split", "test",
           "--attacks", "fgsm", "--aggregations", "single:*,total,gbmta", "--eps", "0,8", "--batch-size", "4",
           "--out", str(tmp / "rep"), "--prefix", "faces", "--no-progress"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    warnings = [x for x in r.stderr.splitlines() if "near chance" in x]
    assert warnings and all(x.startswith("mtlguard: warning: attack-eval: the victim is near chance on task ")
                            for x in warnings)
    assert "Traceback" not in r.stderr and "warnings.warn" not in r.stderr
    data = json.loads((tmp / "rep" / "faces.json").read_text())
    assert data["images"] == 8 and data["dataset"]["name"] == "folder"  # the 8 'test' rows
    assert set(data["near_chance"]) == {w.split("'")[1] for w in warnings}
    md = (tmp / "rep" / "faces.md").read_text()
    assert "## How to read these tables" in md and "**negative** ARP" in md and "**nan**" in md
    assert "**Victim near chance**" in md
    # eps 0 changes nothing: the SINGLE-X transferability there is the documented nan
    singles = [r for r in data["results"] if "transferability" in r and r["eps"] == 0]
    assert singles and all(r["transferability"] != r["transferability"] for r in singles)
