"""examples/delta_luma_share.py: the luma / chroma split of a perturbation (what a grayscale victim keeps), on
made-up deltas with known answers and on the bundled generator run in onnxruntime over real UTKFace faces."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "python" / "mtlguard" / "assets" / "default_generator.onnx"


@pytest.fixture(scope="module")
def mod(load_example):
    return load_example("delta_luma_share")


def test_luma_share_of_known_deltas(mod):
    rng = np.random.default_rng(0)
    plane = rng.uniform(-8 / 255, 8 / 255, (4, 1, 8, 8)).astype(np.float32)
    gray = mod.luma_share(np.repeat(plane, 3, axis=1))  # the same delta on R, G and B: grayscale keeps it whole
    assert gray["luma_energy_share"] == pytest.approx(1.0, abs=1e-5) and gray["rms_chroma_255"] < 1e-4
    # a delta orthogonal to the BT.601 weights: grayscale removes it
    direction = np.array([0.587, -0.299, 0.0], np.float32)[None, :, None, None]
    chroma = mod.luma_share(plane * direction)
    assert chroma["luma_energy_share"] == pytest.approx(0.0, abs=1e-6) and chroma["rms_luma_255"] < 1e-4


def test_bundled_generator_on_real_faces(mod, utkface_root, capsys):
    assert mod.main([str(BUNDLED), "--root", str(utkface_root), "--images", "16"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["images"] == 16 and 0.2 < row["luma_energy_share"] < 1.0
    assert 0 < row["mean_abs_delta_255"] <= 8.0 + 1e-3  # the L-inf <= 8/255 budget
    assert mod.main([str(BUNDLED.with_name("missing.onnx"))]) == 2
    assert "missing.onnx: cannot load" in capsys.readouterr().err
