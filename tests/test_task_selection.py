"""Ghamizi et al. RQ4: task combinations, the three proxies and their Pearson correlation (tiny study)."""
from __future__ import annotations

import math

import pytest
import torch

from mtlguard.attacks.task_selection import (PROXIES, main_task_vulnerability, task_combinations,
                                             task_selection_markdown, task_selection_study)
from mtlguard.metrics import pearson
from test_models_mtl_archs import TASKS, Toy

pytestmark = pytest.mark.usefixtures("one_thread")


def test_task_combinations_main_plus_auxiliaries():
    combos = task_combinations(["s", "d", "n"])
    assert len(combos) == 9 and ("s", ()) in combos and ("s", ("d",)) in combos and ("d", ("s",)) in combos
    assert len(task_combinations(["s", "d", "n"], max_aux=2)) == 12


def test_tiny_study_correlates_the_proxies_with_the_measured_vulnerability():
    res = task_selection_study(Toy(24, 16), Toy(12, 16, seed=1), target_arch="small_cnn", surrogate_arch="small_cnn",
                               epochs=3, early_epochs=1, steps=3, step_size=3 / 255, batch_size=8)
    rows = res["rows"]
    assert len(rows) == 9 and {r["main"] for r in rows} == {"age", "gender", "race"}
    assert sum(1 for r in rows if not r["aux"]) == 3
    for proxy, col in zip(PROXIES, ("early_v", "surrogate_v", "clean_error")):
        r, p = pearson([row[col] for row in rows], [row["target_v"] for row in rows])
        got = res["correlations"][proxy]
        assert got["n"] == 9 and (got["r"] == pytest.approx(r) or (math.isnan(r) and math.isnan(got["r"])))
    assert all(math.isfinite(r["target_v"]) for r in rows)
    assert any(r["early_v"] != r["target_v"] for r in rows)  # the early snapshot is another model
    md = task_selection_markdown(res)
    assert "Pearson r" in md and "| age | gender |" in md


def test_main_task_vulnerability_single_attack_raises_the_main_loss():
    from mtlguard.models import build_model

    torch.manual_seed(0)
    m = build_model(TASKS, "small_cnn", image_size=16)
    ds = Toy(8, 16)
    r = main_task_vulnerability(m, TASKS, "age", [(ds.x, ds.y)], steps=3, step_size=3 / 255)
    assert r["adv_loss"] > r["clean_loss"] and r["v"] == pytest.approx((r["adv_loss"] - r["clean_loss"]) / r["clean_loss"],
                                                                      rel=1e-4)
    with pytest.raises(ValueError, match="attack"):
        task_selection_study(ds, ds, attack="both")
    with pytest.raises(TypeError, match=r"unknown TaskSelectionConfig option\(s\) \['max_auxes'\]; known: .*max_aux"):
        task_selection_study(ds, ds, max_auxes=1)
