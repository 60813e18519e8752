"""The one base class of mtlguard's attacks (torchattacks-style ``atk(x, targets)``).

An attack holds a model (any ``nn.Module`` whose ``forward(x)`` returns ``{task: output}``), the
task specs (:class:`~mtlguard.data.tasks.TaskSpec`), the threat model (``eps``, ``norm``) and an
:class:`~mtlguard.attacks.aggregation.Aggregation` (how task gradients become one direction).
Calling it checks the inputs (AutoAttack-style: finite, in [0, 1], batch sizes match, known tasks),
puts the model in eval mode with frozen parameters, runs :meth:`Attack.perturb`, and restores the
model's train/eval mode and ``requires_grad`` flags, even when the attack raises.

Per-sample task losses come from :func:`mtlguard.models.losses.task_loss` (``reduction="none"``);
per-task input gradients are the gradients of the sum of each task's per-sample losses (samples are
independent in eval mode, so this is each sample's own gradient).  All T of them come from ONE batched
backward pass (``torch.autograd.grad(..., is_grads_batched=True)`` over one-hot ``grad_outputs``: autograd
vmaps the backward graph over the T tasks) as one [T, B, ...] tensor that
:func:`mtlguard.ops.balanced_sign` reads in place; the result equals T separate backward passes.  Where a
model's backward cannot be batched (an op without a vmap batching rule, which would also fall back to a slow
per-task loop inside vmap; a BatchNorm left in train mode; an autograd.Function without vmap support), the
attack falls back to one ``torch.autograd.grad`` per task and records why in
:attr:`Attack.batched_grads_reason`.  ``batched_grads="auto"`` (default) batches on CUDA and loops on the CPU:
there the batched pass does the same arithmetic in compute-bound convolutions and measured no faster
(bench/results/attacks_cpu.json: 0.9-1.05x on ResNet-18 HPS, 2 cores); ``True`` / ``False`` force either path.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .. import ops
from ..data.tasks import TaskSpec, validate_tasks
from ..models.losses import task_loss
from .aggregation import Aggregation

NORMS = ("linf", "l2")


def _norm_name(norm: str) -> str:
    n = str(norm).lower().replace("_", "")
    n = {"inf": "linf", "linfinity": "linf", "l∞": "linf", "2": "l2"}.get(n, n)
    if n not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected 'linf' or 'l2'")
    return n


def _check_scalar(name: str, value, minimum: float = 0.0, strict: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < minimum or (strict and v == minimum):
        op = ">" if strict else ">="
        raise ValueError(f"{name} must be finite and {op} {minimum}, got {value!r}")
    return v


def _check_int(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


@contextlib.contextmanager
def eval_mode_frozen(model: nn.Module):
    """Eval mode and ``requires_grad=False`` on all parameters inside; both restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training
        for p, flag in flags:
            p.requires_grad_(flag)


def _unbatchable_reason(model: nn.Module) -> str | None:
    """Why ``model``'s backward should not be vmapped over tasks (None: try it)."""
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            return (f"BatchNorm {name or type(m).__name__} is in train mode (its batch statistics couple the "
                    "samples; eval_mode_frozen was overridden)")
    return None


def l2_norm(v: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm, shape [B, 1, ..., 1] (broadcastable to ``v``)."""
    return v.flatten(1).norm(dim=1).reshape((-1,) + (1,) * (v.dim() - 1))


def normalize_l2(v: torch.Tensor, tiny: float = 1e-12) -> torch.Tensor:
    """``v / ||v||_2`` per sample (zero where the norm is zero)."""
    return v / l2_norm(v).clamp_min(tiny)


def project_l2(x: torch.Tensor, x_adv: torch.Tensor, eps, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    """Project ``x_adv`` onto ``{||x' - x||_2 <= eps} ∩ [lo, hi]`` (scale the perturbation, then clamp).

    Clamping to the box after scaling never increases ``|x' - x|`` elementwise (``x`` is in the box),
    so the result satisfies both constraints.  ``eps``: float or per-sample tensor [B].
    """
    delta = x_adv - x
    e = eps if not isinstance(eps, torch.Tensor) else eps.to(x.dtype).reshape((-1,) + (1,) * (x.dim() - 1))
    scale = torch.clamp(e / l2_norm(delta).clamp_min(1e-12), max=1.0)
    return (x + delta * scale).clamp(lo, hi)


class Attack:
    """Base class: threat model, aggregation, input checks, mode handling, losses and gradients.

    Args:
        model: ``nn.Module`` with ``forward(x) -> {task: output}``; inputs are images in [0, 1].
        tasks: the model's task specs (losses are built from them).
        eps: perturbation budget (``norm`` ball radius), >= 0.
        norm: ``"linf"`` or ``"l2"``.
        aggregation: see :mod:`mtlguard.attacks.aggregation` (default ``"gbmta"``; ``"weighted"``
            when ``weights`` is given).
        weights: explicit task weights (dict or list aligned with the attacked tasks).
        attack_tasks: names of the attacked tasks (default: all; ``single:X`` attacks only X).
        targeted: minimize the loss towards target classes (classification tasks only).  Targets
            are passed as ``atk(x, targets, target_labels={task: [B] int64})``; by default the
            target is ``(label + 1) mod C`` (``binary``: the other class).
        seed: seed of the attack's own RNG (random starts); ``None`` uses torch's global RNG.
        record_history: keep a per-iteration log in ``self.history`` (for tests and plots).
        batched_grads: ``True``: the T per-task input gradients from one batched backward pass (see the module
            docstring); ``False``: one backward pass per task; ``"auto"`` (default): batched for CUDA inputs, the
            loop on the CPU (measured no faster there).  After the first gradient computation,
            :attr:`batched_grads_used` says which ran and :attr:`batched_grads_reason` why the loop was used
            (None when batched).
    """

    name = "Attack"

    def __init__(
        self,
        model: nn.Module,
        tasks: Sequence[TaskSpec],
        eps: float = 8 / 255,
        norm: str = "linf",
        aggregation: str | None = None,
        weights: Mapping[str, float] | Sequence[float] | None = None,
        attack_tasks: Sequence[str] | None = None,
        targeted: bool = False,
        seed: int | None = None,
        record_history: bool = False,
        batched_grads: bool | str = "auto",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.tasks = validate_tasks(tasks)
        self.eps = _check_scalar("eps", eps)
        self.norm = _norm_name(norm)
        if aggregation is None:
            aggregation = "weighted" if weights is not None else "gbmta"
        self.aggregation = Aggregation.parse(aggregation, self.tasks, attack_tasks, weights)
        self.targeted = bool(targeted)
        if self.targeted:
            bad = [t.name for t in self.aggregation.tasks if not t.is_classification]
            if bad:
                raise ValueError(
                    f"targeted attacks need classification tasks (binary/multiclass); attacked task(s) {bad} are not"
                )
        self.seed = seed
        self.record_history = bool(record_history)
        self.history: list[dict[str, Any]] = []
        self._gen: torch.Generator | None = None
        if batched_grads not in (True, False, "auto"):
            raise ValueError(f"batched_grads must be True, False or 'auto', got {batched_grads!r}")
        self.batched_grads = batched_grads
        self.batched_grads_used: bool | None = None
        self.batched_grads_reason: str | None = None if batched_grads else "disabled (batched_grads=False)"
        self._batched_ok: bool | None = None if batched_grads else False

    # ---------------------------------------------------------------- public API
    @property
    def attack_tasks(self) -> tuple[str, ...]:
        return self.aggregation.task_names

    def __call__(self, x: torch.Tensor, targets: Mapping[str, torch.Tensor],
                 target_labels: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        return self.forward(x, targets, target_labels)

    def forward(self, x: torch.Tensor, targets: Mapping[str, torch.Tensor],
                target_labels: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Adversarial examples for ``x`` [B, ...] in [0, 1] and its ``targets`` (``{task: [B, ...]}``)."""
        self.check_inputs(x, targets)
        y = self._objective_targets(x, targets, target_labels)
        self.history = []
        self._gen = None
        if self.seed is not None:
            self._gen = torch.Generator(device=x.device)
            self._gen.manual_seed(int(self.seed))
        x = x.detach()
        with eval_mode_frozen(self.model):
            if self.eps == 0:
                return x.clone()
            x_adv = self.perturb(x, y)
        return x_adv.detach()

    def perturb(self, x: torch.Tensor, y: Mapping[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(eps={self.eps:.5g}, norm={self.norm!r}, "
                f"aggregation={self.aggregation.name!r}, tasks={list(self.attack_tasks)}, targeted={self.targeted})")

    # ---------------------------------------------------------------- checks
    def check_inputs(self, x: torch.Tensor, targets: Mapping[str, torch.Tensor]) -> None:
        """AutoAttack-style checks; raise ``ValueError``/``TypeError`` naming the bad input."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point image tensor in [0, 1], got dtype {x.dtype}")
        if x.dim() < 2 or x.shape[0] == 0:
            raise ValueError(f"x must be a non-empty batch [B, ...], got shape {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            n = int((~torch.isfinite(x)).sum())
            raise ValueError(f"x has {n} non-finite values (NaN/inf); inputs must be images in [0, 1]")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"x must be in [0, 1] (normalization belongs inside the model), got min {lo:.4g}, max {hi:.4g}"
            )
        if not isinstance(targets, Mapping):
            raise TypeError(f"targets must be a dict {{task: tensor}}, got {type(targets).__name__}")
        b = x.shape[0]
        for name in self.attack_tasks:
            if name not in targets:
                raise KeyError(f"targets has no entry for attacked task {name!r} (has {list(targets)})")
            t = targets[name]
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"targets[{name!r}] must be a tensor, got {type(t).__name__}")
            if t.dim() == 0 or t.shape[0] != b:
                raise ValueError(f"targets[{name!r}] has batch size {tuple(t.shape)[:1] or '()'}, x has {b}")

    def _objective_targets(self, x, targets, target_labels) -> dict[str, torch.Tensor]:
        """Targets of the attacked tasks; for targeted attacks the target classes."""
        y = {n: targets[n].to(x.device) for n in self.attack_tasks}
        if not self.targeted:
            if target_labels is not None:
                raise ValueError("target_labels given to an untargeted attack (set targeted=True)")
            return y
        out = {}
        for spec in self.aggregation.tasks:
            if target_labels is not None and spec.name in target_labels:
                tl = target_labels[spec.name].to(x.device).long()
                if tl.shape != y[spec.name].shape:
                    raise ValueError(f"target_labels[{spec.name!r}] has shape {tuple(tl.shape)}, expected {tuple(y[spec.name].shape)}")
                if bool(((tl < 0) | (tl >= spec.num_classes)).any()):
                    raise ValueError(f"target_labels[{spec.name!r}] has classes outside [0, {spec.num_classes})")
                out[spec.name] = tl
            else:
                out[spec.name] = (y[spec.name].long() + 1) % spec.num_classes
        return out

    # ---------------------------------------------------------------- losses and gradients
    @property
    def _sign(self) -> float:
        return -1.0 if self.targeted else 1.0

    def _outputs(self, x_adv: torch.Tensor) -> Mapping[str, torch.Tensor]:
        out = self.model(x_adv)
        if not isinstance(out, Mapping):
            raise TypeError(f"model must return a dict {{task: output}}, got {type(out).__name__}")
        missing = [n for n in self.attack_tasks if n not in out]
        if missing:
            raise KeyError(f"model output has no entry for attacked task(s) {missing} (has {list(out)})")
        return out

    def losses(self, x_adv: torch.Tensor, y: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Per-sample losses of the attacked tasks, [T, B] (no gradient)."""
        with torch.no_grad():
            out = self._outputs(x_adv)
            return torch.stack([task_loss(s, out[s.name], y[s.name], "none").float() for s in self.aggregation.tasks])

    def losses_and_grads(self, x_adv: torch.Tensor, y: Mapping[str, torch.Tensor]):
        """``(losses [T, B], grads)``: per-sample losses and the per-task input gradients of the attack
        objective ``s * L_i`` (``s = -1`` for targeted attacks).  ``grads`` is one [T, B, ...] tensor from a
        single batched backward pass, or (fallback, see the module docstring) a list of T tensors [B, ...];
        index, iterate or ``list()`` it alike."""
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            out = self._outputs(x_adv)
            per = [task_loss(s, out[s.name], y[s.name], "none") for s in self.aggregation.tasks]
            losses = torch.stack([l.detach().float() for l in per])
            batch = len(per) > 1 and self._batched_ok is not False
            if batch and self.batched_grads == "auto" and x_adv.device.type != "cuda":
                batch = False
                self.batched_grads_reason = ("auto: one pass per task on the CPU (the batched pass measured no faster "
                                             "there; batched_grads=True forces it)")
            grads = self._batched_grads(per, x_adv) if batch else None
            if grads is None:
                grads = self._looped_grads(per, x_adv)
        self.batched_grads_used = not isinstance(grads, list)
        return losses, grads

    def _looped_grads(self, per: list[torch.Tensor], x_adv: torch.Tensor) -> list[torch.Tensor]:
        """One backward pass per task (the fallback)."""
        grads = []
        for i, l in enumerate(per):
            g, = torch.autograd.grad(self._sign * l.sum(), x_adv, retain_graph=i < len(per) - 1, allow_unused=True)
            grads.append(torch.zeros_like(x_adv) if g is None else g.detach())
        return grads

    def _batched_grads(self, per: list[torch.Tensor], x_adv: torch.Tensor) -> torch.Tensor | None:
        """All T task gradients in one backward pass vmapped over one-hot ``grad_outputs`` (None: use the loop;
        the first failure is recorded in :attr:`batched_grads_reason` and the loop is used from then on)."""
        reason = _unbatchable_reason(self.model) if self._batched_ok is None else None
        g = None
        if reason is None:
            first = self._batched_ok is None
            totals = torch.stack([l.sum() for l in per])  # [T]
            onehot = torch.eye(len(per), dtype=totals.dtype, device=totals.device) * self._sign
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    g, = torch.autograd.grad(totals, x_adv, grad_outputs=onehot, is_grads_batched=True,
                                             retain_graph=first, allow_unused=True)
                slow = [w for w in caught if "performance drop" in str(w.message) or "batching rule" in str(w.message)]
                if slow:  # vmap ran a per-task loop inside an op: no faster than the plain loop
                    reason = f"an op has no vmap batching rule ({str(slow[0].message).splitlines()[0][:200]})"
                    g = None
                for w in caught:
                    if w not in slow:
                        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
            except (RuntimeError, NotImplementedError, TypeError) as e:
                reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                g = None
        if reason is not None:
            self._batched_ok = False
            self.batched_grads_reason = reason
            return None
        self._batched_ok = True
        self.batched_grads_reason = None
        return torch.zeros((len(per),) + tuple(x_adv.shape), dtype=x_adv.dtype, device=x_adv.device) if g is None \
            else g.detach()

    def begin(self, x: torch.Tensor, y: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Clean losses ``L_i(x_0)`` [T, B]; registers them with the aggregation (WGD, relative objective)."""
        l0 = self.losses(x, y)
        self.aggregation.begin(l0)
        return l0

    def objective(self, losses: torch.Tensor) -> torch.Tensor:
        return self.aggregation.objective(losses, self._sign)

    # ---------------------------------------------------------------- geometry
    def direction(self, grads, losses) -> torch.Tensor:
        """Step direction: int8 sign (linf, fused ``balanced_sign``) or unit-L2 aggregate (l2)."""
        if self.norm == "linf":
            return self.aggregation.sign(grads, losses)
        return normalize_l2(self.aggregation.vector(grads, losses)).to(grads[0].dtype)

    def step(self, x_adv: torch.Tensor, x: torch.Tensor, direction: torch.Tensor, step_size) -> torch.Tensor:
        """One projected step ``P(x_adv + step_size * direction)`` (linf: fused ``pgd_step``)."""
        if self.norm == "linf":
            return ops.pgd_step(x_adv, x, direction, step_size, self.eps)
        s = step_size if not isinstance(step_size, torch.Tensor) else step_size.reshape((-1,) + (1,) * (x.dim() - 1))
        return project_l2(x, x_adv + s * direction.to(x_adv.dtype), self.eps)

    def project(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """Projection onto the eps-ball around ``x`` and [0, 1] (linf: fused ``project_linf``)."""
        if self.norm == "linf":
            return ops.project_linf(x, x_adv - x, self.eps)[0]
        return project_l2(x, x_adv, self.eps)

    def random_init(self, x: torch.Tensor) -> torch.Tensor:
        """Uniform point of the linf ball / random direction with uniform radius in the l2 ball."""
        if self.norm == "linf":
            u = torch.rand(x.shape, generator=self._gen, device=x.device, dtype=x.dtype)
            return ops.project_linf(x, (2 * u - 1) * self.eps, self.eps)[0]
        d = torch.randn(x.shape, generator=self._gen, device=x.device, dtype=x.dtype)
        r = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=self._gen, device=x.device, dtype=x.dtype)
        return self.project(x, x + normalize_l2(d) * r * self.eps)

    def _log(self, **entry) -> None:
        if self.record_history:
            self.history.append({k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in entry.items()})
