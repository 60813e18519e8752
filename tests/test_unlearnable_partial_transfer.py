"""MTL-UE rows: partial data protection (Table 9: victims on P_r + T_(1-r), and on T_(1-r) alone) and
transfer rows (Tables 5, 13-15: victims of other architectures -- MTAN, Cross-stitch, branched -- and
weightings), in the memory protocol and through ``poison`` / ``evaluate-protection``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from mtlguard.data.tasks import TaskSpec
from mtlguard.unlearnable.evaluation import ProtectionBenchmark, ProtectionConfig
from mtlguard.unlearnable.protect import protected_subset

pytestmark = pytest.mark.usefixtures("one_thread")

TASKS = (TaskSpec("age", "multiclass", 3), TaskSpec("gender", "binary"), TaskSpec("race", "multiclass", 3))


class TinyFaces(Dataset):
    """uint8 images with three class tasks (items are ``load_uint8(i) / 255``, as protect_images requires)."""

    tasks = TASKS

    def __init__(self, n: int, seed: int = 0, size: int = 16):
        g = np.random.default_rng(seed)
        self.img = g.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        self.y = {"age": g.integers(0, 3, n), "gender": g.integers(0, 2, n), "race": g.integers(0, 3, n)}

    def __len__(self):
        return len(self.img)

    def load_uint8(self, i):
        return self.img[i]

    def targets(self, i):
        return {k: torch.tensor(int(v[i])) for k, v in self.y.items()}

    def __getitem__(self, i):
        return torch.from_numpy(self.img[i].transpose(2, 0, 1).copy()).float() / 255, self.targets(i)


def _cfg(**kw):
    base = dict(methods=("clean", "ar-patch"), arch="small_cnn", victim_epochs=1, victim_batch_size=8, stl=False,
                progress=False, seed=3)
    base.update(kw)
    return ProtectionConfig(**base)


def test_protected_subset_is_seeded_and_exact():
    m = protected_subset(10, 0.3, seed=1)
    assert m.dtype == bool and int(m.sum()) == 3
    assert np.array_equal(m, protected_subset(10, 0.3, seed=1)) and not np.array_equal(m, protected_subset(10, 0.3, 2))
    assert protected_subset(7, 1.0).all()
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        protected_subset(10, 0.0)


def test_partial_data_protection_rows(tmp_path):
    train, test = TinyFaces(16), TinyFaces(8, seed=1)
    bench = ProtectionBenchmark(train, test, _cfg(protect_fraction=0.5, stl=True, stl_methods=("clean",)), tmp_path)
    mask = bench.protected_mask()
    assert int(mask.sum()) == 8 and np.array_equal(mask, protected_subset(16, 0.5, 3))
    clean, prot = bench.protected_images("clean"), bench.protected_images("ar-patch")
    assert np.array_equal(prot[~mask], clean[~mask])  # T_(1-r): untouched
    assert all(not np.array_equal(prot[i], clean[i]) for i in np.flatnonzero(mask))  # P_r: every one protected
    res = bench.run()
    assert list(res["rows"]) == ["clean", "clean T_0.5 only", "ar-patch [P_0.5 + T_0.5]"]
    assert res["protect_fraction"] == 0.5 and res["protected_images"] == 8
    only = res["rows"]["clean T_0.5 only"]
    assert only["images"] == 8 and set(only["mtl"]) >= {"age", "gender", "race"} and set(only["stl"]) == {"age", "gender", "race"}
    cfg = json.loads((tmp_path / "victims" / "clean_T0.5_only" / "mtl" / "train_config.json").read_text())
    assert cfg["train_size"] == 8  # the clean part alone
    mixed = json.loads((tmp_path / "victims" / "ar-patch[P_0.5_T_0.5]" / "mtl" / "train_config.json").read_text())
    assert mixed["train_size"] == 16  # P_r + T_(1-r)
    # the fraction is part of what the work folder caches: another fraction is refused
    with pytest.raises(ValueError, match="protect_fraction"):
        ProtectionBenchmark(train, test, _cfg(protect_fraction=0.25), tmp_path)


def test_transfer_rows_other_architectures_and_weightings(tmp_path):
    from mtlguard.models import BranchedModel, CrossStitchModel, MTANModel, load_model

    train, test = TinyFaces(16), TinyFaces(8, seed=1)
    archs = ("small_cnn/mtan", "small_cnn/cross_stitch", "small_cnn/branched:age+gender@2,race@0")
    cfg = _cfg(methods=("clean", "mtl-ue-em"), victim_archs=archs, victim_weightings=("uw",), gen_epochs=1,
               gen_batch_size=8, gen_train_steps=1)
    res = ProtectionBenchmark(train, test, cfg, tmp_path).run()
    rows = res["rows"]
    for m in ("clean", "mtl-ue-em"):
        for a in archs:
            r = rows[f"{m} @ {a}"]
            assert r["victim_arch"] == a and set(r["mtl"]) >= {"age", "gender", "race"}
            assert r["clean_key"] == (None if m == "clean" else f"clean @ {a}")
        assert rows[f"{m} @ small_cnn:uw"]["victim_weighting"] == "uw"
    assert 0 < rows["mtl-ue-em @ small_cnn/mtan"]["linf_uint8"] <= 8  # MTL-UE data, MTAN victim
    vroot = tmp_path / "victims" / "mtl-ue-em"
    kinds = {d.name: type(load_model(d)) for d in vroot.iterdir() if d.name.startswith("transfer-")}
    assert set(kinds.values()) >= {MTANModel, CrossStitchModel, BranchedModel}
    uw = json.loads((vroot / "transfer-small_cnn_uw" / "train_config.json").read_text())
    assert uw["weighting"] == "uw"
    with pytest.raises(ValueError, match="unknown architecture"):
        _cfg(victim_archs=("resnet99/mtan",))
    with pytest.raises(ValueError, match="unknown weighting"):
        _cfg(victim_weightings=("nope",))


def test_poison_and_evaluate_protection_cli_options(utkface_root, tmp_path, capsys):
    from mtlguard.cli.main import main
    from mtlguard.data import FolderDataset, UTKFace
    from mtlguard.models import split_arch_list

    assert split_arch_list("resnet18,small_cnn/branched:age+gender@3,race@1,vgg11/mtan") == [
        "resnet18", "small_cnn/branched:age+gender@3,race@1", "vgg11/mtan"]
    common = ["--data", "utkface", "--root", str(utkface_root), "--image-size", "16", "--subset", "12",
              "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert main(["poison", *common, "--method", "ar-patch", "--protect-fraction", "0.5",
                 "--out", str(tmp_path / "prot")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["protected"] == 6 and info["protect_fraction"] == 0.5
    src = UTKFace(utkface_root, image_size=16, subset=12, cache_dir=tmp_path / "cache", progress=False)
    prot = FolderDataset(tmp_path / "prot")
    lines = (tmp_path / "prot" / "labels.csv").read_text().splitlines()
    col = lines[0].split(",").index("protected")
    flags = [int(line.split(",")[col]) for line in lines[1:]]
    assert sum(flags) == 6
    for i, flag in enumerate(flags):  # protected rows moved, the others are byte-identical copies
        same = np.array_equal(src.load_uint8(i), prot.load_uint8(i))
        assert same == (flag == 0)
    with pytest.raises(SystemExit, match="protect-fraction"):
        main(["poison", *common, "--method", "ar-patch", "--protect-fraction", "1.5", "--out", str(tmp_path / "p2")])
    rc = main(["evaluate-protection", *common, "--test-subset", "8", "--methods", "clean,ar-patch", "--arch",
               "small_cnn", "--victim-epochs", "1", "--victim-batch-size", "12", "--no-stl", "--protect-fraction",
               "0.5", "--victim-archs", "small_cnn/mtan,small_cnn/branched:age+gender@1,race@0",
               "--victim-weightings", "rlw", "--out", str(tmp_path / "rep"), "--prefix", "p",
               "--work", str(tmp_path / "work")])
    assert rc == 0
    res = json.loads(open(json.loads(capsys.readouterr().out)["json"]).read())
    assert {"clean", "clean T_0.5 only", "ar-patch [P_0.5 + T_0.5]", "clean @ small_cnn/mtan",
            "ar-patch [P_0.5 + T_0.5] @ small_cnn/branched:age+gender@1,race@0",
            "ar-patch [P_0.5 + T_0.5] @ small_cnn:rlw"} <= set(res["rows"])
