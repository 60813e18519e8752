"""The generator's facts, as stored in exported artifacts (ONNX ``metadata_props``, TorchScript
extra files, ``.pt2`` sidecar JSON) and read back by the engine.

Keys (all strings in ONNX ``metadata_props``; JSON values where structured):

* ``mtlguard.tasks``: JSON list of ``{name, kind, num_classes, class_names}`` (the order of ``labels[:, k]``)
* ``mtlguard.eps``: L-inf budget in [0, 1] units; ``mtlguard.image_size``: JSON ``[H, W]``;
  ``mtlguard.in_channels``; ``mtlguard.version``; ``mtlguard.config_hash`` (sha256 of the canonical
  JSON of the generator + training config); ``mtlguard.config`` (that JSON);
  ``mtlguard.io``: ``float32_nchw`` or ``uint8_nhwc``; ``mtlguard.precision``: ``fp32`` or ``fp16``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from mtlguard._version import __version__

PREFIX = "mtlguard."


def _jsonable(v: Any):
    if hasattr(v, "to_dict"):
        return v.to_dict()
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if hasattr(v, "item"):
        return v.item()
    return str(v)


def config_hash(config: dict) -> str:
    """sha256 of the canonical (sorted-key) JSON of ``config``."""
    return hashlib.sha256(json.dumps(_jsonable(config), sort_keys=True).encode()).hexdigest()


@dataclass
class GeneratorFacts:
    """What a consumer needs to run a generator: task order/classes, eps, input size and channels."""

    tasks: list[dict]
    eps: float
    image_size: tuple[int, int]
    in_channels: int
    config: dict = field(default_factory=dict)
    version: str = __version__
    config_hash: str = ""
    io: str = "float32_nchw"
    precision: str = "fp32"

    @property
    def task_names(self) -> list[str]:
        return [t["name"] for t in self.tasks]

    @property
    def num_classes(self) -> list[int]:
        return [int(t.get("num_classes", 0)) for t in self.tasks]

    def to_props(self) -> dict[str, str]:
        return {
            PREFIX + "tasks": json.dumps(self.tasks),
            PREFIX + "eps": repr(float(self.eps)),
            PREFIX + "image_size": json.dumps(list(self.image_size)),
            PREFIX + "in_channels": str(int(self.in_channels)),
            PREFIX + "version": self.version,
            PREFIX + "config_hash": self.config_hash,
            PREFIX + "config": json.dumps(self.config, sort_keys=True),
            PREFIX + "io": self.io,
            PREFIX + "precision": self.precision,
        }

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> "GeneratorFacts":
        missing = [k for k in ("tasks", "eps", "image_size", "in_channels") if PREFIX + k not in props]
        if missing:
            raise ValueError(f"{source}: not an mtlguard generator export (metadata keys missing: "
                             f"{', '.join(PREFIX + k for k in missing)})")
        return cls(
            tasks=json.loads(props[PREFIX + "tasks"]),
            eps=float(props[PREFIX + "eps"]),
            image_size=tuple(int(v) for v in json.loads(props[PREFIX + "image_size"])),
            in_channels=int(props[PREFIX + "in_channels"]),
            config=json.loads(props.get(PREFIX + "config", "{}")),
            version=props.get(PREFIX + "version", "?"),
            config_hash=props.get(PREFIX + "config_hash", ""),
            io=props.get(PREFIX + "io", "float32_nchw"),
            precision=props.get(PREFIX + "precision", "fp32"),
        )

    def to_json(self) -> str:
        return json.dumps({k[len(PREFIX):]: v for k, v in self.to_props().items()}, indent=1)

    @classmethod
    def from_json(cls, text: str, source: str = "model") -> "GeneratorFacts":
        return cls.from_props({PREFIX + k: v for k, v in json.loads(text).items()}, source)


def _task_dict(t) -> dict:
    d = t.to_dict() if hasattr(t, "to_dict") else dict(t)
    names = d.get("class_names")
    return {"name": d["name"], "kind": d.get("kind", "multiclass"), "num_classes": int(d.get("num_classes", 0)),
            "class_names": list(names) if names is not None else None}


def generator_facts(generator, training_config: dict | None = None) -> GeneratorFacts:
    """Facts of an ``MTLUEGenerator``-like module (``config()`` plus attributes as a fallback).

    Only classification tasks carry labels (``labels[:, k]``), in the generator's task order."""
    cfg = _jsonable(generator.config()) if hasattr(generator, "config") else {}
    tasks = cfg.get("tasks") if isinstance(cfg, dict) else None
    if tasks is None:
        tasks = getattr(generator, "tasks", None)
    if tasks is None:
        raise ValueError("generator has no tasks (neither config()['tasks'] nor .tasks)")
    tasks = [_task_dict(t) for t in tasks]
    label_tasks = getattr(generator, "label_tasks", None)
    if label_tasks is not None:
        tasks = [_task_dict(t) for t in label_tasks]
    else:
        tasks = [t for t in tasks if t["kind"] in ("binary", "multiclass")]
    size = cfg.get("image_size", getattr(generator, "image_size", None))
    if size is None:
        raise ValueError("generator has no image_size")
    if isinstance(size, int):
        size = (size, size)
    eps = float(cfg.get("eps", getattr(generator, "eps", 0.0)))
    ch = int(cfg.get("in_channels", getattr(generator, "in_channels", 3)))
    full = {"generator": cfg, "training": _jsonable(training_config or cfg.get("training") or cfg.get("extra") or {})}
    return GeneratorFacts(tasks=tasks, eps=eps, image_size=(int(size[0]), int(size[1])), in_channels=ch,
                          config=full, config_hash=config_hash(full))


def read_onnx_facts(path) -> GeneratorFacts:
    """:class:`GeneratorFacts` from an exported ONNX file (reads the header only, not the weights)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return GeneratorFacts.from_props({p.key: p.value for p in m.metadata_props}, source=str(path))
