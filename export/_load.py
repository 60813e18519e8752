"""Load a trained generator checkpoint (safetensors weights + JSON config) for export / the torch backend."""
from __future__ import annotations

from pathlib import Path


def load_generator(path, device="cpu"):
    """``MTLUEGenerator.load(path)`` in eval mode on ``device``.

    Raises ``FileNotFoundError`` naming ``path`` if it does not exist, ``RuntimeError`` if the
    unlearnable package has no ``MTLUEGenerator``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"generator checkpoint not found: {path}")
    try:
        from mtlguard.unlearnable import MTLUEGenerator
    except ImportError as e:
        raise RuntimeError(f"cannot load {path}: mtlguard.unlearnable.MTLUEGenerator is not available ({e})") from e
    gen = MTLUEGenerator.load(path)
    return gen.to(device).eval()


def load_training_config(path) -> dict:
    """The fit settings saved beside a checkpoint (``<weights>.json``'s ``"extra"``: command, fit
    config, data), or ``{}``; they go into the exported metadata and its config hash."""
    import json

    p = Path(path)
    weights = p if p.suffix == ".safetensors" else p.with_name(p.name + ".safetensors")
    side = weights.with_suffix(".json")
    if not side.is_file():
        return {}
    try:
        return dict(json.loads(side.read_text()).get("extra") or {})
    except (json.JSONDecodeError, AttributeError):
        return {}
