"""The deployment protocol: protection measured on what ``mtlguard-engine`` writes, by victims trained the
way other people train (``mtlguard evaluate-protection --protocol deploy``).

1. **Protected training files by the deployment path.**  Each generator row is exported to ONNX and run
   by :func:`mtlguard.engine.protect_directory` over copies of the native-resolution training files
   (UTKFace: 200x200 JPEGs), written as PNG (or JPEG at ``jpeg_quality``), then decoded back.  Victims
   never see in-memory generator tensors.  Sample-wise TAP / EM / SEP rows are computed at the generator
   resolution by :class:`mtlguard.unlearnable.evaluation.ProtectionBenchmark` and applied at native
   resolution by the engine's own step (:func:`mtlguard.engine.perturb.apply_delta_batch`: bilinear
   upsampling, re-clip, round); LSP / AR patterns are made at the native resolution with A.1's l2 budget
   for it (``H/32 * W/32``: it grows with the image, so the paper's 140 px patterns are ~4x stronger per
   pixel than 32 px ones; LSP made at 32 px and stretched had no effect, made at 200 px it protects,
   measured in reports/protection_deploy_default.md); PNG being lossless, these rows' files are not written.
2. **Victims** (:mod:`.victims`): architectures, input sizes, weightings and seeds as listed, random-
   resized-crop + flip, trained ``recipe.epochs`` epochs, tested on clean native test images resized to
   their input size.
3. **Defenses**: every method on ``defense_victim`` behind every defense; the clean reference is the
   same victim recipe on the clean files behind the same defense.  The ``headline`` method(s) alone also
   go through the whole victim zoo (other architectures, sizes, weightings, STL, seeds) and the engine's
   JPEG output.
4. **Protection ratio** per task: ``PR = (acc_clean - acc_protected) / (acc_clean - acc_majority)``
   (:mod:`.deploy_report`).

Every victim result is cached as JSON under the work folder (``victims/``), protected training sets as
``.npy`` (``sets/``) and generators under ``generators/``: rerunning the command resumes; the work folder
records its settings and refuses other ones.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..atomic import atomic_write_text
from ..data.imageio import atomic_save_npy
from .rows import generator_row_file, is_generator_file_method, method_label
from .victims import DEFENSES, VictimRecipe, VictimSpec, train_victim

#: method names the protocol understands (besides ``gen:<path>``)
FITTED = ("mtl-ue-em", "mtl-ue-tap", "mtl-ue-sep")
SAMPLEWISE = ("tap", "em", "sep")  # computed by the generator-resolution in-memory benchmark
PATTERNS = ("lsp-patch", "ar-patch", "lsp-average", "ar-average")  # made at the native resolution
IN_MEMORY = SAMPLEWISE + PATTERNS
DEPLOY_METHODS = ("clean", "bundled") + FITTED + IN_MEMORY
#: the surrogate's architecture at two sizes, two it never saw, an unseen weighting, STL.  DenseNet-121, not
#: MobileNetV3-small: the latter stayed at the majority rate on clean UTKFace at 32 and 64 px in 16 epochs (no PR).
DEFAULT_VICTIMS = ("resnet18@32x3", "resnet18@64x3", "vgg11@32", "vgg11@64", "densenet121@32",
                   "densenet121@64", "resnet18@32:uw", "resnet18@32:stl")


@dataclass
class DeployConfig:
    """One deployment-protocol matrix (see the module docstring)."""

    methods: Sequence[str] = ("clean", "bundled")
    headline: str | Sequence[str] | None = None  # method(s) run through the victim zoo (default: first protected)
    victims: Sequence[str] = DEFAULT_VICTIMS
    defenses: Sequence[str] = DEFENSES
    defense_victim: str = "resnet18@32"
    jpeg_victims: Sequence[str] = ("resnet18@32", "resnet18@64")
    jpeg_quality: int = 90
    recipe: VictimRecipe = field(default_factory=VictimRecipe)
    eps: float = 8 / 255
    seed: int = 0
    progress: bool = True

    def __post_init__(self):
        for m in self.methods:
            if not (m in DEPLOY_METHODS or m.startswith("gen:")):
                raise ValueError(f"unknown method {m!r} for the deploy protocol; expected one of {DEPLOY_METHODS} "
                                 "or gen:<generator file>")
        for d in self.defenses:
            if d not in DEFENSES:
                raise ValueError(f"unknown defense {d!r}; expected one of {DEFENSES}")
        if isinstance(self.headline, str):
            self.headline = tuple(h.strip() for h in self.headline.split(",") if h.strip()) or None
        bad = [h for h in (self.headline or ()) if h not in self.methods]
        if bad:
            raise ValueError(f"headline method(s) {bad} are not among the methods {tuple(self.methods)}")
        self.victim_specs = [VictimSpec.parse(v) for v in self.victims]
        self.defense_spec = VictimSpec.parse(self.defense_victim)
        self.jpeg_specs = [VictimSpec.parse(v) for v in self.jpeg_victims]
        if not 1 <= int(self.jpeg_quality) <= 100:
            raise ValueError(f"jpeg_quality must be 1-100, got {self.jpeg_quality}")

    def headline_methods(self) -> list[str]:
        if self.headline:
            return list(self.headline)
        first = _first_protected(self.methods)
        return [first] if first else []


def _first_protected(methods: Sequence[str]) -> str | None:
    return next((m for m in methods if m != "clean"), None)


@dataclass(frozen=True)
class Job:
    """One victim training run: ``method`` files (``output`` format) behind ``defense``, victim, seed."""

    method: str
    output: str
    defense: str
    victim: VictimSpec
    seed: int

    @property
    def key(self) -> str:
        return f"{self.method}|{self.output}|{self.defense}|{self.victim.key}|s{self.seed}"

    @property
    def dirname(self) -> str:
        safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in self.key.replace("|", "__"))
        return safe[:180]


def plan_jobs(cfg: DeployConfig) -> list[Job]:
    """Every run the matrix needs (protected rows and their clean references), most informative first.

    Every method is trained on the defense victim behind every defense; the ``headline`` method(s) (default: the
    first protected method) also go through the whole victim zoo, its seeds and the JPEG output.  Order:
    the defense victim under standard training (all methods), per headline method its cheap defenses, its
    other victims (seed 0) and PGD-AT, the other methods behind
    each defense, the JPEG output, then the extra seeds (the zoo's, then the defense victim's: ``defense_victim``
    ``ARCH@SIZExN`` runs the headline's defense columns over N seeds) -- so a run stopped early
    (``--time-budget``) has the most informative cells."""
    protected = [m for m in cfg.methods if m != "clean"]
    heads = cfg.headline_methods() or ["clean"]
    others = [m for m in protected if m not in heads]
    jobs: list[Job] = []
    keys: set[str] = set()

    def add(method, output, defense, spec, seed):
        for m, out in ((method, output), ("clean", "files")):
            j = Job(m, out, defense, spec, seed)
            if j.key not in keys:  # by key: "resnet18@32" and "resnet18@32x3" are one victim
                keys.add(j.key)
                jobs.append(j)

    defenses = [d for d in cfg.defenses if d != "standard"]
    cheap = [d for d in defenses if d != "at"]  # PGD-AT victims cost ~(steps + 1)x a standard one
    for m in protected or ["clean"]:
        add(m, "png", "standard", cfg.defense_spec, 0)
    for head in heads:
        for d in cheap:
            add(head, "png", d, cfg.defense_spec, 0)
        for spec in cfg.victim_specs:
            if spec.key != cfg.defense_spec.key:
                add(head, "png", "standard", spec, 0)
        if "at" in defenses:
            add(head, "png", "at", cfg.defense_spec, 0)
    for d in defenses:
        for m in others:
            add(m, "png", d, cfg.defense_spec, 0)
    for head in heads:
        if head not in IN_MEMORY and head != "clean":
            for spec in cfg.jpeg_specs:
                add(head, f"jpeg{cfg.jpeg_quality}", "standard", spec, 0)
    for head in heads:
        for spec in cfg.victim_specs:
            for s in range(1, spec.seeds):
                add(head, "png", "standard", spec, s)
    for head in heads:  # ``defense_victim`` ARCH@SIZExN: the headline's defense columns over N seeds
        for s in range(1, cfg.defense_spec.seeds):
            for d in cfg.defenses:
                add(head, "png", d, cfg.defense_spec, s)
    return jobs


class DeployProtocol:
    """Runs :class:`DeployConfig` on native-resolution ``train_set`` / ``test_set`` (mtlguard datasets whose
    ``root`` / ``files`` name the source files), caching everything under ``work``."""

    def __init__(self, train_set, test_set, cfg: DeployConfig, work: str | os.PathLike, fit_options=None,
                 in_memory=None):
        self.train_set, self.test_set, self.cfg = train_set, test_set, cfg
        self.tasks = tuple(train_set.tasks)
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.fit_options = fit_options  # callable(method) -> path of a fitted generator (the CLI's fit recipe)
        self.in_memory = in_memory      # a ProtectionBenchmark at the generator resolution, for SAMPLEWISE rows
        self._sets: dict[tuple[str, str], np.ndarray] = {}
        self._test = None

    # --- data ----------------------------------------------------------------------------------------------
    def _stack(self, ds) -> np.ndarray:
        return np.stack([np.asarray(ds.load_uint8(i)) for i in range(len(ds))])

    def labels(self, ds) -> dict[str, np.ndarray]:
        return {t.name: np.asarray(ds.label_arrays[t.name]) for t in self.tasks}

    def test_images(self) -> np.ndarray:
        if self._test is None:
            self._test = self._stack(self.test_set)
        return self._test

    def input_dir(self) -> Path:
        """Copies of the training files (the engine's input; the dataset's own folder is never written)."""
        d = self.work / "input"
        done = d / ".complete"
        if not done.is_file():
            d.mkdir(parents=True, exist_ok=True)
            for f in self.train_set.files:
                dst = d / f
                if not dst.is_file():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(Path(self.train_set.root) / f, dst)
            done.write_text(str(len(self.train_set.files)))
        return d

    def labels_csv(self) -> Path:
        """The engine's label file for the copied training files (``path`` + one class-index column per task)."""
        import csv
        import io

        path = self.work / "input_labels.csv"
        if not path.is_file():
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(["path"] + [t.name for t in self.tasks])
            labels = self.labels(self.train_set)
            for i, f in enumerate(self.train_set.files):
                w.writerow([f] + [int(labels[t.name][i]) for t in self.tasks])
            atomic_write_text(path, buf.getvalue())
        return path

    def generator_file(self, method: str) -> Path:
        """The generator a generator row runs through the engine."""
        if is_generator_file_method(method):
            return generator_row_file(method)
        if self.fit_options is None:
            raise ValueError(f"method {method!r} needs a fitted generator but no fit recipe was given")
        return Path(self.fit_options(method))

    def _engine_set(self, method: str, output: str) -> np.ndarray:
        from mtlguard.engine import protect_directory

        model = self.generator_file(method)
        out_dir = self.work / "engine" / f"{method_label(method).replace(':', '_')}_{output}"
        fmt, quality = ("png", 95) if output == "png" else ("jpeg", int(output[4:]))
        with warnings.catch_warnings():  # JPEG rows are lossy on purpose (the engine warns users about it)
            warnings.filterwarnings("ignore", message=".*JPEG output re-encodes.*")
            report = protect_directory(self.input_dir(), out_dir, model=model, labels=self.labels_csv(), format=fmt,
                                       quality=quality, progress=self.cfg.progress)
        if report.get("failed"):
            raise RuntimeError(f"engine failed on {len(report['failed'])} training files of {method}: "
                               f"{report['failed'][:3]}")
        suffix = ".png" if fmt == "png" else ".jpg"
        from PIL import Image

        arr = []
        for f in self.train_set.files:
            p = out_dir / (Path(f).with_suffix(suffix) if suffix == ".png" else Path(f))
            arr.append(np.asarray(Image.open(p).convert("RGB")))
        return np.stack(arr)

    def _pattern_set(self, method: str) -> np.ndarray:
        """LSP / AR made at the training images' own size with A.1's l2 budget for that size (``H/32 * W/32``:
        RMS 29/255 at 200 px), as the papers apply them at their 140 px; the same patterns made at 32 px and
        upsampled keep the 32 px budget (RMS 4.6/255).  Neither is an L-inf 8/255 perturbation."""
        from .patterns import ClasswisePatterns
        from .protect import pattern_protector, protect_images

        x0, _ = self.train_set[0]
        kind, fusion = method.split("-")
        pats = ClasswisePatterns(self.tasks, kind=kind, fusion=fusion, in_channels=int(x0.shape[0]),
                                 image_size=tuple(x0.shape[1:]), seed=self.cfg.seed)
        return protect_images(self.train_set, pattern_protector(pats), None, desc=method, progress=self.cfg.progress)

    def _in_memory_set(self, method: str) -> np.ndarray:
        from mtlguard.engine.perturb import apply_delta_batch

        if self.in_memory is None:
            raise ValueError(f"method {method!r} needs the in-memory benchmark (generator-resolution dataset)")
        small = self.in_memory.protected_images(method).astype(np.float32)
        clean = self.in_memory.protected_images("clean").astype(np.float32)
        delta = ((small - clean) / 255.0).transpose(0, 3, 1, 2)
        native = self._stack(self.train_set)
        out = np.empty_like(native)
        for i in range(0, len(native), 64):
            out[i:i + 64], _ = apply_delta_batch(native[i:i + 64], np.ascontiguousarray(delta[i:i + 64]), self.cfg.eps)
        return out

    def training_set(self, method: str, output: str) -> np.ndarray:
        """uint8 ``[N, H, W, C]`` native training images of ``method`` as written in ``output`` format."""
        key = (method, output)
        if key in self._sets:
            return self._sets[key]
        cache = self.work / "sets" / f"{method_label(method).replace(':', '_')}_{output}.npy"
        if cache.is_file():
            arr = np.load(cache)
        else:
            if method == "clean":
                arr = self._stack(self.train_set)
            elif method in PATTERNS:
                arr = self._pattern_set(method)
            elif method in SAMPLEWISE:
                arr = self._in_memory_set(method)
            else:
                arr = self._engine_set(method, output)
            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_save_npy(cache, arr)
        self._sets = {key: arr}  # keep one set in memory (240 MB at 2,000 x 200x200)
        return arr

    # --- victims -------------------------------------------------------------------------------------------
    def victim_runs(self) -> "VictimRuns":
        return VictimRuns(self.work / "victims", self.cfg.recipe, self.tasks, self.labels(self.train_set),
                          self.test_images(), self.labels(self.test_set), self.cfg.progress)

    def cached(self) -> dict[str, dict]:
        return VictimRuns.read(self.work / "victims")

    def run(self, max_jobs: int | None = None, deadline: float | None = None) -> dict[str, dict]:
        """Run the planned jobs in order (finished ones are read from the cache); stop after ``max_jobs``
        new runs or once ``time.time() > deadline``.  Returns every finished result."""
        runs = None
        new = 0
        for job in plan_jobs(self.cfg):
            if (max_jobs is not None and new >= max_jobs) or (deadline is not None and time.time() > deadline):
                break
            runs = runs or self.victim_runs()
            if not runs.done(job):
                runs.run(job, lambda: self.training_set(job.method, job.output))
                new += 1
        return self.cached()


class VictimRuns:
    """Victim runs cached by job under ``folder/<job>/result.json`` (shared by the deploy protocol and
    ``mtlguard verify``): the training images of a job are only materialized when it has to run."""

    def __init__(self, folder: Path, recipe: VictimRecipe, tasks, train_labels, test_images, test_labels,
                 progress: bool = True):
        self.folder, self.recipe, self.tasks, self.progress = Path(folder), recipe, tuple(tasks), progress
        self.train_labels, self.test_images, self.test_labels = train_labels, test_images, test_labels

    def path(self, job: Job) -> Path:
        return self.folder / job.dirname / "result.json"

    def done(self, job: Job) -> bool:
        return self.path(job).is_file()

    def run(self, job: Job, images) -> dict:
        """The cached result of ``job``, or train it on ``images()`` (uint8 NHWC) and cache it."""
        path = self.path(job)
        if path.is_file():
            return json.loads(path.read_text())
        t0 = time.time()
        res = train_victim(job.victim, self.recipe, self.tasks, images(), self.train_labels, self.test_images,
                           self.test_labels, job.defense, job.seed, progress=self.progress)
        res.update(method=job.method, output=job.output, defense=job.defense, victim=job.victim.key, seed=job.seed,
                   threads=torch.get_num_threads())
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(res, indent=1))
        if self.progress:
            print(f"[victims] {job.key}: {time.time() - t0:.0f}s, test {res['test']}", flush=True)
        return res

    @staticmethod
    def read(folder: Path) -> dict[str, dict]:
        """Every finished run under ``folder``, by job key."""
        out = {}
        for p in sorted(Path(folder).glob("*/result.json")):
            r = json.loads(p.read_text())
            out[Job(r["method"], r["output"], r["defense"], VictimSpec.parse(r["victim"]), r["seed"]).key] = r
        return out
