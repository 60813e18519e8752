"""An AutoAttack-style multi-task ensemble (Croce & Hein 2020's protocol, over mtlguard's aggregations).

:class:`MultiTaskAutoAttack` runs, on the same images and with the same aggregation:

1. **APGD** (untargeted, :class:`~mtlguard.attacks.apgd.APGD`) -- with ``total`` / ``single:X`` its objective
   is the CE (task-loss) sum, with ``gbmta`` / WGD GB-MTA's relative objective (GB-MTA Alg. 3);
2. **APGD-T** -- targeted APGD towards each of the ``n_target_classes`` most likely wrong classes of every
   attacked classification task at the clean point (AutoAttack's APGD-T with the CE objective towards the
   target instead of the targeted DLR loss, which has no multi-task form); skipped when an attacked task is
   not a classification task, and for binary tasks only the other class exists;
3. **Square** (:class:`~mtlguard.attacks.square.Square`) -- the score-based black-box attack, with the same
   objective.

AutoAttack keeps, per image, the first attack that fools it (robust accuracy = images no attack fools).  A
multi-task image can fool some tasks and not others, so the ensemble keeps, per image, the candidate (the
clean image included) that fools the **most attacked classification tasks** (prediction != label), and among
those the one with the highest untargeted attack objective :meth:`Aggregation.objective` against the true
labels (``selection="objective"`` uses the objective alone; for dense / regression tasks only the objective
counts).  ``self.last_report`` says how often each attack won, its mean number of fooled tasks and its mean
objective.
"""
from __future__ import annotations

import torch

from .apgd import APGD
from .base import Attack, _check_int
from .square import Square


class MultiTaskAutoAttack(Attack):
    """APGD + APGD-T + Square, per-sample worst case (see the module docstring).

    Args (beyond :class:`~mtlguard.attacks.base.Attack`; ``targeted`` is not accepted):
        steps: APGD / APGD-T iterations (AutoAttack: 100); restarts: APGD restarts.
        n_target_classes: target classes of APGD-T (AutoAttack: 9); n_queries: Square queries (AutoAttack: 5000).
        attacks: which of ``("apgd", "apgd-t", "square")`` to run.
    """

    name = "AutoAttack"
    COMPONENTS = ("apgd", "apgd-t", "square")

    def __init__(self, model, tasks, eps=8 / 255, steps: int = 100, restarts: int = 1, n_target_classes: int = 3,
                 n_queries: int = 100, attacks=COMPONENTS, selection: str = "fooled", **kw) -> None:
        if kw.get("targeted"):
            raise ValueError("MultiTaskAutoAttack is untargeted (its APGD-T part picks the targets itself)")
        super().__init__(model, tasks, eps=eps, **kw)
        self.steps = _check_int("steps", steps, 1)
        self.restarts = _check_int("restarts", restarts, 1)
        self.n_target_classes = _check_int("n_target_classes", n_target_classes, 1)
        self.n_queries = _check_int("n_queries", n_queries, 1)
        unknown = [a for a in attacks if a not in self.COMPONENTS]
        if unknown or not attacks:
            raise ValueError(f"attacks must be some of {self.COMPONENTS}, got {list(attacks)}")
        self.components = tuple(attacks)
        if selection not in ("fooled", "objective"):
            raise ValueError(f"selection must be 'fooled' or 'objective', got {selection!r}")
        self.selection = selection
        self._kw = dict(norm=self.norm, aggregation=self.aggregation.name, attack_tasks=list(self.attack_tasks),
                        weights=(dict(zip(self.attack_tasks, self.aggregation.weights.tolist()))
                                 if self.aggregation.weights is not None else None), seed=seed_of(kw))
        self.last_report: dict = {}

    def _targets_k(self, x, y, k: int) -> dict[str, torch.Tensor] | None:
        """The k-th (1-based) most likely wrong class of every attacked task at ``x`` (None if none has one)."""
        with torch.no_grad():
            out = self._outputs(x)
        tl = {}
        for spec in self.aggregation.tasks:
            if spec.num_classes - 1 < k:
                return None
            o = out[spec.name]
            if spec.kind == "binary":
                tl[spec.name] = 1 - y[spec.name].long()
                continue
            logits = o.float().clone()
            logits.scatter_(1, y[spec.name].long()[:, None], float("-inf"))
            tl[spec.name] = logits.topk(k, dim=1).indices[:, k - 1]
        return tl

    def perturb(self, x, y):
        self.begin(x, y)
        cands = [("clean", x)]
        if "apgd" in self.components:
            a = APGD(self.model, self.tasks, eps=self.eps, steps=self.steps, restarts=self.restarts, **self._kw)
            cands.append(("apgd", a(x, y)))
        if "apgd-t" in self.components and all(t.is_classification for t in self.aggregation.tasks):
            for k in range(1, self.n_target_classes + 1):
                tl = self._targets_k(x, y, k)
                if tl is None:
                    break
                a = APGD(self.model, self.tasks, eps=self.eps, steps=self.steps, targeted=True, **self._kw)
                cands.append((f"apgd-t{k}", a(x, y, target_labels=tl)))
        if "square" in self.components:
            a = Square(self.model, self.tasks, eps=self.eps, n_queries=self.n_queries, **self._kw)
            cands.append(("square", a(x, y)))
        self.aggregation.begin(self.losses(x, y))  # the sub-attacks share no state with this aggregation
        objs = torch.stack([self.objective(self.losses(c, y)) for _, c in cands])  # [A, B]
        fooled = torch.stack([self.fooled_tasks(c, y) for _, c in cands]).to(objs.dtype)  # [A, B]
        key = objs if self.selection == "objective" else fooled + 0.5 + torch.atan(objs) / torch.pi  # lexicographic
        best = key.argmax(0)
        out = cands[0][1].clone()
        for i, (_, c) in enumerate(cands):
            m = (best == i).reshape((-1,) + (1,) * (x.dim() - 1))
            out = torch.where(m, c, out)
        self.last_report = {name: {"wins": int((best == i).sum()), "mean_fooled": float(fooled[i].mean()),
                                   "mean_objective": float(objs[i].mean())} for i, (name, _) in enumerate(cands)}
        return out

    def fooled_tasks(self, x_adv, y) -> torch.Tensor:
        """Per image, how many attacked classification tasks predict a wrong class at ``x_adv`` ([B] int)."""
        with torch.no_grad():
            out = self._outputs(x_adv)
        count = torch.zeros(x_adv.shape[0], dtype=torch.long, device=x_adv.device)
        for spec in self.aggregation.tasks:
            if not spec.is_classification:
                continue
            o = out[spec.name]
            pred = (o.reshape(o.shape[0], -1)[:, 0] > 0).long() if spec.kind == "binary" else o.argmax(1)
            count += (pred != y[spec.name].long()).long()
        return count


def seed_of(kw: dict):
    return kw.get("seed")
