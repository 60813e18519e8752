"""examples/classwise_code_generator.py: a fixed class-wise luma code grafted onto an exported generator.

The edited graph runs in onnxruntime and through the engine; the code is what the tables say, luma (equal on
R, G and B), zero for an unprotected task (label -1), inside the eps budget; code amplitude 0 leaves the
generator's output unchanged; bad input is refused with exit 2 and nothing written."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "python" / "mtlguard" / "assets" / "default_generator.onnx"
SAMPLES = REPO / "python" / "mtlguard" / "assets" / "samples"
EPS = 8 / 255


@pytest.fixture(scope="module")
def mod(load_example):
    return load_example("classwise_code_generator")


def _run(path, image, labels):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["delta"], {"image": image, "labels": labels})[0]


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    image = np.full((6, 3, 32, 32), 0.5, np.float32) + rng.uniform(-0.1, 0.1, (6, 3, 32, 32)).astype(np.float32)
    labels = np.array([[0, 0, 0], [8, 1, 4], [3, 0, 2], [5, 1, 1], [-1, 1, 3], [2, -1, -1]], np.int64)
    return image, labels


TASKS = [{"name": "a", "num_classes": 9}, {"name": "b", "num_classes": 2}, {"name": "c", "num_classes": 5}]


def test_quadrant_tables_live_in_their_quadrant(mod):
    tables = mod.code_tables(TASKS, (32, 32), "quadrant", EPS, 4, 0)
    for k, t in enumerate(tables):
        assert t.shape == (TASKS[k]["num_classes"] + 1, 1, 32, 32)
        assert not t[-1].any()  # the row a -1 label selects
        r, c = divmod(k, 2)
        inside = t[:-1, :, r * 16:(r + 1) * 16, c * 16:(c + 1) * 16]
        np.testing.assert_allclose(np.abs(inside), EPS, rtol=1e-6)
        assert np.abs(t[:-1]).sum() == pytest.approx(np.abs(inside).sum(), rel=1e-6)
        assert len({row.tobytes() for row in t[:-1]}) == TASKS[k]["num_classes"]  # one code per class


def test_grating_and_sum_split_the_amplitude_over_tasks(mod):
    for layout in ("grating", "sum"):
        tables = mod.code_tables(TASKS, (32, 32), layout, 3 * EPS, 4, 0)
        assert sum(np.abs(t).max() for t in tables) == pytest.approx(3 * EPS, rel=1e-3)
    with pytest.raises(ValueError, match="layout"):
        mod.code_tables(TASKS, (32, 32), "stripes", EPS, 4, 0)
    with pytest.raises(ValueError, match="cell"):
        mod.code_tables(TASKS, (32, 32), "quadrant", EPS, 17, 0)


def test_code_alone_is_the_table_lookup(mod, tmp_path, batch):
    out = tmp_path / "code.onnx"
    assert mod.main([str(BUNDLED), str(out), "--layout", "quadrant", "--gen-weight", "0", "--code-amp", "1",
                     "--seed", "3"]) == 0
    image, labels = batch
    delta = _run(out, image, labels)
    tables = mod.code_tables(TASKS, (32, 32), "quadrant", EPS, 4, 3)
    expect = sum(tables[k][labels[:, k]] for k in range(3))  # [-1] is the zero row
    np.testing.assert_allclose(delta, np.repeat(expect, 3, axis=1), atol=1e-6)  # luma: same on R, G, B
    assert not delta[4, :, :16, :16].any() and not delta[5, :, :16, 16:].any()  # unprotected tasks: no code


def test_mix_stays_in_budget_and_zero_code_keeps_the_generator(mod, tmp_path, batch):
    image, labels = batch
    base = _run(BUNDLED, image, np.maximum(labels, 0))
    mixed, same = tmp_path / "mix.onnx", tmp_path / "same.onnx"
    assert mod.main([str(BUNDLED), str(mixed), "--layout", "grating", "--gen-weight", "0.5", "--code-amp", "0.75"]) == 0
    assert mod.main([str(BUNDLED), str(same), "--gen-weight", "1", "--code-amp", "0"]) == 0
    d = _run(mixed, image, np.maximum(labels, 0))
    assert np.abs(d).max() <= EPS + 1e-6 and not np.allclose(d, base, atol=1e-4)
    np.testing.assert_allclose(_run(same, image, np.maximum(labels, 0)), base, atol=1e-6)
    from mtlguard.export.metadata import config_hash, read_onnx_facts

    facts = read_onnx_facts(mixed)
    assert facts.config["classwise_code"]["layout"] == "grating"
    assert facts.config_hash == config_hash(facts.config)


def test_the_engine_runs_the_edited_generator(mod, tmp_path):
    from mtlguard.engine import protect_directory

    model = tmp_path / "code.onnx"
    assert mod.main([str(BUNDLED), str(model), "--layout", "sum", "--code-amp", "1"]) == 0
    report = protect_directory(SAMPLES, tmp_path / "out", model=model, labels=SAMPLES / "labels.csv",
                               progress=False)
    assert report["failed"] == 0 and report["done"] == 4 and len(list((tmp_path / "out").rglob("*.png"))) >= 4


def test_refusals_exit_2_and_write_nothing(mod, tmp_path, capsys):
    taken = tmp_path / "taken.onnx"
    shutil.copyfile(BUNDLED, taken)
    before = taken.read_bytes()
    assert mod.main([str(BUNDLED), str(taken)]) == 2
    assert taken.read_bytes() == before and "exists" in capsys.readouterr().err
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    assert mod.main([str(broken), str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "broken.onnx" in err and not (tmp_path / "x.onnx").exists()
    assert mod.main([str(BUNDLED), str(tmp_path / "y.onnx"), "--gen-weight", "0", "--code-amp", "0"]) == 2
    assert "code-amp" in capsys.readouterr().err and not (tmp_path / "y.onnx").exists()
