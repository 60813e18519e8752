"""Load the compiled ``mtlguard._C`` extension once; warn once (clearly) when it is unavailable.

The extension registers ``torch.ops.mtlguard.*`` (CPU kernels, plus CUDA kernels when compiled with
nvcc); :mod:`mtlguard.ops._meta` then adds the fake (meta) kernels and autograd formulas.  Set
``MTLGUARD_DISABLE_EXTENSION=1`` to ignore a built extension and use the pure-PyTorch reference ops.
"""
from __future__ import annotations

import importlib
import os
import warnings

_loaded = False
_error: str | None = None
_cuda = False


def _warn(reason: str) -> None:
    warnings.warn(
        f"mtlguard: the compiled extension mtlguard._C is not used ({reason}); falling back to the "
        "pure-PyTorch reference ops (slower). Build it with "
        "`pip install --no-build-isolation --no-deps -e .` to get the fused kernels.",
        RuntimeWarning,
        stacklevel=4,
    )


def _load() -> None:
    global _loaded, _error, _cuda
    if os.environ.get("MTLGUARD_DISABLE_EXTENSION", "0") == "1":
        _error = "disabled by MTLGUARD_DISABLE_EXTENSION=1"
        _warn(_error)
        return
    try:
        import torch  # noqa: F401  (the extension links against libtorch: load it first)

        ext = importlib.import_module("mtlguard._C")  # registers torch.ops.mtlguard.*
        cuda = bool(ext.cuda_kernels_compiled())
        importlib.import_module("mtlguard.ops._meta")  # fake kernels + autograd for the compiled ops
    except ModuleNotFoundError as exc:
        if exc.name != "mtlguard._C":
            _error = f"{type(exc).__name__}: {exc}"
        else:
            _error = "mtlguard._C was not built (installed with MTLGUARD_NO_EXTENSION=1, or no compiler)"
        _warn(_error)
        return
    except Exception as exc:  # ImportError/OSError (ABI or torch version mismatch), stale build, ...
        _error = f"{type(exc).__name__}: {exc}"
        _warn(_error)
        return
    _loaded, _cuda = True, cuda


def extension_loaded() -> bool:
    """True when ``mtlguard._C`` was imported and its ops are registered."""
    return _loaded


def extension_error() -> str | None:
    """Why the extension is not used (``None`` when it is)."""
    return _error


def cuda_kernels_compiled() -> bool:
    """True when the loaded extension contains the CUDA kernels."""
    return _cuda


_load()
