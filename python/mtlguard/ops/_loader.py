"""Load the compiled ``mtlguard._C`` extension once; warn once (clearly) when it is unavailable."""
from __future__ import annotations

import os
import warnings

_loaded = False
_error: str | None = None
_cuda = False


def _load() -> None:
    global _loaded, _error, _cuda
    if os.environ.get("MTLGUARD_DISABLE_EXTENSION", "0") == "1":
        _error = "disabled by MTLGUARD_DISABLE_EXTENSION=1"
        return
    try:
        import torch  # noqa: F401  (the extension links against libtorch)

        from .. import _C  # noqa: F401  (registers torch.ops.mtlguard.*)

        _loaded = True
        _cuda = bool(getattr(_C, "cuda_kernels_compiled", lambda: False)())
    except Exception as exc:  # ImportError, OSError (ABI/so mismatch), ...
        _error = f"{type(exc).__name__}: {exc}"
        warnings.warn(
            "mtlguard: the compiled extension mtlguard._C could not be loaded "
            f"({_error}); falling back to the pure-PyTorch reference ops (slower). "
            "Rebuild with `pip install --no-build-isolation -e .` to get the fused kernels.",
            RuntimeWarning,
            stacklevel=3,
        )


def extension_loaded() -> bool:
    return _loaded


def extension_error() -> str | None:
    return _error


def cuda_kernels_compiled() -> bool:
    return _cuda


_load()
