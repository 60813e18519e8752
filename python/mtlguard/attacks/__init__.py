"""Multi-task adversarial attacks (GB-MTA, WGD, MTA) and adversarial training.

torchattacks-style API over one base class::

    from mtlguard.attacks import PGD
    atk = PGD(model, tasks, eps=8/255, steps=10, step_size=2/255, aggregation="gbmta")
    x_adv = atk(x, targets)

Bases: :class:`FGSM`, :class:`PGD`, :class:`MIM`, :class:`APGD` (linf and l2).  Aggregations
(:mod:`mtlguard.attacks.aggregation`): ``single:<task>``, ``total``, ``signtotal``, ``gbmta``,
``wgd``, ``wgd_initial``, ``weighted``.  Generator attack: :mod:`mtlguard.attacks.mta`.
Adversarial training: :class:`FATPerturb` (FAT GB-MTA, GB-MTA Alg. 4).
"""
from .aggregation import AGGREGATIONS, Aggregation
from .apgd import APGD, apgd_checkpoints
from .base import Attack, eval_mode_frozen, project_l2
from .fat import EarlyStopPGD, FATPerturb
from .fgsm import FGSM
from .mim import MIM
from .pgd import PGD

ATTACKS = {"fgsm": FGSM, "pgd": PGD, "mim": MIM, "apgd": APGD}


def build_attack(name: str, model, tasks, **kw) -> Attack:
    """``ATTACKS[name](model, tasks, **kw)`` with a clear error for unknown names."""
    key = name.lower()
    if key not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; expected one of {sorted(ATTACKS)}")
    return ATTACKS[key](model, tasks, **kw)


__all__ = ["AGGREGATIONS", "Aggregation", "Attack", "FGSM", "PGD", "MIM", "APGD", "ATTACKS", "build_attack",
           "apgd_checkpoints", "eval_mode_frozen", "project_l2", "EarlyStopPGD", "FATPerturb"]
