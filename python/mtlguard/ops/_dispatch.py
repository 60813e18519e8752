"""Route each public op to the compiled kernel (``torch.ops.mtlguard.*``) or to its reference.

(Bootstrap version: reference only.  The compiled path is wired in with the csrc/ kernels.)
"""
from __future__ import annotations

from . import reference as _ref

project_linf = _ref.project_linf
pgd_step = _ref.pgd_step


def pgd_step_(x_adv, x, direction, step, eps, lo=0.0, hi=1.0):
    """In-place :func:`pgd_step` on ``x_adv``; returns ``x_adv``."""
    return x_adv.copy_(_ref.pgd_step(x_adv, x, direction, step, eps, lo, hi))


balanced_sign = _ref.balanced_sign
embed_concat = _ref.embed_concat
