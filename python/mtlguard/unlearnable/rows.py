"""Rows of a protection report that name a generator *file* rather than a method to fit: ``bundled`` (the
shipped default generator) and ``gen:<file>`` (an exported or saved generator).  One definition for the
in-memory benchmark (:mod:`.evaluation`) and the deployment protocol (:mod:`.deploy`)."""
from __future__ import annotations

from pathlib import Path


def is_generator_file_method(method: str) -> bool:
    """``bundled`` or ``gen:<file>``."""
    return method == "bundled" or method.startswith("gen:")


def method_label(method: str) -> str:
    """Short row label: ``gen:runs/x/generator.onnx`` -> ``gen:generator``; other methods unchanged."""
    return f"gen:{Path(method[4:]).stem}" if method.startswith("gen:") else method


def generator_row_file(method: str) -> Path:
    """The file a ``bundled`` / ``gen:<file>`` row runs (``FileNotFoundError`` naming a missing one)."""
    if method == "bundled":
        from mtlguard.engine.pipeline import default_model

        return Path(default_model())
    path = Path(method[4:])
    if not path.exists():
        raise FileNotFoundError(f"generator not found: {path}")
    return path
