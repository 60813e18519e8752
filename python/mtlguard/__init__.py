"""mtlguard: unlearnable examples, multi-task attacks and a bulk protection engine for multi-task learning.

Subpackages: :mod:`mtlguard.ops` (fused kernels), :mod:`mtlguard.data`, :mod:`mtlguard.models`,
:mod:`mtlguard.training`, :mod:`mtlguard.weighting`, :mod:`mtlguard.metrics`,
:mod:`mtlguard.unlearnable`, :mod:`mtlguard.attacks`, :mod:`mtlguard.export`, :mod:`mtlguard.engine`.
"""
from ._version import __version__
from . import ops

__all__ = ["__version__", "ops"]
