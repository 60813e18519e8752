"""The compiled extension is really used when it was built, and the reference fallback works (one clear
warning, same results) when it is disabled."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mtlguard
from mtlguard import ops

_FALLBACK_SCRIPT = r"""
import json, sys, warnings
import torch
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import mtlguard
    from mtlguard import ops
    torch.manual_seed(0)
    x = torch.rand(3, 2, 5, 5); delta = torch.randn_like(x) * 0.1
    g = torch.randn(3, 3, 2, 5, 5); losses = torch.rand(3, 3)
    z = torch.randn(3, 2, 5, 5); table = torch.randn(4, 25); labels = torch.tensor([[0, 1], [-1, 0], [1, -1]])
    out = {
        "project": ops.project_linf(x, delta, 0.05),
        "step": ops.pgd_step(x, x, torch.sign(delta).to(torch.int8), 0.01, 0.03),
        "sign": ops.balanced_sign(g, losses, "gbmta"),
        "embed": ops.embed_concat(z, table, labels, torch.tensor([0, 2, 4]), (1, 5, 5)),
    }
    torch.save(out, sys.argv[1])
msgs = [str(w.message) for w in caught if "mtlguard._C" in str(w.message)]
print(json.dumps({"backend": ops.backend(), "warnings": msgs, "error": ops.extension_error()}))
"""


def test_extension_loaded_when_built():
    spec = importlib.util.find_spec("mtlguard._C")
    if spec is None:
        pytest.skip("mtlguard._C was not built (MTLGUARD_NO_EXTENSION=1 install): reference ops in use")
    if os.environ.get("MTLGUARD_DISABLE_EXTENSION") == "1":
        pytest.skip("MTLGUARD_DISABLE_EXTENSION=1 is set in this environment")
    info = ops.backend_info()
    assert info["extension_loaded"], info
    assert info["backend"] == "extension" and info["error"] is None
    assert hasattr(torch.ops.mtlguard, "balanced_sign")
    x = torch.rand(2, 3)
    assert torch.equal(torch.ops.mtlguard.project_linf(x, torch.zeros_like(x), 0.1, None, 0.0, 1.0)[0], x)
    from mtlguard import _C

    assert info["cuda_kernels"] == _C.cuda_kernels_compiled()
    has_cuda_kernel = torch._C._dispatch_has_kernel_for_dispatch_key("mtlguard::pgd_step", "CUDA")
    assert has_cuda_kernel == info["cuda_kernels"]


def test_fallback_when_disabled(tmp_path: Path):
    out_file = tmp_path / "fallback.pt"
    env = dict(os.environ, MTLGUARD_DISABLE_EXTENSION="1")
    proc = subprocess.run([sys.executable, "-c", _FALLBACK_SCRIPT, str(out_file)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["backend"] == "reference"
    assert len(report["warnings"]) == 1, report["warnings"]
    assert "MTLGUARD_DISABLE_EXTENSION=1" in report["warnings"][0]
    assert "circular import" not in report["warnings"][0]
    # the same computation in this process (extension when built) gives the same results
    got = torch.load(out_file, weights_only=True)
    torch.manual_seed(0)
    x = torch.rand(3, 2, 5, 5); delta = torch.randn_like(x) * 0.1
    g = torch.randn(3, 3, 2, 5, 5); losses = torch.rand(3, 3)
    z = torch.randn(3, 2, 5, 5); table = torch.randn(4, 25); labels = torch.tensor([[0, 1], [-1, 0], [1, -1]])
    want = {
        "project": ops.project_linf(x, delta, 0.05),
        "step": ops.pgd_step(x, x, torch.sign(delta).to(torch.int8), 0.01, 0.03),
        "sign": ops.balanced_sign(g, losses, "gbmta"),
        "embed": ops.embed_concat(z, table, labels, torch.tensor([0, 2, 4]), (1, 5, 5)),
    }
    torch.testing.assert_close(got, want)
    assert mtlguard.ops.backend() in ("extension", "reference")
