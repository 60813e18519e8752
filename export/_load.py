"""Load a trained generator checkpoint (safetensors weights + JSON config) for export / the torch backend.

A checkpoint is what ``MTLUEGenerator.save(path)`` writes: ``<name>.safetensors`` + ``<name>.json``.
:func:`resolve_checkpoint` also accepts the ``.json`` file, the name without a suffix, and a run
folder (``mtlguard fit --out DIR`` holds ``generator.safetensors``; any folder holding exactly one
generator checkpoint), and refuses anything else with one sentence naming the path.
"""
from __future__ import annotations

import json
from pathlib import Path

GENERATOR_FORMAT = "mtlguard.MTLUEGenerator"
RUN_DIR_NAME = "generator.safetensors"


def _is_generator_config(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("format") == GENERATOR_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _from_folder(folder: Path) -> Path:
    if (folder / RUN_DIR_NAME).is_file():
        return folder / RUN_DIR_NAME
    found = sorted(p for p in folder.glob("*.safetensors") if _is_generator_config(p.with_suffix(".json")))
    if len(found) == 1:
        return found[0]
    if not found:
        raise FileNotFoundError(f"{folder}: no generator checkpoint in this folder (expected {RUN_DIR_NAME} "
                                "with its .json, as `mtlguard fit --out` writes)")
    raise ValueError(f"{folder}: {len(found)} generator checkpoints in this folder "
                     f"({', '.join(p.name for p in found[:4])}); pass one of them")


def resolve_checkpoint(path) -> Path:
    """The ``.safetensors`` file of the generator checkpoint ``path`` names (see the module docstring).

    Raises ``FileNotFoundError`` / ``ValueError`` with one sentence naming ``path``."""
    p = Path(path)
    if p.is_dir():
        return _from_folder(p)
    if p.suffix == ".json" and p.is_file():
        p = p.with_suffix(".safetensors")
    elif p.suffix != ".safetensors":
        if p.with_name(p.name + ".safetensors").is_file():
            p = p.with_name(p.name + ".safetensors")
        elif p.is_file():
            hint = " (an exported ONNX file: use --onnx)" if p.suffix.lower() == ".onnx" else ""
            raise ValueError(f"{path}: not a generator checkpoint{hint}; expected the .safetensors file (with its "
                             ".json) that MTLUEGenerator.save / `mtlguard fit` writes, or their run folder")
    if not p.is_file():
        raise FileNotFoundError(f"{path}: generator checkpoint not found")
    if not p.with_suffix(".json").is_file():
        raise FileNotFoundError(f"{p}: the generator's config {p.with_suffix('.json').name} is missing beside it")
    return p


def load_generator(path, device="cpu"):
    """``MTLUEGenerator.load`` of the checkpoint ``path`` names (file, ``.json`` or run folder), in eval
    mode on ``device``.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file when it is missing or unreadable."""
    weights = resolve_checkpoint(path)
    from mtlguard.unlearnable import MTLUEGenerator

    try:
        gen = MTLUEGenerator.load(weights)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{weights}: cannot load the generator checkpoint ({type(e).__name__}: {e})") from e
    except Exception as e:  # safetensors' own error type for a corrupt/truncated file
        if type(e).__name__ != "SafetensorError":
            raise
        raise ValueError(f"{weights}: corrupt or truncated weights file ({e})") from e
    return gen.to(device).eval()


def load_training_config(path) -> dict:
    """The fit settings saved beside a checkpoint (``<weights>.json``'s ``"extra"``: command, fit
    config, data), or ``{}``; they go into the exported metadata and its config hash."""
    try:
        side = resolve_checkpoint(path).with_suffix(".json")
        return dict(json.loads(side.read_text()).get("extra") or {})
    except (OSError, ValueError, AttributeError):
        return {}
