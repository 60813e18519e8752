"""attack-eval: the eps sweep, ARP (Eq. 10), transferability (Eq. 11), reports and the CLI."""
from __future__ import annotations

import json
import math

import pytest
import torch

from mtlguard.attacks.evaluation import expand_aggregations, run_attack_eval, write_reports
from mtlguard.metrics import arp
from test_attacks_core import TASKS, batch, model_for


def test_eval_sweep_metrics_and_reports(tmp_path):
    m = model_for()
    loader = [batch(b=4, hw=6, seed=1), batch(b=4, hw=6, seed=2)]
    res = run_attack_eval(m, TASKS, loader, attacks=("pgd",), aggregations=("single:*", "total", "gbmta"),
                          eps_list=(4 / 255, 16 / 255), steps=2, progress=False)
    aggs = expand_aggregations(("single:*", "total", "gbmta"), TASKS)
    assert aggs == ["single:age", "single:gender", "single:depth", "total", "gbmta"]
    assert len(res["results"]) == len(aggs) * 2 and res["images"] == 8
    for r in res["results"]:
        per = [r["task_arp"][t.name] for t in TASKS]
        assert r["arp"] == pytest.approx(sum(per) / len(per))
        assert r["arp"] == pytest.approx(arp(res["clean"], r["metrics"], metrics=res["arp_metrics"])["arp"])
        if r["aggregation"].startswith("single:"):
            x = r["aggregation"][7:]
            if r["task_arp"][x] == 0:
                assert math.isnan(r["transferability"])
            else:
                others = [r["task_arp"][t.name] / r["task_arp"][x] for t in TASKS if t.name != x]
                assert r["transferability"] == pytest.approx(sum(others) / len(others))
        else:
            assert "transferability" not in r
    # a stronger budget hurts the attacked task more (SINGLE-age, PGD)
    a4, a16 = (next(r for r in res["results"] if r["attack"] == "pgd" and r["aggregation"] == "single:age"
                    and r["eps"] == e) for e in (4 / 255, 16 / 255))
    assert a16["vulnerability"]["age"] > a4["vulnerability"]["age"] >= 0
    paths = write_reports(res, tmp_path, prefix="attacks_t", command="pytest")
    data = json.loads(open(paths["json"]).read())
    assert data["command"] == "pytest" and len(data["results"]) == len(res["results"])
    md = open(paths["md"]).read()
    assert "GB-MTA" in md and "Single-age" in md and "transferability" in md
    for k in ("arp_png", "examples_png"):
        assert open(paths[k], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_cli_attack_eval_on_a_saved_model(tmp_path):
    from mtlguard.cli.main import main
    from mtlguard.data import SyntheticScenes
    from mtlguard.models import build_model, save_model

    torch.manual_seed(0)
    ds = SyntheticScenes(2, image_size=(16, 16), seed=0, split="test", progress=False)
    save_model(build_model(ds.tasks, arch="resnet18", image_size=16), tmp_path / "model")
    rc = main(["attack-eval", "--model", str(tmp_path / "model"), "--dataset", "synthetic", "--subset", "2",
               "--attacks", "fgsm", "--aggregations", "total,gbmta", "--eps", "8", "--batch-size", "2",
               "--out", str(tmp_path / "rep"), "--prefix", "attacks_cli", "--no-progress"])
    assert rc == 0
    data = json.loads((tmp_path / "rep" / "attacks_cli.json").read_text())
    assert {r["aggregation"] for r in data["results"]} == {"total", "gbmta"}
    assert data["dataset"]["image_size"] == 16
    with pytest.raises(SystemExit, match="unknown attack"):
        main(["attack-eval", "--model", str(tmp_path / "model"), "--dataset", "synthetic", "--attacks", "cw"])
