"""Autograd (gradcheck), torch.library.opcheck, torch.export and torch.compile(fullgraph=True) for the
compiled mtlguard ops."""
from __future__ import annotations

import pytest
import torch

from mtlguard import ops
from mtlguard.ops import reference as R

needs_ext = pytest.mark.skipif(
    not ops.extension_loaded(), reason=f"mtlguard._C extension not loaded: {ops.extension_error()}"
)


def _embed_args(dtype=torch.float64, b=4):
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(b, 2, 3, 3, generator=gen, dtype=dtype)
    table = torch.randn(5, 2 * 9, generator=gen, dtype=dtype)
    labels = torch.tensor([[0, 2], [-1, 1], [1, -1], [1, 0]][:b])
    return z, table, labels, torch.tensor([0, 2, 5]), (2, 3, 3)


@pytest.mark.parametrize("per_sample", [False, True])
def test_gradcheck_project_linf(per_sample):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 4, 4, generator=gen, dtype=torch.float64) * 1.1 - 0.05  # some x + d outside [0, 1]
    delta = torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64) * 0.05
    eps = torch.tensor([0.01, 0.03, 0.1], dtype=torch.float64) if per_sample else 0.03

    def f(x, delta):
        return ops.project_linf(x, delta, eps)

    assert torch.autograd.gradcheck(f, (x.requires_grad_(), delta.requires_grad_()))


@pytest.mark.parametrize("per_sample", [False, True])
def test_gradcheck_pgd_step(per_sample):
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(3, 2, 4, 4, generator=gen, dtype=torch.float64)
    x_adv = x + torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64) * 0.03
    direction = torch.randn(3, 2, 4, 4, generator=gen, dtype=torch.float64)  # float direction: differentiable
    step = torch.tensor([0.01, 0.02, 0.05], dtype=torch.float64) if per_sample else 0.02
    eps = torch.tensor([0.02, 0.03, 0.04], dtype=torch.float64) if per_sample else 0.03

    def f(x_adv, x, direction):
        return ops.pgd_step(x_adv, x, direction, step, eps)

    assert torch.autograd.gradcheck(f, (x_adv.requires_grad_(), x.requires_grad_(), direction.requires_grad_()))


def test_gradcheck_embed_concat():
    z, table, labels, offsets, es = _embed_args()

    def f(z, table):
        return ops.embed_concat(z, table, labels, offsets, es)

    assert torch.autograd.gradcheck(f, (z.requires_grad_(), table.requires_grad_()))


@needs_ext
def test_opcheck_every_op():
    lib = torch.ops.mtlguard
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 2, 4, 4, generator=gen)
    delta = torch.randn(3, 2, 4, 4, generator=gen) * 0.05
    direction = torch.randint(-1, 2, x.shape, generator=gen, dtype=torch.int8)
    eps_b = torch.rand(3, generator=gen) * 0.05
    z, table, labels, offsets, es = _embed_args(torch.float32)
    grads = list(torch.randn(3, 3, 2, 4, 4, generator=gen).unbind(0))
    cases = [
        (lib.project_linf, (x, delta.requires_grad_(), 0.03, None, 0.0, 1.0)),
        (lib.project_linf, (x.clone().requires_grad_(), delta, 0.0, eps_b, 0.0, 1.0)),
        (lib.pgd_step, (x, x, direction, 0.01, None, 0.03, eps_b, 0.0, 1.0)),
        (lib.pgd_step_, (x.clone(), x, direction, 0.01, eps_b, 0.03, None, 0.0, 1.0)),
        (lib.balanced_sign, (grads, torch.rand(3, 3), "gbmta", None)),
        (lib.balanced_sign, (grads, torch.rand(3, 3), "weighted", torch.rand(3))),
        (lib.embed_concat, (z.requires_grad_(), table.requires_grad_(), labels, offsets, list(es))),
        (lib.embed_concat_backward, (torch.randn(4, 6, 3, 3), labels, offsets, 5, 2, list(es))),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


class _AllOps(torch.nn.Module):
    def forward(self, x, delta, grads, losses, z, table, labels, offsets):
        x_adv, d = ops.project_linf(x, delta, 0.03)
        direction = ops.balanced_sign(grads, losses, "gbmta")
        stepped = ops.pgd_step(x_adv, x, direction, 0.01, 0.03)
        inplace = x_adv.clone()
        ops.pgd_step_(inplace, x, direction, 0.01, 0.03)
        emb = ops.embed_concat(z, table, labels, offsets, (2, 3, 3))
        return x_adv, d, direction, stepped, inplace, emb


def _all_args():
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(4, 2, 3, 3, generator=gen)
    z, table, labels, offsets, _ = _embed_args(torch.float32)
    return (x, torch.randn(4, 2, 3, 3, generator=gen) * 0.05, torch.randn(3, 4, 2, 3, 3, generator=gen),
            torch.rand(3, 4, generator=gen), z, table, labels, offsets)


@needs_ext
def test_torch_export_uses_the_fused_ops():
    args = _all_args()
    ep = torch.export.export(_AllOps(), args)
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    for name in ("project_linf", "balanced_sign", "pgd_step", "embed_concat"):
        assert any(f"mtlguard.{name}" in t for t in targets), (name, targets)
    want = _AllOps()(*args)
    got = ep.module()(*args)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@needs_ext
def test_torch_compile_fullgraph_forward_and_backward():
    args = _all_args()
    x, delta, z, table = args[0], args[1], args[4], args[5]

    def loss_fn(x, delta, z, table):
        out = _AllOps()(x, delta, *args[2:4], z, table, *args[6:])
        return out[0].square().sum() + out[1].sum() + out[3].sum() + out[5].square().sum()

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    leaves = [t.clone().requires_grad_() for t in (x, delta, z, table)]
    ref_leaves = [t.clone().requires_grad_() for t in (x, delta, z, table)]
    compiled(*leaves).backward()
    with ops.use_reference():
        loss_fn(*ref_leaves).backward()
    for a, b in zip(leaves, ref_leaves):
        torch.testing.assert_close(a.grad, b.grad)


def test_use_reference_forces_reference_path():
    with ops.use_reference():
        assert ops.backend() == "reference"
        x = torch.rand(2, 3)
        assert torch.equal(ops.project_linf(x, x, 0.1)[0], R.project_linf(x, x, 0.1)[0])
    assert ops.backend() == ("extension" if ops.extension_loaded() else "reference")
