"""TorchScript export (``torch.jit.trace``) while torch still supports it.

The traced module has the ONNX signature ``(image, labels) -> (protected, delta)`` with a dynamic
batch, runs without mtlguard installed (``torch.jit.load``), and carries the generator's facts in
the extra file ``mtlguard.json`` (``torch.jit.load(path, _extra_files={"mtlguard.json": ""})``).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from mtlguard.atomic import atomic_write
from ._translate import export_ops
from .metadata import GeneratorFacts, generator_facts
from .wrappers import FloatIO, example_inputs

EXTRA_FILE = "mtlguard.json"


def export_torchscript(generator: torch.nn.Module, path, training_config: dict | None = None) -> Path:
    """Trace ``generator`` to a TorchScript file at ``path`` (atomic write); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    facts = generator_facts(generator, training_config)
    was_training = generator.training
    wrapper = FloatIO(generator.eval().cpu()).eval()
    image, labels = example_inputs(facts, batch=2)
    try:
        with torch.no_grad(), export_ops(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript deprecation notices
            traced = torch.jit.trace(wrapper, (image, labels), check_trace=False)
    finally:
        generator.train(was_training)
    atomic_write(path, lambda tmp: torch.jit.save(traced, tmp, _extra_files={EXTRA_FILE: facts.to_json()}))
    return path


def load_torchscript(path, device="cpu"):
    """``(module, GeneratorFacts)`` from a TorchScript export."""
    extra = {EXTRA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    return module.eval(), GeneratorFacts.from_json(extra[EXTRA_FILE], source=str(path))
