"""bench/gpu_check.sh, the one-shot GPU check (issue 15): argument handling, its dry run, its CPU mode end to end
(every step on the CPU with tiny sizes), and that it fails loudly -- never skips -- when no GPU is visible or the
kernels are not usable."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.sh"


def _run(*args, env=None, timeout=300):
    e = dict(os.environ, **(env or {}))
    e.pop("OUT", None)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=e)


def test_dry_run_lists_every_step(tmp_path):
    r = _run("--dry-run", "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr
    for word in ("build:", "pip install --no-build-isolation", "tests:", "-k cuda", "bench/ops.py --device cuda",
                 "bench/attacks.py --device cuda", "bench/engine.py --device cuda --backend torch", "summary"):
        assert word in r.stdout, word
    assert not (tmp_path / "o").exists()  # a dry run writes nothing
    r = _run("--dry-run", "--cpu", "--quick", "--utkface", str(tmp_path), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "no images/ folder" in r.stderr


@pytest.mark.parametrize("args", [["--bogus"], ["--out"], ["--utkface"]])
def test_bad_arguments_exit_2_with_usage(args):
    r = _run(*args)
    assert r.returncode == 2 and "usage: bash bench/gpu_check.sh" in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here")
def test_gpu_mode_without_a_gpu_fails_loudly(tmp_path):
    r = _run("--skip-build", "--out", str(tmp_path))
    assert r.returncode == 3 and "GPU CHECK FAILED: no CUDA GPU is visible" in r.stdout


def test_unusable_kernels_fail_and_skip_the_benchmarks(tmp_path):
    r = _run("--cpu", "--quick", "--out", str(tmp_path), env={"MTLGUARD_DISABLE_EXTENSION": "1"})
    assert r.returncode == 1, r.stdout[-2000:]
    assert "GPU CHECK FAILED" in r.stdout and "kernels" in r.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"]["kernels"]["exit"] != 0 and "ops_bench" not in summary["steps"]


def test_cpu_mode_runs_every_step(tmp_path):
    r = _run("--cpu", "--quick", "--out", str(tmp_path), timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    for name in ("ops_cpu.json", "attacks_cpu.json", "engine_cpu_torch.json", "summary.json", "gpu_check.log",
                 "op_tests.xml"):
        assert (tmp_path / name).is_file(), name
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["steps"]) == {"kernels", "op_tests", "ops_bench", "attacks_bench", "engine_bench"}
    assert all(s["exit"] == 0 for s in summary["steps"].values()) and summary["failed"] == []
    assert "apply_delta_u8" in summary["ops"] and summary["attacks"][0]["identical_adversarial_examples"]
    assert "=== mtlguard GPU check summary (cpu) ===" in r.stdout
    assert len(list(tmp_path.iterdir())) <= 8  # the device tool brings back at most 8 files
