"""mtlguard: unlearnable examples, multi-task attacks and a bulk protection engine for multi-task learning.

Subpackages: :mod:`mtlguard.ops` (fused kernels), :mod:`mtlguard.data`, :mod:`mtlguard.models`,
:mod:`mtlguard.training`, :mod:`mtlguard.weighting`, :mod:`mtlguard.metrics`,
:mod:`mtlguard.unlearnable`, :mod:`mtlguard.attacks`, :mod:`mtlguard.export`, :mod:`mtlguard.engine`.
"""
from ._version import __version__

__all__ = ["__version__", "ops"]


def __getattr__(name: str):
    """``mtlguard.ops`` is imported on first use (it imports torch; ``mtlguard --help`` does not need it)."""
    if name == "ops":
        import importlib

        return importlib.import_module(".ops", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
