"""``mtlguard evaluate-protection --protocol deploy``: the command-line side of
:mod:`mtlguard.unlearnable.deploy` (options -> :class:`DeployConfig`, fit recipe, report)."""
from __future__ import annotations

import json
import time
from pathlib import Path


def fit_options() -> tuple[str, ...]:
    """The options a fitted row's generator depends on (recorded in its folder under generators/, which refuses
    others): every robust-fitting option plus the deploy command's own spellings of the rest."""
    from .options import robust_fit_dests

    return robust_fit_dests() + ("gen_epochs", "gen_batch_size", "gen_train_steps", "gen_delta_units", "arch",
                                 "surrogate_epochs", "surrogate_archs")


def _split(s: str | None) -> list[str]:
    return [x.strip() for x in (s or "").split(",") if x.strip()]


def deploy_config(args):
    from ..unlearnable.deploy import DeployConfig
    from ..unlearnable.victims import DEFENSES, VictimRecipe

    methods = _split(args.methods) or ["clean", "bundled"]
    methods = (["clean"] if "clean" not in methods else []) + methods + [f"gen:{g}" for g in args.generator]
    try:
        lo, hi = (float(v) for v in _split(args.crop_scale))
        recipe = VictimRecipe(epochs=args.victim_epochs, batch_size=args.victim_batch_size, lr=args.victim_lr,
                              crop_scale=(lo, hi), average_last=args.average_last, at_eps=args.at_eps / 255,
                              at_steps=args.at_steps)
        return DeployConfig(methods=tuple(methods), headline=args.headline, victims=tuple(_split(args.victims)),
                            defenses=tuple(_split(args.defenses) or DEFENSES), defense_victim=args.defense_victim,
                            jpeg_victims=tuple(_split(args.jpeg_victims)), jpeg_quality=args.jpeg_quality,
                            recipe=recipe, eps=args.eps / 255, seed=args.seed, progress=not args.no_progress)
    except ValueError as e:
        raise SystemExit(f"evaluate-protection: {e}") from None


def _surrogate_archs(args) -> tuple[str, ...]:
    return tuple(_split(args.surrogate_archs)) or (args.arch,)


def generator_recipe(args, method: str):
    """The :class:`GeneratorRecipe` of fitted row ``method`` (``mtl-ue-<base>``) from the robust-fitting options;
    a bad option raises ``ValueError`` (one line, exit 2) before anything is read or written."""
    from .options import recipe_from_robust_args

    return recipe_from_robust_args(
        args, fit=dict(base=method.split("-")[-1], epochs=args.gen_epochs, batch_size=args.gen_batch_size,
                       train_steps=args.gen_train_steps),
        recipe=dict(eps=args.eps / 255, delta_units=args.gen_delta_units, surrogate_archs=_surrogate_archs(args)))


def fit_recipe_for(args, recipes: dict, train_set, work: Path):
    """``method -> ONNX path``: fit ``recipes[method]`` (cached in ``work/generators/method``), export it."""
    from ..unlearnable.recipes import fit_recipe

    def fit(method: str) -> Path:
        out = work / "generators" / method
        onnx = out / "generator.onnx"
        if onnx.is_file():
            return onnx
        gen, _ = fit_recipe(recipes[method], train_set, out, device=args.device, progress=not args.no_progress)
        from mtlguard.export import export_onnx

        export_onnx(gen, onnx)
        return onnx

    return fit


def _in_memory_benchmark(args, cfg, work: Path):
    """The generator-resolution benchmark that computes sample-wise rows (only when asked for)."""
    from ..unlearnable.cli_common import load_split
    from ..unlearnable.deploy import SAMPLEWISE
    from ..unlearnable.evaluation import ProtectionBenchmark, ProtectionConfig

    wanted = [m for m in cfg.methods if m in SAMPLEWISE]
    if not wanted:
        return None
    size = args.gen_size or 32
    small = type(args)(**{**vars(args), "image_size": size})
    pcfg = ProtectionConfig(methods=("clean", *wanted), eps=cfg.eps, arch=args.arch, surrogate_epochs=args.surrogate_epochs,
                            sep_checkpoints=args.sep_checkpoints, gen_batch_size=args.gen_batch_size,
                            em_steps=args.em_steps, em_rounds=args.em_rounds, tap_steps=args.tap_steps,
                            tap_step_size=args.tap_step_size / 255, seed=args.seed, device=args.device,
                            progress=not args.no_progress)
    return ProtectionBenchmark(load_split(small, args.split, args.subset), load_split(small, args.test_split,
                               args.test_subset), pcfg, work / "in_memory")


def _flat(d: dict, prefix: str = "") -> dict:
    """``{"fit": {"eot": ..}}`` -> ``{"fit.eot": ..}`` (nested settings compared and named one by one)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _off(key: str, value) -> bool:
    """Whether ``value`` is option ``key``'s "off" value, what folders recorded before the option existed were
    made with: falsy, ``"none"`` (``--eot none``), or the default of the
    :class:`~mtlguard.unlearnable.fitting.FitConfig` field of that name (e.g. ``task_balance="sum"``)."""
    from dataclasses import fields

    from ..unlearnable.fitting import FitConfig

    name = key.rsplit(".", 1)[-1]
    return not value or value == "none" or any(f.name == name and f.default == value for f in fields(FitConfig))


def _check_work(work: Path, fingerprint: dict, name: str = "deploy_config.json") -> None:
    """Record ``fingerprint`` in ``work/name``, or refuse (one line) a folder recorded with other settings."""
    from ..atomic import atomic_write_text

    fingerprint = json.loads(json.dumps(fingerprint))
    path = work / name
    if path.is_file():
        recorded = json.loads(path.read_text())
        old, new = _flat(recorded), _flat(fingerprint)
        # an option recorded before it existed (absent from ``old``) matches its off value (see _off)
        diff = sorted(k for k in set(old) | set(new)
                      if old.get(k) != new.get(k) and not (k not in old and _off(k, new[k])))
        if diff:
            detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
            raise SystemExit(f"evaluate-protection: work folder {work} holds results made with other settings "
                             f"({detail}); use another --work folder, or the same settings to resume")
        return
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(fingerprint, indent=1, sort_keys=True))


def run_deploy(args) -> int:
    from ..unlearnable.cli_common import command_line, load_split
    from ..unlearnable.deploy import FITTED, DeployProtocol, method_label, plan_jobs
    from ..unlearnable.deploy_report import write_deploy_report
    from ..unlearnable.evaluation import majority_rates

    cfg = deploy_config(args)
    # a bad fit option is refused here, before a work folder records it (and then refuses the corrected command)
    recipes = {m: generator_recipe(args, m) for m in cfg.methods if m in FITTED}
    out = Path(args.out)
    work = Path(args.work) if args.work else out / f"{args.prefix}_work"
    train_set = load_split(args, args.split, args.subset)
    test_set = load_split(args, args.test_split, args.test_subset)
    fingerprint = {"recipe": cfg.recipe.to_dict(), "eps": cfg.eps, "seed": cfg.seed, "native_size": args.image_size,
                   "train": getattr(train_set, "_cache_name", None), "test": getattr(test_set, "_cache_name", None)}
    _check_work(work, fingerprint)
    # a fitted row's generator, protected set and victims were made with its fit options: refuse others
    for method in recipes:
        _check_work(work / "generators" / method, {"fit": {k: getattr(args, k) for k in fit_options()}},
                    "fit_options.json")
    protocol = DeployProtocol(train_set, test_set, cfg, work,
                              fit_options=fit_recipe_for(args, recipes, train_set, work),
                              in_memory=_in_memory_benchmark(args, cfg, work))
    deadline = time.time() + 60 * args.time_budget if args.time_budget else None
    protocol.run(max_jobs=args.max_jobs, deadline=deadline)
    planned = plan_jobs(cfg)
    keys = {j.key for j in planned}
    results = {k: v for k, v in protocol.cached().items() if k in keys}
    tasks = [t.name for t in train_set.tasks]
    config = {"methods": list(cfg.methods), "headline": cfg.headline_methods(), "victims": list(cfg.victims),
              "defenses": list(cfg.defenses),
              "defense_victim": cfg.defense_victim, "jpeg_victims": list(cfg.jpeg_victims),
              "jpeg_quality": cfg.jpeg_quality, "recipe": cfg.recipe.to_dict(), "eps": cfg.eps, "seed": cfg.seed,
              "device": args.device, "native_size": args.image_size, "train_size": len(train_set),
              "test_size": len(test_set), "fit": {k: getattr(args, k) for k in fit_options()}}
    paths = write_deploy_report(results, tasks=tasks, majority=majority_rates(test_set, train_set.tasks),
                                config=config, stem=out / args.prefix, command=command_line(args),
                                planned=len(planned), label=method_label, extra_md=args.note)
    print(json.dumps({**{k: str(v) for k, v in paths.items()}, "finished": len(results), "planned": len(planned)},
                     indent=2))
    return 0
