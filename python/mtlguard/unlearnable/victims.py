"""Victims as someone else trains them: the deployment protocol's model-training side.

A victim is trained on images as files give them (native resolution, uint8), the way common training
code does it: ``RandomResizedCrop(size, scale) + RandomHorizontalFlip`` on every training image, Adam,
a step schedule, and a plain ``Resize(size)`` of the clean test images.  It is tested on clean images
it never saw.  The training side never touches a generator or an in-memory perturbation.

* :class:`VictimSpec` -- architecture, input size, weighting (``stl`` = one single-task model per task)
  and number of seeds, parsed from ``"resnet18@32"``, ``"vgg11@64:uw"``, ``"resnet18@32:stl x3"``.
* :class:`VictimRecipe` -- the training settings every victim shares (epochs, batch, lr, crop scale, and
  the training-time defenses' settings).
* Defenses (APBench's columns, as far as they apply; the clean reference gets the same one):
  file-level ``grayscale`` (train and test images, as ISS), ``jpeg10``, ``bdr2`` and ``blur``
  (training files only, at their native resolution); training-time ``mixup`` (Zhang et al. 2018,
  alpha 1, every task's loss mixed with the same lambda) and ``at`` (Madry PGD-AT on the sum of the
  task losses, L-inf ``at_eps``, ``at_steps`` steps of ``2.5 at_eps / at_steps``, random start).
* :func:`train_victim` -- one run; returns per-epoch train/test accuracies and the final test
  accuracy as the mean of the last ``average_last`` epochs (single epochs of small data are noisy).
"""
from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from ..data.tasks import TaskSpec
from ..models.losses import task_loss
from .eot import gaussian_blur, random_resized_crop, resize
from .protect import iss_bit_depth, iss_grayscale, iss_jpeg

FILE_DEFENSES = ("grayscale", "jpeg10", "bdr2", "blur")
TRAIN_DEFENSES = ("mixup", "at")
DEFENSES = ("standard",) + FILE_DEFENSES + TRAIN_DEFENSES
_SPEC_RE = re.compile(r"^(?P<arch>[a-z0-9_]+)@(?P<size>\d+)(?::(?P<weighting>[a-z_-]+))?(?:\s*x(?P<seeds>\d+))?$")


@dataclass(frozen=True)
class VictimSpec:
    """``arch@size[:weighting][xN]``: e.g. ``resnet18@32``, ``vgg11@64:uw``, ``resnet18@32:stl``, ``resnet18@32x3``."""

    arch: str = "resnet18"
    size: int = 32
    weighting: str = "ls"
    seeds: int = 1

    @classmethod
    def parse(cls, text: str) -> "VictimSpec":
        m = _SPEC_RE.match(text.strip().lower())
        if not m:
            raise ValueError(f"victim {text!r}: expected ARCH@SIZE[:WEIGHTING][xSEEDS], e.g. resnet18@32, vgg11@64:uw, "
                             "resnet18@32:stl, resnet18@32x3")
        from ..models.backbones import ARCHS
        from ..weighting import WEIGHTINGS

        arch, size = m["arch"], int(m["size"])
        weighting = m["weighting"] or "ls"
        if arch not in ARCHS:
            raise ValueError(f"victim {text!r}: unknown architecture {arch!r}; expected one of {ARCHS}")
        if weighting != "stl" and weighting not in WEIGHTINGS and weighting not in ("align", "aligned-mtl"):
            raise ValueError(f"victim {text!r}: unknown weighting {weighting!r}; expected stl or one of {sorted(WEIGHTINGS)}")
        if not 8 <= size <= 512:
            raise ValueError(f"victim {text!r}: input size must be 8-512 px, got {size}")
        return cls(arch, size, weighting, int(m["seeds"] or 1))

    @property
    def key(self) -> str:
        """The victim without its seed count (what results are keyed by)."""
        return f"{self.arch}@{self.size}" + ("" if self.weighting == "ls" else f":{self.weighting}")


@dataclass
class VictimRecipe:
    """Training settings shared by every victim of a protocol run."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    milestones: Sequence[float] = (0.6, 0.8)
    crop_scale: Sequence[float] = (0.35, 1.0)
    average_last: int = 3
    blur_sigma: float = 2.0          # native pixels
    mixup_alpha: float = 1.0
    at_eps: float = 4 / 255
    at_steps: int = 5
    threads: int | None = None

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or not 1 <= self.average_last <= self.epochs:
            raise ValueError(f"VictimRecipe: epochs ({self.epochs}), batch_size ({self.batch_size}) must be >= 1 and "
                             f"1 <= average_last ({self.average_last}) <= epochs")
        self.milestones = tuple(self.milestones)
        self.crop_scale = tuple(self.crop_scale)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


# --- file-level defenses ---------------------------------------------------------------------------------
def blur_images(images: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (``sigma`` pixels) of uint8 ``[N, H, W, C]`` images, rounded back to uint8."""
    out = np.empty_like(images)
    for i in range(0, len(images), 64):
        x = torch.from_numpy(images[i:i + 64]).permute(0, 3, 1, 2).float()
        y = gaussian_blur(x, sigma).round().clamp(0, 255).to(torch.uint8)
        out[i:i + 64] = y.permute(0, 2, 3, 1).numpy()
    return out


def defend_files(images: np.ndarray, defense: str, recipe: VictimRecipe) -> np.ndarray:
    """The training files after a file-level defense (unchanged for ``standard`` and training-time ones)."""
    if defense == "grayscale":
        return iss_grayscale(images)
    if defense == "jpeg10":
        return iss_jpeg(images, 10)
    if defense == "bdr2":
        return iss_bit_depth(images, 2)
    if defense == "blur":
        return blur_images(images, recipe.blur_sigma)
    if defense in ("standard",) + TRAIN_DEFENSES:
        return images
    raise ValueError(f"unknown defense {defense!r}; expected one of {DEFENSES}")


# --- training --------------------------------------------------------------------------------------------
def _to_float(images_u8: torch.Tensor) -> torch.Tensor:
    return images_u8.permute(0, 3, 1, 2).float().div_(255.0)


def _loader_images(images_u8: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 NHWC training images as the crops read them: files larger than 4x the victim's input are
    resized once to 4x (antialiased) -- a crop of at least 35% of the area is then still downsampled >= 2.3x,
    so the result equals cropping the full file up to interpolation error, at a fraction of the cost."""
    side = 4 * size
    h, w = images_u8.shape[1:3]
    if max(h, w) <= side:
        return images_u8
    nh, nw = (side, max(1, round(w * side / h))) if h >= w else (max(1, round(h * side / w)), side)
    out = torch.empty((len(images_u8), nh, nw, images_u8.shape[3]), dtype=torch.uint8)
    for i in range(0, len(images_u8), 256):
        x = resize(_to_float(images_u8[i:i + 256]), (nh, nw))
        out[i:i + 256] = (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return out


def _losses(tasks, out, y, mix: tuple[torch.Tensor, float] | None) -> dict[str, torch.Tensor]:
    if mix is None:
        return {t.name: task_loss(t, out[t.name], y[t.name]) for t in tasks}
    perm, lam = mix
    return {t.name: lam * task_loss(t, out[t.name], y[t.name]) + (1 - lam) * task_loss(t, out[t.name], y[t.name][perm])
            for t in tasks}


def _pgd_at(model, tasks, x, y, recipe: VictimRecipe) -> torch.Tensor:
    """Madry PGD on the sum of task losses (eval-mode BN), random start; returns the adversarial batch."""
    was_training = model.training
    model.eval()
    eps, step = recipe.at_eps, 2.5 * recipe.at_eps / recipe.at_steps
    delta = torch.empty_like(x).uniform_(-eps, eps)
    for _ in range(recipe.at_steps):
        delta.requires_grad_(True)
        loss = sum(_losses(tasks, model((x + delta).clamp(0, 1)), y, None).values())
        (g,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + step * g.sign()).clamp(-eps, eps)
    model.train(was_training)
    return (x + delta).clamp(0, 1)


@torch.no_grad()
def accuracy(model, tasks: Sequence[TaskSpec], images: torch.Tensor, labels: Mapping[str, torch.Tensor],
             batch_size: int = 250) -> dict[str, float]:
    """Per-task accuracy of ``model`` on float ``[N, C, s, s]`` images (eval mode)."""
    model.eval()
    correct = {t.name: 0 for t in tasks}
    for i in range(0, len(images), batch_size):
        out = model(images[i:i + batch_size])
        for t in tasks:
            correct[t.name] += int((out[t.name].argmax(1) == labels[t.name][i:i + batch_size]).sum())
    return {k: v / len(images) for k, v in correct.items()}


def _build(spec: VictimSpec, tasks, seed: int, recipe: VictimRecipe):
    from ..models import build_model
    from ..weighting import build_weighting

    torch.manual_seed(seed)
    model = build_model(tasks, arch=spec.arch, image_size=spec.size)
    weighting = build_weighting("ls" if spec.weighting == "stl" else spec.weighting, [t.name for t in tasks])
    opt = torch.optim.Adam(list(model.parameters()) + list(weighting.parameters()), lr=recipe.lr)
    ms = sorted({max(1, int(round(f * recipe.epochs))) for f in recipe.milestones})
    return model, weighting, opt, torch.optim.lr_scheduler.MultiStepLR(opt, ms, 0.1)


def _epoch(model, weighting, opt, tasks, train_u8, labels, spec, recipe, defense, gen) -> dict[str, float]:
    """One pass: RRC + flip per image, optional mixup / PGD-AT; returns the running train accuracy."""
    model.train()
    n = len(train_u8)
    order = torch.randperm(n, generator=gen)
    correct = {t.name: 0 for t in tasks}
    shared = model.shared_parameters() if hasattr(model, "shared_parameters") else list(model.parameters())
    for i in range(0, n - recipe.batch_size + 1 if n >= recipe.batch_size else n, recipe.batch_size):
        idx = order[i:i + recipe.batch_size]
        x = random_resized_crop(_to_float(train_u8[idx]), spec.size, recipe.crop_scale, (3 / 4, 4 / 3), True, gen)
        y = {k: v[idx] for k, v in labels.items()}
        mix = None
        if defense == "mixup":
            lam = float(np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=gen))).beta(
                recipe.mixup_alpha, recipe.mixup_alpha))
            perm = torch.randperm(len(idx), generator=gen)
            x, mix = lam * x + (1 - lam) * x[perm], (perm, lam)
        elif defense == "at":
            x = _pgd_at(model, tasks, x, y, recipe)
        out = model(x)
        opt.zero_grad(set_to_none=True)
        weighting.backward(_losses(tasks, out, y, mix), shared)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        with torch.no_grad():
            for t in tasks:
                correct[t.name] += int((out[t.name].argmax(1) == y[t.name]).sum())
    seen = (n // recipe.batch_size) * recipe.batch_size if n >= recipe.batch_size else n
    return {k: v / max(seen, 1) for k, v in correct.items()}


def train_victim(spec: VictimSpec, recipe: VictimRecipe, tasks: Sequence[TaskSpec], train_images: np.ndarray,
                 train_labels: Mapping[str, np.ndarray], test_images: np.ndarray, test_labels: Mapping[str, np.ndarray],
                 defense: str = "standard", seed: int = 0, progress: bool = False) -> dict:
    """Train one victim (``spec``; STL = one model per task) on uint8 native ``train_images`` behind
    ``defense`` and test it on the clean ``test_images``.  Returns ``{"test": {task: acc}, "history":
    [...], "seconds": s}``, where ``test`` is the mean over the last ``recipe.average_last`` epochs."""
    if defense not in DEFENSES:
        raise ValueError(f"unknown defense {defense!r}; expected one of {DEFENSES}")
    if recipe.threads:
        torch.set_num_threads(int(recipe.threads))
    t0 = time.time()
    files = defend_files(train_images, defense, recipe)
    test = iss_grayscale(test_images) if defense == "grayscale" else test_images
    train_u8 = _loader_images(torch.from_numpy(np.ascontiguousarray(files)), spec.size)
    test_x = resize(_to_float(torch.from_numpy(np.ascontiguousarray(test))), (spec.size, spec.size))
    ytr = {t.name: torch.as_tensor(np.asarray(train_labels[t.name]), dtype=torch.long) for t in tasks}
    yte = {t.name: torch.as_tensor(np.asarray(test_labels[t.name]), dtype=torch.long) for t in tasks}
    groups = [(t,) for t in tasks] if spec.weighting == "stl" else [tuple(tasks)]
    history: list[dict] = [{"epoch": e + 1, "train": {}, "test": {}} for e in range(recipe.epochs)]
    for group in groups:
        model, weighting, opt, sched = _build(spec, group, seed, recipe)
        gen = torch.Generator().manual_seed(seed * 7919 + 17)
        for e in range(recipe.epochs):
            tr = _epoch(model, weighting, opt, group, train_u8, {t.name: ytr[t.name] for t in group}, spec, recipe,
                        defense, gen)
            sched.step()
            history[e]["train"].update(tr)
            history[e]["test"].update(accuracy(model, group, test_x, yte))
            if progress:
                print(f"  {spec.key} {defense} seed {seed} {'+'.join(t.name for t in group)} epoch {e + 1}: "
                      f"train {tr} test {history[e]['test']}", flush=True)
    last = history[-recipe.average_last:]
    final = {t.name: float(np.mean([h["test"][t.name] for h in last])) for t in tasks}
    return {"test": final, "history": history, "seconds": round(time.time() - t0, 1)}
