"""Multi-task adversarial attacks (GB-MTA, WGD, MTA) and adversarial training.

torchattacks-style API over one base class::

    from mtlguard.attacks import PGD
    atk = PGD(model, tasks, eps=8/255, steps=10, step_size=2/255, aggregation="gbmta")
    x_adv = atk(x, targets)

Bases: :class:`FGSM`, :class:`PGD`, :class:`MIM`, :class:`APGD` (linf and l2), the black-box
:class:`Square` (linf), :class:`AutoSAGE` (Auto-SAGE / GB-MTA-Auto-SAGE, GB-MTA Eq. 15-16, over a model's
tasks or a :class:`ModelSet` of models) and :class:`MultiTaskAutoAttack` (APGD + APGD-T + Square, per-sample
worst case; ``build_attack("auto", ...)``).  Aggregations (:mod:`mtlguard.attacks.aggregation`):
``single:<task>``, ``total``, ``signtotal``, ``gbmta``, ``wgd`` (Def. 5 as meant), ``wgd_literal``,
``wgd_initial``, ``wgd_official`` (taskaugment's RELATIVE_WEIGHT), ``weighted``.  Generator attacks:
:mod:`mtlguard.attacks.mta` (MTA, the GAP baseline, transfer evaluation).  Adversarial training:
:class:`FATPerturb` (FAT GB-MTA, GB-MTA Alg. 4).
"""
from .aggregation import AGGREGATIONS, Aggregation
from .apgd import APGD, apgd_checkpoints
from .auto import MultiTaskAutoAttack
from .autosage import AUTOSAGE_ALIASES, AutoSAGE
from .base import Attack, eval_mode_frozen, project_l2
from .ensemble import ModelSet
from .fat import EarlyStopPGD, FATPerturb
from .fgsm import FGSM
from .mim import MIM
from .pgd import PGD
from .square import Square

ATTACKS = {"fgsm": FGSM, "pgd": PGD, "mim": MIM, "apgd": APGD, "square": Square, "autosage": AutoSAGE,
           "auto": MultiTaskAutoAttack}


def build_attack(name: str, model, tasks, **kw) -> Attack:
    """``ATTACKS[name](model, tasks, **kw)`` with a clear error for unknown names."""
    key = name.lower()
    if key not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; expected one of {sorted(ATTACKS)}")
    return ATTACKS[key](model, tasks, **kw)


__all__ = ["AGGREGATIONS", "AUTOSAGE_ALIASES", "Aggregation", "Attack", "FGSM", "PGD", "MIM", "APGD", "Square",
           "AutoSAGE", "ModelSet", "MultiTaskAutoAttack", "ATTACKS", "build_attack", "apgd_checkpoints",
           "eval_mode_frozen", "project_l2", "EarlyStopPGD", "FATPerturb"]
