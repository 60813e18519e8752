"""FGSM (Goodfellow et al. 2015) over any task aggregation: ``x' = P(x + eps * d(x))``."""
from __future__ import annotations

from .base import Attack


class FGSM(Attack):
    """One step of size ``eps`` along the aggregated direction (sign for linf, unit-L2 for l2).

    With ``aggregation="total"`` this is GB-MTA's TOTAL-FGSM, with ``"gbmta"`` GB-MTA-FGSM.
    """

    name = "FGSM"

    def perturb(self, x, y):
        self.begin(x, y)
        losses, grads = self.losses_and_grads(x, y)
        x_adv = self.step(x, x, self.direction(grads, losses), self.eps)
        self._log(it=0, objective=self.objective(losses))
        return x_adv
