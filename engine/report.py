"""The run's bookkeeping and its JSON report.

:class:`Collector` is the :class:`~mtlguard.engine.executor.Sink` the pipeline gives an executor: it
journals every started / finished output and keeps the results and failures.  :func:`build_report`
turns a finished run into the report dict (printed by ``mtlguard-engine`` and saved to
``<output>/.mtlguard-engine/report.json``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from mtlguard._version import __version__

from .executor import StageTimes
from .perturb import bound_uint8
from .quality import summarize

FIRST = 5  # names listed per category (images without labels, excluded files, ...)


class Collector:
    """Journals each output and collects results / failures (see the module docstring)."""

    def __init__(self, journal, failures: list[dict] | None = None):
        self.journal = journal
        self.results: list[dict] = []
        self.failures: list[dict] = list(failures or [])

    def starting(self, items) -> None:
        self.journal.start([i.out_rel for i in items])

    def done(self, result: dict) -> None:
        rec = {k: result[k] for k in ("file", "out", "max_abs", "psnr", "ssim") if k in result}
        self.journal.record(rec)
        self.results.append(result)

    def failed(self, rel: str, reason: str) -> None:
        self.failures.append({"file": rel, "reason": reason})


@dataclass
class RunFacts:
    """Everything :func:`build_report` reads about a finished run."""

    options: object
    in_root: object
    out_root: object
    model_path: object
    describe: dict
    eps: float
    channels: int
    files_total: int
    skipped: int
    ignored: int
    excluded: dict
    labels: dict | None
    outputs: dict | None
    partials: list[str]
    overwritten: list[str]
    collector: Collector
    times: StageTimes
    quality_records: list[dict]
    notes: list[str] = field(default_factory=list)
    t_start: float = 0.0
    cpu_start: float = 0.0
    partial: dict | None = None  # partial data protection (--protect-fraction), None for passthrough


def first(names: list[str], n: int = FIRST) -> list[str]:
    return list(names[:n])


def excluded_entry(excluded: dict[str, list[str]]) -> dict:
    """``{"total", "by_split", "by_include", "by_exclude", "first"}`` of the files the selection left out."""
    every = sorted(r for v in excluded.values() for r in v)
    return {"total": len(every), **{f"by_{k}": len(excluded.get(k, [])) for k in ("split", "include", "exclude")},
            "first": first(every)}


def _times(run: RunFacts, wall: float, cpu: float) -> dict:
    t = run.times
    return {
        "wall_s": round(wall, 4),
        "images_per_s": round(len(run.collector.results) / wall, 3) if wall > 0 else None,
        "stage_seconds": {"decode": round(t.decode_s, 4), "inference": round(t.infer_s, 4),
                          "encode_write": round(t.encode_s, 4)},
        # CPU seconds of this process (all threads): contention-proof cost, unlike the wall times above
        "cpu_seconds": round(cpu, 4),
        "stage_cpu_seconds": {"decode": round(t.decode_cpu, 4), "encode_write": round(t.encode_cpu, 4),
                              "inference_and_rest": round(max(0.0, cpu - t.decode_cpu - t.encode_cpu), 4)},
    }


def _written(run: RunFacts) -> dict:
    o, results = run.options, run.collector.results
    max_abs = max((r.get("max_abs_written", r["max_abs"]) for r in results), default=0)
    out = {"max_abs_delta_written_uint8": max_abs, "max_abs_delta_written": max_abs / 255.0}
    if o.format in ("jpeg", "same"):
        psnrs = [r["jpeg_psnr"] for r in results if "jpeg_psnr" in r]
        linf = [r["jpeg_linf"] for r in results if "jpeg_linf" in r]
        out["jpeg"] = {"quality": o.quality, "max_linf_vs_intended_uint8": max(linf, default=0),
                       "min_psnr_db": min(psnrs) if psnrs else None,
                       "mean_psnr_db": float(np.mean(psnrs)) if psnrs else None}
    return out


def _color(run: RunFacts) -> dict:
    n = sum(1 for r in run.collector.results if r.get("luma_delta"))
    return {"generator_channels": run.channels, "luma_delta_images": n}


def build_report(run: RunFacts) -> dict:
    """The report dict of a finished run (keys documented in the README)."""
    o, col = run.options, run.collector
    wall, cpu = time.perf_counter() - run.t_start, time.process_time() - run.cpu_start
    return {
        "mtlguard_version": __version__,
        "mode": "passthrough" if o.passthrough else "protect",
        "input": str(run.in_root), "output": str(run.out_root),
        "model": str(run.model_path) if run.model_path else None,
        **run.describe,
        "executor": o.executor,
        "files_total": run.files_total,
        "done": len(col.results), "skipped": run.skipped, "failed": len(col.failures),
        "ignored_non_images": run.ignored,
        "excluded": run.excluded,
        **_times(run, wall, cpu),
        "batch_size": o.batch_size, "workers": o.workers, "format": o.format,
        "png_compression": o.png_compression if o.format in ("png", "same") else None,
        "png_strategy": o.png_strategy if o.format in ("png", "same") else None,
        "keep_metadata": o.keep_metadata,
        "eps": run.eps, "bound_uint8": bound_uint8(run.eps) if not o.passthrough else 0,
        **_written(run),
        "quality": summarize(run.quality_records),
        "color": _color(run),
        "labels": run.labels,
        "partial_protection": run.partial,
        "outputs": run.outputs,
        "overwritten": {"count": len(run.overwritten), "first": first(run.overwritten)},
        "partials_removed": run.partials,
        "failures": col.failures,
        "notes": [{"file": r["file"], "note": n} for r in col.results for n in r["notes"]],
        "run_notes": run.notes,
        "options": o.to_dict(),
    }
