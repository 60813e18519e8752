"""Task specifications: the one description from which heads, losses, metrics and generators are built.

A multi-task dataset is described by an ordered tuple of :class:`TaskSpec`.  Nothing downstream
(models, losses, metrics, attacks, unlearnable generators, the engine) hard-codes a dataset: it
reads the specs.

Conventions for model outputs and targets (``B`` = batch, ``H x W`` = image size):

=============== =================== ============================ =====================================
kind            model output        target                       default loss / metrics
=============== =================== ============================ =====================================
``binary``      ``[B]`` logit       ``[B]`` int64 in {0, 1}      BCE-with-logits / accuracy, AUC
``multiclass``  ``[B, C]`` logits   ``[B]`` int64 in [0, C)      CE / accuracy
``multilabel``  ``[B, C]`` logits   ``[B, C]`` float in {0, 1}   BCE-with-logits / AUC (mean over C)
``segmentation````[B, C, H, W]``    ``[B, H, W]`` int64          pixel CE (``ignore_index``) / mIoU, pixel acc
``depth``       ``[B, 1, H, W]``    ``[B, 1, H, W]``, 0=invalid  L1 on valid pixels / abs, rel err
``normal``      ``[B, 3, H, W]``    ``[B, 3, H, W]``, 0=invalid  1 - cosine on valid pixels / angle
``regression``  ``[B]``             ``[B]`` float                L1 / MAE
=============== =================== ============================ =====================================

Targets of ``binary``/``multiclass`` tasks are also the *class labels* the MTL-UE generator embeds
(``labels[:, k]``); ``-1`` there means "task not protected".
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

KINDS = ("binary", "multiclass", "multilabel", "segmentation", "depth", "normal", "regression")
CLASSIFICATION_KINDS = ("binary", "multiclass")
DENSE_KINDS = ("segmentation", "depth", "normal")

_DEFAULT_LOSS = {
    "binary": "bce",
    "multiclass": "ce",
    "multilabel": "bce",
    "segmentation": "pixel_ce",
    "depth": "l1",
    "normal": "cosine",
    "regression": "l1",
}
_DEFAULT_METRICS = {
    "binary": ("accuracy", "auc"),
    "multiclass": ("accuracy",),
    "multilabel": ("auc",),
    "segmentation": ("miou", "pixel_acc"),
    "depth": ("abs_err", "rel_err", "delta1"),
    "normal": ("mean_angle", "median_angle", "within_11.25", "within_22.5", "within_30"),
    "regression": ("mae",),
}
# higher-is-better per metric (used by ARP / Delta-Acc and "best" tracking)
HIGHER_IS_BETTER = {
    "accuracy": True, "auc": True, "miou": True, "pixel_acc": True,
    "abs_err": False, "rel_err": False, "delta1": True, "delta2": True, "delta3": True,
    "mean_angle": False, "median_angle": False,
    "within_11.25": True, "within_22.5": True, "within_30": True, "mae": False,
}


@dataclass(frozen=True)
class TaskSpec:
    """One task of a multi-task dataset.

    Args:
        name: unique task name (a valid identifier is recommended: it becomes a head name).
        kind: one of :data:`KINDS`.
        num_classes: classes of a classification/segmentation task, labels of a multilabel task,
            ``1`` for depth/regression, ``3`` for normals.  ``binary`` tasks have ``num_classes=2``
            (two class embeddings) but a single output logit.
        class_names: optional human-readable class names (``len == num_classes``).
        ignore_index: target value ignored by the loss and metrics (segmentation).
        loss: loss name (``ce``, ``bce``, ``pixel_ce``, ``l1``, ``mse``, ``cosine``); defaults by kind.
        metrics: metric names; defaults by kind.
    """

    name: str
    kind: str
    num_classes: int = 0
    class_names: tuple[str, ...] | None = None
    ignore_index: int = -1
    loss: str = ""
    metrics: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"TaskSpec.name must be a non-empty string, got {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"task {self.name!r}: unknown kind {self.kind!r}; expected one of {KINDS}")
        n = self.num_classes
        if self.kind == "binary":
            n = n or 2
            if n != 2:
                raise ValueError(f"task {self.name!r}: a binary task has num_classes=2, got {n}")
        elif self.kind in ("depth", "regression"):
            n = n or 1
        elif self.kind == "normal":
            n = n or 3
        elif n < 2 and self.kind in ("multiclass", "segmentation"):
            raise ValueError(f"task {self.name!r}: kind {self.kind!r} needs num_classes >= 2, got {n}")
        elif n < 1:
            raise ValueError(f"task {self.name!r}: kind {self.kind!r} needs num_classes >= 1, got {n}")
        object.__setattr__(self, "num_classes", int(n))
        if self.class_names is not None:
            names = tuple(str(c) for c in self.class_names)
            if len(names) != self.num_classes:
                raise ValueError(
                    f"task {self.name!r}: {len(names)} class_names for {self.num_classes} classes"
                )
            object.__setattr__(self, "class_names", names)
        object.__setattr__(self, "loss", self.loss or _DEFAULT_LOSS[self.kind])
        object.__setattr__(self, "metrics", tuple(self.metrics) or _DEFAULT_METRICS[self.kind])

    # --- derived facts -------------------------------------------------------------------------
    @property
    def is_classification(self) -> bool:
        """True for per-image class labels (binary / multiclass): the tasks MTL-UE embeds."""
        return self.kind in CLASSIFICATION_KINDS

    @property
    def is_dense(self) -> bool:
        return self.kind in DENSE_KINDS

    @property
    def out_channels(self) -> int:
        """Number of output channels/logits of this task's head."""
        if self.kind in ("binary", "regression", "depth"):
            return 1
        return self.num_classes

    def to_dict(self) -> dict:
        d = asdict(self)
        d["class_names"] = list(self.class_names) if self.class_names is not None else None
        d["metrics"] = list(self.metrics)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TaskSpec":
        allowed = {"name", "kind", "num_classes", "class_names", "ignore_index", "loss", "metrics"}
        unknown = set(d) - allowed
        if unknown:
            raise ValueError(f"task spec {d.get('name', '?')!r}: unknown keys {sorted(unknown)}")
        d = dict(d)
        if d.get("class_names") is not None:
            d["class_names"] = tuple(d["class_names"])
        if d.get("metrics") is not None:
            d["metrics"] = tuple(d["metrics"])
        return cls(**d)


def validate_tasks(tasks: Iterable[TaskSpec]) -> tuple[TaskSpec, ...]:
    """Check a task list (non-empty, unique names) and return it as a tuple."""
    tasks = tuple(tasks)
    if not tasks:
        raise ValueError("at least one task is required")
    for t in tasks:
        if not isinstance(t, TaskSpec):
            raise TypeError(f"expected TaskSpec, got {type(t).__name__}")
    names = [t.name for t in tasks]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"duplicate task names: {dup}")
    return tasks


def select_tasks(tasks: Sequence[TaskSpec], names: Sequence[str] | None) -> tuple[TaskSpec, ...]:
    """The specs named by ``names`` (in that order); all of them when ``names`` is None."""
    if names is None:
        return tuple(tasks)
    by_name = {t.name: t for t in tasks}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise KeyError(f"unknown task(s) {missing}; available: {list(by_name)}")
    return tuple(by_name[n] for n in names)


def tasks_to_json(tasks: Sequence[TaskSpec]) -> str:
    return json.dumps([t.to_dict() for t in tasks], indent=2)


def tasks_from_json(text: str) -> tuple[TaskSpec, ...]:
    data = json.loads(text)
    if isinstance(data, dict) and "tasks" in data:
        data = data["tasks"]
    if not isinstance(data, list):
        raise ValueError("a task-spec file holds a JSON list of task objects (or {'tasks': [...]})")
    return validate_tasks(TaskSpec.from_dict(d) for d in data)
