"""The executor interface: how :mod:`mtlguard.engine.pipeline` hands the files to protect to a runner.

An :class:`Executor` takes the list of :class:`~mtlguard.engine.work.Item` to protect and reports each
file to a :class:`Sink` (the pipeline's journal + report collector): :meth:`Sink.starting` before a
batch's outputs are written, then :meth:`Sink.done` or :meth:`Sink.failed` per file.  It returns the
:class:`StageTimes` it measured.  Implementations: :class:`~mtlguard.engine.local_executor.LocalExecutor`
(threads in this process) and :class:`~mtlguard.engine.ray_executor.RayExecutor` (a Ray Data job).

Imports flow one way: pipeline -> executors -> :mod:`~mtlguard.engine.work`; executors never import the
pipeline.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .work import Item


class Sink(Protocol):
    """Receives the per-file outcome of an executor run (called from the executor's driver thread)."""

    def starting(self, items: list[Item]) -> None: ...

    def done(self, result: dict) -> None: ...

    def failed(self, rel: str, reason: str) -> None: ...


@dataclass
class StageTimes:
    """Seconds spent per stage (wall, summed over workers) and thread-CPU seconds of decode / encode."""

    decode_s: float = 0.0
    infer_s: float = 0.0
    encode_s: float = 0.0
    decode_cpu: float = 0.0
    encode_cpu: float = 0.0


class Executor:
    """Runs the engine's per-file work over a list of items; see the module docstring."""

    name = "?"

    def describe(self) -> dict:
        """``{"backend", "device", ...}`` for the report."""
        raise NotImplementedError  # pragma: no cover - interface

    def run(self, todo: list[Item], sink: Sink) -> StageTimes:
        raise NotImplementedError  # pragma: no cover - interface
