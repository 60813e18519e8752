"""``torch.export`` + AOTInductor ``.pt2`` package (TorchScript's successor).

The package holds ahead-of-time compiled code for ``(image, labels) -> (protected, delta)`` with a
dynamic batch and loads with plain torch (``torch._inductor.aoti_load_package``), no mtlguard needed.
The generator's facts are stored beside it as ``<path>.json`` (and inside the package as
``mtlguard.json`` extra metadata where the torch version supports it).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from mtlguard.atomic import atomic_write, atomic_write_text
from ._translate import export_ops
from .metadata import GeneratorFacts, generator_facts
from .wrappers import FloatIO, example_inputs


def exported_program(generator: torch.nn.Module, device="cpu", max_batch: int = 1 << 16):
    """``torch.export.export`` of the generator's ``(image, labels)`` signature, dynamic batch."""
    facts = generator_facts(generator)
    wrapper = FloatIO(generator.eval().to(device)).eval()
    image, labels = example_inputs(facts, batch=2, device=device)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    with torch.no_grad(), export_ops():
        return torch.export.export(wrapper, (image, labels),
                                   dynamic_shapes={"image": {0: batch}, "labels": {0: batch}}, strict=False)


def export_pt2(generator: torch.nn.Module, path, device="cpu", training_config: dict | None = None,
               inductor_configs: dict | None = None) -> Path:
    """AOTInductor-compile the generator into a ``.pt2`` package at ``path`` (slow: a C++ compile).

    ``inductor_configs`` are passed to ``aoti_compile_and_package`` (e.g.
    ``{"aot_inductor.compile_wrapper_opt_level": "O0"}`` for a faster, slower-running build)."""
    path = Path(path)
    if path.suffix != ".pt2":
        raise ValueError(f"{path}: an AOTInductor package must end in .pt2")
    path.parent.mkdir(parents=True, exist_ok=True)
    facts = generator_facts(generator, training_config)
    was_training = generator.training
    try:
        ep = exported_program(generator, device=device)
    finally:
        generator.train(was_training)
    configs = {"aot_inductor.metadata": {"mtlguard.json": facts.to_json()}, **(inductor_configs or {})}

    def compile_to(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch._inductor.aoti_compile_and_package(ep, package_path=tmp, inductor_configs=configs)

    atomic_write(path, compile_to, prefix=".tmp-", suffix=f"-{path.name}")  # keep the .pt2 ending
    atomic_write_text(path.with_name(path.name + ".json"), facts.to_json())
    return path


def load_pt2(path, device="cpu"):
    """``(callable, GeneratorFacts)`` for a ``.pt2`` package; ``callable(image, labels)``."""
    runner = torch._inductor.aoti_load_package(str(path))
    side = Path(str(path) + ".json")
    text = side.read_text() if side.is_file() else runner.get_metadata().get("mtlguard.json")
    if text is None:
        raise ValueError(f"{path}: no mtlguard metadata (neither {side.name} nor in the package)")
    facts = GeneratorFacts.from_json(text, source=str(path))
    return runner, facts
