"""Fitting the MTL-UE generator: Alg. 1 with the EM, TAP or SEP base loss.

One loop for all three (Alg. 1):

* every round: one pass over the training set updating the generator (E, D and the embeddings)
  with Adam on ``L_b(F', aug(x + delta), y) + lambda1 * Intra-ER + lambda2 * Inter-ER`` (surrogate
  frozen, eval mode);
* EM ("Train-surrogate = True"): then ``train_steps`` (10) Adam steps of the surrogate on
  ``aug(x + delta)``; stop once the surrogate's train accuracy on ``x + delta`` (mean over the
  classification tasks) reaches ``stop_acc`` (99%) or after ``epochs`` rounds (A.1);
* TAP / SEP ("Train-surrogate = False"): the surrogate (TAP) or its checkpoint ensemble (SEP) is
  clean-trained beforehand and frozen; ``epochs`` rounds.

Generator schedule: Adam(lr 1e-3), MultiStepLR at 60% / 80% of the rounds, gamma 0.1 (A.2: the
victims' 60-epoch schedule with milestones 36, 48).  The ER terms apply to class-wise embeddings
only (dense tasks have none, Sec. 4.4).  Augmentation (random crop + flip, A.2) is used when all tasks
are image-level; it is turned off for dense tasks (targets would need the same warp).

Deterministic for a given seed (single-process loading, seeded generators); resumable: the full
state is saved atomically to ``out_dir/fit_state.pt`` after every round and reloaded with
``weights_only=True``.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from ..atomic import atomic_write, atomic_write_text
from .augment import differentiable_augment
from .base_losses import BASE_LOSSES, base_loss, classification_accuracy
from .generator import LEGACY_DELTA_UNITS, MTLUEGenerator
from .regularizers import LAMBDA_INTER, LAMBDA_INTRA, inter_er, intra_er
from .surrogate import ensemble_from_snapshots, infinite_batches, make_loader, to_device, train_step


@dataclass
class FitConfig:
    """Settings of :func:`fit_generator` (defaults = the paper's where CPU-feasible)."""

    base: str = "em"
    epochs: int = 60                 # R in Alg. 1 (max rounds for EM)
    batch_size: int = 512
    lr: float = 1e-3
    lambda_intra: float = LAMBDA_INTRA
    lambda_inter: float = LAMBDA_INTER
    train_steps: int = 10           # I in Alg. 1 (EM only)
    surrogate_lr: float = 1e-3
    stop_acc: float = 0.99          # EM stopping criterion (A.1)
    augment: bool = True
    seed: int = 0
    max_batches: int | None = None  # cap generator batches per round (quick runs); None = full pass

    def __post_init__(self):
        if self.base not in BASE_LOSSES:
            raise ValueError(f"FitConfig.base must be one of {BASE_LOSSES}, got {self.base!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"FitConfig: epochs ({self.epochs}) and batch_size ({self.batch_size}) must be >= 1")


@dataclass
class FitResult:
    rounds: int
    stopped_early: bool
    history: list = field(default_factory=list)  # per round: {"round", "loss", "base", "intra", "inter", "train_acc", "seconds"}


def _save_state(path: Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


@torch.no_grad()
def protected_accuracy(generator: MTLUEGenerator, model: nn.Module, dataset: Dataset, batch_size: int,
                       device, max_batches: int | None = None) -> float:
    """Mean accuracy over classification tasks of ``model`` on ``generator``-protected images (no aug)."""
    generator.eval()
    model.eval()
    correct = {t.name: 0 for t in generator.class_tasks}
    n = 0
    for i, (x, targets) in enumerate(make_loader(dataset, batch_size, 0, shuffle=False)):
        if max_batches is not None and i >= max_batches:
            break
        x = x.to(device)
        targets = to_device(targets, device)
        xp, _ = generator(x, generator.labels_from_targets(targets), _dense(generator, targets))
        for k, v in classification_accuracy(generator.class_tasks, model(xp), targets).items():
            correct[k] += int(v)
        n += x.shape[0]
    if not correct or n == 0:
        return 0.0
    return sum(correct.values()) / (len(correct) * n)


def _legacy_fingerprint(cfg: FitConfig, generator: MTLUEGenerator) -> str | None:
    """The fingerprint a state saved before ``delta_units`` existed has (only ``raw`` generators)."""
    gcfg = generator.config()
    if gcfg.pop("delta_units") != LEGACY_DELTA_UNITS:
        return None
    return json.dumps({"fit": asdict(cfg), "generator": gcfg}, sort_keys=True)


def _dense(generator: MTLUEGenerator, targets) -> dict | None:
    return {t.name: targets[t.name] for t in generator.dense_tasks} if generator.dense_tasks else None


def fit_generator(
    generator: MTLUEGenerator,
    train_set: Dataset,
    surrogate: nn.Module,
    config: FitConfig | None = None,
    snapshots: Sequence[dict] | None = None,
    out_dir: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    stop_after: int | None = None,
) -> FitResult:
    """Optimize ``generator`` with Alg. 1 (see module docstring).

    Args:
        generator: the MTL-UE generator (trained in place).
        train_set: dataset of ``(image, {task: target})``; its tasks must include the generator's.
        surrogate: EM: a freshly initialised MTL model (trained here); TAP: the clean-trained model
            (frozen); SEP: the model whose architecture the ``snapshots`` fit.
        snapshots: SEP only: the clean-training weight snapshots (checkpoint ensemble).
        out_dir: where ``fit_state.pt`` (resume state) and ``fit_history.json`` are written;
            an existing compatible state is resumed.
        stop_after: run at most this many rounds in this call (the state stays resumable), e.g. to
            split a long fit into time-boxed calls.
    """
    from tqdm.auto import tqdm

    cfg = config or FitConfig()
    if cfg.base == "sep" and not snapshots:
        raise ValueError("fit_generator: base 'sep' needs the clean surrogate's checkpoint snapshots")
    tasks = generator.tasks
    dataset_tasks = getattr(train_set, "tasks", None)
    if dataset_tasks is not None:
        have = {t.name for t in dataset_tasks}
        missing = [t.name for t in tasks if t.name not in have]
        if missing:
            raise ValueError(f"fit_generator: dataset has no task(s) {missing} (has {sorted(have)})")
    torch.manual_seed(cfg.seed)
    device = torch.device(device)
    generator.to(device)
    surrogate.to(device)
    augment = cfg.augment and not generator.dense_tasks

    gen_opt = torch.optim.Adam(generator.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(
        gen_opt, milestones=[max(1, int(0.6 * cfg.epochs)), max(1, int(0.8 * cfg.epochs))], gamma=0.1)
    sur_opt = torch.optim.Adam(surrogate.parameters(), lr=cfg.surrogate_lr) if cfg.base == "em" else None
    if cfg.base == "sep":
        models = ensemble_from_snapshots(surrogate, snapshots)
    else:
        models = [surrogate]
    if cfg.base != "em":
        surrogate.eval()
        for p in surrogate.parameters():
            p.requires_grad_(False)

    start_round, history = 0, []
    state_path = Path(out_dir) / "fit_state.pt" if out_dir is not None else None
    fingerprint = json.dumps({"fit": asdict(cfg), "generator": generator.config()}, sort_keys=True)
    if state_path is not None:
        state_path.parent.mkdir(parents=True, exist_ok=True)
        if state_path.is_file():
            st = torch.load(state_path, map_location=device, weights_only=True)
            if st.get("fingerprint") not in (fingerprint, _legacy_fingerprint(cfg, generator)):
                raise ValueError(f"{state_path}: resume state belongs to a different fit configuration; "
                                 "use another out_dir or delete it")
            generator.load_state_dict(st["generator"])
            gen_opt.load_state_dict(st["gen_opt"])
            sched.load_state_dict(st["sched"])
            surrogate.load_state_dict(st["surrogate"])
            if sur_opt is not None and "sur_opt" in st:
                sur_opt.load_state_dict(st["sur_opt"])
            start_round = int(st["round"])
            history = json.loads(st["history"])
            if st.get("done"):
                return FitResult(rounds=start_round, stopped_early=bool(st.get("stopped_early")), history=history)

    use_er = generator.num_class_tasks > 0
    stopped_early = False
    rnd = start_round
    end_round = cfg.epochs if stop_after is None else min(cfg.epochs, start_round + int(stop_after))
    for rnd in range(start_round, end_round):
        t0 = time.time()
        rng = torch.Generator().manual_seed(cfg.seed * 1000003 + rnd)
        generator.train()
        for m in models:
            m.eval()
        if cfg.base == "em":
            for p in surrogate.parameters():
                p.requires_grad_(False)
        sums = {"loss": 0.0, "base": 0.0, "intra": 0.0, "inter": 0.0}
        nb = 0
        loader = make_loader(train_set, cfg.batch_size, cfg.seed + rnd)
        n_batches = len(loader) if cfg.max_batches is None else min(len(loader), cfg.max_batches)
        bar = tqdm(loader, total=n_batches, desc=f"MTL-UE-{cfg.base.upper()} round {rnd + 1}/{cfg.epochs}",
                   disable=not progress, leave=False)
        for i, (x, targets) in enumerate(bar):
            if i >= n_batches:
                break
            x = x.to(device)
            targets = to_device(targets, device)
            xp, _ = generator(x, generator.labels_from_targets(targets), _dense(generator, targets))
            xa = differentiable_augment(xp, rng) if augment else xp
            lb = base_loss(cfg.base, models, tasks, xa, targets)
            loss = lb
            li = lj = torch.zeros((), device=device)
            if use_er:
                embs = generator.task_embeddings()
                li, lj = intra_er(embs), inter_er(embs)
                loss = loss + cfg.lambda_intra * li + cfg.lambda_inter * lj
            gen_opt.zero_grad(set_to_none=True)
            loss.backward()
            gen_opt.step()
            for k, v in (("loss", loss), ("base", lb), ("intra", li), ("inter", lj)):
                sums[k] += float(v.detach())
            nb += 1
            bar.set_postfix(loss=f"{lb.item():.3f}")
        sched.step()
        rec = {k: v / max(nb, 1) for k, v in sums.items()}
        rec["round"] = rnd + 1
        if cfg.base == "em":
            for p in surrogate.parameters():
                p.requires_grad_(True)
            generator.eval()
            batches = infinite_batches(train_set, cfg.batch_size, cfg.seed * 7 + 1000 * (rnd + 1))
            for _ in range(cfg.train_steps):
                x, targets = next(batches)
                x = x.to(device)
                targets = to_device(targets, device)
                with torch.no_grad():
                    xp, _ = generator(x, generator.labels_from_targets(targets), _dense(generator, targets))
                train_step(surrogate, tasks, sur_opt, xp, targets, augment, rng)
            if generator.class_tasks:
                rec["train_acc"] = protected_accuracy(generator, surrogate, train_set, cfg.batch_size, device,
                                                      cfg.max_batches)
        rec["seconds"] = round(time.time() - t0, 3)
        history.append(rec)
        if progress:
            tqdm.write(f"[mtlguard fit] round {rnd + 1}: " + ", ".join(
                f"{k}={v:.4f}" for k, v in rec.items() if k not in ("round",)))
        done = rnd + 1 >= cfg.epochs
        if cfg.base == "em" and rec.get("train_acc", 0.0) >= cfg.stop_acc:
            stopped_early = not done
            done = True
        if state_path is not None:
            st = {
                "fingerprint": fingerprint,
                "round": rnd + 1,
                "generator": generator.state_dict(),
                "gen_opt": gen_opt.state_dict(),
                "sched": sched.state_dict(),
                "surrogate": surrogate.state_dict(),
                "history": json.dumps(history),
                "done": done,
                "stopped_early": stopped_early,
            }
            if sur_opt is not None:
                st["sur_opt"] = sur_opt.state_dict()
            _save_state(state_path, st)
            atomic_write_text(state_path.parent / "fit_history.json", json.dumps(history, indent=2))
        if done:
            break
    generator.eval()
    return FitResult(rounds=len(history), stopped_early=stopped_early, history=history)
