"""mtlguard's fused ops: compiled ``mtlguard._C`` kernels with a pure-PyTorch fallback.

Public API (semantics in :mod:`mtlguard.ops.reference`):

* :func:`project_linf` -- L-inf projection of a perturbation and the [lo, hi] image box, one pass.
* :func:`pgd_step` / :func:`pgd_step_` -- one signed PGD step with both projections.
* :func:`balanced_sign` -- GB-MTA (Eq. 9) and baseline aggregations of T task gradients to an int8 sign.
* :func:`embed_concat` -- MTL-UE's ``concat(z, e^1_{y1}, ..., e^K_{yK})`` with partial protection.
* :func:`apply_delta_u8` -- the engine's native-resolution step (bilinear upsampling of a model-resolution delta,
  clip, add, round, uint8), bit-identical to the engine's numpy path.
* :func:`backend` -- ``"extension"`` when the compiled kernels are in use, else ``"reference"``;
  :func:`backend_info` adds whether CUDA kernels were compiled and why the extension is not used.

The compiled ops are also reachable as ``torch.ops.mtlguard.*`` (schemas in ``csrc/ops.cpp``); their fake
kernels (torch.compile / torch.export) and autograd formulas are in :mod:`mtlguard.ops._meta`.
Set ``MTLGUARD_DISABLE_EXTENSION=1`` to ignore a built extension.

When the extension cannot be loaded, importing mtlguard still works: one warning says why and every
op runs its reference implementation.  :func:`use_reference` forces the reference path (e.g. for
ONNX export, which must lower to standard ops).
"""
from __future__ import annotations

import contextlib
import threading

from . import reference
from ._loader import extension_error, extension_loaded, cuda_kernels_compiled

_state = threading.local()


def _forced_reference() -> bool:
    return getattr(_state, "force_reference", False)


@contextlib.contextmanager
def use_reference(enabled: bool = True):
    """Context manager: run the pure-PyTorch reference ops inside the block (thread-local)."""
    prev = _forced_reference()
    _state.force_reference = enabled
    try:
        yield
    finally:
        _state.force_reference = prev


def backend() -> str:
    """``"extension"`` if the compiled ``mtlguard._C`` kernels are used, else ``"reference"``."""
    return "extension" if extension_loaded() and not _forced_reference() else "reference"


def backend_info() -> dict:
    """Details about the op backend: which is active, CUDA kernels compiled, load error if any."""
    return {
        "backend": backend(),
        "extension_loaded": extension_loaded(),
        "cuda_kernels": cuda_kernels_compiled(),
        "error": extension_error(),
    }


from ._dispatch import (apply_delta_u8, balanced_sign, embed_concat, pgd_step, pgd_step_,  # noqa: E402
                        project_linf)

__all__ = [
    "backend",
    "backend_info",
    "extension_loaded",
    "extension_error",
    "cuda_kernels_compiled",
    "use_reference",
    "reference",
    "project_linf",
    "pgd_step",
    "pgd_step_",
    "balanced_sign",
    "embed_concat",
    "apply_delta_u8",
]
