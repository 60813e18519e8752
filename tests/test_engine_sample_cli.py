"""The README's main job: `mtlguard-engine protect --sample` protects the bundled samples with the default generator."""
import json

import numpy as np
from PIL import Image

from mtlguard.engine.cli import main
from mtlguard.engine.samples import SAMPLES_DIR


def test_protect_bundled_sample(tmp_path, capsys):
    out = tmp_path / "protected"
    assert main(["protect", "--sample", "--output", str(out), "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["failed"] == 0 and report["done"] == report["files_total"] >= 4
    assert report["max_abs_delta_written_uint8"] <= report["bound_uint8"] == 8
    src = np.asarray(Image.open(SAMPLES_DIR / "grace_hopper.jpg").convert("RGB"), dtype=np.int16)
    dst = np.asarray(Image.open(out / "grace_hopper.png").convert("RGB"), dtype=np.int16)
    assert src.shape == dst.shape
    diff = np.abs(dst - src)
    assert 0 < diff.max() <= 8  # perturbed, within ceil(eps * 255)


def test_sample_and_input_are_exclusive(tmp_path, capsys):
    assert main(["protect", "--sample", "--input", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert "either --input DIR or --sample" in capsys.readouterr().err
    assert main(["protect", "--output", str(tmp_path / "o")]) == 2
    assert "--input DIR is required" in capsys.readouterr().err
