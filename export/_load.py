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
