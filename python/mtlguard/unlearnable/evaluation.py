"""Protection evaluation (MTL-UE Sec. 5, Tables 2, 3, 8, 12): make protected training sets with
each method, train MTL and STL victims on them (the shared :func:`mtlguard.training.train`), and
report clean-test metrics next to the clean-trained victims.

Method names (rows of Table 2):

* ``clean``; surrogate-free ``lsp-patch``, ``ar-patch``, ``lsp-average``, ``ar-average``;
* sample-wise ``em``, ``tap``, ``sep`` (PGD on a ResNet-18 LS surrogate);
* ``mtl-ue-em``, ``mtl-ue-tap``, ``mtl-ue-sep`` (generator fitted with Alg. 1);
* partial task protection (Table 8): ``mtl-ue-tap:age+race`` protects only those tasks (the others
  get the mean embedding); the generator of ``mtl-ue-tap`` is reused.

Defenses (Table 12): ``none``, ``jpeg`` (quality 10), ``grayscale``, ``bdr`` (2 bits), applied once to
the protected training images; ``at`` trains the victims adversarially instead (Madry PGD-AT with the
GB-MTA direction: :class:`mtlguard.attacks.FATPerturb` with ``tau = steps``, i.e. no early stop, L-inf
``at_eps``, ``at_steps`` steps of ``2.5 * at_eps / at_steps``; the paper has no AT table, this follows
REM's question of whether AT recovers learnability).

Partial data protection (Table 9, after Huang et al. 2021): ``protect_fraction = r < 1`` protects a seeded
fraction ``r`` of the training images (:func:`~mtlguard.unlearnable.protect.protected_subset`, seed = the
config's) and leaves the rest clean; each protected row's victims train on ``P_r + T_(1-r)`` (row key
``"<method> [P_r + T_1-r]"``) and a row ``"clean T_1-r only"`` trains them on the clean part alone.

Transfer rows (Tables 5, 13-15): ``victim_archs`` (``ARCH`` or ``ARCH/MTL``, e.g. ``resnet18/mtan``,
``resnet18/cross_stitch``, ``resnet101``) and ``victim_weightings`` (``uw``, ``rlw``, ``aligned_mtl``, ...)
add, for every method row without a defense (``clean`` included, the baseline of each victim), an MTL victim
of that architecture (LS) or of the surrogate's architecture with that weighting; row keys
``"<row> @ <arch>"`` / ``"<row> @ <arch>:<weighting>"``, each with ``"clean_key"`` naming its clean baseline.
Everything is cached under ``out_dir`` (protected images ``.npy``,
generators, victim checkpoints) so an interrupted run resumes.
"""
from __future__ import annotations

import json
import os
import re
import time
import warnings
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..atomic import atomic_write, atomic_write_text
from ..data.imageio import atomic_save_npy
from ..data.tasks import TaskSpec
from .fitting import FitConfig, fit_generator
from .generator import DELTA_UNITS, LEGACY_DELTA_UNITS, MTLUEGenerator
from .patterns import ClasswisePatterns
from .rows import generator_row_file, is_generator_file_method, method_label
from .protect import (DEFENSES, ProtectedDataset, generator_file_protector, generator_protector, pattern_protector, protect_images,
                      table_protector)
from .samplewise import samplewise_em, samplewise_tap
from .surrogate import build_surrogate, ensemble_from_snapshots, train_clean_surrogate

BASELINES = ("lsp-patch", "ar-patch", "lsp-average", "ar-average", "em", "tap", "sep")
MTLUE = ("mtl-ue-em", "mtl-ue-tap", "mtl-ue-sep")
METHODS = ("clean",) + BASELINES + MTLUE


def method_file_label(method: str) -> str:
    """A file-name-safe key of a method: ``gen:runs/x/g.onnx`` -> ``gen_g``, ``mtl-ue-tap:age+race`` ->
    ``mtl-ue-tap_age-race``."""
    return method_label(method).replace(":", "_").replace("+", "-")


@dataclass
class ProtectionConfig:
    """One protection benchmark (defaults: small CPU protocol; the paper's values in comments)."""

    methods: Sequence[str] = ("clean", "ar-patch", "lsp-patch", "mtl-ue-em", "mtl-ue-tap")
    defenses: Sequence[str] = ("none",)
    eps: float = 8 / 255
    arch: str = "resnet18"
    victim_epochs: int = 10          # paper: 60
    victim_batch_size: int = 128     # paper: 512
    victim_lr: float = 1e-3
    stl: bool = True
    stl_methods: Sequence[str] | None = None  # rows (method[ + defense] keys or methods) with STL victims; None = all
    surrogate_epochs: int = 10       # clean surrogate for TAP / SEP (paper: 60)
    sep_checkpoints: int = 15
    gen_epochs: int = 10             # R of Alg. 1 (paper: 60)
    gen_batch_size: int = 128
    gen_train_steps: int = 10
    gen_delta_units: str = "eps"     # MTLUEGenerator.delta_units ("eps" = D in units of eps, "raw" = Alg. 1)
    em_steps: int = 20               # sample-wise EM PGD steps (paper: 20)
    em_rounds: int = 10
    tap_steps: int = 250             # sample-wise TAP / SEP PGD steps (paper: 250 of 0.064/255)
    tap_step_size: float = 0.064 / 255
    at_eps: float = 4 / 255          # victims' adversarial training (defense "at")
    at_steps: int = 5
    protect_fraction: float = 1.0    # partial data protection: share r of the training images protected (Table 9)
    victim_archs: Sequence[str] = ()       # transfer rows: victim architectures "ARCH" / "ARCH/MTL" (Tables 5, 13, 15)
    victim_weightings: Sequence[str] = ()  # transfer rows: victim weightings with the surrogate's arch (Tables 5, 14)
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self):
        for m in self.methods:
            if is_generator_file_method(m):
                continue
            base = m.split(":")[0]
            if base not in METHODS:
                raise ValueError(f"unknown protection method {m!r}; expected one of {METHODS} (partial: 'mtl-ue-tap:age+race')")
            if ":" in m and base not in MTLUE:
                raise ValueError(f"method {m!r}: task selection ':' is only for MTL-UE methods")
        unknown = [m for m in (self.stl_methods or ()) if m.split(" + ")[0] not in self.methods]
        if unknown:
            raise ValueError(f"stl_methods {unknown} are not among the methods {tuple(self.methods)}")
        if self.gen_delta_units not in DELTA_UNITS:
            raise ValueError(f"gen_delta_units must be one of {DELTA_UNITS}, got {self.gen_delta_units!r}")
        for d in self.defenses:
            if d not in DEFENSES and d != "at":
                raise ValueError(f"unknown defense {d!r}; expected one of {tuple(DEFENSES) + ('at',)}")
        if "at" in self.defenses and not (0 < self.at_eps <= 1 and self.at_steps >= 1):
            raise ValueError(f"adversarial training needs 0 < at_eps <= 1 and at_steps >= 1, got "
                             f"at_eps={self.at_eps}, at_steps={self.at_steps}")
        if not 0.0 < float(self.protect_fraction) <= 1.0:
            raise ValueError(f"protect_fraction must be in (0, 1], got {self.protect_fraction}")
        from ..models import ARCHS, split_arch
        from ..weighting import build_weighting

        for a in self.victim_archs:
            arch, _ = split_arch(a)
            if arch not in ARCHS:
                raise ValueError(f"victim arch {a!r}: unknown architecture {arch!r}; expected one of {ARCHS}")
        for w in self.victim_weightings:
            build_weighting(w, ["a", "b"])  # raises ValueError naming the known weightings


def _primary_metric(spec: TaskSpec) -> str:
    return "accuracy" if spec.kind in ("binary", "multiclass") else spec.metrics[0]


def majority_rates(dataset: Dataset, tasks: Sequence[TaskSpec]) -> dict[str, float]:
    """Accuracy of always predicting the most frequent class, per classification task of ``dataset``
    (the floor that "unlearnable" aims at: a victim that learned nothing transferable scores about this)."""
    names = [t.name for t in tasks if t.kind in ("binary", "multiclass")]
    counts: dict[str, dict[int, int]] = {n: {} for n in names}
    get = getattr(dataset, "targets", None)
    for i in range(len(dataset)):
        tg = get(i) if callable(get) else dataset[i][1]
        for n in names:
            c = int(torch.as_tensor(tg[n]).reshape(-1)[0])
            counts[n][c] = counts[n].get(c, 0) + 1
    return {n: max(c.values()) / sum(c.values()) for n, c in counts.items() if c}


class ProtectionBenchmark:
    """Runs :class:`ProtectionConfig` on ``train_set`` / ``test_set``; results in :meth:`run`'s dict."""

    def __init__(self, train_set: Dataset, test_set: Dataset, cfg: ProtectionConfig, out_dir: str | os.PathLike):
        self.train_set, self.test_set, self.cfg = train_set, test_set, cfg
        self.tasks: tuple[TaskSpec, ...] = tuple(train_set.tasks)
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        x0, _ = train_set[0]
        self.channels, self.size = int(x0.shape[0]), (int(x0.shape[1]), int(x0.shape[2]))
        self._clean_sur: torch.nn.Module | None = None
        self._snaps: list | None = None
        self._check_work_dir()

    #: settings that do not change any cached artifact (rows, defenses and STL choice only pick what runs)
    _NOT_CACHED = ("methods", "defenses", "stl", "stl_methods", "device", "progress", "victim_archs",
                   "victim_weightings")
    #: what folders recorded before a setting existed were made with, where that is not today's default
    _BEFORE_OPTION = {"gen_delta_units": LEGACY_DELTA_UNITS}

    def work_fingerprint(self) -> dict:
        """What the cached surrogates, generators, protected sets and victims under ``out_dir`` depend on."""
        fp = {k: v for k, v in asdict(self.cfg).items() if k not in self._NOT_CACHED}
        fp.update(train_size=len(self.train_set), test_size=len(self.test_set), image_size=list(self.size),
                  channels=self.channels, tasks=[t.name for t in self.tasks],
                  train_data=getattr(self.train_set, "_cache_name", None),
                  test_data=getattr(self.test_set, "_cache_name", None))
        return json.loads(json.dumps(fp))

    def _check_work_dir(self) -> None:
        """Refuse to resume from a work folder filled under other settings (its cached generators and
        victims would be silently reused); the first run records ``out_dir/work_config.json``."""
        path = self.out / "work_config.json"
        fp = self.work_fingerprint()
        if path.is_file():
            old = json.loads(path.read_text())
            for f in fields(ProtectionConfig):  # a setting added after the folder was made: the value
                if f.name not in self._NOT_CACHED and f.name not in old and f.default is not MISSING:  # used then
                    old[f.name] = json.loads(json.dumps(self._BEFORE_OPTION.get(f.name, f.default)))
            diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
            if diff:
                detail = ", ".join(f"{k}: {old.get(k)!r} -> {fp.get(k)!r}" for k in diff)
                raise ValueError(f"work folder {self.out} holds results made with other settings ({detail}); "
                                 "use another --work folder, or the same settings to resume")
            return
        if any(self.out.iterdir()):
            warnings.warn(f"{self.out}: work folder without work_config.json (made before it was recorded); "
                          "its cached results are reused as they are", stacklevel=3)
        atomic_write_text(path, json.dumps(fp, indent=1, sort_keys=True))

    # --- surrogates / generators -----------------------------------------------------------------
    def _surrogate(self) -> torch.nn.Module:
        return build_surrogate(self.tasks, self.channels, self.size, self.cfg.arch)

    def clean_surrogate(self):
        """Clean-trained LS surrogate + SEP snapshots (cached in ``out/surrogate/``)."""
        if self._clean_sur is not None:
            return self._clean_sur, self._snaps
        path = self.out / "surrogate" / "clean_surrogate.pt"
        sur = self._surrogate()
        if path.is_file():
            st = torch.load(path, map_location="cpu", weights_only=True)
            snaps = st["snapshots"]
            sur.load_state_dict(snaps[-1])
        else:
            torch.manual_seed(self.cfg.seed)
            snaps = train_clean_surrogate(sur, self.tasks, self.train_set, epochs=self.cfg.surrogate_epochs,
                                          batch_size=self.cfg.gen_batch_size, seed=self.cfg.seed,
                                          device=self.cfg.device, n_snapshots=self.cfg.sep_checkpoints,
                                          progress=self.cfg.progress)
            snaps = [{k: v.cpu() for k, v in s.items()} for s in snaps]
            atomic_write(path, lambda tmp: torch.save({"snapshots": snaps}, tmp))
        sur.eval()
        self._clean_sur, self._snaps = sur, snaps
        return sur, snaps

    def generator(self, base: str) -> MTLUEGenerator:
        """The MTL-UE generator for ``base`` in {em, tap, sep}, fitted once (``out/generators/``)."""
        path = self.out / "generators" / f"mtl-ue-{base}.safetensors"
        if path.is_file():
            return MTLUEGenerator.load(path)
        torch.manual_seed(self.cfg.seed)
        gen = MTLUEGenerator(self.tasks, in_channels=self.channels, image_size=self.size, eps=self.cfg.eps,
                             delta_units=self.cfg.gen_delta_units)
        fit_cfg = FitConfig(base=base, epochs=self.cfg.gen_epochs, batch_size=self.cfg.gen_batch_size,
                            train_steps=self.cfg.gen_train_steps, seed=self.cfg.seed)
        snaps = None
        if base == "em":
            sur = self._surrogate()
        else:
            sur, snaps = self.clean_surrogate()
            import copy
            sur = copy.deepcopy(sur)
        res = fit_generator(gen, self.train_set, sur, fit_cfg, snapshots=snaps if base == "sep" else None,
                            out_dir=self.out / "generators" / f"fit-{base}", device=self.cfg.device,
                            progress=self.cfg.progress)
        gen.save(path, extra={"fit": asdict(fit_cfg), "rounds": res.rounds, "stopped_early": res.stopped_early})
        return gen.cpu()

    # --- protected training sets -----------------------------------------------------------------
    def protected_images(self, method: str) -> np.ndarray:
        """uint8 ``[N, H, W, C]`` protected training images for ``method`` (cached ``.npy``)."""
        cache = self.out / "protected" / f"{method_file_label(method)}.npy"
        if cache.is_file():
            return np.load(cache)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cfg = self.cfg
        base = "generator-file" if is_generator_file_method(method) else method.split(":")[0]
        eps = cfg.eps
        if base == "generator-file":  # what mtlguard-engine writes, at this benchmark's image size
            arr = protect_images(self.train_set, generator_file_protector(generator_row_file(method), self.tasks),
                                 eps, desc=method, progress=cfg.progress)
        elif base == "clean":
            arr = protect_images(self.train_set, lambda x, t, i: torch.zeros_like(x), eps, progress=False)
        elif base in ("lsp-patch", "ar-patch", "lsp-average", "ar-average"):
            kind, fusion = base.split("-")
            pats = ClasswisePatterns(self.tasks, kind=kind, fusion=fusion, in_channels=self.channels,
                                     image_size=self.size, seed=cfg.seed)
            arr = protect_images(self.train_set, pattern_protector(pats), None, desc=method, progress=cfg.progress)
        elif base in ("tap", "sep"):
            sur, snaps = self.clean_surrogate()
            models = [sur] if base == "tap" else ensemble_from_snapshots(sur, snaps)
            deltas = samplewise_tap(models, self.tasks, self.train_set, steps=cfg.tap_steps,
                                    step_size=cfg.tap_step_size, eps=eps, batch_size=cfg.gen_batch_size,
                                    device=cfg.device, progress=cfg.progress)
            arr = protect_images(self.train_set, table_protector(deltas), eps, desc=method, progress=cfg.progress)
        elif base == "em":
            torch.manual_seed(cfg.seed)
            deltas, _ = samplewise_em(self._surrogate(), self.tasks, self.train_set, steps=cfg.em_steps, eps=eps,
                                      train_steps=cfg.gen_train_steps, max_rounds=cfg.em_rounds,
                                      batch_size=cfg.gen_batch_size, seed=cfg.seed, device=cfg.device,
                                      progress=cfg.progress)
            arr = protect_images(self.train_set, table_protector(deltas), eps, desc=method, progress=cfg.progress)
        else:  # MTL-UE, possibly partial
            gen = self.generator(base.split("-")[-1])
            protect = method.split(":")[1].split("+") if ":" in method else None
            arr = protect_images(self.train_set, generator_protector(gen, protect, cfg.device), eps, desc=method,
                                 progress=cfg.progress)
        if base != "clean" and cfg.protect_fraction < 1.0:  # P_r + T_(1-r): the unselected images stay clean
            arr = np.where(self.protected_mask()[:, None, None, None], arr, self.protected_images("clean"))
        atomic_save_npy(cache, arr)
        return arr

    def protected_mask(self) -> np.ndarray:
        """bool ``[N]``: the training images a method protects (all unless ``protect_fraction < 1``)."""
        from .protect import protected_subset

        return protected_subset(len(self.train_set), self.cfg.protect_fraction, self.cfg.seed)

    # --- victims ---------------------------------------------------------------------------------
    def adversarial_perturb(self, tasks: Sequence[TaskSpec]):
        """The trainer's ``perturb`` hook for defense ``at`` (PGD-AT along the GB-MTA direction)."""
        from ..attacks import FATPerturb

        cfg = self.cfg
        return FATPerturb(tasks, eps=cfg.at_eps, steps=cfg.at_steps, step_size=2.5 * cfg.at_eps / cfg.at_steps,
                          tau=cfg.at_steps, aggregation="gbmta")

    def train_victim(self, train_ds: Dataset, tasks: Sequence[TaskSpec], out_dir: Path,
                     adversarial: bool = False, arch: str | None = None, weighting: str = "ls") -> dict:
        """Train one victim (``arch``: ``ARCH`` or ``ARCH/MTL``, default the surrogate's) on ``train_ds``."""
        from ..models import build_model
        from ..training import train

        result_path = out_dir / "result.json"
        if result_path.is_file():
            return json.loads(result_path.read_text())
        torch.manual_seed(self.cfg.seed)
        model = build_model(tasks, arch=arch or self.cfg.arch, in_channels=self.channels, image_size=self.size[0])
        res = train(model, tasks, train_ds, self.test_set, weighting=weighting, epochs=self.cfg.victim_epochs,
                    lr=self.cfg.victim_lr, batch_size=self.cfg.victim_batch_size, out_dir=out_dir, seed=self.cfg.seed,
                    device=self.cfg.device, resume=True, progress=self.cfg.progress, eval_every=self.cfg.victim_epochs,
                    perturb=self.adversarial_perturb(tasks) if adversarial else None)
        final = res["final"]
        out = {t.name: float(final[t.name][_primary_metric(t)]) for t in tasks}
        if len(tasks) > 1:
            try:
                from ..metrics import intra_class_std
                from .surrogate import make_loader

                out["_intra_class_std"] = intra_class_std(model, make_loader(train_ds, 256, 0, shuffle=False),
                                                          tasks, self.cfg.device)
            except Exception as exc:  # the metric is reported as missing, never invented
                out["_intra_class_std"] = {"error": f"{type(exc).__name__}: {exc}"}
        atomic_write_text(result_path, json.dumps(out, indent=2))
        return out

    def run(self) -> dict:
        """Every (method, defense): MTL victim (+ one STL victim per task); returns the results dict."""
        cfg = self.cfg
        results: dict = {"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
                         "tasks": [t.name for t in self.tasks], "image_size": list(self.size),
                         "train_size": len(self.train_set), "test_size": len(self.test_set),
                         "majority": majority_rates(self.test_set, self.tasks), "rows": {}}
        partial = cfg.protect_fraction < 1.0
        r_txt = f"{cfg.protect_fraction:g}"
        r_rest = f"{1 - cfg.protect_fraction:.6g}"
        if partial:
            results["protect_fraction"] = cfg.protect_fraction
            results["protected_images"] = int(self.protected_mask().sum())
        for method in cfg.methods:
            t0 = time.time()
            arr = self.protected_images(method)
            src = self.protected_images("clean")
            diff = np.abs(arr.astype(np.int16) - src.astype(np.int16))
            label = method_label(method)
            for defense in cfg.defenses:
                key = (label if defense == "none" else
                       f"{label} + AT-{cfg.at_eps * 255:g}" if defense == "at" else f"{label} + ISS-{defense}")
                if partial and method != "clean":
                    key = key.replace(label, f"{label} [P_{r_txt} + T_{r_rest}]", 1)
                adversarial = defense == "at"
                ds = ProtectedDataset(self.train_set, arr if adversarial else DEFENSES[defense](arr))
                vdir = self.out / "victims" / key.replace(" ", "").replace(":", "_").replace("+", "_")
                row = {"method": method, "defense": defense,
                       "linf_uint8": int(diff.max()),
                       "l2_mean": float(np.sqrt(((diff.astype(np.float64) / 255) ** 2).reshape(len(arr), -1).sum(1)).mean())}
                row["mtl"] = self.train_victim(ds, self.tasks, vdir / "mtl", adversarial)
                if cfg.stl and (cfg.stl_methods is None or key in cfg.stl_methods or
                                (defense == "none" and method in cfg.stl_methods)):
                    row["stl"] = {}
                    for t in self.tasks:
                        row["stl"].update(self.train_victim(ds, (t,), vdir / f"stl-{t.name}", adversarial))
                row["seconds"] = round(time.time() - t0, 1)
                results["rows"][key] = row
                atomic_write_text(self.out / "results_partial.json", json.dumps(results, indent=2))
                if defense == "none":
                    self._transfer_rows(results, key, ds, vdir)
            if partial and method == "clean":
                self._clean_part_row(results, r_rest)
        return results

    def _clean_part_row(self, results: dict, r_rest: str) -> None:
        """Table 9's comparison: victims trained on the clean part ``T_(1-r)`` alone."""
        from torch.utils.data import Subset

        keep = np.flatnonzero(~self.protected_mask())
        if len(keep) == 0:
            return
        sub = Subset(ProtectedDataset(self.train_set, self.protected_images("clean")), keep.tolist())
        sub.tasks = self.tasks  # type: ignore[attr-defined]
        key = f"clean T_{r_rest} only"
        vdir = self.out / "victims" / f"clean_T{r_rest}_only"
        row = {"method": "clean", "defense": "none", "images": int(len(keep)), "linf_uint8": 0, "l2_mean": 0.0,
               "mtl": self.train_victim(sub, self.tasks, vdir / "mtl")}
        if self.cfg.stl and (self.cfg.stl_methods is None or "clean" in self.cfg.stl_methods):
            row["stl"] = {}
            for t in self.tasks:
                row["stl"].update(self.train_victim(sub, (t,), vdir / f"stl-{t.name}"))
        results["rows"][key] = row
        atomic_write_text(self.out / "results_partial.json", json.dumps(results, indent=2))

    def _transfer_rows(self, results: dict, key: str, ds: Dataset, vdir: Path) -> None:
        """MTL victims of other architectures / weightings on the same training set (Tables 5, 13-15)."""
        cfg = self.cfg
        clean_key = "clean"
        victims = [(a, "ls", f"{key} @ {a}", f"{clean_key} @ {a}") for a in cfg.victim_archs]
        victims += [(cfg.arch, w, f"{key} @ {cfg.arch}:{w}", f"{clean_key} @ {cfg.arch}:{w}") for w in cfg.victim_weightings]
        base = results["rows"][key]
        for arch, weighting, tkey, ckey in victims:
            safe = f"{arch}_{weighting}".replace("/", "_").replace(":", "_").replace(",", "_").replace("+", "-").replace("@", "at")
            row = {"method": base["method"], "defense": "none", "linf_uint8": base["linf_uint8"],
                   "l2_mean": base["l2_mean"], "victim_arch": arch, "victim_weighting": weighting,
                   "clean_key": ckey if not tkey.startswith("clean @") else None,
                   "mtl": self.train_victim(ds, self.tasks, vdir / f"transfer-{safe}", arch=arch, weighting=weighting)}
            results["rows"][tkey] = row
            atomic_write_text(self.out / "results_partial.json", json.dumps(results, indent=2))


# --- reports -------------------------------------------------------------------------------------------
def markdown_table(results: dict) -> str:
    """Table 2 layout: rows = methods, columns = per-task metric + Avg. for MTL and STL victims, and the
    protection ratio of every row against the clean row behind the same defense (``PR = (clean - row) /
    (clean - majority)`` per task; the table shows the worst task's PR, :mod:`.deploy_report` explains it)."""
    from .deploy_report import protection_ratio

    tasks = results["tasks"]
    maj = results.get("majority") or {}
    has_stl = any("stl" in r for r in results["rows"].values())
    parts = ("mtl",) + (("stl",) if has_stl else ())
    head = ["Method"] + [f"MTL {t}" for t in tasks] + ["MTL Avg.", "MTL worst PR"]
    if has_stl:
        head += [f"STL {t}" for t in tasks] + ["STL Avg.", "STL worst PR"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, r in results["rows"].items():
        cells = [key]
        bare = re.sub(r" \[P_[^\]]*\]", "", key)  # partial protection's "[P_r + T_(1-r)]" is not a defense
        suffix = bare.split(" + ", 1)[1] if " + " in bare else None  # a defense: compare with clean behind it
        ref_key = r.get("clean_key") or "clean" + (f" + {suffix}" if suffix else "")  # transfer rows name theirs
        ref = results["rows"].get(ref_key, {})
        clean = {p: ref.get(p, {}) for p in parts}
        for part in parts:
            vals = r.get(part, {})
            nums = [100 * vals[t] for t in tasks if t in vals]
            cells += [f"{100 * vals[t]:.2f}" if t in vals else "-" for t in tasks]
            cells.append(f"{np.mean(nums):.2f}" if len(nums) == len(tasks) else "-")
            prs = [protection_ratio(clean[part][t], vals[t], maj[t]) for t in tasks
                   if t in vals and t in clean[part] and t in maj]
            prs = [(v, t) for v, t in zip(prs, tasks) if not np.isnan(v)]
            cells.append(f"{min(prs)[0]:.2f} ({min(prs)[1]})" if prs and not key.startswith("clean") else "-")
        lines.append("| " + " | ".join(cells) + " |")
    if all(t in maj for t in tasks):
        nums = [100 * maj[t] for t in tasks]
        cells = [f"{v:.2f}" for v in nums] + [f"{np.mean(nums):.2f}", "1.00"]
        lines.append("| *majority class (test)* | " + " | ".join(cells * (2 if has_stl else 1)) + " |")
    return "\n".join(lines)


def std_table(results: dict) -> str:
    """Table 3: relative intra-class feature std of the MTL victims (features on their training set)."""
    lines = ["| Method | Avg. | Max. |", "|---|---|---|"]
    for key, r in results["rows"].items():
        s = r.get("mtl", {}).get("_intra_class_std")
        if isinstance(s, dict) and "average" in s:
            lines.append(f"| {key} | {s['average']:.3f} | {s['maximum']:.3f} |")
        elif isinstance(s, dict):
            lines.append(f"| {key} | n/a ({s.get('error', '')}) | |")
    return "\n".join(lines)


def perturbation_grid(clean: np.ndarray, protected: dict[str, np.ndarray], path: str | os.PathLike,
                      n: int = 6) -> Path:
    """Fig. 6-style PNG: per method, a row of perturbations (each normalized to [0, 1]) and a row of images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(protected)
    n = min(n, len(clean))
    fig, axes = plt.subplots(2 * len(names), n, figsize=(1.3 * n, 1.3 * 2 * len(names)), squeeze=False)
    for r, name in enumerate(names):
        arr = protected[name]
        for c in range(n):
            d = arr[c].astype(np.float32) - clean[c].astype(np.float32)
            lo, hi = d.min(), d.max()
            dn = (d - lo) / (hi - lo) if hi > lo else np.zeros_like(d)
            for k, img in ((0, dn), (1, arr[c].astype(np.float32) / 255)):
                ax = axes[2 * r + k, c]
                ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                          vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
            if c == 0:
                axes[2 * r, 0].set_ylabel(f"{name}\nδ", fontsize=7)
                axes[2 * r + 1, 0].set_ylabel("x+δ", fontsize=7)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)


def write_report(results: dict, bench: ProtectionBenchmark, stem: str | os.PathLike, command: str,
                 extra_md: str = "") -> dict[str, Path]:
    """``<stem>.json``, ``<stem>.md`` (tables + exact command) and ``<stem>.png`` (Fig. 6 grid)."""
    stem = Path(stem)
    results = dict(results, command=command, device=bench.cfg.device, torch=torch.__version__)
    atomic_write_text(stem.with_suffix(".json"), json.dumps(results, indent=2))
    methods = [m for m in bench.cfg.methods if m != "clean"]
    grid = perturbation_grid(bench.protected_images("clean"), {m: bench.protected_images(m) for m in methods},
                             stem.with_suffix(".png"))
    cfg = results["config"]
    md = [f"# Protection report ({', '.join(results['tasks'])})", "",
          f"Command: `{command}`", "",
          f"Seed {cfg['seed']}, image size {results['image_size'][0]}x{results['image_size'][1]}, device "
          f"{cfg['device']}, torch {torch.__version__}; train {results['train_size']} / test "
          f"{results['test_size']} images; victims {cfg['arch']} LS, {cfg['victim_epochs']} epochs, batch "
          f"{cfg['victim_batch_size']}; eps {cfg['eps'] * 255:.1f}/255.", "",
          "Clean-test accuracy (%) of victims trained on each protected training set (lower = better protection) "
          "and the worst task's protection ratio PR = (acc_clean - acc) / (acc_clean - acc_majority) (1 = "
          "nothing learned beyond the majority class, 0 = no protection):",
          "", markdown_table(results), "",
          "Relative intra-class std of the MTL victims' encoder features on their training set (Table 3):", "",
          std_table(results), "", f"Perturbations / protected images: `{grid.name}`.", "", extra_md]
    atomic_write_text(stem.with_suffix(".md"), "\n".join(md) + "\n")
    return {"json": stem.with_suffix(".json"), "md": stem.with_suffix(".md"), "png": grid}
