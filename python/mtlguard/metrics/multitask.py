"""Cross-task summary metrics: ARP (GB-MTA Eq. 10), Delta_m / Delta-Acc, relative task vulnerability
(Ghamizi et al. 2022, "Robustness Metrics"), attack transferability (GB-MTA Eq. 11).

Metric dictionaries are ``{task: {metric: value}}`` as returned by :func:`mtlguard.metrics.evaluate`.
Higher/lower-is-better comes from :data:`mtlguard.data.tasks.HIGHER_IS_BETTER`.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence


from ..data.tasks import HIGHER_IS_BETTER
from .vulnerability import relative_task_vulnerability  # noqa: F401  (re-exported; defined with Def. 1 / Thm. 4)

Metrics = Mapping[str, Mapping[str, float]]


def _metric_names(before: Metrics, after: Metrics, task: str, metrics: Mapping[str, Sequence[str]] | None):
    if task not in after:
        raise KeyError(f"task {task!r} missing from the 'after' metrics (has {list(after)})")
    names = list(metrics[task]) if metrics and task in metrics else [m for m in before[task] if m in HIGHER_IS_BETTER]
    for m in names:
        if m not in HIGHER_IS_BETTER:
            raise KeyError(f"task {task!r}: metric {m!r} has no known direction (HIGHER_IS_BETTER)")
        if m not in before[task] or m not in after[task]:
            raise KeyError(f"task {task!r}: metric {m!r} missing before or after")
    if not names:
        raise ValueError(f"task {task!r}: no metric to compare")
    return names


def task_arp(before: Mapping[str, float], after: Mapping[str, float], names: Sequence[str]) -> float:
    """Inner part of Eq. 10 for one task: ``1/M sum_j (-1)^{s_j} (m'_j - m_j) / m_j * 100`` (drop > 0)."""
    tot = 0.0
    for m in names:
        b, a = float(before[m]), float(after[m])
        if b == 0:
            raise ZeroDivisionError(f"metric {m!r} is 0 before the attack: ARP undefined")
        sign = -1.0 if HIGHER_IS_BETTER[m] else 1.0
        tot += sign * (a - b) / b * 100.0
    return tot / len(names)


def arp(before: Metrics, after: Metrics, tasks: Sequence[str] | None = None,
        metrics: Mapping[str, Sequence[str]] | None = None) -> dict[str, float]:
    """Average Relative Performance drop, GB-MTA Eq. 10 (percent; higher = stronger attack).

    ``s_{i,j} = 1`` for higher-is-better metrics, so a drop in accuracy or a rise in error is positive.
    Returns ``{"arp": overall, task: per-task ARP ("ARP-X" of Eq. 11)}``.  ``metrics`` optionally picks
    the metrics per task (default: every metric of ``before[task]`` with a known direction).
    """
    tasks = list(tasks) if tasks is not None else [t for t in before if t != "average"]
    per = {t: task_arp(before[t], after[t], _metric_names(before, after, t, metrics)) for t in tasks}
    return {"arp": sum(per.values()) / len(per), **per}


def delta_m(model: Metrics, baseline: Metrics, tasks: Sequence[str] | None = None,
            metrics: Mapping[str, Sequence[str]] | None = None) -> float:
    """Multi-task relative gain ``Delta_m`` (Maninis et al. 2019) of ``model`` over ``baseline`` (percent,
    higher = better); it is ``-ARP(baseline -> model)``."""
    return -arp(baseline, model, tasks, metrics)["arp"]


def delta_acc(clean: Metrics, poisoned: Metrics, tasks: Sequence[str] | None = None,
              metric: str = "accuracy") -> dict[str, float]:
    """Accuracy drop in points, ``100 * (clean - poisoned)``, per task and averaged (``"mean"``).

    The unlearnable-examples papers report raw accuracies; this is their difference to the clean
    victim (positive = the protection works).  Tasks without ``metric`` are skipped.
    """
    tasks = list(tasks) if tasks is not None else [t for t in clean if t != "average" and metric in clean[t]]
    per = {t: 100.0 * (float(clean[t][metric]) - float(poisoned[t][metric])) for t in tasks}
    if not per:
        raise ValueError(f"no task has metric {metric!r}")
    return {"mean": sum(per.values()) / len(per), **per}


def attack_transferability(task_arps: Mapping[str, float], attacked: str) -> float:
    """GB-MTA Eq. 11: ``1/(n-1) sum_{Y != X} ARP-Y / ARP-X`` for the SINGLE-X attack on task ``X``.

    ``task_arps`` holds per-task ARPs (e.g. the per-task entries of :func:`arp`).
    """
    tasks = [t for t in task_arps if t not in ("arp", "average")]
    if attacked not in tasks:
        raise KeyError(f"attacked task {attacked!r} not in {tasks}")
    if len(tasks) < 2:
        raise ValueError("transferability needs at least two tasks")
    ax = float(task_arps[attacked])
    if ax == 0:
        return math.nan
    return sum(float(task_arps[t]) / ax for t in tasks if t != attacked) / (len(tasks) - 1)


def transferability_matrix(task_arps_by_attacked: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """GB-MTA Eq. 11 before averaging: ``M[X][Y] = ARP-Y / ARP-X`` for the SINGLE-X attack on task ``X``
    (``task_arps_by_attacked[X]`` = that attack's per-task ARPs); ``M[X][X] = 1``, ``nan`` where ARP-X is 0.
    The mean of row ``X`` off the diagonal is :func:`attack_transferability`."""
    out: dict[str, dict[str, float]] = {}
    for x, arps in task_arps_by_attacked.items():
        tasks = [t for t in arps if t not in ("arp", "average")]
        if x not in tasks:
            raise KeyError(f"attacked task {x!r} not in {tasks}")
        ax = float(arps[x])
        out[x] = {y: (1.0 if y == x else (math.nan if ax == 0 else float(arps[y]) / ax)) for y in tasks}
    return out
