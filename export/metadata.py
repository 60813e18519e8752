"""The generator's facts, as stored in exported artifacts (ONNX ``metadata_props``, TorchScript
extra files, ``.pt2`` sidecar JSON) and read back by the engine.

Keys (all strings in ONNX ``metadata_props``; JSON values where structured):

* ``mtlguard.tasks``: JSON list of ``{name, kind, num_classes, class_names}`` (the order of ``labels[:, k]``)
* ``mtlguard.eps``: L-inf budget in [0, 1] units; ``mtlguard.image_size``: JSON ``[H, W]``;
  ``mtlguard.in_channels``; ``mtlguard.version``; ``mtlguard.config_hash`` (sha256 of the canonical
  JSON of the generator + training config); ``mtlguard.config`` (that JSON);
  ``mtlguard.io``: ``float32_nchw``, ``uint8_nhwc`` or ``uint8_hwc_anysize`` (the any-size variant,
  :mod:`mtlguard.export.anysize`, which also carries ``mtlguard.resize``); ``mtlguard.precision``:
  ``fp32``, ``fp16`` or ``int8`` (:mod:`mtlguard.export.int8`, which also carries ``mtlguard.quantization``).

Label contract (every variant): ``labels[..., k]`` is a class index of task ``k`` in ``[0, num_classes)``
or ``-1`` (task not protected: the mean of its class embeddings).  The graphs do not check ranges (an
index past the end reads the last class, any negative one means unprotected), so callers validate
first: :meth:`GeneratorFacts.check_labels`.
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

    def check_labels(self, labels) -> "np.ndarray":
        """Validated int64 labels (``[K]`` or ``[N, K]``) for this generator.

        Each entry is a class index in ``[0, num_classes)``, a class name of that task, or ``-1`` /
        ``None`` (unprotected).  Raises ``ValueError`` naming the task and the allowed values."""
        import numpy as np

        arr = np.asarray(labels, dtype=object)
        if arr.ndim not in (1, 2) or arr.shape[-1] != len(self.tasks):
            raise ValueError(f"labels must have {len(self.tasks)} entries per image (tasks {self.task_names}), "
                             f"got shape {arr.shape}")
        out = np.empty(arr.shape, dtype=np.int64)
        for pos, v in np.ndenumerate(arr):
            out[pos] = _label_index(self.tasks[pos[-1]], v)
        return out

    def to_json(self) -> str:
        return json.dumps({k[len(PREFIX):]: v for k, v in self.to_props().items()}, indent=1)

    @classmethod
    def from_json(cls, text: str, source: str = "model") -> "GeneratorFacts":
        return cls.from_props({PREFIX + k: v for k, v in json.loads(text).items()}, source)


def _label_index(task: dict, value) -> int:
    """One label of ``task`` as an index (``-1`` = unprotected); ``ValueError`` if out of range/unknown."""
    n, names = int(task.get("num_classes", 0)), list(task.get("class_names") or [])
    if value is None or (isinstance(value, str) and value.strip() in ("", "-1")):
        return -1
    if isinstance(value, str) and value.strip() in names:
        return names.index(value.strip())
    try:
        k = int(value)
        ok = float(value) == k
    except (TypeError, ValueError):
        k, ok = None, False
    if ok and (k == -1 or 0 <= k < n):
        return k
    allowed = f"a class name of {names} or " if names else ""
    raise ValueError(f"task {task['name']!r}: invalid label {value!r}; expected {allowed}an index in [0, {n}) "
                     "or -1 (unprotected)")


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


def load_onnx(path, load_external_data: bool = True):
    """``onnx.load`` with one-sentence errors: ``FileNotFoundError`` for a missing file, ``ValueError``
    naming the file for anything that is not a readable ONNX model (corrupt, truncated, another format)."""
    from pathlib import Path

    import onnx

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{path}: ONNX file not found")
    try:
        m = onnx.load(str(p), load_external_data=load_external_data)
    except Exception as e:  # protobuf DecodeError, RuntimeError, ... (their text is several lines)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{path}: not a readable ONNX model (corrupt or truncated file?): {first}") from None
    if not m.graph.node:
        raise ValueError(f"{path}: not a readable ONNX model (corrupt or truncated file?): the graph is empty")
    return m


def read_onnx_facts(path) -> GeneratorFacts:
    """:class:`GeneratorFacts` from an exported ONNX file (reads the header only, not the weights)."""
    m = load_onnx(path, load_external_data=False)
    return GeneratorFacts.from_props({p.key: p.value for p in m.metadata_props}, source=str(path))
