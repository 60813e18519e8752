"""Auto-SAGE (Rathbun et al. 2022) and GB-MTA-Auto-SAGE (GB-MTA supplementary Eq. 15-16).

Auto-SAGE attacks a set ``D`` of models at once (here: every attacked task of a multi-task model, or every
(model, task) of a :class:`~mtlguard.attacks.ensemble.ModelSet`) with the blended gradient (Eq. 15)

    G_blend^(i) = gamma G_blend^(i-1) + sum_{k in D \\ R} alpha_k^(i) phi_k (.) dL_k/dx
                                      + sum_{r in R} alpha_r^(i) phi_r (.) E_{t~T}[dL_r/dt(x)]

and ``x^(i+1) = P(x^(i) + eta sign(G_blend^(i)))``.  GB-MTA-Auto-SAGE (Eq. 16) divides every gradient by its
own loss value (``dL_k/dx / L_k``, per sample), which is ``aggregation="gbmta"`` here (``"total"`` is Eq. 15;
the aggregation names ``autosage`` / ``gbmta_autosage`` are accepted as aliases).

**The automatic weighting** ``alpha_k^(i)`` (what makes it *Auto*-SAGE; as the authors' code,
``SelfAttentionGradientAttackProto`` in the GB-MTA repository and ``...ProtoAuto`` in Rathbun et al.'s):
one weight per component, sample and pixel, initialized to 1.  At every step, with ``g_k`` the component
gradients (Eq. 15 or 16 form) at ``x^(i)`` and ``s = sum_k alpha_k g_k``:

1. look ahead: ``x' = P(x^(i) + eta sign(s))``;
2. the attack cost at ``x'`` is ``F = -sum_k L_k(x')`` (Eq. 16: its gradient is ``-sum_k g_k(x')`` in the
   normalized form), ``dF/dx = -sum_k g_k(x')``;
3. ``sign`` is approximated by ``tanh(kappa .)`` (``kappa`` = ``fitting_factor``), so
   ``dx'/dalpha_k = kappa eta g_k sech^2(kappa s)``;
4. ``alpha_k <- alpha_k - lr * dF/dx (.) dx'/dalpha_k`` (``lr`` = ``alpha_lr``);

then ``G_blend = gamma G_blend + sum_k alpha_k g_k`` with the updated weights, and the step.  ``phi_k`` (the
self-attention roll-out map SAGE uses for vision transformers) is 1: mtlguard's victims are CNNs.  ``R``:
``eot_tasks`` names the components whose gradient is averaged over ``eot_samples`` draws of a differentiable
random ``transform`` (models behind randomized defenses); by default ``R`` is empty.

The authors' GB-MTA code sums the look-ahead gradient of the *last* task for every component (a loop-variable
slip); here ``dF/dx`` sums every component, as the formula says.  L-inf only (as both papers).
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch

from ..models.losses import task_loss
from ..ops.reference import LOSS_FLOOR
from .base import Attack, _check_int, _check_scalar
from .ensemble import ModelSet

#: aggregation names that select Auto-SAGE's two forms
AUTOSAGE_ALIASES = {"autosage": "total", "auto-sage": "total", "gbmta_autosage": "gbmta", "gbmta-autosage": "gbmta"}


class AutoSAGE(Attack):
    """Auto-SAGE / GB-MTA-Auto-SAGE (Eq. 15 / 16) with its automatic per-pixel component weights.

    Args (beyond :class:`~mtlguard.attacks.base.Attack`):
        model: a multi-task model, or a list / dict of models (wrapped in a :class:`ModelSet`; targets may
            then be given per task and are expanded to every model).
        steps: iterations; step_size: ``eta`` (default ``2.5 * eps / steps``).
        alpha_lr: learning rate of the weights (10, the GB-MTA code's default); fitting_factor: ``kappa``
            of the ``tanh`` approximation of ``sign`` (50, as both codes).
        decay: ``gamma``, the momentum of ``G_blend`` (0, the GB-MTA code's default).
        aggregation: ``"gbmta"`` (Eq. 16, default), ``"total"`` (Eq. 15) or ``"single:<task>"``.
        transform, eot_tasks, eot_samples: the ``R`` components (see the module docstring).
        random_start: start from a random point of the ball (the codes start from ``x``).

    After a call, ``self.alpha`` holds the final weights ``[K, B, C, H, W]`` (component order =
    ``self.attack_tasks``) and, with ``record_history``, ``self.history`` one entry per step with the weights
    before (``alpha_in``) and after (``alpha``) the update and the look-ahead point.
    """

    name = "AutoSAGE"

    def __init__(self, model, tasks=None, eps: float = 8 / 255, steps: int = 10, step_size: float | None = None,
                 alpha_lr: float = 10.0, fitting_factor: float = 50.0, decay: float = 0.0,
                 aggregation: str = "gbmta", transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 eot_tasks: Sequence[str] | None = None, eot_samples: int = 1, random_start: bool = False,
                 **kw) -> None:
        if isinstance(model, (list, tuple, Mapping)):
            if tasks is None:
                raise ValueError("AutoSAGE over several models needs tasks= (one list for all, or one per model)")
            model = ModelSet(model, tasks)
            tasks = model.tasks
        elif tasks is None:
            tasks = getattr(model, "tasks", None)
            if tasks is None:
                raise ValueError("AutoSAGE needs tasks= (the model has no .tasks)")
        if isinstance(aggregation, str):
            aggregation = AUTOSAGE_ALIASES.get(aggregation.strip().lower(), aggregation)
        if kw.get("norm", "linf") not in ("linf", "inf", "Linf"):
            raise ValueError("AutoSAGE is an L-inf attack (norm='linf')")
        super().__init__(model, tasks, eps=eps, aggregation=aggregation, **kw)
        if self.aggregation.mode not in ("total", "gbmta", "single"):
            raise ValueError(f"AutoSAGE composes with aggregation 'total' (Eq. 15), 'gbmta' (Eq. 16) or 'single:<task>', "
                             f"got {self.aggregation.name!r}")
        self.balanced = self.aggregation.mode == "gbmta"
        self.steps = _check_int("steps", steps, 1)
        self.step_size = 2.5 * self.eps / self.steps if step_size is None else _check_scalar("step_size", step_size)
        self.alpha_lr = _check_scalar("alpha_lr", alpha_lr)
        self.fitting_factor = _check_scalar("fitting_factor", fitting_factor, strict=True)
        self.decay = _check_scalar("decay", decay)
        self.random_start = bool(random_start)
        self.transform = transform
        self.eot_tasks = tuple(eot_tasks or ())
        unknown = [t for t in self.eot_tasks if t not in self.attack_tasks]
        if unknown:
            raise ValueError(f"eot_tasks {unknown} are not attacked components {list(self.attack_tasks)}")
        if self.eot_tasks and transform is None:
            raise ValueError("eot_tasks need transform= (a differentiable random transform)")
        self.eot_samples = _check_int("eot_samples", eot_samples, 1)
        self.alpha: torch.Tensor | None = None

    def forward(self, x, targets, target_labels=None):
        if isinstance(self.model, ModelSet):
            targets = self.model.expand_targets(targets)
            if target_labels is not None:
                target_labels = self.model.expand_targets(target_labels)
        return super().forward(x, targets, target_labels)

    # ------------------------------------------------------------------------------------------
    def blend_terms(self, x_adv: torch.Tensor, y) -> tuple[torch.Tensor, torch.Tensor]:
        """``(losses [K, B], g [K, B, ...])``: component gradients in Eq. 15 (``total``) or Eq. 16 form
        (divided by the sample's own loss), EOT-averaged for ``eot_tasks``."""
        losses, grads = self.losses_and_grads(x_adv, y)
        acc = torch.float64 if x_adv.dtype == torch.float64 else torch.float32
        g = torch.stack([gr.to(acc) for gr in grads])
        view = (losses.shape[0], losses.shape[1]) + (1,) * (x_adv.dim() - 1)
        if self.balanced:
            g = g / losses.to(acc).clamp_min(LOSS_FLOOR).reshape(view)
        if self.eot_tasks:
            idx = [self.attack_tasks.index(t) for t in self.eot_tasks]
            g_eot, l_eot = self._eot_terms(x_adv, y, idx, acc)
            for j, k in enumerate(idx):
                g[k], losses[k] = g_eot[j], l_eot[j]
        return losses, g

    def _eot_terms(self, x_adv, y, idx, acc):
        specs = [self.aggregation.tasks[k] for k in idx]
        xr = x_adv.detach().requires_grad_(True)
        gsum = [torch.zeros(x_adv.shape, dtype=acc, device=x_adv.device) for _ in idx]
        lsum = [torch.zeros(x_adv.shape[0], dtype=torch.float32, device=x_adv.device) for _ in idx]
        view = (-1,) + (1,) * (x_adv.dim() - 1)
        for _ in range(self.eot_samples):
            with torch.enable_grad():
                out = self._outputs(self.transform(xr))
                per = [task_loss(s, out[s.name], y[s.name], "none") for s in specs]
                for j, l in enumerate(per):
                    gr, = torch.autograd.grad(self._sign * l.sum(), xr, retain_graph=j < len(per) - 1,
                                              allow_unused=True)
                    gr = torch.zeros_like(xr) if gr is None else gr.detach()
                    gr = gr.to(acc)
                    if self.balanced:
                        gr = gr / l.detach().to(acc).clamp_min(LOSS_FLOOR).reshape(view)
                    gsum[j] += gr
                    lsum[j] += l.detach().float()
        return [g / self.eot_samples for g in gsum], [l / self.eot_samples for l in lsum]

    def _signed_step(self, x_adv, x, v):
        return self.step(x_adv, x, torch.sign(v).to(torch.int8), self.step_size)

    def perturb(self, x, y):
        self.begin(x, y)
        x_adv = self.random_init(x) if self.random_start else x.clone()
        k_count = len(self.attack_tasks)
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        alpha = torch.ones((k_count,) + tuple(x.shape), dtype=acc, device=x.device)
        blend = torch.zeros(x.shape, dtype=acc, device=x.device)
        kappa, eta = self.fitting_factor, self.step_size
        for i in range(self.steps):
            losses, g = self.blend_terms(x_adv, y)
            s = (alpha * g).sum(0)
            x_look = self._signed_step(x_adv, x, s)
            _, g_look = self.blend_terms(x_look, y)
            d_f = -g_look.sum(0)                                  # dF/dx at the look-ahead point
            sech2 = 1.0 - torch.tanh(kappa * s) ** 2              # d tanh(kappa s)/d(kappa s)
            alpha_in = alpha
            alpha = alpha - self.alpha_lr * d_f * (kappa * eta * g * sech2)
            blend = self.decay * blend + (alpha * g).sum(0)
            self._log(it=i, objective=self.objective(losses), alpha_in=alpha_in, alpha=alpha, x_look=x_look)
            x_adv = self._signed_step(x_adv, x, blend)
        self.alpha = alpha.detach()
        return x_adv
