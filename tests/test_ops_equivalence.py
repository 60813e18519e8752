"""Every fused op equals its pure-PyTorch reference (mtlguard.ops.reference) on CPU, and on CUDA when a GPU
is present, over random shapes, dtypes and memory layouts."""
from __future__ import annotations

import pytest
import torch

from mtlguard import ops
from mtlguard.ops import reference as R

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA GPU not available on this machine")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
SHAPES = [(1, 1, 1, 1), (3, 5), (4, 3, 7, 9), (2, 3, 16, 16), (5,), (6, 2, 3)]
# bf16/fp16: the kernels round once, the reference after every op -> allow 2 ulp at 1.0
ATOL = {torch.float32: 1e-6, torch.float64: 1e-12, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    torch.testing.assert_close(a.float().cpu(), b.float().cpu(), atol=ATOL[a.dtype], rtol=0)


def _inputs(shape, dtype, device, gen):
    x = torch.rand(shape, generator=gen).to(dtype).to(device)
    delta = (torch.randn(shape, generator=gen) * 0.05).to(dtype).to(device)
    return x, delta


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_project_linf_matches_reference(shape, dtype, device):
    gen = torch.Generator().manual_seed(hash((shape, str(dtype))) % 2**31)
    x, delta = _inputs(shape, dtype, device, gen)
    for eps in (0.03, torch.rand(shape[0], generator=gen).mul(0.05).to(device)):
        got = ops.project_linf(x, delta, eps)
        want = R.project_linf(x, delta, eps)
        _close(got[0], want[0])
        _close(got[1], want[1])
        assert float((got[1].float().abs() - (eps if isinstance(eps, float) else eps.max().item())).max()) <= ATOL[dtype] * 2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dir_dtype", [torch.int8, "same"])
def test_pgd_step_matches_reference(shape, dtype, device, dir_dtype):
    gen = torch.Generator().manual_seed(7 + len(shape))
    x, delta = _inputs(shape, dtype, device, gen)
    x_adv = (x + delta).clamp(0, 1)
    direction = torch.randint(-1, 2, shape, generator=gen, dtype=torch.int8).to(device)
    if dir_dtype == "same":
        direction = direction.to(dtype)
    b = shape[0]
    for step, eps in ((0.01, 0.03), (torch.full((b,), 0.02).to(device), torch.rand(b, generator=gen).to(device) * 0.05)):
        want = R.pgd_step(x_adv, x, direction, step, eps)
        _close(ops.pgd_step(x_adv, x, direction, step, eps), want)
        inplace = x_adv.clone()
        assert ops.pgd_step_(inplace, x, direction, step, eps) is inplace
        _close(inplace, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("t", [1, 3, 10])
@pytest.mark.parametrize("mode", R.MODES)
def test_balanced_sign_matches_reference(mode, t, dtype, device):
    gen = torch.Generator().manual_seed(t * 13 + len(mode))
    b = 4
    grads = torch.randn(t, b, 3, 5, 6, generator=gen).to(dtype).to(device)
    losses = (torch.rand(t, b, generator=gen) * 3).to(device)
    losses[0, 1] = 0.0  # floor
    if t > 1:
        losses[1, 2] = float("nan")  # dropped task for that sample
    weights = torch.rand(t, b, generator=gen).to(device) if mode == "weighted" else None
    want = R.balanced_sign(grads, losses, mode, weights)
    got_stacked = ops.balanced_sign(grads, losses, mode, weights)
    got_list = ops.balanced_sign(list(grads.unbind(0)), losses, mode, weights)
    assert got_stacked.dtype == torch.int8
    assert torch.equal(got_stacked.cpu(), want.cpu())
    assert torch.equal(got_list.cpu(), want.cpu())


@pytest.mark.parametrize("device", DEVICES)
def test_balanced_sign_task_weights_1d_and_many_tasks(device):
    gen = torch.Generator().manual_seed(3)
    t, b = 70, 3  # > 64 tasks exercises the CUDA chunked accumulation
    grads = torch.randn(t, b, 2, 4, 4, generator=gen).to(device)
    losses = torch.rand(t, b, generator=gen).to(device) + 0.1
    w = torch.rand(t, generator=gen).to(device)
    for mode, weights in (("weighted", w), ("gbmta", None), ("signtotal", None)):
        assert torch.equal(ops.balanced_sign(grads, losses, mode, weights).cpu(),
                           R.balanced_sign(grads, losses, mode, weights).cpu())


def _embed_case(gen, dtype, device, b=5, cz=3, e=2, h=4, w=5, sizes=(3, 2, 4)):
    offsets = torch.tensor([0] + list(torch.tensor(sizes).cumsum(0)), dtype=torch.int64)
    z = torch.randn(b, cz, h, w, generator=gen).to(dtype).to(device)
    table = torch.randn(int(offsets[-1]), e * h * w, generator=gen).to(dtype).to(device)
    labels = torch.stack([torch.randint(-1, c, (b,), generator=gen) for c in sizes], 1).to(device)
    return z, table, labels, offsets.to(device), (e, h, w)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_embed_concat_matches_reference(dtype, device):
    gen = torch.Generator().manual_seed(11)
    for shape_kw in ({}, {"b": 1, "cz": 0, "sizes": (2,)}, {"b": 7, "cz": 4, "e": 3, "h": 2, "w": 2}):
        z, table, labels, offsets, es = _embed_case(gen, dtype, device, **shape_kw)
        got = ops.embed_concat(z, table, labels, offsets, es)
        want = R.embed_concat(z, table, labels, offsets, es)
        _close(got, want)
        assert got.shape == (z.shape[0], z.shape[1] + (offsets.numel() - 1) * es[0], es[1], es[2])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_embed_concat_backward_matches_reference_autograd(dtype, device):
    gen = torch.Generator().manual_seed(5)
    z, table, labels, offsets, es = _embed_case(gen, dtype, device, b=9)
    labels[0] = -1  # every task unprotected for sample 0
    upstream = torch.randn(z.shape[0], z.shape[1] + 3 * es[0], es[1], es[2], generator=gen).to(dtype).to(device)
    grads = []
    for fn in (ops.embed_concat, R.embed_concat):
        zz, tt = z.clone().requires_grad_(), table.clone().requires_grad_()
        (fn(zz, tt, labels, offsets, es) * upstream).sum().backward()
        grads.append((zz.grad, tt.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("per_sample", [False, True])
def test_project_linf_backward_matches_reference_autograd(per_sample, device):
    gen = torch.Generator().manual_seed(9)
    x = torch.rand(4, 3, 6, 6, generator=gen).to(device)
    delta = (torch.randn(4, 3, 6, 6, generator=gen) * 0.05).to(device)
    eps = (torch.rand(4, generator=gen) * 0.05).to(device) if per_sample else 0.03
    ga, gd = torch.randn(2, 4, 3, 6, 6, generator=gen).to(device).unbind(0)
    res = []
    for fn in (ops.project_linf, R.project_linf):
        xx, dd = x.clone().requires_grad_(), delta.clone().requires_grad_()
        a, d = fn(xx, dd, eps)
        ((a * ga).sum() + (d * gd).sum()).backward()
        res.append((xx.grad, dd.grad))
    torch.testing.assert_close(res[0][0], res[1][0])
    torch.testing.assert_close(res[0][1], res[1][1])


@pytest.mark.parametrize("device", DEVICES)
def test_layouts_channels_last_and_non_contiguous(device):
    gen = torch.Generator().manual_seed(21)
    base = torch.rand(4, 3, 10, 12, generator=gen).to(device)
    delta = (torch.randn(4, 3, 10, 12, generator=gen) * 0.05).to(device)
    direction = torch.randint(-1, 2, (4, 3, 10, 12), generator=gen, dtype=torch.int8).to(device)
    variants = {
        "channels_last": lambda t: t.contiguous(memory_format=torch.channels_last),
        "strided": lambda t: torch.stack([t, torch.zeros_like(t)], dim=-1)[..., 0],
        "transposed": lambda t: t.transpose(2, 3).contiguous().transpose(2, 3),
        "batch_inner": lambda t: t.permute(1, 2, 3, 0).contiguous().permute(3, 0, 1, 2),
    }
    for name, f in variants.items():
        x, d, dr = f(base), f(delta), f(direction)
        assert torch.equal(x, base), name
        a, o = ops.project_linf(x, d, 0.03)
        ra, ro = R.project_linf(base, delta, 0.03)
        assert torch.equal(a, ra) and torch.allclose(o, ro, atol=1e-7), name
        want = R.pgd_step(ra, base, direction, 0.01, 0.03)
        assert torch.equal(ops.pgd_step(f(ra), x, dr, 0.01, 0.03), want), name
        inplace = f(ra.clone())
        ops.pgd_step_(inplace, x, dr, 0.01, 0.03)
        assert torch.equal(inplace, want), name
        g = torch.stack([delta, -2 * delta.flip(0), base - 0.5])
        losses = torch.rand(3, 4, generator=gen).to(device)
        got = ops.balanced_sign([f(t) for t in g], losses, "gbmta")
        assert torch.equal(got, R.balanced_sign(g, losses, "gbmta")), name
    cl = variants["channels_last"]
    a, _ = ops.project_linf(cl(base), cl(delta), 0.03)
    assert a.is_contiguous(memory_format=torch.channels_last)  # output keeps the input layout
