"""``mtlguard inspect``: what a generator file is -- tasks, class names, eps, input size, channels, delta
options, fit config and the mtlguard version that wrote it -- without running it.

Reads a checkpoint (``.safetensors`` + ``.json``, the ``.json`` itself, or a run folder), an ONNX export
(its ``metadata_props``), a ``.pt2`` package or TensorRT engine (the ``<file>.json`` written beside it, else
the package's own metadata) and a TorchScript file (its ``mtlguard.json`` extra file).  Nothing here
imports torch.

Example::

    mtlguard inspect runs/gen                 # or runs/gen/generator.safetensors, gen.onnx, gen.pt2
    mtlguard inspect gen.onnx --json
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

HELP = "print a generator's tasks, classes, eps, input size and fit config (.safetensors, .onnx, .pt2, ...)"
DELTA_OPTIONS = ("delta_units", "delta_channels", "large_stem", "emb_channels", "emb_tile")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("inspect", help=HELP, description=__doc__.split("\n\n")[0])
    p.add_argument("generator", metavar="GEN", help="generator file or run folder")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)


def _from_checkpoint(path: Path) -> dict:
    from mtlguard._version import __version__
    from mtlguard.export._load import resolve_checkpoint

    weights = resolve_checkpoint(path)
    try:
        cfg = json.loads(weights.with_suffix(".json").read_text())
    except ValueError as e:
        raise ValueError(f"{weights.with_suffix('.json')}: not valid JSON ({e})") from None
    names = set(cfg.get("class_tasks") or [t["name"] for t in cfg.get("tasks", [])])
    tasks = [t for t in cfg.get("tasks", []) if t.get("name") in names and t.get("kind") in ("binary", "multiclass")]
    extra = cfg.get("extra") or {}
    return {"file": str(weights), "format": "checkpoint (safetensors + json)", "tasks": tasks, "eps": cfg.get("eps"),
            "image_size": cfg.get("image_size"), "in_channels": cfg.get("in_channels"),
            "delta": {k: cfg[k] for k in DELTA_OPTIONS if k in cfg}, "fit": extra,
            "version": (cfg.get("mtlguard_version") or cfg.get("version") or extra.get("mtlguard_version")
                        or f"not recorded (installed: {__version__})")}


def _from_facts(facts, path: Path, kind: str) -> dict:
    gen = (facts.config or {}).get("generator") or {}
    out = {"file": str(path), "format": kind, "tasks": facts.tasks, "eps": facts.eps,
           "image_size": list(facts.image_size), "in_channels": facts.in_channels,
           "delta": {k: gen[k] for k in DELTA_OPTIONS if k in gen}, "fit": (facts.config or {}).get("training") or {},
           "version": facts.version, "config_hash": facts.config_hash}
    if kind.startswith("onnx"):
        out["io"], out["precision"] = facts.io, facts.precision
    return out


def _package_json(path: Path) -> str | None:
    """The facts JSON stored inside a zip package: TorchScript's ``extra/mtlguard.json`` or the
    ``"mtlguard.json"`` entry of a ``.pt2`` package's AOTInductor ``*metadata.json``."""
    try:
        with zipfile.ZipFile(path) as z:
            for name in z.namelist():
                if name.endswith("/mtlguard.json"):
                    return z.read(name).decode()
                if name.endswith("metadata.json"):
                    meta = json.loads(z.read(name).decode() or "{}")
                    if isinstance(meta, dict) and "mtlguard.json" in meta:
                        return meta["mtlguard.json"]
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable package ({e})") from None
    return None


def describe(path) -> dict:
    """The facts of the generator at ``path`` as a JSON-able dict (see the module docstring)."""
    from mtlguard.export.metadata import GeneratorFacts, read_onnx_facts

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".onnx":
        facts = read_onnx_facts(p)
        kind = "onnx (any size: uint8 [H, W, C] + labels [K])" if facts.io == "uint8_hwc_anysize" else "onnx"
        return {**_from_facts(facts, p, kind), "inputs": _onnx_inputs(p)}
    if suffix in (".pt2", ".engine", ".plan", ".trt", ".ts", ".torchscript", ".jit", ".pt"):
        if not p.is_file():
            raise FileNotFoundError(f"{path}: file not found")
        side = p.with_name(p.name + ".json")
        text = side.read_text() if side.is_file() else None
        if text is None and suffix not in (".engine", ".plan", ".trt"):
            text = _package_json(p)
        if text is None:
            raise ValueError(f"{path}: no mtlguard metadata (neither {side.name} beside it nor inside the file)")
        kind = {".pt2": "pt2 (AOTInductor)", ".engine": "tensorrt", ".plan": "tensorrt", ".trt": "tensorrt"}.get(
            suffix, "torchscript")
        return _from_facts(GeneratorFacts.from_json(text, source=str(p)), p, kind)
    return _from_checkpoint(p)


def _onnx_inputs(path: Path) -> dict:
    import onnx

    m = onnx.load(str(path), load_external_data=False)

    def dims(v):
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    return {v.name: [onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type).lower(), dims(v)]
            for v in list(m.graph.input) + list(m.graph.output)}


def format_text(info: dict) -> str:
    """Human-readable lines for :func:`describe`'s dict."""
    eps = info.get("eps")
    lines = [f"file:         {info['file']}", f"format:       {info['format']}"]
    if eps is not None:
        lines.append(f"eps:          {eps:.6g} (= {eps * 255:.4g}/255; pixels move at most {_bound(eps)} uint8 steps)")
    lines += [f"input size:   {info.get('image_size')} (H, W)", f"channels:     {info.get('in_channels')}"]
    for k in ("io", "precision", "config_hash"):
        if info.get(k):
            lines.append(f"{k + ':':<13} {info[k]}")
    lines.append(f"tasks:        {len(info['tasks'])} (labels[k] in this order; -1 = not protected)")
    for i, t in enumerate(info["tasks"]):
        names = t.get("class_names")
        shown = ", ".join(f"{j}={n}" for j, n in enumerate(names)) if names else f"indices 0..{t.get('num_classes', 0) - 1}"
        lines.append(f"  [{i}] {t['name']} ({t.get('kind')}, {t.get('num_classes')} classes): {shown}")
    if info.get("inputs"):
        lines.append("graph:        " + "; ".join(f"{n} {d} {s}" for n, (d, s) in info["inputs"].items()))
    if info.get("delta"):
        lines.append("delta:        " + ", ".join(f"{k}={v}" for k, v in info["delta"].items()))
    lines.append("fit config:   " + (json.dumps(info["fit"], sort_keys=True) if info.get("fit") else "not recorded"))
    lines.append(f"version:      mtlguard {info.get('version')}")
    return "\n".join(lines)


def _bound(eps: float) -> int:
    import math

    return int(math.ceil(eps * 255.0 - 1e-9))


def run(args) -> int:
    info = describe(args.generator)
    print(json.dumps(info, indent=1) if args.json else format_text(info))
    return 0
