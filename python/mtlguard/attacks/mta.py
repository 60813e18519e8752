"""MTA: multi-task adversarial perturbation generator (Guo et al., "Multi-Task Adversarial Attack").

Architecture (Sec. 3.1, Fig. 2): a ResNet generator (as in GAP) split into a **shared encoder** ``f``
(7x7 conv, two stride-2 downsampling convs, ``n_blocks`` residual blocks) and one **decoder** ``g_t``
per task (two stride-2 transposed convs, 7x7 conv, ``tanh`` as in the ResNet generator of GAP / Johnson
et al. that MTA adopts).  The decoder output is scaled by the map ``Pi_eps(v) = v * min(1, eps / ||v||_p)``
(footnote 1), so every perturbation has ``||v_t||_p <= eps``.

Why the ``tanh`` matters for ``p = inf``: ``Pi_eps`` divides by the *largest* entry, so only that entry
reaches ``eps``; a linear head (``output="linear"``, the behaviour of generators saved before the
``output`` option existed) must learn a perfectly flat ``|g_t|`` to use the budget, while a saturating
``tanh`` head reaches ``v = +-eps`` everywhere (the FGSM-like corner of the ball) by growing its
pre-activations.  :func:`evaluate_mta` reports the used budget ``mean |v| / eps``.

* ``mode="instance"``: input = the image, ``v_t^i = Pi_eps(g_t(f(x^i)))``; ``f(x)`` is computed once and
  decoded by all tasks (Sec. 3.2).
* ``mode="universal"``: input = a fixed random pattern ``Z_t ~ U[0, 1)`` per task (a buffer), the same
  ``v_t`` for every image (Sec. 3.1).  ``v_t = Pi(g_t(f(Z_t)))`` depends on ``Z_t`` only: each pattern is
  run as its own batch and the batch-norm layers of the encoder and of ``g_t`` normalize it with *its own*
  statistics, in training and in evaluation alike (running statistics are neither used nor updated for the
  patterns), so the perturbation deployed is the one trained.
  Encoding the ``M`` patterns as one batch, as generators before this rule did, made ``v_a`` move with
  ``Z_b`` through the shared batch statistics.

Fooling losses (per sample, then averaged; ``H`` = the task loss of :func:`task_loss`):

* non-targeted, Eq. 2-3: ``l_t = mean_i -log H(K_t(x_i + v_t^i), y_i)``, minimized;
* targeted, Eq. 4-5:     ``l_t = mean_i  log H(K_t(x_i + v_t^i), T_t)``, minimized;
* total ``L = sum_t alpha_t l_t`` with uniform ``alpha_t = 1 / M`` by default.

The victims are ``M`` models: one multi-task model (``nn.Module`` returning ``{task: output}``) or a
dict ``{task: model}`` of independent single-task models (each returning a dict with that task or a
tensor).  Adversarial inputs are clamped to [0, 1] (this only shrinks ``|v|``).

The forward pass uses standard ops only (convs, norms, reflection pads, abs/amax/clamp), so it exports
to ONNX: ``instance`` mode maps an image ``[B, C, H, W]`` to a tuple of ``M`` perturbations.

**GAP baseline** (Poursaeed et al. 2018, the method MTA compares against): :class:`GAPGenerator` holds one
complete single-task ResNet generator (its own encoder and decoder) per task, each trained on its own
task's fooling loss only; it has the same interface, so :func:`train_mta` / :func:`evaluate_mta` run it
unchanged (the summed objective of independent generators trains each on its own loss).

**Transfer** (MTA Sec. 4.4, Table 6): :func:`evaluate_transfer` evaluates a generator trained against one
victim on another model (e.g. trained on an HPS model, tested on MTAN).
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ..atomic import atomic_write, atomic_write_text
from ..data.tasks import TaskSpec, validate_tasks
from ..models.losses import task_loss
from .base import eval_mode_frozen

_LOG_FLOOR = 1e-12
#: decoder heads: ``tanh`` (ResNet generator of GAP / Johnson et al.) or ``linear`` (pre-``output`` generators)
OUTPUTS = ("tanh", "linear")


def _norm_layer(kind: str, ch: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(ch)
    if kind == "instance":
        return nn.InstanceNorm2d(ch, affine=True)
    raise ValueError(f"unknown norm layer {kind!r}; expected 'batch' or 'instance'")


class ResidualBlock(nn.Module):
    def __init__(self, ch: int, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), _norm_layer(norm, ch), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(ch, ch, 3), _norm_layer(norm, ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def scale_to_ball(v: torch.Tensor, eps: float, norm: str = "linf") -> torch.Tensor:
    """``Pi_eps``: ``v * min(1, eps / ||v||_p)`` per sample (MTA footnote 1)."""
    flat = v.flatten(1)
    n = flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)
    scale = torch.clamp(eps / n.clamp_min(1e-12), max=1.0)
    return v * scale.reshape((-1,) + (1,) * (v.dim() - 1))


class _SavedPerturbations:
    """What the MTA and GAP generators share: per-task perturbations and adversarial images from
    ``forward(x) -> (v_1, ..., v_M)``, and weights saved as safetensors next to a JSON config."""

    def perturbations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{task: v_t}``."""
        return dict(zip(self.task_names, self.forward(x)))

    def adversarial(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{task: clamp(x + v_t, 0, 1)}``."""
        return {n: (x + v).clamp(0, 1) for n, v in self.perturbations(x).items()}

    def save(self, path: str | os.PathLike) -> None:
        """Weights to ``path`` (safetensors) + ``path.json`` (config); both written atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write(path, lambda p: save_file(state, str(p)))
        atomic_write_text(path.with_suffix(path.suffix + ".json"), json.dumps(self.config(), indent=2))


def _read_saved(path: str | os.PathLike, map_location: str) -> tuple[dict, dict]:
    """``(config, weights)`` of a generator saved by :meth:`_SavedPerturbations.save`."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg_path = path.with_suffix(path.suffix + ".json")
    if not path.is_file() or not cfg_path.is_file():
        raise FileNotFoundError(f"MTA generator {path} (and its config {cfg_path}) not found")
    return json.loads(cfg_path.read_text()), load_file(str(path), device=map_location)


class MTAGenerator(_SavedPerturbations, nn.Module):
    """Shared-encoder, per-task-decoder perturbation generator (MTA Fig. 2).

    Args:
        tasks: task names (or :class:`TaskSpec`) to generate one perturbation each for.
        in_channels, image_size: image shape ``(C, H, W)``; ``H`` and ``W`` must be divisible by 4.
        eps, norm: ``Pi_eps`` budget and norm (``"linf"`` or ``"l2"``).
        mode: ``"instance"`` (input = image) or ``"universal"`` (input = fixed pattern ``Z_t``).
        ngf: base width; n_blocks: residual blocks in the shared encoder (6 in MTA's Office-31 runs).
        norm_layer: ``"batch"`` (GAP) or ``"instance"``.
        seed: seed of the universal patterns ``Z_t``.
        output: decoder head, ``"tanh"`` (ResNet generator, default) or ``"linear"`` (no activation).
    """

    def __init__(self, tasks: Sequence[str | TaskSpec], in_channels: int = 3, image_size=(64, 64),
                 eps: float = 8 / 255, norm: str = "linf", mode: str = "instance", ngf: int = 32,
                 n_blocks: int = 6, norm_layer: str = "batch", seed: int = 0, output: str = "tanh") -> None:
        super().__init__()
        names = [t.name if isinstance(t, TaskSpec) else str(t) for t in tasks]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"MTAGenerator needs distinct task names, got {names}")
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
        if h % 4 or w % 4 or h <= 0 or w <= 0:
            raise ValueError(f"MTAGenerator: image_size {(h, w)} must be positive multiples of 4")
        if not (eps >= 0 and math.isfinite(eps)):
            raise ValueError(f"MTAGenerator: eps must be finite and >= 0, got {eps}")
        if norm not in ("linf", "l2"):
            raise ValueError(f"MTAGenerator: norm must be 'linf' or 'l2', got {norm!r}")
        if mode not in ("instance", "universal"):
            raise ValueError(f"MTAGenerator: mode must be 'instance' or 'universal', got {mode!r}")
        if output not in OUTPUTS:
            raise ValueError(f"MTAGenerator: output must be one of {OUTPUTS}, got {output!r}")
        self.task_names = tuple(names)
        self._config = dict(tasks=list(names), in_channels=int(in_channels), image_size=[h, w], eps=float(eps),
                            norm=norm, mode=mode, ngf=int(ngf), n_blocks=int(n_blocks), norm_layer=norm_layer,
                            seed=int(seed), output=output)
        self.eps, self.norm, self.mode = float(eps), norm, mode
        c = int(in_channels)
        enc = [nn.ReflectionPad2d(3), nn.Conv2d(c, ngf, 7), _norm_layer(norm_layer, ngf), nn.ReLU(True)]
        for mult in (1, 2):  # downsampling
            enc += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1),
                    _norm_layer(norm_layer, ngf * mult * 2), nn.ReLU(True)]
        enc += [ResidualBlock(ngf * 4, norm_layer) for _ in range(n_blocks)]
        self.encoder = nn.Sequential(*enc)
        self.decoders = nn.ModuleList()
        for _ in names:
            dec = []
            for mult in (4, 2):  # upsampling
                dec += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1),
                        _norm_layer(norm_layer, ngf * mult // 2), nn.ReLU(True)]
            dec += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, c, 7)] + ([nn.Tanh()] if output == "tanh" else [])
            self.decoders.append(nn.Sequential(*dec))
        g = torch.Generator().manual_seed(int(seed))
        self.register_buffer("patterns", torch.rand((len(names), c, h, w), generator=g))

    def config(self) -> dict:
        return dict(self._config)

    def universal(self, t: int) -> torch.Tensor:
        """``v_t = Pi(g_t(f(Z_t)))`` ``[1, C, H, W]``: task ``t``'s pattern alone through the encoder and its
        decoder, every batch norm on this input's own statistics (training and evaluation alike)."""
        mods = list(self.encoder.modules()) + list(self.decoders[t].modules())
        bns = [m for m in mods if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [(m.training, m.momentum) for m in bns]
        for m in bns:  # normalize with the pattern's own statistics; leave running statistics as they are
            m.training, m.momentum = True, 0.0
        try:
            return scale_to_ball(self.decoders[t](self.encoder(self.patterns[t:t + 1])), self.eps, self.norm)
        finally:
            for m, (tr, mom) in zip(bns, saved):
                m.training, m.momentum = tr, mom

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Perturbations ``(v_1, ..., v_M)``, each shaped like ``x`` (universal: broadcast over the batch)."""
        if self.mode == "instance":
            z = self.encoder(x)
            return tuple(scale_to_ball(dec(z), self.eps, self.norm) for dec in self.decoders)
        outs = []
        for t in range(len(self.decoders)):  # v_t = Pi(g_t(f(Z_t))): nothing of another task's pattern
            v = self.universal(t)
            outs.append(v.expand_as(x) if x is not None else v)
        return tuple(outs)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str = "cpu") -> "MTAGenerator":
        cfg, state = _read_saved(path, map_location)
        cfg.setdefault("output", "linear")  # generators saved before the option had no tanh head
        gen = cls(**cfg)
        gen.load_state_dict(state)
        return gen


class GAPGenerator(_SavedPerturbations, nn.Module):
    """GAP baseline (Poursaeed et al. 2018): one independent single-task ResNet generator per task.

    Same interface as :class:`MTAGenerator` (``task_names``, ``eps``, ``norm``, ``mode``, ``forward``,
    ``perturbations``, ``adversarial``, ``config``, ``save`` / ``load``); the sub-generator of task ``t`` is
    ``MTAGenerator([t], ...)`` with the same options, so nothing is shared between tasks (MTA Sec. 3.2's
    storage comparison: ``M`` encoders instead of one).
    """

    def __init__(self, tasks: Sequence[str | TaskSpec], in_channels: int = 3, image_size=(64, 64),
                 eps: float = 8 / 255, norm: str = "linf", mode: str = "instance", ngf: int = 32,
                 n_blocks: int = 6, norm_layer: str = "batch", seed: int = 0, output: str = "tanh") -> None:
        super().__init__()
        names = [t.name if isinstance(t, TaskSpec) else str(t) for t in tasks]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"GAPGenerator needs distinct task names, got {names}")
        self.task_names = tuple(names)
        self.generators = nn.ModuleList([
            MTAGenerator([n], in_channels, image_size, eps, norm, mode, ngf, n_blocks, norm_layer, seed + i, output)
            for i, n in enumerate(names)])
        first = self.generators[0]
        self.eps, self.norm, self.mode = first.eps, first.norm, first.mode
        self._config = dict(first.config(), tasks=list(names), kind="gap")

    def config(self) -> dict:
        return dict(self._config)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(g(x)[0] for g in self.generators)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str = "cpu") -> "GAPGenerator":
        cfg, state = _read_saved(path, map_location)
        cfg.pop("kind", None)
        gen = cls(**cfg)
        gen.load_state_dict(state)
        return gen


def load_generator(path: str | os.PathLike, map_location: str = "cpu") -> nn.Module:
    """An :class:`MTAGenerator` or :class:`GAPGenerator` from ``path`` (its JSON config says which)."""
    path = Path(path)
    cfg_path = path.with_suffix(path.suffix + ".json")
    if cfg_path.is_file() and json.loads(cfg_path.read_text()).get("kind") == "gap":
        return GAPGenerator.load(path, map_location)
    return MTAGenerator.load(path, map_location)


# ---------------------------------------------------------------------- victims and losses
def _victim_output(victims, spec: TaskSpec, x: torch.Tensor) -> torch.Tensor:
    model = victims[spec.name] if isinstance(victims, Mapping) else victims
    return _task_output(model(x), spec)


def _task_output(out, spec: TaskSpec) -> torch.Tensor:
    """The output of task ``spec`` from a victim's output (a dict of task outputs or a tensor)."""
    if isinstance(out, Mapping):
        if spec.name not in out:
            raise KeyError(f"victim for task {spec.name!r} returned no output for it (has {list(out)})")
        return out[spec.name]
    return out


def _victim_modules(victims) -> list[nn.Module]:
    mods = list(victims.values()) if isinstance(victims, Mapping) else [victims]
    uniq = []
    for m in mods:
        if not isinstance(m, nn.Module):
            raise TypeError(f"victims must be nn.Modules, got {type(m).__name__}")
        if all(m is not u for u in uniq):
            uniq.append(m)
    return uniq


def fooling_losses(generator: MTAGenerator | GAPGenerator, tasks: Sequence[TaskSpec], victims, x: torch.Tensor,
                   targets: Mapping[str, torch.Tensor], targeted: bool = False,
                   target_classes: Mapping[str, int] | None = None,
                   alphas: Mapping[str, float] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(L, {task: l_t})``: MTA's total objective (Eq. 3 / Eq. 5, minimized) and per-task fooling losses.

    ``l_t = mean_i -log H_t`` (non-targeted) or ``mean_i log H_t(target)`` (targeted, classification
    tasks, target class ``target_classes[t]``).  ``alphas`` default to ``1 / M``.
    """
    specs = {s.name: s for s in tasks}
    advs = generator.adversarial(x)
    per = {}
    total = x.new_zeros(())
    m = len(generator.task_names)
    for name in generator.task_names:
        if name not in specs:
            raise KeyError(f"generator task {name!r} has no TaskSpec (tasks: {list(specs)})")
        spec = specs[name]
        out = _victim_output(victims, spec, advs[name])
        if targeted:
            if not spec.is_classification:
                raise ValueError(f"targeted MTA needs classification tasks; {name!r} is {spec.kind!r}")
            if target_classes is None or name not in target_classes:
                raise KeyError(f"targeted MTA: no target class for task {name!r}")
            tc = int(target_classes[name])
            if not 0 <= tc < spec.num_classes:
                raise ValueError(f"target class {tc} of task {name!r} outside [0, {spec.num_classes})")
            tgt = torch.full((x.shape[0],), tc, dtype=torch.long, device=x.device)
            h = task_loss(spec, out, tgt, "none")
            l_t = torch.log(h.clamp_min(_LOG_FLOOR)).mean()
        else:
            h = task_loss(spec, out, targets[name], "none")
            l_t = (-torch.log(h.clamp_min(_LOG_FLOOR))).mean()
        per[name] = l_t
        a = 1.0 / m if alphas is None else float(alphas[name])
        total = total + a * l_t
    return total, per


def train_mta(generator: MTAGenerator | GAPGenerator, tasks: Sequence[TaskSpec], victims, loader: Iterable,
              epochs: int = 1, lr: float = 2e-4, out_dir: str | os.PathLike | None = None,
              targeted: bool = False, target_classes: Mapping[str, int] | None = None,
              alphas: Mapping[str, float] | None = None, device: str | torch.device = "cpu",
              max_steps: int | None = None, resume: bool = True, seed: int = 0,
              progress: bool = True, on_epoch_end: Callable[[MTAGenerator, dict], dict | None] | None = None
              ) -> list[dict]:
    """Train the generator with Adam (MTA Sec. 4: lr 2e-4) on ``loader`` batches ``(x, targets)``.

    The victims are frozen (eval mode, no parameter gradients; restored afterwards).  With ``out_dir``
    a checkpoint ``mta_checkpoint.pt`` (generator, optimizer, epoch) is written atomically after every
    epoch and resumed from when ``resume``; the final generator is saved to ``out_dir/mta_generator``
    (safetensors + JSON).  Returns per-epoch logs ``{"epoch", "loss", "per_task", "steps", "seconds"}``.
    ``on_epoch_end(generator, log)`` runs after every epoch (e.g. a held-out evaluation); a dict it returns
    is merged into that epoch's log before the checkpoint is written, and the generator is put back in
    train mode afterwards.
    """
    tasks = validate_tasks(tasks)
    torch.manual_seed(seed)
    device = torch.device(device)
    generator.to(device)
    opt = torch.optim.Adam(generator.parameters(), lr=lr, betas=(0.5, 0.999))
    ckpt = Path(out_dir) / "mta_checkpoint.pt" if out_dir is not None else None
    if ckpt is not None:
        ckpt.parent.mkdir(parents=True, exist_ok=True)
    start_epoch, logs = _resume(ckpt, generator, opt, device) if ckpt is not None and resume else (0, [])

    def losses(x, y):
        return fooling_losses(generator, tasks, victims, x, y, targeted, target_classes, alphas)

    steps_done = 0
    with _frozen(_victim_modules(victims)):
        for epoch in range(start_epoch, epochs):
            generator.train()
            bar = f"MTA epoch {epoch + 1}/{epochs}" if progress else None
            log, steps_done = _mta_epoch(generator, losses, loader, opt, device, steps_done, max_steps, bar)
            logs.append({"epoch": epoch + 1, **log})
            if on_epoch_end is not None:
                extra = on_epoch_end(generator, logs[-1])
                generator.train()
                if extra:
                    logs[-1].update(extra)
            if ckpt is not None:
                _save_checkpoint(ckpt, generator, opt, epoch + 1, logs)
            if max_steps is not None and steps_done >= max_steps:
                break
    generator.eval()
    if out_dir is not None:
        generator.save(Path(out_dir) / "mta_generator.safetensors")
    return logs


def _mta_epoch(generator, losses, loader, opt, device, steps_done: int, max_steps: int | None,
               bar: str | None) -> tuple[dict, int]:
    """One epoch of Adam steps on ``losses(x, y) -> (loss, per_task)``; stops early at ``max_steps`` in all.
    Returns the epoch's log (mean loss, mean per-task loss, steps so far, seconds) and the steps so far."""
    from tqdm.auto import tqdm

    t0, total, n, per_sum = time.perf_counter(), 0.0, 0, {}
    batches = tqdm(loader, desc=bar, disable=bar is None, leave=False)
    for x, y in batches:
        x = x.to(device)
        y = {k: v.to(device) for k, v in y.items()}
        loss, per = losses(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * x.shape[0]
        n += x.shape[0]
        for k, v in per.items():
            per_sum[k] = per_sum.get(k, 0.0) + v.item() * x.shape[0]
        batches.set_postfix(loss=f"{loss.item():.4f}")
        steps_done += 1
        if max_steps is not None and steps_done >= max_steps:
            break
    log = {"loss": total / max(n, 1), "per_task": {k: v / max(n, 1) for k, v in per_sum.items()},
           "steps": steps_done, "seconds": time.perf_counter() - t0}
    return log, steps_done


def _resume(ckpt: Path, generator, opt, device) -> tuple[int, list[dict]]:
    """Load ``ckpt`` (weights only) into ``generator`` and ``opt``: ``(epochs done, logs)``; ``(0, [])`` when
    there is none; refuses a checkpoint written for another generator configuration."""
    if not ckpt.is_file():
        return 0, []
    state = torch.load(ckpt, map_location=device, weights_only=True)
    if state.get("config") != json.dumps(generator.config(), sort_keys=True):
        raise ValueError(f"checkpoint {ckpt} was written for a different generator config; "
                         "use another out_dir or resume=False")
    generator.load_state_dict(state["generator"])
    opt.load_state_dict(state["optimizer"])
    return int(state["epoch"]), json.loads(state.get("logs", "[]"))


def _save_checkpoint(ckpt: Path, generator, opt, epoch: int, logs: list[dict]) -> None:
    """Write generator + optimizer + epoch + logs to ``ckpt`` atomically."""
    state = {"generator": generator.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch,
             "config": json.dumps(generator.config(), sort_keys=True), "logs": json.dumps(logs)}
    atomic_write(ckpt, lambda p: torch.save(state, p))


class _frozen:
    def __init__(self, modules: list[nn.Module]) -> None:
        self.ctx = [eval_mode_frozen(m) for m in modules]

    def __enter__(self):
        for c in self.ctx:
            c.__enter__()

    def __exit__(self, *exc):
        for c in reversed(self.ctx):
            c.__exit__(*exc)
        return False


@torch.no_grad()
def evaluate_mta(generator: MTAGenerator | GAPGenerator, tasks: Sequence[TaskSpec], victims, loader: Iterable,
                 device: str | torch.device = "cpu", target_classes: Mapping[str, int] | None = None) -> dict:
    """Per-task fooling ratio (MTA Sec. 4.1: share of inputs whose prediction changes), accuracy under
    attack, top-1 target accuracy (when ``target_classes``), and generator time per image.

    Classification tasks only get the ratios; every task gets its mean clean and adversarial loss and
    ``budget_use``: the mean ``|v_t|`` over pixels divided by ``eps`` (linf; 1 = every pixel at ``+-eps``).
    """
    specs = {s.name: s for s in tasks}
    generator.eval().to(device)
    stats = {n: dict(changed=0, correct_adv=0, correct_clean=0, hit=0, n=0, loss_clean=0.0, loss_adv=0.0, abs_v=0.0)
             for n in generator.task_names}
    gen_time, n_img = 0.0, 0
    with _frozen(_victim_modules(victims)):
        for x, y in loader:
            x = x.to(device)
            y = {k: v.to(device) for k, v in y.items()}
            t0 = time.perf_counter()
            vs = generator(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            gen_time += time.perf_counter() - t0
            n_img += x.shape[0]
            clean_all = None if isinstance(victims, Mapping) else victims(x)  # one clean pass for an MTL victim
            for name, v in zip(generator.task_names, vs):
                spec, s = specs[name], stats[name]
                out_c = _victim_output(victims, spec, x) if clean_all is None else _task_output(clean_all, spec)
                s["abs_v"] += float(v.expand_as(x).abs().flatten(1).mean(1).sum())
                out_a = _victim_output(victims, spec, (x + v).clamp(0, 1))
                s["loss_clean"] += float(task_loss(spec, out_c, y[name], "sum"))
                s["loss_adv"] += float(task_loss(spec, out_a, y[name], "sum"))
                s["n"] += x.shape[0]
                if spec.is_classification:
                    pc, pa = _pred(spec, out_c), _pred(spec, out_a)
                    s["changed"] += int((pc != pa).sum())
                    s["correct_clean"] += int((pc == y[name].long()).sum())
                    s["correct_adv"] += int((pa == y[name].long()).sum())
                    if target_classes and name in target_classes:
                        s["hit"] += int((pa == int(target_classes[name])).sum())
    res = {"per_task": {}, "seconds_per_image": gen_time / max(n_img, 1), "images": n_img}
    for name, s in stats.items():
        n = max(s["n"], 1)
        r = {"loss_clean": s["loss_clean"] / n, "loss_adv": s["loss_adv"] / n,
             "budget_use": s["abs_v"] / n / generator.eps if generator.norm == "linf" and generator.eps > 0 else None}
        if specs[name].is_classification:
            r.update(fooling_ratio=s["changed"] / n, acc_clean=s["correct_clean"] / n, acc_adv=s["correct_adv"] / n)
            if target_classes and name in target_classes:
                r["target_acc"] = s["hit"] / n
        res["per_task"][name] = r
    return res


def _pred(spec: TaskSpec, out: torch.Tensor) -> torch.Tensor:
    if spec.kind == "binary":
        return (out.reshape(out.shape[0], -1)[:, 0] > 0).long()
    return out.argmax(1)


def evaluate_transfer(generator: MTAGenerator | GAPGenerator, tasks: Sequence[TaskSpec], source, target,
                      loader: Iterable, device: str | torch.device = "cpu") -> dict:
    """MTA's transfer row (Sec. 4.4, Table 6): the generator trained against ``source`` evaluated on ``source``
    (white box) and on ``target`` (another architecture, never seen in training).

    Returns ``{"source": evaluate_mta(..., source), "target": evaluate_mta(..., target), "transfer_ratio":
    {task: fooling ratio on target / on source}}`` (classification tasks; ``nan`` where the source ratio is 0).
    """
    loader = list(loader)
    src = evaluate_mta(generator, tasks, source, loader, device)
    tgt = evaluate_mta(generator, tasks, target, loader, device)
    ratio = {}
    for n, r in src["per_task"].items():
        if "fooling_ratio" in r:
            fs = r["fooling_ratio"]
            ratio[n] = tgt["per_task"][n]["fooling_ratio"] / fs if fs > 0 else float("nan")
    return {"source": src, "target": tgt, "transfer_ratio": ratio}
