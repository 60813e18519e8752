"""Partial data protection in the engine (``--protect-fraction r --seed S``, MTL-UE Table 9): real UTKFace photos
through the real engine (bundled default generator, onnxruntime), outputs decoded and compared with their inputs."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_engine_standin import copy_utk, engine_cli, one_error_line, tree_digest

from mtlguard.engine import protect_directory
from mtlguard.engine.discovery import mark_protected
from mtlguard.engine.journal import STATE_DIR
from mtlguard.engine.work import Item
from mtlguard.unlearnable.protect import protected_subset

FRACTION, SEED = 0.5, 1
FAST = dict(dataset="utkface", threads=1, workers=1, progress=False)


@pytest.fixture(scope="module")
def photos(utkface_root, tmp_path_factory):
    """10 real UTKFace JPEGs: 8 at the top and 2 in ``0/`` (walk order -- top files first -- differs from the
    sorted order, where ``0/...`` comes first)."""
    src = tmp_path_factory.mktemp("pf") / "in"
    rels = copy_utk(utkface_root, src, 8) + [f"0/{n}" for n in copy_utk(utkface_root, src / "0", 2, offset=8)]
    return src, sorted(rels)


def expected_clean(rels: list[str], fraction: float = FRACTION, seed: int = SEED) -> list[str]:
    """The rule, written out: protected_subset over the sorted relative paths."""
    mask = protected_subset(len(rels), fraction, seed)
    return sorted(r for r, m in zip(sorted(rels), mask) if not m)


def out_name(rel: str) -> str:
    return str(Path(rel).with_suffix(".png"))


def pixels(p: Path) -> np.ndarray:
    with Image.open(p) as im:
        return np.asarray(im.convert("RGB"))


def changed(src: Path, out: Path, rels: list[str]) -> list[str]:
    """The files whose written pixels differ from their decoded input."""
    return sorted(r for r in rels if not np.array_equal(pixels(out / out_name(r)), pixels(src / r)))


def image_files(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png") if STATE_DIR not in p.parts)


def cli(capsys, *args) -> tuple[int, str, str]:
    return engine_cli(capsys, "--threads", "1", "--workers", "1", "--data", "utkface", *args)


# --- the rule ------------------------------------------------------------------------------------------
def test_mark_protected_is_protected_subset_over_sorted_paths_whatever_the_item_order():
    rels = [f"d{i % 3}/img_{i:02d}.jpg" for i in range(13)]
    for trial in range(3):
        order = rels[:]
        random.Random(trial).shuffle(order)
        items = [Item(Path(r), r, r, "png") for r in order]
        clean = mark_protected(items, 0.4, 7)
        assert clean == expected_clean(rels, 0.4, 7) and len(clean) == 13 - round(0.4 * 13)
        assert sorted(it.rel for it in items if not it.protect) == clean
    items = [Item(Path(r), r, r, "png") for r in rels]
    assert mark_protected(items, 1.0, 7) == [] and all(it.protect for it in items)
    assert mark_protected(items, 0.4, 8) != expected_clean(rels, 0.4, 7)  # the seed matters


# --- runs ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_and_half(photos, tmp_path_factory):
    """A full run and a r=0.5 run of the same photos, both one image per inference batch."""
    src, _ = photos
    base = tmp_path_factory.mktemp("runs")
    full = protect_directory(src, base / "full", batch_size=1, **FAST)
    half = protect_directory(src, base / "half", batch_size=1, protect_fraction=FRACTION, seed=SEED, **FAST)
    return base / "full", full, base / "half", half


def test_half_protects_exactly_the_chosen_files_and_leaves_the_others_pixel_identical(photos, full_and_half):
    src, rels = photos
    _, _, out, rep = full_and_half
    clean = expected_clean(rels)
    protected = sorted(set(rels) - set(clean))
    assert len(protected) == round(FRACTION * len(rels)) == 5
    assert changed(src, out, rels) == protected  # every other output decodes to its input's pixels exactly
    assert rep["done"] == 10 and rep["failed"] == 0
    assert rep["partial_protection"] == {"protect_fraction": FRACTION, "seed": SEED, "selected": 10, "protected": 5,
                                         "clean": 5, "clean_files": clean}
    assert rep["options"]["protect_fraction"] == FRACTION and rep["options"]["seed"] == SEED
    assert rep["quality"]["identical_images"] == 5
    saved = json.loads((out / STATE_DIR / "report.json").read_text())
    assert saved["partial_protection"]["clean_files"] == clean


def test_protected_files_get_the_full_runs_protection(photos, full_and_half):
    """With one image per batch the computation is the same: a protected output equals the full run's bytes."""
    _, rels = photos
    full_out, full, half_out, _ = full_and_half
    for rel in sorted(set(rels) - set(expected_clean(rels))):
        assert (half_out / out_name(rel)).read_bytes() == (full_out / out_name(rel)).read_bytes(), rel
    assert full["partial_protection"] == {"protect_fraction": 1.0, "seed": 0, "selected": 10, "protected": 10,
                                          "clean": 0, "clean_files": []}
    run = json.loads((full_out / STATE_DIR / "run.json").read_text())
    assert "protect_fraction" not in run and "seed" not in run  # full runs' fingerprint unchanged (old dirs resume)


def test_output_tree_does_not_tell_protected_from_clean(photos, full_and_half):
    _, rels = photos
    full_out, _, half_out, _ = full_and_half
    assert image_files(half_out) == image_files(full_out) == sorted(out_name(r) for r in rels)
    for meta in ("labels.csv", "tasks.json"):  # same bytes as a full run's: no 'protected' column or flag
        assert (half_out / meta).read_bytes() == (full_out / meta).read_bytes(), meta
    header = (half_out / "labels.csv").read_text().splitlines()[0]
    assert header == "file,age,gender,race"
    kinds = set()
    for rel in rels:
        with Image.open(half_out / out_name(rel)) as im:
            kinds.add((im.format, im.mode, tuple(sorted(im.info))))
    assert len(kinds) == 1, kinds  # same format, mode and PNG chunks for clean and protected outputs


def test_same_choice_with_other_batching_pixel_budget_and_after_a_resume(photos, tmp_path):
    src, rels = photos
    out = tmp_path / "out"
    kw = dict(FAST, workers=2, batch_size=4, pixel_budget=0.05, protect_fraction=FRACTION, seed=SEED)
    first = protect_directory(src, out, **kw)
    assert first["partial_protection"]["clean_files"] == expected_clean(rels)
    assert changed(src, out, rels) == sorted(set(rels) - set(expected_clean(rels)))
    lost = rels[::3]  # as if killed before these were written: their outputs are missing
    for rel in lost:
        (out / out_name(rel)).unlink()
    again = protect_directory(src, out, **kw)
    assert again["skipped"] == 10 - len(lost) and again["done"] == len(lost)
    assert again["partial_protection"]["clean_files"] == expected_clean(rels)
    assert changed(src, out, rels) == sorted(set(rels) - set(expected_clean(rels)))


def test_ray_executor_chooses_the_same_files(photos, full_and_half, tmp_path):
    ray = pytest.importorskip("ray", reason="Ray not installed (optional extra: pip install 'mtlguard[ray]')")
    src, rels = photos
    _, _, half_out, _ = full_and_half
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        rep = protect_directory(src, tmp_path / "ray", executor="ray", batch_size=3,
                                protect_fraction=FRACTION, seed=SEED, **dict(FAST, workers=2))
    finally:
        ray.shutdown()
    assert rep["executor"] == "ray" and rep["done"] == 10
    assert rep["partial_protection"]["clean_files"] == expected_clean(rels)
    assert changed(src, tmp_path / "ray", rels) == sorted(set(rels) - set(expected_clean(rels)))
    for rel in rels:
        assert (tmp_path / "ray" / out_name(rel)).read_bytes() == (half_out / out_name(rel)).read_bytes(), rel


# --- the command line: summary, bad values, resume -----------------------------------------------------
def test_cli_summary_line_and_resume_with_other_fraction_or_seed_refused(photos, tmp_path, capsys):
    src, rels = photos
    out = tmp_path / "out"
    rc, stdout, err = cli(capsys, "--input", src, "--output", out, "--protect-fraction", "0.5", "--seed", SEED)
    assert rc == 0, err
    assert "partial protection: 5 of 10 image(s) protected, 5 left clean (--protect-fraction 0.5 --seed 1" in err
    assert json.loads(stdout)["partial_protection"]["clean_files"] == expected_clean(rels)
    before = tree_digest(out)
    for args, needle in ((("--protect-fraction", "0.3"), "protect_fraction"), (("--seed", "2"), "seed"),
                         ((), "protect_fraction")):  # no option: a full run into a partial run's directory
        rc, _, err = cli(capsys, "--input", src, "--output", out, *args)
        one_error_line(rc, err, "different settings", needle)
        assert tree_digest(out) == before
    rc, _, err = cli(capsys, "--input", src, "--output", out, "--protect-fraction", "0.5", "--seed", SEED)
    assert rc == 0, err  # the same settings resume (every output finished: nothing to do)
    assert json.loads((out / STATE_DIR / "report.json").read_text())["skipped"] == 10


def test_partial_run_into_a_full_runs_directory_is_refused(photos, full_and_half, tmp_path, capsys):
    src, _ = photos
    out = tmp_path / "full"
    shutil.copytree(full_and_half[0], out)
    before = tree_digest(out)
    rc, _, err = cli(capsys, "--input", src, "--output", out, "--protect-fraction", "0.5")
    one_error_line(rc, err, "different settings", "protect_fraction")
    assert tree_digest(out) == before


@pytest.mark.parametrize("option,value", [
    ("--protect-fraction", "0"), ("--protect-fraction", "-0.5"), ("--protect-fraction", "1.5"),
    ("--protect-fraction", "abc"), ("--protect-fraction", "nan"), ("--protect-fraction", ""),
    ("--seed", "x"), ("--seed", "-1"), ("--seed", "0.5"),
])
def test_cli_bad_value_exits_2_with_one_line_naming_the_option(photos, tmp_path, capsys, option, value):
    src, _ = photos
    rc, stdout, err = cli(capsys, "--input", src, "--output", tmp_path / "o", option, value)
    one_error_line(rc, err, option)
    assert stdout == "" and not (tmp_path / "o").exists()


@pytest.mark.parametrize("settings,needle", [
    (dict(protect_fraction=0), "protect_fraction"), (dict(protect_fraction=1.01), "protect_fraction"),
    (dict(protect_fraction="0.5"), "protect_fraction"), (dict(protect_fraction=True), "protect_fraction"),
    (dict(protect_fraction=float("inf")), "protect_fraction"), (dict(seed=-3), "seed"), (dict(seed=1.0), "seed"),
    (dict(protect_fraction=0.5, passthrough=True, dataset=None), "passthrough"),
])
def test_api_bad_value_refused_before_anything_is_written(photos, tmp_path, settings, needle):
    src, _ = photos
    with pytest.raises(ValueError, match=needle):
        protect_directory(src, tmp_path / "o", **{**FAST, **settings})
    assert not (tmp_path / "o").exists()
