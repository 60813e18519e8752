"""Several (multi-task) models attacked as one: :class:`ModelSet`.

Auto-SAGE (GB-MTA Eq. 15-16) attacks "a set of models/tasks": every (model, task) pair is one component
of the blend.  :class:`ModelSet` turns ``M`` models into one ``nn.Module`` whose output has one entry per
(model, task), named ``"<key>:<task>"``, with the matching task specs in :attr:`ModelSet.tasks`; so every
attack and aggregation of :mod:`mtlguard.attacks` applies to the set unchanged (``single:m1:age`` attacks
one model's task).  :meth:`ModelSet.expand_targets` maps ``{task: y}`` to the set's names.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import torch
from torch import nn

from ..data.tasks import TaskSpec, validate_tasks


class ModelSet(nn.Module):
    """``forward(x) -> {"<key>:<task>": output}`` over ``models`` (a list -> keys ``m0, m1, ...``, or a dict).

    ``tasks``: the task specs of every model (one sequence for all, or one per model).  Models are held as
    submodules, so the attacks' eval mode / frozen parameters cover all of them.
    """

    def __init__(self, models: Sequence[nn.Module] | Mapping[str, nn.Module],
                 tasks: Sequence[TaskSpec] | Sequence[Sequence[TaskSpec]]) -> None:
        super().__init__()
        items = list(models.items()) if isinstance(models, Mapping) else [(f"m{i}", m) for i, m in enumerate(models)]
        if not items:
            raise ValueError("ModelSet needs at least one model")
        for k, m in items:
            if not isinstance(m, nn.Module):
                raise TypeError(f"ModelSet: model {k!r} is not an nn.Module ({type(m).__name__})")
            if ":" in k:
                raise ValueError(f"ModelSet: model key {k!r} may not contain ':'")
        per_model = (list(tasks) if tasks and not isinstance(tasks[0], TaskSpec) else [list(tasks)] * len(items))
        if len(per_model) != len(items):
            raise ValueError(f"ModelSet: {len(per_model)} task lists for {len(items)} models")
        self.keys = [k for k, _ in items]
        self.models = nn.ModuleDict(dict(items))
        self.model_tasks = {k: validate_tasks(t) for k, t in zip(self.keys, per_model)}
        self.tasks = tuple(dataclasses.replace(t, name=f"{k}:{t.name}") for k in self.keys for t in self.model_tasks[k])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for k in self.keys:
            o = self.models[k](x)
            for t in self.model_tasks[k]:
                out[f"{k}:{t.name}"] = o[t.name]
        return out

    def expand_targets(self, targets: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{task: y}`` (shared by the models) -> ``{"<key>:<task>": y}`` (names already expanded pass through)."""
        out = {}
        for k in self.keys:
            for t in self.model_tasks[k]:
                name = f"{k}:{t.name}"
                out[name] = targets[name] if name in targets else targets[t.name]
        return out
