"""Ghamizi et al. RQ4 (Table 3): cheap proxies of the adversarial vulnerability of task combinations.

For every combination of a **main task** with zero or one **auxiliary task** (the paper's pairs, plus the
single-task models), a *target* model is trained on the combination and attacked; the measured quantity is
the relative task vulnerability ``v`` of the main task (:func:`mtlguard.metrics.relative_task_vulnerability`,
independent of the task's loss scale).  Three proxies are computed for the same combinations and correlated
with it (Pearson ``r`` and p-value, :func:`mtlguard.metrics.pearson`):

* **early stopping** -- the target model's weights after ``early_epochs`` of its ``epochs`` (the paper: 50 of
  150), attacked the same way;
* **surrogate encoder** -- the same combination trained on a cheaper encoder (the paper: ResNet-18 for a
  ResNet-50 target), attacked the same way;
* **clean performance** -- the target model's clean error on the main task (``1 - accuracy`` for
  classification tasks, the mean task loss otherwise); no attack needed.

The attack is L-inf PGD (the paper's base setting: 25 steps, eps 8/255, step 2/255) on the main task only
(``attack="single"``, the paper's "Single" rows) or on every task of the model (``"multi"``).  Every model is
a fresh HPS model of :func:`mtlguard.models.build_model` trained with LS by the shared trainer.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.tasks import TaskSpec, validate_tasks
from ..metrics import pearson, relative_task_vulnerability
from ..models.losses import task_loss
from ..options import with_overrides

PROXIES = ("early_stopping", "surrogate_encoder", "clean_performance")


def task_combinations(task_names: Sequence[str], max_aux: int = 1) -> list[tuple[str, tuple[str, ...]]]:
    """``(main, auxiliaries)`` for every main task with 0..``max_aux`` auxiliary tasks (order-free)."""
    out = []
    for main in task_names:
        others = [t for t in task_names if t != main]
        for k in range(0, max_aux + 1):
            out += [(main, aux) for aux in itertools.combinations(others, k)]
    return out


def main_task_vulnerability(model: torch.nn.Module, tasks: Sequence[TaskSpec], main: str, loader: Iterable,
                            eps: float = 8 / 255, steps: int = 25, step_size: float = 2 / 255,
                            attack: str = "single", device="cpu", seed: int = 0) -> dict:
    """``{"v": relative task vulnerability of main, "clean_error", "clean_loss", "adv_loss"}`` under PGD."""
    from .pgd import PGD

    tasks = validate_tasks(tasks)
    spec = next(t for t in tasks if t.name == main)
    agg = f"single:{main}" if attack == "single" else "total"
    atk = PGD(model, tasks, eps=eps, steps=steps, step_size=step_size, aggregation=agg, seed=seed)
    clean, adv, wrong, n = [], [], 0, 0
    model = model.to(device).eval()
    for x, y in loader:
        x = x.to(device)
        y = {t.name: y[t.name].to(device) for t in tasks}
        x_adv = atk(x, y)
        with torch.no_grad():
            oc, oa = model(x)[main], model(x_adv)[main]
            clean.append(task_loss(spec, oc, y[main], "none").float().cpu())
            adv.append(task_loss(spec, oa, y[main], "none").float().cpu())
            if spec.is_classification:
                pred = (oc.reshape(oc.shape[0], -1)[:, 0] > 0).long() if spec.kind == "binary" else oc.argmax(1)
                wrong += int((pred != y[main].long()).sum())
        n += x.shape[0]
    c, a = torch.cat(clean), torch.cat(adv)
    return {"v": relative_task_vulnerability(c, a), "clean_loss": float(c.mean()), "adv_loss": float(a.mean()),
            "clean_error": wrong / n if spec.is_classification else float(c.mean())}


@dataclass(frozen=True)
class TaskSelectionConfig:
    """The study's settings (defaults: a CPU-sized version of the paper's; its attack is the paper's base one).

    Args:
        target_arch / surrogate_arch: the attacked model's encoder and the cheaper surrogate's.
        epochs / early_epochs: training epochs, and the early-stopping proxy's snapshot epoch (< ``epochs``).
        max_aux: auxiliary tasks per combination (the paper: 0 or 1).
        eps / steps / step_size / attack: L-inf PGD on the main task (``"single"``) or on every task (``"multi"``).
        batch_size / lr / eval_batch_size: training (Adam, LS weighting) and evaluation batches.
        max_batches: cap on training batches per epoch (tests / smoke runs).
    """

    target_arch: str = "resnet18"
    surrogate_arch: str = "small_cnn"
    epochs: int = 6
    early_epochs: int = 2
    max_aux: int = 1
    eps: float = 8 / 255
    steps: int = 25
    step_size: float = 2 / 255
    attack: str = "single"
    batch_size: int = 128
    lr: float = 1e-3
    eval_batch_size: int = 256
    device: str = "cpu"
    seed: int = 0
    progress: bool = False
    max_batches: int | None = None

    def __post_init__(self) -> None:
        if self.attack not in ("single", "multi"):
            raise ValueError(f"attack must be 'single' or 'multi', got {self.attack!r}")
        if not 1 <= self.early_epochs < self.epochs:
            raise ValueError(f"early_epochs must be in [1, epochs), got {self.early_epochs} of {self.epochs}")


def _train(tasks, train_set, arch: str, early: int | None, cfg: TaskSelectionConfig):
    """(final model, early snapshot or None) trained with LS by the shared trainer."""
    from ..models import build_model
    from ..training import Trainer

    torch.manual_seed(cfg.seed)
    x0, _ = train_set[0]
    model = build_model(tasks, arch=arch, in_channels=int(x0.shape[0]), image_size=int(x0.shape[-1]))
    tr = Trainer(model, tasks, train_set, None, weighting="ls", epochs=cfg.epochs, lr=cfg.lr,
                 batch_size=cfg.batch_size, seed=cfg.seed, device=cfg.device, progress=cfg.progress,
                 max_batches=cfg.max_batches)
    snap = None
    for e in range(cfg.epochs):
        tr.train_epoch(e)
        tr.scheduler.step()
        if early is not None and e + 1 == early:
            snap = copy.deepcopy(model).eval()
    return model.eval(), snap


def task_selection_study(train_set: Dataset, test_set: Dataset, tasks: Sequence[TaskSpec] | None = None,
                         config: TaskSelectionConfig | None = None, **options) -> dict:
    """Train the target / early-stopped / surrogate models of every task set and correlate the proxies.

    ``options`` are :class:`TaskSelectionConfig` fields replacing ``config``'s.  Returns ``{"rows": [{"main",
    "aux", "target_v", "early_v", "surrogate_v", "clean_error", ...}], "correlations": {proxy: {"r", "p", "n"}},
    "config": {...}}``.
    """
    cfg = with_overrides(TaskSelectionConfig, config, **options)
    tasks = validate_tasks(tasks if tasks is not None else train_set.tasks)
    by_name = {t.name: t for t in tasks}
    combos = task_combinations([t.name for t in tasks], cfg.max_aux)
    loader = list(DataLoader(test_set, batch_size=cfg.eval_batch_size, shuffle=False))
    models: dict[frozenset, dict] = {}
    t0 = time.time()
    for main, aux in combos:
        key = frozenset((main,) + aux)
        if key in models:
            continue
        ts = tuple(by_name[n] for n in [t.name for t in tasks] if n in key)
        target, early = _train(ts, train_set, cfg.target_arch, cfg.early_epochs, cfg)
        surrogate, _ = _train(ts, train_set, cfg.surrogate_arch, None, cfg)
        models[key] = {"tasks": ts, "target": target, "early": early, "surrogate": surrogate}
    rows = [_combination_row(models[frozenset((main,) + aux)], main, aux, loader, cfg) for main, aux in combos]
    target = [r["target_v"] for r in rows]
    corr = {}
    for proxy, col in zip(PROXIES, ("early_v", "surrogate_v", "clean_error")):
        r, p = pearson([row[col] for row in rows], target)
        corr[proxy] = {"r": r, "p": p, "n": len(rows)}
    recorded = {k: v for k, v in dataclasses.asdict(cfg).items()
                if k not in ("eval_batch_size", "progress", "max_batches")}
    return {"rows": rows, "correlations": corr, "seconds": round(time.time() - t0, 1),
            "config": {**recorded, "device": str(cfg.device), "train_size": len(train_set),
                       "test_size": len(test_set), "tasks": [t.name for t in tasks]}}


def _combination_row(models: dict, main: str, aux: tuple, loader, cfg: TaskSelectionConfig) -> dict:
    """The main task's vulnerability on the target, its early snapshot and the surrogate, and its clean error."""
    kw = dict(eps=cfg.eps, steps=cfg.steps, step_size=cfg.step_size, attack=cfg.attack, device=cfg.device,
              seed=cfg.seed)
    tv = main_task_vulnerability(models["target"], models["tasks"], main, loader, **kw)
    ev = main_task_vulnerability(models["early"], models["tasks"], main, loader, **kw)
    sv = main_task_vulnerability(models["surrogate"], models["tasks"], main, loader, **kw)
    return {"main": main, "aux": list(aux), "target_v": tv["v"], "early_v": ev["v"], "surrogate_v": sv["v"],
            "clean_error": tv["clean_error"], "target_clean_loss": tv["clean_loss"], "target_adv_loss": tv["adv_loss"]}


def task_selection_markdown(res: dict) -> str:
    """Table 3-shaped Markdown: the proxies' Pearson correlation, then every combination's values."""
    c = res["config"]
    lines = ["| Proxy | Target | Pearson r | p-value | n |", "|---|---|---|---|---|"]
    names = {"early_stopping": (f"{c['early_epochs']} epochs", f"{c['epochs']} epochs"),
             "surrogate_encoder": (c["surrogate_arch"], c["target_arch"]),
             "clean_performance": ("clean error (main task)", "robustness")}
    for proxy, (a, b) in names.items():
        v = res["correlations"][proxy]
        lines.append(f"| {a} | {b} | {v['r']:.3f} | {v['p']:.3g} | {v['n']} |")
    lines += ["", "| main | auxiliary | v (target) | v (early) | v (surrogate) | clean error |", "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['main']} | {'+'.join(r['aux']) or '-'} | {r['target_v']:.4f} | {r['early_v']:.4f} | "
                     f"{r['surrogate_v']:.4f} | {r['clean_error']:.4f} |")
    return "\n".join(lines)
