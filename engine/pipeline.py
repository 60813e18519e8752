"""The engine's front door, :func:`protect_directory`, and the steps of a run.

options (:class:`~mtlguard.engine.options.EngineOptions`, validated once) -> roots -> generator (model
file, facts, backend) -> label source -> discovery and selection (``--include`` / ``--exclude`` /
``--exclude-split``; ``--protect-fraction``: which selected images are protected and which written clean,
:func:`~mtlguard.engine.discovery.mark_protected`) -> plan (journal: finished outputs skipped, settings
changes and unrelated existing files refused, the output checked writable) -> executor
(:mod:`~mtlguard.engine.local_executor` or :mod:`~mtlguard.engine.ray_executor`, per-file work in
:mod:`~mtlguard.engine.work`) -> labels.csv / tasks.json (:mod:`~mtlguard.engine.outputs`) -> report
(:mod:`~mtlguard.engine.report`).

Every refusal happens before anything is written and raises one line naming the file: ValueError,
FileNotFoundError, NotADirectoryError, PermissionError or
:class:`~mtlguard.engine.backends.ModelError` (a ValueError); ``mtlguard-engine`` exits 2 on them.
Imports flow one way: this module imports the executors, they never import it.
"""
from __future__ import annotations

import hashlib
import json
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .discovery import IMAGE_EXTENSIONS, Discovery, PathFilter, discover, has_images, mark_protected
from .executor import Executor, StageTimes
from .imageio import atomic_write
from .journal import STATE_DIR, Journal, remove_stale_temps
from .labels import LabelSource, NoLabels, make_label_source, validate_labels
from .options import FORMATS, EngineOptions
from .outputs import META_FILES, binary_unprotected, check_writable, find_conflicts, write_meta
from .report import Collector, RunFacts, build_report, excluded_entry, first
from .work import Item, WorkSpec, process_chunk, process_one

__all__ = ["protect_directory", "default_model", "check_roots", "EngineOptions", "IMAGE_EXTENSIONS", "FORMATS",
           "Item", "process_chunk", "process_one"]


def default_model() -> Path:
    """The bundled default generator (ONNX) shipped in ``mtlguard/assets``."""
    from importlib import resources

    return Path(str(resources.files("mtlguard") / "assets" / "default_generator.onnx"))


def check_roots(input_root, output_root) -> tuple[Path, Path]:
    """Resolve the roots; refuse an output inside the input tree (or containing it)."""
    inp, out = Path(input_root).resolve(), Path(output_root).resolve()
    if not inp.is_dir():
        raise NotADirectoryError(f"input directory not found: {input_root}")
    if out == inp or inp in out.parents:
        raise ValueError(f"output directory {str(output_root)!r} is inside the input tree {str(input_root)!r}: "
                         "mtlguard-engine never writes inside its input")
    if out in inp.parents:
        raise ValueError(f"output directory {str(output_root)!r} contains the input tree {str(input_root)!r}: "
                         "mirrored outputs could land inside the input; choose a separate directory")
    return inp, out


def make_options(model=None, labels=None, options: EngineOptions | None = None, **settings) -> EngineOptions:
    """The validated options of a :func:`protect_directory` call (keyword arguments override ``options``)."""
    unknown = sorted(set(settings) - set(EngineOptions.names()))
    if unknown:
        raise TypeError(f"protect_directory() got unexpected keyword argument(s) {unknown}; "
                        f"known: {list(EngineOptions.names())}")
    given = {k: v for k, v in (("model", model), ("labels", labels)) if v is not None}
    return replace(options or EngineOptions(), **given, **settings).validated()


@dataclass
class Generator:
    """The resolved generator: file, facts (tasks, eps, size, channels), the local backend (None with
    Ray, which loads one per actor) and the backend name; all None / defaults for passthrough."""

    path: Path | None = None
    facts: object = None
    backend: object = None
    backend_name: str | None = None

    @property
    def eps(self) -> float:
        return self.facts.eps if self.facts else 0.0

    @property
    def channels(self) -> int:
        return self.facts.in_channels if self.facts else 3


def load_generator(opts: EngineOptions) -> Generator:
    """Resolve and load the generator (one-line errors naming the file, see :mod:`~mtlguard.engine.backends`)."""
    from .backends import default_backend_for, load_backend, read_facts

    if opts.passthrough:
        return Generator()
    path = Path(opts.model) if opts.model is not None else default_model()
    if opts.executor == "local":
        be = load_backend(path, opts.backend, opts.device, opts.threads)
        return Generator(path, be.facts, be, be.name)
    name = opts.backend or default_backend_for(path)
    return Generator(path, read_facts(path, name), None, name)


def label_source(opts: EngineOptions, gen: Generator, in_root: Path) -> LabelSource | None:
    if gen.facts is None:
        return None
    if opts.no_labels:
        return NoLabels(gen.facts.tasks)
    return make_label_source(gen.facts.tasks, in_root, opts.labels, opts.dataset,
                             allow_unprotected=opts.allow_unprotected)


def _split_filter(opts: EngineOptions, src: LabelSource | None):
    """``rel -> "split" | None`` for ``--exclude-split`` (checked against the labels' split values)."""
    if not opts.exclude_split:
        return lambda rel: None
    if src is None or not src.has_split:
        raise ValueError(f"--exclude-split {' '.join(opts.exclude_split)}: {opts.labels} has no 'split' column")
    values = set(src.splits.values())
    unknown = [s for s in opts.exclude_split if s not in values]
    if unknown:
        raise ValueError(f"--exclude-split {' '.join(unknown)}: no row of {opts.labels} has that split "
                         f"(its splits: {sorted(values)})")
    excluded = set(opts.exclude_split)
    return lambda rel: "split" if src.split_of(rel) in excluded else None


def check_has_images(in_root: Path, input_dir) -> None:
    """Refuse an input directory without any image file (before the model is loaded)."""
    found, others = has_images(in_root)
    if not found:
        raise ValueError(f"no images found in {input_dir} (looked for {', '.join(IMAGE_EXTENSIONS)}; "
                         f"{others} other file(s) ignored)")


def select(opts: EngineOptions, in_root: Path, input_dir, src: LabelSource | None) -> Discovery:
    """Discover the images and apply the selection; refuse a selection that leaves nothing to protect."""
    paths, split = PathFilter(opts.include, opts.exclude), _split_filter(opts, src)
    found = discover(in_root, opts.format, lambda rel: split(rel) or paths.reason(rel))
    if not found.items and not found.failures:
        ex = excluded_entry(found.excluded)
        raise ValueError(f"no images left to protect in {input_dir}: all {ex['total']} excluded "
                         f"(split {ex['by_split']}, --include {ex['by_include']}, --exclude {ex['by_exclude']})")
    return found


def assign_labels(items: list[Item], src: LabelSource | None, gen: Generator) -> dict | None:
    """Give every item its labels (validated) and split; returns the report's ``labels`` entry."""
    if src is None:
        return None
    without = []
    for it in items:
        lab = src.lookup(it.rel)
        if lab is None:
            without.append(it.rel)
        it.labels = src(it.rel)
        it.split = src.split_of(it.rel)
    if items:
        validate_labels(np.stack([it.labels for it in items]), gen.facts.tasks, rows=[it.rel for it in items])
    return {"source": src.name, "images_without_labels": len(without), "images_without_labels_first": first(without),
            "unprotected_tasks": list(src.absent)}


def _rows_without_images(src: LabelSource | None, found: Discovery) -> list[str]:
    if src is None:
        return []
    on_disk = set(found.found)
    return sorted(r for r in src.rows() if r not in on_disk)


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fingerprint(opts: EngineOptions, gen: Generator, src: LabelSource | None, clean: list[str] = ()) -> dict:
    """What must not change between the runs of one job (``run.json``).  Options added after the first
    release appear only when set, so earlier output directories still resume.  A partial run (``clean``: the
    files left clean) also records the hash of that list: an input that gained or lost files changes the
    choice, and its resume is refused like a changed option."""
    fp = {
        "mode": "passthrough" if opts.passthrough else "protect",
        "model_sha256": _file_sha256(gen.path) if gen.path is not None and gen.path.is_file() else None,
        "format": opts.format, "quality": opts.quality if opts.format in ("jpeg", "same") else None,
        "labels": None if src is None else src.name,
        "labels_sha256": _file_sha256(Path(opts.labels)) if opts.labels is not None else None,
        "eps": gen.eps,
    }
    extra = {"keep_metadata": opts.keep_metadata, "include": list(opts.include), "exclude": list(opts.exclude),
             "exclude_split": list(opts.exclude_split)}
    if opts.protect_fraction < 1.0:
        extra.update(protect_fraction=opts.protect_fraction, seed=opts.seed,
                     protect_clean_sha256=hashlib.sha256("\n".join(clean).encode()).hexdigest())
    fp.update({k: v for k, v in extra.items() if v or k == "seed"})
    return fp


@dataclass
class Plan:
    """What a run will do: ``todo`` items, ``skipped`` finished ones, unrelated files it will
    ``overwrite`` (only with ``--overwrite``)."""

    journal: Journal
    fingerprint: dict
    todo: list[Item]
    skipped: int
    overwrite: list[str]


def plan(opts: EngineOptions, out_root: Path, output_dir, items: list[Item], fp: dict) -> Plan:
    """Check the output directory against the journal; refuse before anything is written."""
    if opts.labels is not None and Path(opts.labels).resolve() == out_root / "labels.csv":
        raise ValueError(f"--labels {opts.labels} is the labels.csv this job writes into --output; pass the input's "
                         "labels.csv")
    journal = Journal(out_root)
    journal.check(fp)
    todo = [it for it in items if not journal.finished(it.out_rel)]
    meta = [] if opts.passthrough else list(META_FILES)
    conflicts = find_conflicts(out_root, [it.out_rel for it in todo] + meta, journal)
    if conflicts and not opts.overwrite:
        raise ValueError(f"{output_dir}: {len(conflicts)} existing file(s) were not written by this job and would be "
                         f"overwritten (e.g. {', '.join(conflicts[:3])}); pass --overwrite to replace them or use "
                         "another --output")
    check_writable(out_root, str(output_dir))
    return Plan(journal, fp, todo, len(items) - len(todo), conflicts)


def work_spec(opts: EngineOptions, gen: Generator, in_root: Path, out_root: Path) -> WorkSpec:
    # the torch backend on a GPU also applies the delta there (the fused apply_delta_u8's CUDA kernel)
    apply_device = "cuda" if gen.backend_name == "torch" and opts.device == "cuda" else "cpu"
    return WorkSpec(in_root, out_root, gen.eps, tuple(gen.facts.image_size) if gen.facts else None, gen.channels,
                    opts.quality, opts.png_compression, opts.png_strategy, opts.keep_metadata, opts.max_pixels,
                    opts.decoder, opts.metrics, apply_device)


def make_executor(opts: EngineOptions, gen: Generator, spec: WorkSpec) -> Executor:
    if opts.executor == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(spec, gen.path, gen.backend_name, opts.device, opts.threads, opts.batch_size,
                           opts.workers, opts.ray_address)
    from .local_executor import LocalExecutor

    return LocalExecutor(spec, gen.backend, opts.batch_size, opts.workers, opts.progress, opts.device,
                         pixel_budget=int(opts.pixel_budget * 1e6))


def _meta(opts, gen: Generator, items: list[Item], journal: Journal, src: LabelSource | None, out_root: Path):
    """Write labels.csv / tasks.json for every written image; returns ``(report entry, notes)``."""
    if gen.facts is None:
        return None, []
    rows = [(it.out_rel, it.labels, it.split) for it in items if journal.finished(it.out_rel)]
    journal.start(META_FILES)
    entry = write_meta(out_root, rows, gen.facts.tasks, gen.channels, src is not None and src.has_split)
    bad = binary_unprotected(rows, gen.facts.tasks)
    notes = [f"labels.csv: binary task(s) {bad} have unprotected rows (-1), which mtlguard's folder loader "
             "accepts only for multiclass tasks"] if bad else []
    return entry, notes


def _run_notes(col: Collector, overwritten: list[str]) -> list[str]:
    notes = []
    n = sum(1 for r in col.results if r.get("luma_delta"))
    if n:
        notes.append(f"the generator has 1 channel: its delta was added to every channel of {n} colour image(s) "
                     "(a luma delta); their colour mode is kept")
    if overwritten:
        notes.append(f"--overwrite: replaced {len(overwritten)} existing file(s) not written by this job "
                     f"(e.g. {', '.join(overwritten[:3])})")
    return notes


def _warn_jpeg(opts: EngineOptions) -> None:
    if opts.format == "jpeg":
        warnings.warn("mtlguard-engine: JPEG output re-encodes the perturbation lossily; the report gives the measured "
                      "L-inf and PSNR vs the intended protected image (use --format png to keep it exact)",
                      UserWarning, stacklevel=3)


def protect_directory(input_dir, output_dir, model=None, labels=None, *, options: EngineOptions | None = None,
                      **settings) -> dict:
    """Protect every selected image under ``input_dir`` into a mirrored tree under ``output_dir``; returns
    the report dict (also written to ``<output_dir>/.mtlguard-engine/report.json``).

    Args:
        model: exported ``.onnx`` (onnxruntime), generator checkpoint / ``.ts`` / ``.pt2`` (torch),
            TensorRT engine (tensorrt); ``None`` -> the bundled default generator.
        labels: a labels.csv (see :mod:`mtlguard.engine.labels`).
        options: an :class:`~mtlguard.engine.options.EngineOptions`; keyword arguments (its field
            names: ``dataset``, ``no_labels``, ``format``, ``include``, ``exclude_split``, ``overwrite``,
            ``keep_metadata``, ``executor``, ...) override it.
    Failures of single files never stop the run; they are listed in ``report["failures"]``.  A bad
    setting or input is refused before anything is written (see the module docstring).
    """
    t_start, cpu_start = time.perf_counter(), time.process_time()
    opts = make_options(model, labels, options, **settings)
    in_root, out_root = check_roots(input_dir, output_dir)
    check_has_images(in_root, input_dir)
    _warn_jpeg(opts)
    gen = load_generator(opts)
    src = label_source(opts, gen, in_root)
    found = select(opts, in_root, input_dir, src)
    labels_entry = assign_labels(found.items, src, gen)
    clean = [] if opts.passthrough else mark_protected(found.items, opts.protect_fraction, opts.seed)
    if labels_entry is not None:
        missing_rows = _rows_without_images(src, found)
        labels_entry.update(rows_without_images=len(missing_rows), rows_without_images_first=first(missing_rows))
    p = plan(opts, out_root, output_dir, found.items, fingerprint(opts, gen, src, clean))
    col, times, partials = _execute(opts, gen, in_root, out_root, p, found.failures)
    try:
        outputs, meta_notes = _meta(opts, gen, found.items, p.journal, src, out_root)
    finally:
        p.journal.close()
    run = RunFacts(opts, in_root, out_root, gen.path, _describe(opts, gen), gen.eps, gen.channels,
                   len(found.items) + len(found.failures), p.skipped, found.ignored, excluded_entry(found.excluded),
                   labels_entry, outputs, partials, p.overwrite, col, times,
                   [p.journal.done[it.out_rel] for it in found.items if it.out_rel in p.journal.done],
                   _run_notes(col, p.overwrite) + meta_notes + _partial_notes(opts, found.items, clean), t_start,
                   cpu_start, partial_entry(opts, found.items, clean))
    report = build_report(run)
    atomic_write(out_root / STATE_DIR / "report.json", json.dumps(report, indent=1, default=str).encode())
    return report


def partial_entry(opts: EngineOptions, items: list[Item], clean: list[str]) -> dict | None:
    """The report's ``partial_protection`` entry (None for passthrough): the fraction and seed, how many of the
    selected images are protected / left clean (the whole output tree, earlier runs of the job included) and
    the sorted list of the clean ones."""
    if opts.passthrough:
        return None
    return {"protect_fraction": opts.protect_fraction, "seed": opts.seed, "selected": len(items),
            "protected": len(items) - len(clean), "clean": len(clean), "clean_files": list(clean)}


def _partial_notes(opts: EngineOptions, items: list[Item], clean: list[str]) -> list[str]:
    """A run note when ``--protect-fraction`` is so small that no image is protected at all."""
    if opts.passthrough or opts.protect_fraction >= 1.0 or not items or len(clean) < len(items):
        return []
    return [f"--protect-fraction {opts.protect_fraction}: round({opts.protect_fraction} * {len(items)}) = 0, so no "
            "image was protected (every output is its original, re-encoded)"]


def _describe(opts: EngineOptions, gen: Generator) -> dict:
    if gen.backend is not None:
        return gen.backend.describe()
    return {"backend": gen.backend_name, "device": opts.device}


def _execute(opts, gen: Generator, in_root: Path, out_root: Path, p: Plan, failures: list[dict]):
    """Open the journal and run the executor over the plan; returns ``(collector, stage times, partials)``."""
    p.journal.open(p.fingerprint)
    partials = remove_stale_temps(out_root)
    col = Collector(p.journal, failures)
    executor = make_executor(opts, gen, work_spec(opts, gen, in_root, out_root))
    try:
        times = executor.run(p.todo, col) if p.todo else StageTimes()
    except BaseException:
        p.journal.close()
        raise
    return col, times, partials
