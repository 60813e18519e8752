"""Load a trained generator checkpoint (safetensors weights + JSON config) for export / the torch backend.

A checkpoint is what ``MTLUEGenerator.save(path)`` writes: ``<name>.safetensors`` + ``<name>.json``.
:func:`resolve_checkpoint` also accepts the ``.json`` file, the name without a suffix, and a run
folder (``mtlguard fit --out DIR`` holds ``generator.safetensors``; any folder holding exactly one
generator checkpoint), and refuses anything else with one sentence naming the path.
:func:`generator_from_onnx` rebuilds a torch generator from a float32 ONNX export (benchmarks' torch eager).
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


def _bn_of(conv: str) -> str:
    """The encoder BatchNorm after conv ``conv`` (``...conv1`` -> ``...bn1``, ``shortcut.0`` -> ``shortcut.1``)."""
    head, _, last = conv.rpartition(".")
    if last == "0" and head.endswith("shortcut"):
        return head + ".1"
    if last.startswith("conv"):
        return f"{head}.bn{last[4:]}" if head else f"bn{last[4:]}"
    raise ValueError(f"no BatchNorm known after {conv!r}")


def _bn_after(conv: str, modules: dict) -> str | None:
    """The name of the BatchNorm that follows conv ``conv`` in ``modules``, or ``None``."""
    try:
        bn = _bn_of(conv)
    except ValueError:
        return None
    import torch

    return bn if isinstance(modules.get(bn), torch.nn.BatchNorm2d) else None


def generator_from_onnx(path, device="cpu"):
    """A torch ``MTLUEGenerator`` with the weights of a float32 ONNX export (for a torch-eager comparison when only
    the ``.onnx`` file exists, e.g. the bundled default generator).

    The exporter folds each encoder BatchNorm into its convolution (``<conv>.weight`` scaled, ``<conv>.weight_bias``
    added); the rebuilt BatchNorms are identities plus that bias (running mean 0, running variance ``1 - bn.eps``,
    weight 1), which computes the same function with the same torch ops.  A bias the exporter dropped because it
    was all zero (an untrained BatchNorm, a zero-initialised layer) is rebuilt as zeros.  Raises ``ValueError`` if
    any other initializer is missing or unexpected.  The result is in eval mode on ``device``."""
    import torch
    from onnx import numpy_helper

    from mtlguard.unlearnable import MTLUEGenerator

    from .metadata import load_onnx, read_onnx_facts

    facts = read_onnx_facts(path)
    if facts.io != "float32_nchw" or facts.precision != "fp32":
        raise ValueError(f"{path}: rebuild torch weights from the float32 NCHW export (this one is {facts.io}, "
                         f"{facts.precision})")
    gen = MTLUEGenerator.from_config(facts.config["generator"]).eval()
    prefix = "generator."
    weights = {i.name[len(prefix):]: torch.from_numpy(numpy_helper.to_array(i).copy())
               for i in load_onnx(path).graph.initializer if i.name.startswith(prefix)}
    state = {k: v for k, v in weights.items() if not k.endswith(".weight_bias")}
    folded = {k[: -len(".weight_bias")]: v for k, v in weights.items() if k.endswith(".weight_bias")}
    modules = dict(gen.named_modules())
    bn_of_conv = {c: bn for c, m in modules.items() if isinstance(m, torch.nn.Conv2d)
                  for bn in [_bn_after(c, modules)] if bn is not None}
    stray = [k for k in folded if k not in bn_of_conv]
    if stray:
        raise ValueError(f"{path}: folded biases {stray[:4]} follow no BatchNorm of the generator")
    for conv, bn in bn_of_conv.items():
        # the exporter drops an all-zero folded bias (an untrained BatchNorm, a zero-initialised layer)
        bias = folded.get(conv, torch.zeros(modules[conv].out_channels))
        state.update({f"{bn}.weight": torch.ones_like(bias), f"{bn}.bias": bias,
                      f"{bn}.running_mean": torch.zeros_like(bias),
                      f"{bn}.running_var": torch.full_like(bias, 1.0 - modules[bn].eps)})
    for name, module in modules.items():  # likewise an all-zero decoder / embedder bias
        if getattr(module, "bias", None) is not None and f"{name}.weight" in state and f"{name}.bias" not in state:
            state[f"{name}.bias"] = torch.zeros_like(module.bias)
    expected = {k for k in gen.state_dict() if not k.endswith("num_batches_tracked")}
    if set(state) != expected:
        raise ValueError(f"{path}: ONNX initializers do not match the generator (missing "
                         f"{sorted(expected - set(state))[:4]}, unexpected {sorted(set(state) - expected)[:4]})")
    gen.load_state_dict(state, strict=False)
    return gen.to(device).eval()
