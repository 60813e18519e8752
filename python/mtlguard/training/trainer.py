"""One trainer for MTL and STL victims (MTL-UE Sec. 5.1 / A.2).

How it trains is one :class:`~mtlguard.training.config.TrainConfig` (defaults: A.2 for CelebA / ChestX-ray14 /
UTKFace, Adam, lr 1e-3, MultiStepLR with gamma 0.1 at 60% and 80% of the epochs, batch 512, RandomCrop +
RandomHorizontalFlip; NYUv2 uses ``schedule="step"``); its fields may also be passed to :class:`Trainer` one by one.

``out_dir`` layout (all files written atomically, every epoch)::

    out_dir/
      train_config.json    # trainer arguments (seed, epochs, lr, batch size, weighting, ...)
      model_config.json    # rebuilds the model (tasks, arch, image size, ...)
      model.safetensors    # latest weights -> mtlguard.training.load_model(out_dir)
      checkpoint.pt        # model + optimizer + scheduler + weighting + AMP scaler + RNG + history
                           #   (torch.save; loaded with weights_only=True) -> resume=True
      metrics.json         # {"epochs": [{"epoch", "lr", "train_loss": {task}, "task_weights": {task},
                           #   "test": {task: {metric}}, "epoch_time_s"}], "final": {...}}

Reproducibility: the epoch ``e`` shuffling and augmentation draws come from a generator seeded with
``(seed, e)`` and the global torch RNG (RLW weights, PCGrad order, dropout) is reseeded per epoch, so a
run resumed after epoch ``e`` continues exactly like an uninterrupted run (on the same device).

Hooks (keep the loop generic):

* ``transform(images) -> images``: applied to every training batch first (e.g. ISS defenses:
  grayscale, JPEG); ``eval_transform`` likewise for evaluation.
* ``perturb(model, images, targets) -> images_adv``: applied after augmentation (adversarial
  training, e.g. FAT GB-MTA, GB-MTA Alg. 4).  The model is in train mode when called; its parameter
  gradients are cleared afterwards.
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..atomic import atomic_write, atomic_write_text
from ..data.tasks import TaskSpec, validate_tasks
from ..metrics.evaluate import evaluate
from ..models.factory import save_model
from ..models.losses import multi_task_losses
from ..weighting import Weighting, build_weighting
from .augment import random_crop_flip
from .config import TrainConfig, build_scheduler

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.json"
TRAIN_CONFIG_NAME = "train_config.json"

Perturb = Callable[[torch.nn.Module, torch.Tensor, Mapping[str, torch.Tensor]], torch.Tensor]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU + CUDA)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7919 + 17) % (2**63 - 1)


def _atomic_torch_save(obj, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _jsonable(x):
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _check_data(tasks: Sequence[TaskSpec], train_set: Dataset) -> None:
    """A non-empty training set that has every task to train (the error names the missing ones)."""
    if len(train_set) == 0:
        raise ValueError("train_set is empty")
    ds_tasks = getattr(train_set, "tasks", None)
    if ds_tasks is not None:
        have = {t.name for t in ds_tasks}
        missing = [t.name for t in tasks if t.name not in have]
        if missing:
            raise KeyError(f"task(s) {missing} are not in the training set (has {sorted(have)})")


class Trainer:
    """Train ``model`` on ``train_set`` with a task-weighting strategy; evaluate on ``test_set``.

    Args:
        model: a multi-task model (HPS, MTAN, Cross-stitch, branched) or an STL model (``forward(x) -> {task:
            output}``; its ``shared_parameters()`` feed gradient-based weightings); moved to ``device``.
        tasks: the task specs to train (a subset of the dataset's tasks; one task = STL).
        train_set / test_set: mtlguard datasets (items ``(image, {task: target})``).
        config: the run's :class:`TrainConfig` (weighting, epochs, lr, schedule, augmentation, seed, ...).
        device: ``"cpu"`` or ``"cuda"``.
        out_dir / resume: where checkpoints and metrics are written (see the module notes); ``resume=True``
            continues the run saved there.
        transform / eval_transform / perturb: the hooks described in the module notes.
        **options: :class:`TrainConfig` fields replacing ``config``'s (``Trainer(..., epochs=3, lr=1e-2)``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tasks: Sequence[TaskSpec],
        train_set: Dataset,
        test_set: Dataset | None = None,
        config: TrainConfig | None = None,
        *,
        device: str | torch.device = "cpu",
        out_dir: str | os.PathLike | None = None,
        resume: bool = False,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        eval_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        perturb: Perturb | None = None,
        **options,
    ) -> None:
        cfg = self.cfg = TrainConfig.with_options(config, **options)
        self.tasks = validate_tasks(tasks)
        _check_data(self.tasks, train_set)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device='cuda' requested but CUDA is not available on this machine")
        seed_everything(cfg.seed)
        self.model = model.to(self.device)
        self.train_set, self.test_set = train_set, test_set
        self.eval_batch_size = cfg.eval_batch_size or cfg.batch_size
        self.transform, self.eval_transform, self.perturb = transform, eval_transform, perturb
        names = [t.name for t in self.tasks]
        self.weighting = (cfg.weighting if isinstance(cfg.weighting, Weighting)
                          else build_weighting(cfg.weighting, names, **(cfg.weighting_kwargs or {})))
        self.weighting.to(self.device)
        params = list(self.model.parameters()) + list(self.weighting.parameters())
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.amp_dtype = None
        if cfg.amp and self.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.history: list[dict] = []
        self.start_epoch = 0
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.config = self._recorded_config(train_set, test_set, transform, perturb)
        if self.out_dir is not None:
            ck = self.out_dir / CHECKPOINT_NAME
            if ck.exists() and not resume:
                raise FileExistsError(f"{ck} exists: pass resume=True to continue that run, or use another out_dir")
            if ck.exists():
                self._load_checkpoint(ck)
        elif resume:
            raise ValueError("resume=True needs out_dir")

    def _recorded_config(self, train_set, test_set, transform, perturb) -> dict:
        """What ``train_config.json`` and the checkpoint record (and a resumed run must match)."""
        cfg = self.cfg
        return {
            "tasks": [t.name for t in self.tasks], "weighting": self.weighting.name,
            "weighting_kwargs": cfg.weighting_kwargs or {}, "epochs": cfg.epochs, "lr": cfg.lr,
            "batch_size": cfg.batch_size, "weight_decay": cfg.weight_decay, "schedule": cfg.schedule,
            "milestones": list(cfg.milestones), "gamma": cfg.gamma, "step_size": cfg.step_size,
            "augment": cfg.augment, "crop_padding": cfg.crop_padding, "flip": cfg.flip, "amp": str(self.amp_dtype),
            "grad_clip": cfg.grad_clip, "seed": cfg.seed, "device": str(self.device), "max_batches": cfg.max_batches,
            "train_size": len(train_set), "test_size": len(test_set) if test_set is not None else 0,
            "perturb": getattr(perturb, "__name__", type(perturb).__name__) if perturb else None,
            "transform": getattr(transform, "__name__", type(transform).__name__) if transform else None,
        }

    # ---- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "epoch": self.start_epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "weighting": self.weighting.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "history": json.loads(json.dumps(_jsonable(self.history))),
            "config": json.loads(json.dumps(self.config)),
        }

    def _load_checkpoint(self, path: Path) -> None:
        ck = torch.load(str(path), map_location="cpu", weights_only=True)
        old = ck.get("config", {})
        for key in ("tasks", "weighting", "epochs", "seed", "batch_size"):
            if key in old and old[key] != self.config[key]:
                raise ValueError(f"cannot resume {path}: {key}={old[key]!r} there but {self.config[key]!r} now")
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.weighting.load_state_dict(ck["weighting"])
        if ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        torch.set_rng_state(ck["rng_cpu"])
        if ck.get("rng_cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["rng_cuda"])
        self.history = list(ck.get("history", []))
        self.start_epoch = int(ck["epoch"])

    def _save(self) -> None:
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out_dir / TRAIN_CONFIG_NAME, json.dumps(self.config, indent=2))
        save_model(self.model, self.out_dir)
        _atomic_torch_save(self.state_dict(), self.out_dir / CHECKPOINT_NAME)
        final = self.history[-1].get("test") if self.history else None
        atomic_write_text(self.out_dir / METRICS_NAME,
                           json.dumps(_jsonable({"epochs": self.history, "final": final}), indent=2))

    # ---- loops ---------------------------------------------------------------------------------
    def _loader(self, epoch: int, gen: torch.Generator) -> DataLoader:
        n = len(self.train_set)
        order = torch.randperm(n, generator=gen).tolist()
        cfg = self.cfg
        return DataLoader(self.train_set, batch_size=cfg.batch_size, sampler=order, num_workers=cfg.num_workers,
                          drop_last=n > cfg.batch_size, pin_memory=self.device.type == "cuda")

    def _autocast(self):
        return torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype is not None else nullcontext()

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the training set; returns the epoch record (without test metrics)."""
        gen = torch.Generator().manual_seed(_epoch_seed(self.cfg.seed, epoch))
        torch.manual_seed(_epoch_seed(self.cfg.seed, epoch) + 1)
        self.model.train()
        sums = {t.name: 0.0 for t in self.tasks}
        wsums = {t.name: 0.0 for t in self.tasks}
        nb = 0
        loader = self._loader(epoch, gen)
        total = len(loader) if self.cfg.max_batches is None else min(len(loader), self.cfg.max_batches)
        bar = tqdm(loader, total=total, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", leave=False,
                   disable=not self.cfg.progress)
        shared = (self.model.shared_parameters() if hasattr(self.model, "shared_parameters")
                  else list(self.model.parameters()))
        t0 = time.time()
        for i, (x, y) in enumerate(bar):
            if self.cfg.max_batches is not None and i >= self.cfg.max_batches:
                break
            x = x.to(self.device, non_blocking=True)
            y = {t.name: y[t.name].to(self.device, non_blocking=True) for t in self.tasks}
            if self.transform is not None:
                x = self.transform(x)
            if self.cfg.augment:
                pad = self.cfg.crop_padding if self.cfg.crop_padding is not None else x.shape[-2] // 8
                x, y = random_crop_flip(x, y, self.tasks, pad, self.cfg.flip, gen)
            if self.perturb is not None:
                x = self.perturb(self.model, x, y).detach()
                self.model.train()
            self.optimizer.zero_grad(set_to_none=True)
            with self._autocast():
                out = self.model(x)
            losses = multi_task_losses(self.tasks, {k: v.float() for k, v in out.items()}, y)
            for n, v in losses.items():
                if not torch.isfinite(v):
                    raise FloatingPointError(f"epoch {epoch + 1} batch {i}: non-finite loss for task {n!r}: {float(v)}")
            scale = float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0
            weights = self.weighting.backward(losses, shared, scale=scale)
            if self.scaler.is_enabled():
                self.scaler.unscale_(self.optimizer)
            if self.cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            if self.scaler.is_enabled():
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            nb += 1
            for n in sums:
                sums[n] += float(losses[n].detach())
                w = weights[n]
                wsums[n] += float(w.detach() if torch.is_tensor(w) else w)
            bar.set_postfix({n[:8]: f"{float(v.detach()):.3f}" for n, v in losses.items()})
        bar.close()
        dt = time.time() - t0
        return {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"],
                "train_loss": {n: s / max(nb, 1) for n, s in sums.items()},
                "task_weights": {n: s / max(nb, 1) for n, s in wsums.items()},
                "train_batches": nb, "train_time_s": dt,
                "train_images_per_s": nb * self.cfg.batch_size / dt if dt > 0 else None}

    def evaluate(self, dataset: Dataset | None = None) -> dict:
        ds = dataset if dataset is not None else self.test_set
        if ds is None:
            raise ValueError("no dataset to evaluate")
        loader = DataLoader(ds, batch_size=self.eval_batch_size, shuffle=False, num_workers=self.cfg.num_workers)
        return evaluate(self.model, self.tasks, loader, self.device, amp=self.amp_dtype is not None,
                        transform=self.eval_transform, progress=self.cfg.progress)

    def fit(self, until_epoch: int | None = None) -> dict:
        """Train from ``start_epoch`` to ``config.epochs`` (checkpointing every epoch); returns the last test
        metrics.  ``until_epoch`` stops earlier, after that epoch (a run resumed later continues as if never
        stopped: the schedule is the full run's)."""
        last = self.cfg.epochs if until_epoch is None else min(int(until_epoch), self.cfg.epochs)
        for epoch in range(self.start_epoch, last):
            t0 = time.time()
            rec = self.train_epoch(epoch)
            self.scheduler.step()
            if self.test_set is not None and ((epoch + 1) % self.cfg.eval_every == 0 or epoch + 1 == self.cfg.epochs):
                rec["test"] = self.evaluate()
            rec["epoch_time_s"] = time.time() - t0
            self.history.append(rec)
            self.start_epoch = epoch + 1
            self._save()
            if self.cfg.progress:
                msg = " ".join(f"{n}={v:.3f}" for n, v in rec["train_loss"].items())
                if "test" in rec:
                    msg += " | test " + " ".join(
                        f"{t.name}:{k}={v:.3f}" for t in self.tasks for k, v in rec["test"][t.name].items()
                        if isinstance(v, float) and k in t.metrics)
                tqdm.write(f"epoch {epoch + 1}/{self.cfg.epochs} ({rec['epoch_time_s']:.0f}s) loss {msg}")
        return self.history[-1].get("test", {}) if self.history else {}


def train(model, tasks, train_set, test_set=None, weighting="ls", epochs=60, lr=1e-3, batch_size=512,
          out_dir=None, seed=0, device="cpu", **kwargs) -> dict:
    """Convenience wrapper: ``Trainer(...).fit()``; returns ``{"final": test metrics, "history": [...]}``.

    The model is trained in place.  Extra keyword arguments go to :class:`Trainer`.
    """
    tr = Trainer(model, tasks, train_set, test_set, weighting=weighting, epochs=epochs, lr=lr,
                 batch_size=batch_size, out_dir=out_dir, seed=seed, device=device, **kwargs)
    final = tr.fit()
    return {"final": final, "history": tr.history, "out_dir": str(tr.out_dir) if tr.out_dir else None}
