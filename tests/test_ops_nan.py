"""NaN handling is the same on every backend (issue 15): a NaN in the data OR in a bound (x, eps, per-sample eps
or step, lo, hi) propagates in project_linf / pgd_step / pgd_step_, as in the reference ops (torch.maximum /
torch.minimum).  The CPU kernels used to drop a NaN bound (std::max/std::min)."""
from __future__ import annotations

import pytest
import torch

from mtlguard import ops
from mtlguard.ops import reference as R

NAN = float("nan")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA GPU not available on this machine")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]


def _inputs(device, dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 5, 7, generator=g)
    xa = (x + torch.randn(x.shape, generator=g) * 0.01).clamp(0, 1)
    direction = torch.randint(-1, 2, x.shape, generator=g).to(torch.int8)
    delta = torch.randn(x.shape, generator=g) * 0.05
    return [t.to(device) if t.dtype == torch.int8 else t.to(device, dtype) for t in (x, xa, direction, delta)]


def _with_nan(t, *idx):
    t = t.clone()
    for i in idx:
        t[i] = NAN
    return t


def _cases(x, xa, d, delta):
    dev, dt = x.device, x.dtype
    eps_t = torch.tensor([0.03, NAN, 0.02, 0.01], device=dev, dtype=dt)
    step_t = torch.tensor([0.01, 0.01, NAN, 0.01], device=dev, dtype=dt)
    xn = _with_nan(x, (0, 0, 0, 0), (1, 2, 3, 4))
    xan = _with_nan(xa, (2, 1, 1, 1))
    return {
        "pgd x": lambda f: f.pgd_step(xa, xn, d, 0.01, 0.03),
        "pgd x_adv": lambda f: f.pgd_step(xan, x, d, 0.01, 0.03),
        "pgd eps[B]": lambda f: f.pgd_step(xa, x, d, 0.01, eps_t),
        "pgd step[B]": lambda f: f.pgd_step(xa, x, d, step_t, 0.03),
        "pgd eps": lambda f: f.pgd_step(xa, x, d, 0.01, NAN),
        "pgd lo": lambda f: f.pgd_step(xa, x, d, 0.01, 0.03, lo=NAN),
        "pgd hi": lambda f: f.pgd_step(xa, x, d, 0.01, 0.03, hi=NAN),
        "pgd float direction": lambda f: f.pgd_step(xa, x, _with_nan(d.to(dt), (3, 0, 0, 0)), 0.01, 0.03),
        "project x": lambda f: f.project_linf(xn, delta, 0.03),
        "project delta": lambda f: f.project_linf(x, _with_nan(delta, (0, 1, 2, 3)), 0.03),
        "project eps[B]": lambda f: f.project_linf(x, delta, eps_t),
        "project lo": lambda f: f.project_linf(x, delta, 0.03, lo=NAN),
        "project hi": lambda f: f.project_linf(x, delta, 0.03, hi=NAN),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_nan_propagates_like_the_reference(device, dtype):
    x, xa, d, delta = _inputs(device, dtype)
    atol = 1.6e-2 if dtype == torch.bfloat16 else 1e-6
    for name, case in _cases(x, xa, d, delta).items():
        got, want = case(ops), case(R)
        got = got if isinstance(got, tuple) else (got,)
        want = want if isinstance(want, tuple) else (want,)
        for g, w in zip(got, want):
            assert int(w.isnan().sum()) > 0, name
            torch.testing.assert_close(g.float().cpu(), w.float().cpu(), equal_nan=True, atol=atol, rtol=0, msg=name)


@pytest.mark.parametrize("device", DEVICES)
def test_in_place_step_propagates_nan(device):
    x, xa, d, _ = _inputs(device, torch.float32)
    eps_t = torch.tensor([0.03, NAN, 0.02, 0.01], device=device)
    want = R.pgd_step(xa, x, d, 0.01, eps_t)
    for layout in (torch.contiguous_format, torch.channels_last):
        buf = xa.clone().contiguous(memory_format=layout)
        ops.pgd_step_(buf, x, d, 0.01, eps_t)
        torch.testing.assert_close(buf, want, equal_nan=True, atol=1e-6, rtol=0)
    buf = xa.clone()
    ops.pgd_step_(buf, _with_nan(x, (0, 0, 1, 1)), d, 0.01, 0.03)
    assert bool(buf[0, 0, 1, 1].isnan()) and int(buf.isnan().sum()) == 1
