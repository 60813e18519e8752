"""Fitting the MTL-UE generator: Alg. 1 with the EM, TAP or SEP base loss, optionally made robust.

One loop for all three (Alg. 1):

* every round: one pass over the training set updating the generator (E, D and the embeddings)
  with Adam on ``L_b(F', aug(x + delta), y) + lambda1 * Intra-ER + lambda2 * Inter-ER`` (surrogates
  frozen, eval mode);
* EM ("Train-surrogate = True"): then ``train_steps`` (10) Adam steps of the surrogate(s) on
  ``aug(x + delta)``; stop once the surrogate's train accuracy on ``x + delta`` (mean over the
  classification tasks) reaches ``stop_acc`` (99%) or after ``epochs`` rounds (A.1);
* TAP / SEP ("Train-surrogate = False"): the surrogate (TAP) or its checkpoint ensemble (SEP) is
  clean-trained beforehand and frozen; ``epochs`` rounds.

Generator schedule: Adam(lr 1e-3), MultiStepLR at 60% / 80% of the rounds, gamma 0.1 (A.2: the
victims' 60-epoch schedule with milestones 36, 48).  The ER terms apply to class-wise embeddings
only (dense tasks have none, Sec. 4.4).  ``aug`` is random crop + flip (A.2) when all tasks are
image-level; it is turned off for dense tasks (targets would need the same warp).

Robust fitting (our extensions, each off by default so Alg. 1 as written stays available):

* **Native resolution.**  When the training images are larger than the generator's input (e.g. 200x200
  UTKFace files and a 32x32 generator), ``x + delta`` is formed exactly as ``mtlguard-engine`` writes it
  (:meth:`MTLUEGenerator.protect_native`: resize in, delta upsampled, re-clipped, added).
* **EOT** (``eot``): ``aug`` becomes a random victim pipeline (:class:`mtlguard.unlearnable.eot.VictimView`:
  uint8 storage, grayscale / JPEG / blur / bit-depth reduction, random-resized-crop to a random victim
  size, flip), i.e. ``E_T[L_b(F', T(x + delta), y)]``.  The EM surrogate is trained on the same views.
  Which views: ``--eot-sizes``, ``--eot-crop-scale`` (``1,1`` = no crop) and ``--eot-defenses`` (a scale of
  the default probabilities, or ``gray=P,jpeg=P,...``).  Measured on the deployment protocol
  (``reports/protection_deploy_defenses.md``, seed 0): a 32-px fit with half of its views grayscale and no
  crops (surrogate trained on the same views) lost protection in every column, grayscale included.
* **Periodic class codes** (:class:`MTLUEGenerator`'s ``emb_tile``, ``--emb-tile``): each class embedding
  is a ``t x t`` tile repeated over the latent grid, so a random crop shows the code at another phase.
  Measured on the same row (the bundled recipe otherwise): ``t`` = 4 / 8 shifted protection from race
  (standard 0.50 / 0.53 vs 0.86) to age and did not raise the worst case (0.17 / 0.12 vs 0.20).
* **Adversarial views** (``adv_eps``, ``adv_steps``; REM, Fu et al. 2022): ``L_b`` is taken at the
  worst case of an ``adv_eps`` L-inf ball around each view (PGD maximizing ``L_b`` itself: min-min-max for
  EM, min-max of the targeted loss for TAP), and the EM surrogate is trained on such views (PGD-AT), so
  the shortcut must survive an adversarially trained victim.  Measured with the default's TAP recipe
  (``--adv-eps 4 --adv-steps 2``, ``reports/protection_deploy_defenses.md``, seed 0, ResNet-18@32): the
  strongest standard-training protection so far (PR 1.40 / 1.24 / 2.12) and >= 0.91 behind JPEG-10, BDR-2,
  blur and mixup, but no gain against PGD-AT victims (race -0.10 vs 0.00) and grayscale age 0.12.
* **Several surrogates** (pass a list): ``L_b`` is their mean (SEP-style over architectures); EM trains
  each; TAP takes the mean of the targeted losses of the clean-trained models.  With
  :func:`mtlguard.unlearnable.recipes.fit_recipe`, ``ARCH@SIZE`` makes a member see every input resized to
  ``SIZE`` (a multi-resolution ensemble), ``ARCH:gray`` in grayscale (a grayscale-trained member).  Measured
  on top of adversarial views + the split delta (``reports/protection_deploy_zoo_screen.md``, seed 0): adding
  a MobileNetV3-small member moved the zoo's weakest cells a little (ResNet-18@64 age 0.73 -> 0.81, VGG-11@32
  age 0.67 -> 0.72), a ResNet-50 member did not (0.71, 0.54); ResNet-18 at 32 and 64 px fitted on 64-px
  images did not either (0.71, 0.68) and lowered the 32-px row (0.87 / 0.87 / 0.97).  A grayscale member on
  the bundled default's recipe (``resnet18,resnet18:gray``) doubled grayscale PR (0.24 / 0.23 / 0.33 -> 0.49 / 0.46 / 0.47) at the same
  ResNet-18@32 standard cell but cost age on those two victims (1.09 / 1.03 -> 0.73 / 0.78).
* **Task balance** (``task_balance``; :mod:`mtlguard.unlearnable.base_losses`): ``"log"`` (GB-MTA's formula
  as written) or ``"lagging"`` instead of the paper's sum.  Measured on the same screen: both move protection
  between tasks without adding to it (ResNet-18@64: log age 0.35, lagging age 1.18 but gender 0.49).
* **Speed** (``amp="bf16"``, ``channels_last``): convolutions autocast to bfloat16 (image arithmetic, the
  clip and the losses stay float32) and NHWC tensors; ``bench/fit.py`` measures the ratio per round.
* **Joint EM** (``joint``): with EM, the surrogates take an optimizer step on every generator batch, on
  the same views and the same loss, instead of only ``train_steps`` steps after each pass.  EM's
  ``min_delta min_theta`` then becomes joint descent: the generator writes a label code into the
  perturbation and the surrogates learn to read it, which is what makes the data a shortcut.  Measured
  on UTKFace at native resolution with EOT (``reports/protection_deploy.md``): alternating EM's
  surrogate stayed at clean-level protected-train accuracy (0.57-0.61 over 11 rounds) while joint EM
  rose above it within a few rounds.  ``reinit_every`` re-initializes the surrogates every N rounds so the
  code must stay learnable from scratch (a fresh victim), not only by a co-adapted reader.

Deterministic for a given seed (single-process loading, seeded generators); resumable: the state is saved
atomically to ``out_dir/fit_state.pt`` after every round and reloaded with ``weights_only=True``.  The
state does not carry what the caller passes in again (frozen TAP/SEP surrogates).  A finished fit can be
extended by calling again with a larger ``epochs``: the LR schedule is re-derived from the new total
(rounds already run keep the rates they had).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
from torch.utils.data import Dataset

from ..atomic import atomic_write, atomic_write_text
from .augment import differentiable_augment
from .base_losses import BASE_LOSSES, TASK_BALANCES, base_loss, classification_accuracy
from .eot import EOTConfig, VictimView, fixed_view
from .generator import LEGACY_DELTA_UNITS, MTLUEGenerator
from .regularizers import LAMBDA_INTER, LAMBDA_INTRA, inter_er, intra_er
from .surrogate import ensemble_from_snapshots, infinite_batches, make_loader, to_device, train_step


@dataclass
class FitConfig:
    """Settings of :func:`fit_generator` (defaults = the paper's where CPU-feasible; robust options off)."""

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
    eot: EOTConfig | None = None    # robust fitting: random victim pipelines (module notes)
    adv_eps: float = 0.0            # REM-style adversarial views (L-inf radius, [0, 1] units); 0 = off
    adv_steps: int = 0
    task_balance: str = "sum"       # how L_b combines the tasks: "sum" (Alg. 1), "log" or "lagging" (base_losses)
    joint: bool = False             # EM: the surrogates also step on every generator batch (module notes)
    reinit_every: int = 0           # EM: re-initialize the surrogates every N rounds (0 = never)
    amp: str = "none"               # "bf16": autocast convolutions to bfloat16 (speed; see bench/fit.py)
    channels_last: bool = False     # NHWC memory format for the generator and surrogates (speed)

    def __post_init__(self):
        if self.base not in BASE_LOSSES:
            raise ValueError(f"FitConfig.base must be one of {BASE_LOSSES}, got {self.base!r}")
        if self.task_balance not in TASK_BALANCES:
            raise ValueError(f"FitConfig.task_balance must be one of {TASK_BALANCES}, got {self.task_balance!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"FitConfig: epochs ({self.epochs}) and batch_size ({self.batch_size}) must be >= 1")
        if isinstance(self.eot, dict):
            self.eot = EOTConfig.from_dict(self.eot)
        if self.amp not in ("none", "bf16"):
            raise ValueError(f"FitConfig.amp must be 'none' or 'bf16', got {self.amp!r}")
        if (self.joint or self.reinit_every) and self.base != "em":
            raise ValueError(f"FitConfig: joint / reinit_every apply to base 'em' only, got base {self.base!r}")
        if self.adv_eps < 0 or self.adv_steps < 0 or (self.adv_eps > 0) != (self.adv_steps > 0):
            raise ValueError(f"FitConfig: adv_eps ({self.adv_eps}) and adv_steps ({self.adv_steps}) must both be "
                             "positive (adversarial views) or both 0")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["eot"] = self.eot.to_dict() if self.eot is not None else None
        return d


#: options added after fit states were first saved: those states were made with each option's default (off)
_LATER_OPTIONS = {f.name: f.default for f in fields(FitConfig)
                  if f.name in ("eot", "adv_eps", "adv_steps", "task_balance", "joint", "reinit_every", "amp",
                                "channels_last")}


@dataclass
class FitResult:
    rounds: int
    stopped_early: bool
    history: list = field(default_factory=list)  # per round: {"round", "loss", "base", "intra", "inter", "train_acc", "seconds"}


def _comparable(fingerprint: str) -> dict:
    """What must match to resume: the fingerprint without ``epochs`` (fits may be extended) and with options
    added later filled in as states saved before them were made."""
    fp = json.loads(fingerprint)
    fit = fp.get("fit", {})
    fit.pop("epochs", None)
    for k, v in _LATER_OPTIONS.items():
        fit.setdefault(k, v)
    gen = fp.get("generator", {})
    gen.setdefault("delta_units", LEGACY_DELTA_UNITS)
    gen.setdefault("delta_channels", "all")
    return fp


def _fingerprint(cfg: FitConfig, generator: MTLUEGenerator) -> str:
    return json.dumps({"fit": cfg.to_dict(), "generator": generator.config()}, sort_keys=True)


def _dense(generator: MTLUEGenerator, targets) -> dict | None:
    return {t.name: targets[t.name] for t in generator.dense_tasks} if generator.dense_tasks else None


def protect_batch(generator: MTLUEGenerator, x: torch.Tensor, targets) -> torch.Tensor:
    """``x + delta`` for a batch: the generator's own forward at its size, the engine's recipe above it."""
    labels = generator.labels_from_targets(targets)
    if tuple(x.shape[-2:]) == generator.image_size:
        return generator(x, labels, _dense(generator, targets))[0]
    return generator.protect_native(x, labels, _dense(generator, targets))[0]


def check_view_size(cfg: FitConfig, generator: MTLUEGenerator) -> int | None:
    """The side at which accuracies are checked: the middle EOT size, else none (the images' own)."""
    if cfg.eot is None:
        return None
    sizes = sorted(cfg.eot.sizes)
    return sizes[len(sizes) // 2]


@torch.no_grad()
def protected_accuracy(generator: MTLUEGenerator, model: nn.Module, dataset: Dataset, batch_size: int,
                       device, max_batches: int | None = None, view_size: int | None = None,
                       progress: bool = False) -> float:
    """Mean accuracy over classification tasks of ``model`` on ``generator``-protected images (no aug;
    ``view_size``: resized to that side after uint8 storage, as a victim's test-time resize)."""
    from tqdm.auto import tqdm

    generator.eval()
    model.eval()
    correct = {t.name: 0 for t in generator.class_tasks}
    n = 0
    loader = make_loader(dataset, batch_size, 0, shuffle=False)
    total = len(loader) if max_batches is None else min(len(loader), max_batches)
    for i, (x, targets) in enumerate(tqdm(loader, total=total, desc="surrogate accuracy", leave=False,
                                          disable=not progress)):
        if max_batches is not None and i >= max_batches:
            break
        x = x.to(device)
        targets = to_device(targets, device)
        xp = protect_batch(generator, x, targets)
        if view_size is not None:
            xp = fixed_view(xp, view_size)
        for k, v in classification_accuracy(generator.class_tasks, model(xp), targets).items():
            correct[k] += int(v)
        n += x.shape[0]
    if not correct or n == 0:
        return 0.0
    return sum(correct.values()) / (len(correct) * n)


class _Views:
    """What a surrogate sees of a protected batch: crop + flip (A.2), a random victim pipeline (EOT), or
    the batch itself; optionally moved to the worst case of an ``adv_eps`` ball (REM)."""

    def __init__(self, cfg: FitConfig, generator: MTLUEGenerator):
        self.cfg = cfg
        self.tasks = generator.tasks
        self.eot = VictimView(cfg.eot) if cfg.eot is not None else None
        self.augment = cfg.augment and not generator.dense_tasks

    def __call__(self, xp: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        if self.eot is not None:
            return self.eot(xp, rng)
        return differentiable_augment(xp, rng) if self.augment else xp

    def adversarial(self, models: Sequence[nn.Module], xv: torch.Tensor, targets, loss_name: str = "em",
                    balance: str = "sum") -> torch.Tensor:
        """``xv`` plus the (detached) PGD perturbation within ``adv_eps`` maximizing ``loss_name`` (tasks combined
        by ``balance``) over the surrogates: the loss the generator minimizes (``L_b``: EM, or TAP's targeted
        loss) for the generator's step, the EM loss for an EM surrogate's own PGD-AT step."""
        cfg = self.cfg
        if cfg.adv_steps <= 0:
            return xv
        base = xv.detach()
        step = 2.5 * cfg.adv_eps / cfg.adv_steps
        delta = torch.empty_like(base).uniform_(-cfg.adv_eps, cfg.adv_eps)
        for _ in range(cfg.adv_steps):
            delta.requires_grad_(True)
            loss = base_loss(loss_name, models, self.tasks, (base + delta).clamp(0, 1), targets, balance=balance)
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + step * grad.sign()).clamp(-cfg.adv_eps, cfg.adv_eps)
        return (xv + delta.detach()).clamp(0, 1)


class _Alg1:
    """The state of one Alg. 1 run (generator, surrogates, optimizers, schedule) and its two phases."""

    def __init__(self, generator, train_set, surrogates: list[nn.Module], cfg: FitConfig, snapshots, device, progress):
        self.gen, self.data, self.cfg, self.device, self.progress = generator, train_set, cfg, device, progress
        self.surrogates = surrogates
        self.gen_opt = torch.optim.Adam(generator.parameters(), lr=cfg.lr)
        self.sur_opts = ([torch.optim.Adam(s.parameters(), lr=cfg.surrogate_lr) for s in surrogates]
                         if cfg.base == "em" else [])
        self.models = ensemble_from_snapshots(surrogates[0], snapshots) if cfg.base == "sep" else surrogates
        if cfg.base != "em":
            for s in surrogates:
                s.eval()
                s.requires_grad_(False)
        self.views = _Views(cfg, generator)
        if cfg.channels_last:
            for m in [generator, *surrogates]:
                m.to(memory_format=torch.channels_last)
        self.use_er = generator.num_class_tasks > 0
        self.history: list[dict] = []
        self.start_round = 0

    # --- speed options -------------------------------------------------------------------------------------
    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.amp == "bf16")

    def nhwc(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    # --- schedule ----------------------------------------------------------------------------------------
    def milestones(self) -> list[int]:
        e = self.cfg.epochs
        return [max(1, int(0.6 * e)), max(1, int(0.8 * e))]

    def set_lr(self, rnd: int) -> None:
        """MultiStepLR(60%, 80%, gamma 0.1) of the configured total, evaluated at round ``rnd``."""
        lr = self.cfg.lr * 0.1 ** sum(rnd >= m for m in self.milestones())
        for g in self.gen_opt.param_groups:
            g["lr"] = lr

    # --- phases ------------------------------------------------------------------------------------------
    def generator_round(self, rnd: int, rng: torch.Generator) -> dict:
        from tqdm.auto import tqdm

        cfg, gen = self.cfg, self.gen
        gen.train()
        for m in self.models:
            m.eval()
        if cfg.base == "em":
            for s in self.surrogates:
                s.requires_grad_(cfg.joint)
                s.train(cfg.joint)
        sums = {"loss": 0.0, "base": 0.0, "intra": 0.0, "inter": 0.0}
        loader = make_loader(self.data, cfg.batch_size, cfg.seed + rnd)
        n_batches = len(loader) if cfg.max_batches is None else min(len(loader), cfg.max_batches)
        bar = tqdm(loader, total=n_batches, desc=f"MTL-UE-{cfg.base.upper()} round {rnd + 1}/{cfg.epochs}: generator",
                   disable=not self.progress, leave=False)
        nb = 0
        for i, (x, targets) in enumerate(bar):
            if i >= n_batches:
                break
            targets = to_device(targets, self.device)
            with self.autocast():
                xp = protect_batch(gen, self.nhwc(x.to(self.device)), targets)
            xv = self.views(xp.float(), rng)  # the victim pipeline (JPEG, resizing) stays float32
            with self.autocast():
                xv = self.views.adversarial(self.models, self.nhwc(xv), targets, cfg.base, cfg.task_balance)
                lb = base_loss(cfg.base, self.models, gen.tasks, xv, targets, balance=cfg.task_balance).float()
            loss, li, lj = lb, torch.zeros(()), torch.zeros(())
            if self.use_er:
                embs = gen.task_embeddings()
                li, lj = intra_er(embs), inter_er(embs)
                loss = loss + cfg.lambda_intra * li + cfg.lambda_inter * lj
            self.gen_opt.zero_grad(set_to_none=True)
            for opt in self.sur_opts:
                opt.zero_grad(set_to_none=True)
            loss.backward()
            self.gen_opt.step()
            if cfg.joint:
                for s, opt in zip(self.surrogates, self.sur_opts):
                    nn.utils.clip_grad_norm_(s.parameters(), 5.0)
                    opt.step()
            for k, v in (("loss", loss), ("base", lb), ("intra", li), ("inter", lj)):
                sums[k] += float(v.detach())
            nb += 1
            bar.set_postfix(loss=f"{float(lb.detach()):.3f}")
        bar.close()
        return {k: v / max(nb, 1) for k, v in sums.items()}

    def surrogate_steps(self, rnd: int, rng: torch.Generator) -> None:
        """EM: ``train_steps`` steps of every surrogate on (adversarial) views of the protected data."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        for s in self.surrogates:
            s.requires_grad_(True)
        self.gen.eval()
        batches = infinite_batches(self.data, cfg.batch_size, cfg.seed * 7 + 1000 * (rnd + 1))
        for _ in tqdm(range(cfg.train_steps), desc=f"round {rnd + 1}: surrogate steps", disable=not self.progress,
                      leave=False):
            x, targets = next(batches)
            targets = to_device(targets, self.device)
            with torch.no_grad():
                with self.autocast():
                    xp = protect_batch(self.gen, self.nhwc(x.to(self.device)), targets)
                xv = self.nhwc(self.views(xp.float(), rng))
            for s, opt in zip(self.surrogates, self.sur_opts):
                with self.autocast():
                    xs = self.views.adversarial([s], xv, targets) if cfg.adv_steps else xv
                    train_step(s, self.gen.tasks, opt, xs, targets, augment=False)

    def reinit_surrogates(self) -> None:
        """Fresh weights and optimizer state for every surrogate (``reinit_every``)."""
        for s, opt in zip(self.surrogates, self.sur_opts):
            for m in s.modules():
                if hasattr(m, "reset_parameters") and m is not s:
                    m.reset_parameters()
            opt.state.clear()

    def accuracy(self) -> float:
        with self.autocast():
            return protected_accuracy(self.gen, self.surrogates[0], self.data, self.cfg.batch_size, self.device,
                                      self.cfg.max_batches, check_view_size(self.cfg, self.gen), self.progress)

    # --- state -------------------------------------------------------------------------------------------
    def state(self, fingerprint: str, done: bool, stopped_early: bool) -> dict:
        st = {"fingerprint": fingerprint, "round": len(self.history), "generator": self.gen.state_dict(),
              "gen_opt": self.gen_opt.state_dict(), "history": json.dumps(self.history), "done": done,
              "stopped_early": stopped_early}
        if self.cfg.base == "em":  # the trained surrogates are part of the fit; frozen ones are the caller's
            st["surrogates"] = [s.state_dict() for s in self.surrogates]
            st["sur_opts"] = [o.state_dict() for o in self.sur_opts]
        return st

    def load(self, st: dict) -> None:
        self.gen.load_state_dict(st["generator"])
        self.gen_opt.load_state_dict(st["gen_opt"])
        if self.cfg.base == "em":
            surs = st.get("surrogates") or [st["surrogate"]]  # "surrogate": states saved before ensembles
            opts = st.get("sur_opts") or ([st["sur_opt"]] if "sur_opt" in st else [])
            for s, sd in zip(self.surrogates, surs):
                s.load_state_dict(sd)
            for o, sd in zip(self.sur_opts, opts):
                o.load_state_dict(sd)
        self.history = json.loads(st["history"])
        self.start_round = int(st["round"])


def _check_tasks(generator: MTLUEGenerator, train_set: Dataset) -> None:
    dataset_tasks = getattr(train_set, "tasks", None)
    if dataset_tasks is not None:
        have = {t.name for t in dataset_tasks}
        missing = [t.name for t in generator.tasks if t.name not in have]
        if missing:
            raise ValueError(f"fit_generator: dataset has no task(s) {missing} (has {sorted(have)})")


def fit_generator(
    generator: MTLUEGenerator,
    train_set: Dataset,
    surrogate: nn.Module | Sequence[nn.Module],
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
        train_set: dataset of ``(image, {task: target})``; its tasks must include the generator's.  Images
            larger than the generator's input are protected at their own size (the engine's recipe).
        surrogate: EM: freshly initialised MTL model(s) (trained here); TAP: the clean-trained model(s)
            (frozen); SEP: the model whose architecture the ``snapshots`` fit.  A list = an ensemble.
        snapshots: SEP only: the clean-training weight snapshots (checkpoint ensemble).
        out_dir: where ``fit_state.pt`` (resume state) and ``fit_history.json`` are written;
            an existing compatible state is resumed (or extended, if ``config.epochs`` grew).
        stop_after: run at most this many rounds in this call (the state stays resumable), e.g. to
            split a long fit into time-boxed calls.
    """
    from tqdm.auto import tqdm

    cfg = config or FitConfig()
    if cfg.base == "sep" and not snapshots:
        raise ValueError("fit_generator: base 'sep' needs the clean surrogate's checkpoint snapshots")
    _check_tasks(generator, train_set)
    torch.manual_seed(cfg.seed)
    device = torch.device(device)
    surrogates = list(surrogate) if isinstance(surrogate, (list, tuple)) else [surrogate]
    generator.to(device)
    for s in surrogates:
        s.to(device)
    run = _Alg1(generator, train_set, surrogates, cfg, snapshots, device, progress)

    state_path = Path(out_dir) / "fit_state.pt" if out_dir is not None else None
    fingerprint = _fingerprint(cfg, generator)
    if state_path is not None:
        finished = _resume(run, state_path, fingerprint, device)
        if finished is not None:
            return finished

    stopped_early = False
    end_round = cfg.epochs if stop_after is None else min(cfg.epochs, run.start_round + int(stop_after))
    for rnd in range(run.start_round, end_round):
        rec = _round(run, rnd)
        if progress:
            tqdm.write(f"[mtlguard fit] round {rnd + 1}/{cfg.epochs}: " + ", ".join(
                f"{k}={v:.4f}" for k, v in rec.items() if k != "round"))
        done = rnd + 1 >= cfg.epochs
        if cfg.base == "em" and rec.get("train_acc", 0.0) >= cfg.stop_acc:
            stopped_early = not done
            done = True
        if state_path is not None:
            st = run.state(fingerprint, done, stopped_early)
            atomic_write(state_path, lambda tmp: torch.save(st, tmp))
            atomic_write_text(state_path.parent / "fit_history.json", json.dumps(run.history, indent=2))
        if done:
            break
    generator.eval()
    return FitResult(rounds=len(run.history), stopped_early=stopped_early, history=run.history)


def _resume(run: "_Alg1", state_path: Path, fingerprint: str, device) -> FitResult | None:
    """Load ``state_path`` into ``run`` when it exists (refusing one of another configuration); the finished
    fit's :class:`FitResult` when nothing is left to do (EM stopped, or every round done), else ``None``."""
    state_path.parent.mkdir(parents=True, exist_ok=True)
    if not state_path.is_file():
        return None
    st = torch.load(state_path, map_location=device, weights_only=True)
    if _comparable(st.get("fingerprint", "{}")) != _comparable(fingerprint):
        raise ValueError(f"{state_path}: resume state belongs to a different fit configuration; "
                         "use another out_dir or delete it")
    run.load(st)
    cfg = run.cfg
    em_stopped = st.get("done") and (st.get("stopped_early") or run.history and cfg.base == "em" and
                                     run.history[-1].get("train_acc", 0.0) >= cfg.stop_acc)
    if em_stopped or run.start_round >= cfg.epochs:
        return FitResult(rounds=run.start_round, stopped_early=bool(st.get("stopped_early")), history=run.history)
    return None


def _round(run: "_Alg1", rnd: int) -> dict:
    """Alg. 1's round ``rnd``: the generator's steps, then (EM) the surrogates'; returns the round's record
    (also appended to ``run.history``)."""
    cfg = run.cfg
    t0 = time.time()
    rng = torch.Generator().manual_seed(cfg.seed * 1000003 + rnd)
    run.set_lr(rnd)
    if cfg.reinit_every and rnd > 0 and rnd % cfg.reinit_every == 0:
        run.reinit_surrogates()
    rec = run.generator_round(rnd, rng)
    rec["round"] = rnd + 1
    if cfg.base == "em":
        if cfg.train_steps:
            run.surrogate_steps(rnd, rng)
        if run.gen.class_tasks:
            rec["train_acc"] = run.accuracy()
    rec["seconds"] = round(time.time() - t0, 3)
    run.history.append(rec)
    return rec
