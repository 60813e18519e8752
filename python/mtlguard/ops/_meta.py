"""Fake (meta) kernels and autograd formulas of the compiled ``torch.ops.mtlguard.*`` ops.

Imported by :mod:`mtlguard.ops._loader` right after ``mtlguard._C`` (the C++ ``TORCH_LIBRARY`` block names
this module with ``m.set_python_module``).  Fake kernels let ``torch.compile`` / ``torch.export`` trace the
ops; they reproduce the kernels' output layout: the input layout when every input is "sample-blocked"
(contiguous or channels_last, same strides), else contiguous.

``apply_delta_u8`` (uint8 output) has no autograd formula.

Autograd:

* ``project_linf``: exact masked derivative of the two clamps (MTL-UE Alg. 1, ``Clip(D(.), -eps, eps)``):
  ``dL/ds = (g_adv + g_dout) * [lo <= x + d <= hi]``, ``dL/dx = dL/ds - g_dout``,
  ``dL/ddelta = dL/ds * [-eps <= delta <= eps]``; eps is not differentiated.
* ``embed_concat``: ``dz`` = the z channels of the output gradient; the table gets a scatter-add of the
  picked rows' gradients, and a ``-1`` label spreads ``1/C_k`` of its gradient over task k's rows
  (the derivative of the mean embedding), via ``mtlguard::embed_concat_backward``.
* ``pgd_step`` (out of place): derivative of the two clamps w.r.t. ``x_adv``, ``x`` and a float ``direction``
  with the reference's tie rules; step and eps are not differentiated.  ``pgd_step_`` (in place) is not
  differentiable.
"""
from __future__ import annotations

import torch

_lib = torch.ops.mtlguard


def _non_overlapping_and_dense(t: torch.Tensor) -> bool:
    """Same rule as c10's TensorImpl::is_non_overlapping_and_dense (strides form a permuted contiguous layout)."""
    dims = sorted((t.stride(i), t.shape[i]) for i in range(t.dim()) if t.shape[i] != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def _sample_blocked(t: torch.Tensor) -> bool:
    if not _non_overlapping_and_dense(t):
        return False
    if t.dim() == 0 or t.shape[0] <= 1:
        return True
    return t.stride(0) == t.numel() // t.shape[0]


def _out_like(tensors, dtype=None) -> torch.Tensor:
    first = tensors[0]
    dtype = dtype or first.dtype
    if all(_sample_blocked(t) and t.stride() == first.stride() for t in tensors):
        return torch.empty_strided(first.shape, first.stride(), dtype=dtype, device=first.device)
    return torch.empty(first.shape, dtype=dtype, device=first.device)


@torch.library.register_fake("mtlguard::project_linf")
def _project_linf_fake(x, delta, eps, eps_per_sample=None, lo=0.0, hi=1.0):
    out = _out_like([x, delta])
    return out, torch.empty_like(out)


@torch.library.register_fake("mtlguard::pgd_step")
def _pgd_step_fake(x_adv, x, direction, step, step_per_sample, eps, eps_per_sample, lo=0.0, hi=1.0):
    return _out_like([x_adv, x, direction], dtype=x_adv.dtype)


@torch.library.register_fake("mtlguard::pgd_step_")
def _pgd_step_inplace_fake(x_adv, x, direction, step, step_per_sample, eps, eps_per_sample, lo=0.0, hi=1.0):
    return None


@torch.library.register_fake("mtlguard::balanced_sign")
def _balanced_sign_fake(grads, losses, mode, weights=None):
    return _out_like(list(grads), dtype=torch.int8)


@torch.library.register_fake("mtlguard::embed_concat")
def _embed_concat_fake(z, table, labels, offsets, emb_shape):
    k = offsets.shape[0] - 1
    return z.new_empty((z.shape[0], z.shape[1] + k * emb_shape[0], z.shape[2], z.shape[3]))


@torch.library.register_fake("mtlguard::embed_concat_backward")
def _embed_concat_backward_fake(grad_out, labels, offsets, table_rows, z_channels, emb_shape):
    e, h, w = emb_shape
    gz = grad_out.new_empty((grad_out.shape[0], z_channels, h, w))
    return gz, grad_out.new_empty((table_rows, e * h * w))


def _has_op(name: str) -> bool:
    """True when the loaded mtlguard._C defines ``name`` (a build older than the op lacks it)."""
    try:
        getattr(_lib, name)
        return True
    except (AttributeError, RuntimeError):
        return False


if _has_op("apply_delta_u8"):

    @torch.library.register_fake("mtlguard::apply_delta_u8")
    def _apply_delta_u8_fake(image, delta, eps):
        return image.new_empty(image.shape)


# ---------------------------------------------------------------------------------------------- autograd


def _project_linf_setup(ctx, inputs, output):
    x, delta, eps, eps_per_sample, lo, hi = inputs
    ctx.save_for_backward(x, delta, eps_per_sample)
    ctx.eps, ctx.lo, ctx.hi = eps, lo, hi


def _project_linf_backward(ctx, g_adv, g_dout):
    x, delta, eps_t = ctx.saved_tensors
    if eps_t is not None:
        e = eps_t.to(x.dtype)
        e = e.reshape((-1,) + (1,) * (x.dim() - 1)) if e.dim() == 1 else e
        d = torch.maximum(torch.minimum(delta, e), -e)
        m_delta = (delta <= e) & (delta >= -e)
    else:
        d = delta.clamp(-ctx.eps, ctx.eps)
        m_delta = (delta <= ctx.eps) & (delta >= -ctx.eps)
    s = x + d
    m_box = (s >= ctx.lo) & (s <= ctx.hi)
    if g_adv is None:
        g_adv = torch.zeros_like(x)
    if g_dout is None:
        g_dout = torch.zeros_like(x)
    gs = (g_adv + g_dout) * m_box
    gx = gs - g_dout if ctx.needs_input_grad[0] else None
    gd = gs * m_delta if ctx.needs_input_grad[1] else None
    return gx, gd, None, None, None, None


torch.library.register_autograd("mtlguard::project_linf", _project_linf_backward, setup_context=_project_linf_setup)


def _embed_concat_setup(ctx, inputs, output):
    z, table, labels, offsets, emb_shape = inputs
    ctx.save_for_backward(labels, offsets)
    ctx.table_rows, ctx.z_channels, ctx.emb_shape = table.shape[0], z.shape[1], list(emb_shape)


def _embed_concat_backward(ctx, grad):
    labels, offsets = ctx.saved_tensors
    gz, gt = _lib.embed_concat_backward(grad, labels, offsets, ctx.table_rows, ctx.z_channels, ctx.emb_shape)
    return (gz if ctx.needs_input_grad[0] else None), (gt if ctx.needs_input_grad[1] else None), None, None, None


torch.library.register_autograd("mtlguard::embed_concat", _embed_concat_backward, setup_context=_embed_concat_setup)


def _pgd_step_setup(ctx, inputs, output):
    x_adv, x, direction, step, step_t, eps, eps_t, lo, hi = inputs
    ctx.save_for_backward(x_adv, x, direction, step_t, eps_t)
    ctx.step, ctx.eps, ctx.lo, ctx.hi = step, eps, lo, hi


def _per_sample_view(v, like):
    v = v.to(like.dtype)
    return v.reshape((-1,) + (1,) * (like.dim() - 1)) if v.dim() == 1 else v


def _pgd_step_backward(ctx, grad):
    """Derivative of ``clamp(minimum(maximum(x_adv + s * dir, x - e), x + e), lo, hi)`` with the reference's
    tie rules (torch.maximum/minimum split a tie's gradient in halves; clamp's bounds are inclusive)."""
    x_adv, x, direction, step_t, eps_t = ctx.saved_tensors
    s = _per_sample_view(step_t, x) if step_t is not None else ctx.step
    e = _per_sample_view(eps_t, x) if eps_t is not None else ctx.eps
    d = direction.to(x.dtype)
    y0 = x_adv + s * d
    lo_b, hi_b = x - e, x + e
    a = torch.maximum(y0, lo_b)
    y1 = torch.minimum(a, hi_b)
    g1 = torch.where((y1 >= ctx.lo) & (y1 <= ctx.hi), grad, torch.zeros_like(grad))
    half = 0.5 * g1
    ga = torch.where(a < hi_b, g1, torch.where(a == hi_b, half, torch.zeros_like(g1)))
    gx_hi = g1 - ga
    g0 = torch.where(y0 > lo_b, ga, torch.where(y0 == lo_b, 0.5 * ga, torch.zeros_like(ga)))
    gx_lo = ga - g0
    gxa = g0 if ctx.needs_input_grad[0] else None
    gx = (gx_hi + gx_lo) if ctx.needs_input_grad[1] else None
    gdir = None
    if ctx.needs_input_grad[2] and direction.is_floating_point():
        gdir = (g0 * s).to(direction.dtype)
    return gxa, gx, gdir, None, None, None, None, None, None


torch.library.register_autograd("mtlguard::pgd_step", _pgd_step_backward, setup_context=_pgd_step_setup)
