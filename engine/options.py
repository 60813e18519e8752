"""One options object for an engine run: :class:`EngineOptions`.

:func:`mtlguard.engine.protect_directory` builds it from its keyword arguments (``mtlguard-engine`` from its
command line), validates it once with :meth:`EngineOptions.validated` and records it in the report
(``report["options"]``); every stage reads its settings from the validated object.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields, replace

from .imageio import (DEFAULT_MAX_PIXELS, DEFAULT_PNG_COMPRESSION, DEFAULT_PNG_STRATEGY, check_png_compression,
                      check_png_strategy)
from .work import DEFAULT_PIXEL_BUDGET_MP

FORMATS = ("png", "jpeg", "webp", "same")
EXECUTORS = ("local", "ray")
DEVICES = ("cpu", "cuda")
DECODERS = ("auto", "simplejpeg", "pillow")
BACKEND_NAMES = ("onnxruntime", "torch", "tensorrt")


@dataclass(frozen=True)
class EngineOptions:
    """Every setting of one engine run (the keyword arguments of :func:`~mtlguard.engine.protect_directory`).

    Model and labels:
        model: exported ``.onnx`` (onnxruntime), generator checkpoint ``.safetensors`` / ``.ts`` / ``.pt2``
            (torch), TensorRT ``.engine`` (tensorrt); ``None``: the bundled default generator.
        labels / dataset / no_labels: the label source (:mod:`mtlguard.engine.labels`), at most one.
        allow_unprotected: accept a label source that has no labels for some of the generator's tasks
            (a missing / misspelled labels.csv column); without it such a run is refused.
        backend: ``onnxruntime`` | ``torch`` | ``tensorrt`` (``None``: from the model's suffix);
        device: ``cpu`` | ``cuda``; threads: inference threads (``None``: the runtime's choice).
    Selection:
        include / exclude: globs on the path relative to the input root (repeatable; see
            :class:`~mtlguard.engine.discovery.PathFilter`); exclude_split: labels.csv ``split`` values whose
            rows are left alone (not protected, not written).
        protect_fraction / seed: partial data protection (MTL-UE Table 9): protect only ``round(r * n)`` of the
            ``n`` selected images, chosen by :func:`mtlguard.unlearnable.protect.protected_subset` ``(n, r, seed)``
            over their sorted relative paths (:func:`~mtlguard.engine.discovery.mark_protected`); the others are
            written through the same path with a zero delta.  ``1.0`` (default): every image.
    Output:
        format: ``png`` (default, lossless), ``webp`` (lossless), ``jpeg`` (lossy: the report gives the
            measured error) or ``same`` (JPEG sources stay JPEG, everything else becomes PNG).
        quality: JPEG quality; png_compression / png_strategy: PNG zlib level 0-9 and strategy.
        keep_metadata: copy EXIF (minus the orientation, which is applied) and the ICC profile.
        overwrite: replace existing files in the output that no earlier run of this job wrote.
        metrics: measure PSNR and SSIM of every written image versus its original (``report["quality"]``;
            measured 1.4 ms per 200x200 image on one core, +15% engine CPU time; bounded for large images:
            SSIM runs on <= ~256 px).
    Execution:
        batch_size, workers (decode/encode threads; Ray: inference actors; ``None``: all cores, at most 8),
        pixel_budget (megapixels of decoded images held at once -- decode-ahead, batch and encode together -- so
        the memory stays bounded whatever the image sizes: a batch is flushed before it would exceed it, and an
        image larger than the whole budget is processed alone; default
        :data:`~mtlguard.engine.work.DEFAULT_PIXEL_BUDGET_MP`; local executor),
        executor (``local`` | ``ray``), ray_address, passthrough (decode + encode only: the throughput
        floor), max_pixels (decompression-bomb limit), decoder (``auto`` | ``simplejpeg`` | ``pillow``),
        progress (show a progress bar).
    """

    model: str | None = None
    labels: str | None = None
    dataset: str | None = None
    no_labels: bool = False
    allow_unprotected: bool = False
    backend: str | None = None
    device: str = "cpu"
    threads: int | None = None
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    exclude_split: tuple[str, ...] = ()
    protect_fraction: float = 1.0
    seed: int = 0
    format: str = "png"
    quality: int = 95
    png_compression: int = DEFAULT_PNG_COMPRESSION
    png_strategy: str = DEFAULT_PNG_STRATEGY
    keep_metadata: bool = False
    overwrite: bool = False
    metrics: bool = True
    batch_size: int = 32
    pixel_budget: float = DEFAULT_PIXEL_BUDGET_MP
    workers: int | None = None
    executor: str = "local"
    ray_address: str | None = None
    passthrough: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    decoder: str = "auto"
    progress: bool = True

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def validated(self) -> "EngineOptions":
        """A checked, normalized copy (paths as ``str``, globs as tuples, ``workers`` resolved).

        Raises ValueError naming the bad option and value."""
        o = replace(self, model=_path_or_none(self.model), labels=_path_or_none(self.labels),
                    include=_strings("include", self.include), exclude=_strings("exclude", self.exclude),
                    exclude_split=_strings("exclude_split", self.exclude_split),
                    png_compression=check_png_compression(self.png_compression),
                    png_strategy=check_png_strategy(self.png_strategy),
                    workers=_count("workers", self.workers) or max(1, min(8, os.cpu_count() or 1)))
        _choice("format", o.format, FORMATS)
        _choice("executor", o.executor, EXECUTORS)
        _choice("device", o.device, DEVICES)
        _choice("decoder", o.decoder, DECODERS)
        if o.backend is not None:
            _choice("backend", o.backend, BACKEND_NAMES)
        _count("batch_size", o.batch_size)
        if isinstance(o.pixel_budget, bool) or not isinstance(o.pixel_budget, (int, float)) or \
                not 0 < float(o.pixel_budget) < float("inf"):
            raise ValueError(f"pixel_budget must be a positive number of megapixels, got {o.pixel_budget!r}")
        _count("threads", o.threads)
        _count("max_pixels", o.max_pixels)
        if isinstance(o.quality, bool) or not isinstance(o.quality, int) or not 1 <= o.quality <= 100:
            raise ValueError(f"quality must be an integer JPEG quality 1-100, got {o.quality!r}")
        _check_label_options(o)
        return replace(o, **_check_fraction(o))

    def to_dict(self) -> dict:
        """JSON-able copy (tuples as lists), as recorded in the report."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _path_or_none(value) -> str | None:
    return None if value is None else os.fspath(value)


def _strings(name: str, value) -> tuple[str, ...]:
    if value is None:
        return ()
    items = (value,) if isinstance(value, (str, os.PathLike)) else tuple(value)
    out = tuple(os.fspath(v) if isinstance(v, os.PathLike) else v for v in items)
    for v in out:
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"{name} must be non-empty strings, got {v!r}")
    return out


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _count(name: str, value) -> int | None:
    """``value`` as a positive int (or None); ValueError otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return value


def _check_fraction(o: EngineOptions) -> dict:
    """``{"protect_fraction": float, "seed": int}`` checked: a number in (0, 1] and an integer in [0, 2**63)."""
    r, seed = o.protect_fraction, o.seed
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 < float(r) <= 1.0:
        raise ValueError(f"protect_fraction (--protect-fraction) must be a number in (0, 1], got {r!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63:
        raise ValueError(f"seed (--seed) must be an integer in [0, 2**63), got {seed!r}")
    if o.passthrough and float(r) < 1.0:
        raise ValueError(f"protect_fraction {r!r}: a passthrough run protects nothing")
    return {"protect_fraction": float(r), "seed": seed}


def _check_label_options(o: EngineOptions) -> None:
    if o.no_labels and (o.labels is not None or o.dataset is not None):
        raise ValueError("--no-labels excludes --labels / --dataset")
    if o.labels is not None and o.dataset is not None:
        raise ValueError("give either labels (a labels.csv) or dataset, not both")
    if o.exclude_split and (o.labels is None or o.passthrough):
        raise ValueError(f"--exclude-split {' '.join(o.exclude_split)} needs --labels (a labels.csv with a 'split' "
                         "column) and a protect run")
