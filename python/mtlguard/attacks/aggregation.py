"""How T per-task input gradients become one attack direction (GB-MTA Sec. "Naive Multi-Task Attacks",
Eq. 4, 8-9; Ghamizi et al. Def. 5).

Aggregation names (``Aggregation.parse``):

============== ============================================================ ==========================
name           direction (per sample)                                       paper
============== ============================================================ ==========================
``single:X``   sign(g_X)                       (only task X is attacked)    GB-MTA "SINGLE-X", Eq. 3
``total``      sign(sum_i g_i)                                              GB-MTA "TOTAL", Eq. 4
``signtotal``  sign(sum_i sign(g_i))                                        GB-MTA "SIGNTOTAL"
``gbmta``      sign(sum_i g_i / L_i(x_t))                                   GB-MTA Eq. 8-9
``wgd``        sign(sum_i g_i / r_i(t)), r_i(t) = Lt_i(t) / mean_j Lt_j(t),  Ghamizi et al. Def. 5, as
               Lt_i(t) = L_i(x_t) / L_i(x_0)                                 meant (see below)
``wgd_literal`` sign(sum_i r_i(t) g_i)  (Def. 5 read literally)               Ghamizi et al. Def. 5
``wgd_initial`` sign(sum_i g_i / L_i(x_0))  (GB-MTA's weights frozen at x_0)   --
``wgd_official`` step 0: sign(sum_i g_i); later: sign(sum_i g_i / Lbar_i),    taskaugment RELATIVE_WEIGHT
               Lbar_i = batch-mean loss at the first iterate (random start)
``weighted``   sign(sum_i w_i g_i), explicit ``weights``                    --
============== ============================================================ ==========================

``L_i`` are **per-sample** losses (``task_loss(..., reduction="none")``), so every weight is per
sample, as in Eq. 9 where each sample's gradient is divided by its own loss.

*WGD: which way Def. 5 points.*  Def. 5 defines the inverse task attack rate ``Lt_i(t) = L_i(t) / L_i(0)``
and the relative inverse attack rate ``r_i(t) = Lt_i(t) / E_j[Lt_j(t)]``, and says WGD weights each task
gradient "by the relative inverse task attack rate".  Read literally (``wgd_literal``: weight ``r_i``), a
task whose loss has already grown most gets the *largest* weight, so the attack piles onto the task it is
already winning.  The paper means the opposite, for three reasons in its own text: (1) the attack is
introduced "to guarantee that the attack affects all targeted tasks -- including those that have a smaller
contribution to the joint loss"; (2) Def. 5 is borrowed from GradNorm's inverse training rate, where a task
whose ratio shows it is *lagging* gets more weight; (3) the definition says "smaller Lt_i implies that task i
is faster to perturb", i.e. the weight ``r_i`` was written for the GradNorm orientation (ratios shrink with
progress) -- under an attack ratios grow with progress, and keeping the intent (more weight to the task that
progressed least) inverts the weight.  So ``wgd`` weights by ``1 / r_i(t) = E_j[Lt_j(t)] / Lt_i(t)``
(per sample, at every step; all weights are 1 at the first step from ``x_0``, where WGD equals TOTAL) and
``wgd_literal`` keeps the literal form.  ``L_i(0)`` is the loss at the unperturbed input ``x_0``.

*The authors' code* (``yamizi/taskaugment``, ``PGD_attack_mtask`` with ``strategy="RELATIVE_WEIGHT"``) is
neither: at its first iteration it records each task's **batch-mean** loss ``Lbar_i`` at the current
iterate (the random start, when there is one) and steps along the plain sum of the task losses; every later
iteration steps along ``sum_i L_i / Lbar_i``, i.e. the per-sample direction ``sign(sum_i g_i / Lbar_i)`` with
one constant weight per task for the whole batch.  That is ``wgd_official`` (the base losses are recorded by
the first direction computed after :meth:`Aggregation.begin`).  ``wgd_initial`` is a per-sample relative of
it: GB-MTA's ``1 / L_i`` weights frozen at the clean point ``x_0``.

Linf attacks take the int8 sign from the fused :func:`mtlguard.ops.balanced_sign`.  L2 attacks and
momentum (MIM) need the un-signed aggregate, :meth:`Aggregation.vector` (same weights, from
:func:`mtlguard.ops.reference.task_weights`, summed in float).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from .. import ops
from ..data.tasks import TaskSpec
from ..ops.reference import LOSS_FLOOR, task_weights

AGGREGATIONS = ("total", "signtotal", "gbmta", "wgd", "wgd_literal", "wgd_initial", "wgd_official", "weighted")
#: aggregations whose objective is GB-MTA's relative loss sum_i (L_i(x') - L_i(x)) / L_i(x)
RELATIVE_OBJECTIVE = ("gbmta", "wgd", "wgd_literal", "wgd_initial", "wgd_official")


@dataclass
class Aggregation:
    """A parsed aggregation: its mode, the attacked tasks (in order) and explicit weights.

    Use :meth:`parse`.  ``state`` (per attack call) holds the clean losses ``L_i(x_0)`` [T, B].
    """

    name: str
    mode: str
    tasks: tuple[TaskSpec, ...]
    weights: torch.Tensor | None = None
    clean_losses: torch.Tensor | None = field(default=None, repr=False)
    #: ``wgd_official``: batch-mean losses [T] recorded at the first direction of the call
    official_base: torch.Tensor | None = field(default=None, repr=False)

    @classmethod
    def parse(
        cls,
        aggregation: str,
        tasks: Sequence[TaskSpec],
        attack_tasks: Sequence[str] | None = None,
        weights: Mapping[str, float] | Sequence[float] | None = None,
    ) -> "Aggregation":
        """Parse ``aggregation`` (see module table) against the model's ``tasks``.

        ``attack_tasks`` selects the attacked subset (default: all tasks); ``single:X`` attacks only X.
        ``weights`` (dict task -> weight or a sequence aligned with the attacked tasks) implies
        ``weighted`` when ``aggregation`` is ``"weighted"`` or left at ``"total"``.
        """
        if not isinstance(aggregation, str):
            raise TypeError(f"aggregation must be a string, got {type(aggregation).__name__}")
        by_name = {t.name: t for t in tasks}
        if attack_tasks is not None:
            attack_tasks = list(attack_tasks)
            if not attack_tasks:
                raise ValueError("attack_tasks is empty: name at least one task to attack")
            unknown = [n for n in attack_tasks if n not in by_name]
            if unknown:
                raise ValueError(f"attack_tasks: unknown task(s) {unknown}; the model's tasks are {list(by_name)}")
            if len(set(attack_tasks)) != len(attack_tasks):
                raise ValueError(f"attack_tasks has duplicates: {attack_tasks}")
        agg = aggregation.strip().lower()
        if agg.startswith("single:") or agg.startswith("single-"):
            task = aggregation.strip()[7:]
            if task not in by_name:
                raise ValueError(f"aggregation {aggregation!r}: unknown task {task!r}; the model's tasks are {list(by_name)}")
            if attack_tasks is not None and attack_tasks != [task]:
                raise ValueError(f"aggregation {aggregation!r} attacks only {task!r}, but attack_tasks={attack_tasks}")
            if weights is not None:
                raise ValueError(f"aggregation {aggregation!r} takes no weights")
            return cls(name=f"single:{task}", mode="single", tasks=(by_name[task],))
        if weights is not None and agg in ("total", "weighted"):
            agg = "weighted"
        if agg not in AGGREGATIONS:
            raise ValueError(
                f"unknown aggregation {aggregation!r}; expected one of {AGGREGATIONS} or 'single:<task>'"
            )
        sel = tuple(by_name[n] for n in attack_tasks) if attack_tasks is not None else tuple(tasks)
        w = None
        if agg == "weighted":
            if weights is None:
                raise ValueError("aggregation 'weighted' needs weights= (dict task -> weight or a list)")
            w = _weights_tensor(weights, sel)
        elif weights is not None:
            raise ValueError(f"weights= only applies to aggregation 'weighted' (got aggregation {aggregation!r})")
        return cls(name=agg, mode=agg, tasks=sel, weights=w)

    # ------------------------------------------------------------------------------------------
    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    def begin(self, clean_losses: torch.Tensor) -> None:
        """Start an attack call: remember the clean per-sample losses ``L_i(x_0)`` [T, B]."""
        self.clean_losses = clean_losses.detach()
        self.official_base = None

    def op_weights(self, losses: torch.Tensor) -> tuple[str, torch.Tensor | None]:
        """``(balanced_sign mode, weights [T, B] or None)`` for the current losses [T, B]."""
        if self.mode in ("single", "total"):
            return "total", None
        if self.mode in ("signtotal", "gbmta"):
            return self.mode, None
        if self.mode == "weighted":
            return "weighted", self.weights.to(losses.device, losses.dtype)[:, None].expand_as(losses)
        if self.mode == "wgd_official":  # taskaugment RELATIVE_WEIGHT
            if self.official_base is None:  # first iteration: record batch-mean losses, plain-sum step
                finite = torch.where(torch.isfinite(losses), losses, torch.zeros_like(losses))
                self.official_base = finite.mean(1).detach()
                return "total", None
            base = self.official_base.to(losses.device, losses.dtype)
            return "weighted", _safe_inverse(base)[:, None].expand_as(losses)
        l0 = self._clean(losses)
        if self.mode == "wgd_initial":
            return "weighted", _safe_inverse(l0)
        # Def. 5: r_i(t) = Lt_i(t) / mean_j Lt_j(t), Lt_i(t) = L_i(t) / L_i(0)
        rate = losses.clamp_min(LOSS_FLOOR) * _safe_inverse(l0)
        rate = torch.where(torch.isfinite(rate), rate, torch.zeros_like(rate))
        mean = rate.mean(0, keepdim=True)
        if self.mode == "wgd_literal":
            return "weighted", torch.where(mean > 0, rate / mean.clamp_min(1e-30), torch.ones_like(rate))
        if self.mode == "wgd":  # as meant: 1 / r_i(t) (more weight to the task whose loss grew least)
            inv = torch.where(rate > 0, mean / rate.clamp_min(1e-30), torch.zeros_like(rate))
            return "weighted", torch.where(mean > 0, inv, torch.ones_like(rate))
        raise AssertionError(self.mode)

    def sign(self, grads: Sequence[torch.Tensor], losses: torch.Tensor) -> torch.Tensor:
        """int8 sign direction [B, ...] via the fused :func:`mtlguard.ops.balanced_sign`."""
        mode, w = self.op_weights(losses)
        return ops.balanced_sign(list(grads), losses, mode=mode, weights=w)

    def vector(self, grads: Sequence[torch.Tensor], losses: torch.Tensor) -> torch.Tensor:
        """Un-signed aggregate sum_i w_i g_i (``signtotal``: sum_i sign(g_i)) in float32/64, [B, ...]."""
        mode, w = self.op_weights(losses)
        acc_dtype = torch.float64 if grads[0].dtype == torch.float64 else torch.float32
        w = task_weights(losses.to(acc_dtype), mode, w)
        acc = torch.zeros(grads[0].shape, dtype=acc_dtype, device=grads[0].device)
        view = (grads[0].shape[0],) + (1,) * (grads[0].dim() - 1)
        for i, g in enumerate(grads):
            g = g.to(acc_dtype)
            acc += torch.sign(g) if w is None else g * w[i].reshape(view)
        return acc

    def objective(self, losses: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
        """Per-sample objective [B] the attack maximizes (used for best-point / restart selection).

        * ``gbmta`` and the ``wgd`` variants: GB-MTA's relative loss sum_i s (L_i(x') - L_i(x)) / L_i(x)
          (Alg. 3 lines 4 and 14);
        * ``total``/``signtotal``/``single``: s * sum_i L_i(x') (Alg. 2, the original APGD);
        * ``weighted``: s * sum_i w_i L_i(x').

        ``sign`` = -1 for targeted attacks (they minimize the loss towards the target class).
        Non-finite losses count as 0.
        """
        losses = torch.where(torch.isfinite(losses), losses, torch.zeros_like(losses))
        if self.mode in RELATIVE_OBJECTIVE:
            l0 = self._clean(losses)
            return sign * ((losses - l0) / l0.clamp_min(LOSS_FLOOR)).sum(0)
        if self.mode == "weighted":
            return sign * (self.weights.to(losses.device, losses.dtype)[:, None] * losses).sum(0)
        return sign * losses.sum(0)

    def _clean(self, losses: torch.Tensor) -> torch.Tensor:
        if self.clean_losses is None or self.clean_losses.shape != losses.shape:
            raise RuntimeError(f"aggregation {self.name!r}: call begin(clean_losses) with [T, B] losses first")
        return self.clean_losses.to(losses.dtype)


def _safe_inverse(l0: torch.Tensor) -> torch.Tensor:
    inv = 1.0 / l0.clamp_min(LOSS_FLOOR)
    return torch.where(torch.isfinite(l0), inv, torch.zeros_like(inv))


def _weights_tensor(weights, tasks: tuple[TaskSpec, ...]) -> torch.Tensor:
    names = [t.name for t in tasks]
    if isinstance(weights, Mapping):
        unknown = [k for k in weights if k not in names]
        if unknown:
            raise ValueError(f"weights: task(s) {unknown} are not attacked; attacked tasks are {names}")
        vals = [float(weights.get(n, 0.0)) for n in names]
    else:
        vals = [float(v) for v in weights]
        if len(vals) != len(names):
            raise ValueError(f"weights: {len(vals)} values for {len(names)} attacked tasks {names}")
    for n, v in zip(names, vals):
        if not (v == v and abs(v) != float("inf")):
            raise ValueError(f"weights: task {n!r} has non-finite weight {v}")
    return torch.tensor(vals, dtype=torch.float32)
