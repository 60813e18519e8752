"""Task-weighting strategies for MTL training (MTL-UE Sec. 5.1): LS, UW, RLW, Aligned-MTL, FairGrad, PCGrad.

``build_weighting(name, task_names, **kwargs)`` -> :class:`Weighting`; ``strategy.backward(losses,
shared_params)`` fills the gradients and returns the task weights used.
"""
from __future__ import annotations

from typing import Sequence

from .aligned_mtl import AlignedMTL
from .base import GradientWeighting, LossWeighting, Weighting
from .fairgrad import FairGrad
from .ls import LS
from .pcgrad import PCGrad
from .rlw import RLW
from .uw import UW

WEIGHTINGS = {"ls": LS, "uw": UW, "rlw": RLW, "aligned_mtl": AlignedMTL, "fairgrad": FairGrad, "pcgrad": PCGrad}
_ALIASES = {"align": "aligned_mtl", "alignedmtl": "aligned_mtl", "aligned-mtl": "aligned_mtl", "ew": "ls",
            "equal": "ls", "uncertainty": "uw"}


def build_weighting(name: str, task_names: Sequence[str], **kwargs) -> Weighting:
    """The strategy called ``name`` (case-insensitive; aliases ``align``, ``aligned-mtl``, ``ew``)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {name!r}; expected one of {sorted(WEIGHTINGS)}")
    return WEIGHTINGS[key](task_names=list(task_names), **kwargs)


__all__ = ["Weighting", "LossWeighting", "GradientWeighting", "LS", "UW", "RLW", "AlignedMTL", "FairGrad",
           "PCGrad", "WEIGHTINGS", "build_weighting"]
