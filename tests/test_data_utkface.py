"""UTKFace loader on the real data: name parsing, age bins, split, subset, cache, malformed names."""
from __future__ import annotations

import logging
import os
import random

import numpy as np
import pytest
import torch

from mtlguard.data import UTKFace, age_to_bin, parse_utkface_name
from mtlguard.data.utkface import AGE_BIN_NAMES, scan_utkface, split_test_mask


def _hand_decode(name: str) -> tuple[int, int, int]:
    age, gender, race = name.split("_")[:3]
    return int(age), int(gender), int(race)


def _hand_bin(age: int) -> int:
    edges = [2, 9, 19, 29, 39, 49, 59, 69]  # inclusive upper edges of bins 0..7
    for b, hi in enumerate(edges):
        if age <= hi:
            return b
    return 8


def test_age_bins_at_boundaries():
    expected = {0: 0, 1: 0, 2: 0, 3: 1, 9: 1, 10: 2, 19: 2, 20: 3, 29: 3, 30: 4, 59: 6, 60: 7, 69: 7,
                70: 8, 116: 8}
    assert {a: age_to_bin(a) for a in expected} == expected
    assert all(age_to_bin(a) == _hand_bin(a) for a in range(0, 120))
    assert AGE_BIN_NAMES[0] == "0-2" and AGE_BIN_NAMES[8] == "70+"


def test_parse_names():
    assert parse_utkface_name("26_1_3_20170119193405221.jpg.chip.jpg") == (26, 1, 3)
    assert parse_utkface_name("55_0_0_20170116232725357jpg.chip.jpg") == (55, 0, 0)  # kept: labels intact
    assert parse_utkface_name("24_0_1_20170116220224657 .jpg.chip.jpg") == (24, 0, 1)
    assert parse_utkface_name("39_1_20170116174525125.jpg.chip.jpg") is None  # race missing
    assert parse_utkface_name("30_2_0_20170116174525125.jpg.chip.jpg") is None  # gender 2
    assert parse_utkface_name("30_0_5_20170116174525125.jpg.chip.jpg") is None  # race 5
    assert parse_utkface_name("30_0_1_x.png") is None
    assert parse_utkface_name("README.md") is None


def test_real_labels_match_hand_decoded_names(utkface_root, tmp_path):
    ds = UTKFace(utkface_root, split="all", image_size=32, subset=200, seed=1, cache_dir=tmp_path,
                 progress=False)
    assert len(ds) == 200 and ds.image_size == (32, 32) and ds.num_channels == 3
    assert [t.name for t in ds.tasks] == ["age", "gender", "race"]
    assert [t.num_classes for t in ds.tasks] == [9, 2, 5] and all(t.kind == "multiclass" for t in ds.tasks)
    labels = ds.labels_tensor()
    assert labels.dtype == torch.int64 and labels.shape == (200, 3)
    for i, name in enumerate(ds.files):
        age, gender, race = _hand_decode(name)
        assert labels[i].tolist() == [_hand_bin(age), gender, race], name
        assert ds.ages[i] == age
    x, y = ds[5]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and 0.0 <= x.min() and x.max() <= 1.0
    assert x.std() > 0.05  # a real face, not a blank
    assert {k: int(v) for k, v in y.items()} == dict(zip(["age", "gender", "race"], labels[5].tolist()))
    assert all(v.dtype == torch.int64 and v.dim() == 0 for v in y.values())
    view = ds.subset([3, 1])
    assert view.files == (ds.files[3], ds.files[1]) and torch.equal(view.labels_tensor(), labels[[3, 1]])
    np.testing.assert_array_equal(view.images_uint8()[1], ds.load_uint8(1))


def test_boundary_ages_on_real_images(utkface_root, tmp_path):
    """Real images linked under names with boundary ages 2/3, 9/10, 69/70 go to the right bins."""
    src = sorted((utkface_root / "images").iterdir())[:8]
    ages = [2, 3, 9, 10, 69, 70, 1, 116]
    for k, (age, f) in enumerate(zip(ages, src)):
        os.symlink(f, tmp_path / f"{age}_{k % 2}_{k % 5}_2017010{k}000000000.jpg.chip.jpg")
    ds = UTKFace(tmp_path, split="all", image_size=16, cache_dir=False, progress=False)
    got = {int(a): int(b) for a, b in zip(ds.ages, ds.labels_tensor()[:, 0])}
    assert got == {2: 0, 3: 1, 9: 1, 10: 2, 69: 7, 70: 8, 1: 0, 116: 8}


def test_split_is_deterministic_disjoint_and_80_20(utkface_root):
    tr = UTKFace(utkface_root, "train", preload=False, progress=False)
    te = UTKFace(utkface_root, "test", preload=False, progress=False)
    names, _, skipped = scan_utkface(utkface_root / "images")
    assert set(tr.files).isdisjoint(te.files)
    assert set(tr.files) | set(te.files) == set(names)
    assert len(te) == round(0.2 * len(names))
    assert len(skipped) == 3 and all(s.count("_") == 2 for s in skipped)
    # independent of the order the file system lists names in
    shuffled = names[:]
    random.Random(0).shuffle(shuffled)
    mask = split_test_mask(shuffled, 0.2)
    assert {n for n, m in zip(shuffled, mask) if m} == set(te.files)
    # a different split_seed gives a different split of the same size
    te2 = UTKFace(utkface_root, "test", split_seed=1, preload=False, progress=False)
    assert len(te2) == len(te) and set(te2.files) != set(te.files)


def test_subset_is_seeded_and_stratified(utkface_root):
    a = UTKFace(utkface_root, "train", subset=300, seed=0, preload=False, progress=False)
    b = UTKFace(utkface_root, "train", subset=300, seed=0, preload=False, progress=False)
    c = UTKFace(utkface_root, "train", subset=300, seed=1, preload=False, progress=False)
    full = UTKFace(utkface_root, "train", preload=False, progress=False)
    assert a.files == b.files and a.files != c.files and len(a) == 300
    assert set(a.files) <= set(full.files)
    for k, t in enumerate(a.tasks):
        p_sub = np.bincount(a.labels_tensor()[:, k].numpy(), minlength=t.num_classes) / len(a)
        p_all = np.bincount(full.labels_tensor()[:, k].numpy(), minlength=t.num_classes) / len(full)
        assert np.abs(p_sub - p_all).max() < 0.03, (t.name, p_sub, p_all)
    with pytest.raises(ValueError, match="subset=999999"):
        UTKFace(utkface_root, "train", subset=999999, preload=False, progress=False)


def test_cache_hit_returns_identical_arrays(utkface_root, tmp_path):
    kw = dict(split="test", image_size=24, subset=120, seed=3, cache_dir=tmp_path, progress=False)
    first = UTKFace(utkface_root, **kw)
    assert first.cache_hit is False and first.cache_path.is_file()
    assert first.cache_path.parent == tmp_path and "test" in first.cache_path.name
    mtime = first.cache_path.stat().st_mtime_ns
    second = UTKFace(utkface_root, **kw)
    assert second.cache_hit is True and second.cache_path == first.cache_path
    assert first.cache_path.stat().st_mtime_ns == mtime  # not rewritten
    a, b = first.images_uint8(), second.images_uint8()
    assert a.dtype == np.uint8 and a.shape == (120, 24, 24, 3)
    np.testing.assert_array_equal(a, b)
    # the cached pixels are what a fresh decode gives
    lazy = UTKFace(utkface_root, **{**kw, "cache_dir": False}, preload=False)
    for i in (0, 57, 119):
        np.testing.assert_array_equal(lazy.load_uint8(i), b[i])
    assert torch.equal(second[7][0], lazy[7][0])
    # another size or subset gets its own cache file
    other = UTKFace(utkface_root, **{**kw, "image_size": 16})
    assert other.cache_hit is False and other.cache_path != first.cache_path
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temp files


def test_malformed_names_skipped_with_one_warning(utkface_root, tmp_path, caplog):
    src = sorted((utkface_root / "images").iterdir())[:9]
    names = [
        "20_0_1_20170101000000001.jpg.chip.jpg",  # good
        "45_1_3_20170101000000002.jpg.chip.jpg",  # good
        "55_0_0_20170116232725357jpg.chip.jpg",  # known defect, labels parseable: kept
        "39_1_20170116174525125.jpg.chip.jpg",  # race missing: skipped
        "61_1_20170109142408075.jpg.chip.jpg",  # race missing: skipped
        "30_7_0_20170101000000003.jpg.chip.jpg",  # gender 7: skipped
        "x_0_0_20170101000000004.jpg.chip.jpg",  # age not a number: skipped
        "12_0_2_20170101000000005.png",  # not a JPEG name: skipped
        "notes.txt",  # skipped
    ]
    for f, n in zip(src, names):
        os.symlink(f, tmp_path / n)
    with caplog.at_level(logging.WARNING, logger="mtlguard.data"):
        ds = UTKFace(tmp_path, split="all", image_size=16, cache_dir=False, progress=False)
    warnings = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert "skipped 6 malformed" in msg and "39_1_20170116174525125.jpg.chip.jpg" in msg
    assert len(ds) == 3 and sorted(ds.skipped) == sorted(names[3:])
    assert ds.labels_tensor().tolist() == [[3, 0, 1], [5, 1, 3], [6, 0, 0]]
    assert ds.images_uint8().shape == (3, 16, 16, 3)


def test_bad_arguments(utkface_root, tmp_path):
    with pytest.raises(ValueError, match="split"):
        UTKFace(utkface_root, split="val", preload=False)
    with pytest.raises(FileNotFoundError, match="no UTKFace images"):
        UTKFace(tmp_path, preload=False)
