"""Benchmark of Alg. 1's generator step (the robust default recipe) on real UTKFace images, side by side.

Variants, each timed on the same batches, interleaved ``--repeats`` times (medians reported):

* ``previous``: the recipe of the previous default generator -- MTL-UE-TAP at 32x32 in memory (one
  generator batch = generator + TAP loss on a frozen ResNet-18 at 32x32), float32;
* ``robust_fp32``: the robust fitting recipe (native 200x200 images through the engine's recipe, luma delta,
  EOT victim views, TAP on a frozen ResNet-18 surrogate), float32, NCHW -- what it costs before the speed
  options;
* ``robust_fast``: the same with ``amp="bf16"`` + ``channels_last`` (what ``mtlguard fit --amp bf16
  --channels-last`` runs).  The bundled default generator is still the 32x32 in-memory fit (``previous``):
  the robust fits did not beat it on the deployment matrix (``python/mtlguard/assets/README.md``).

Reported: seconds per generator batch (``--batch-size`` images), the projected seconds per round over
``--train-size`` images, and the ratio ``robust_fp32 / robust_fast`` (the issue's fit-speed goal is
measured on this ratio, both variants in one run).  JSON in ``bench/results/fit_cpu.json``::

    python bench/fit.py --utkface ../shared/data/utkface --out bench/results/fit_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path


def _versions() -> dict:
    import torch

    import mtlguard

    return {"python": platform.python_version(), "torch": torch.__version__, "mtlguard": mtlguard.__version__,
            "machine": platform.machine(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads()}


def _variant(name: str, ds_native, ds_small, batches: int, batch_size: int):
    """``fit_generator`` for ``batches`` generator batches of one variant (a fresh generator and surrogate)."""
    import torch

    from mtlguard.unlearnable import MTLUEGenerator, build_surrogate, fit_generator
    from mtlguard.unlearnable.eot import EOTConfig
    from mtlguard.unlearnable.fitting import FitConfig

    torch.manual_seed(0)
    if name == "previous":
        gen = MTLUEGenerator(ds_small.tasks, image_size=32)
        sur = build_surrogate(ds_small.tasks, 3, 32)
        cfg = FitConfig(base="tap", epochs=1, batch_size=batch_size, max_batches=batches)
        data = ds_small
    else:
        fast = name == "robust_fast"
        gen = MTLUEGenerator(ds_native.tasks, image_size=32, delta_channels="luma")
        sur = build_surrogate(ds_native.tasks, 3, 64)
        cfg = FitConfig(base="tap", epochs=1, batch_size=batch_size, max_batches=batches, eot=EOTConfig(),
                        amp="bf16" if fast else "none", channels_last=fast)
        data = ds_native
    t0 = time.perf_counter()
    res = fit_generator(gen, data, sur, cfg, progress=False)
    total = time.perf_counter() - t0
    return total, res.history[-1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--utkface", default="../shared/data/utkface")
    ap.add_argument("--batches", type=int, default=4, help="generator batches per timed call")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--train-size", type=int, default=2000, help="images per round (for the projection)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--out", default="bench/results/fit_cpu.json")
    args = ap.parse_args(argv)

    import torch

    from mtlguard.data import UTKFace

    if args.threads:
        torch.set_num_threads(args.threads)
    n = args.batches * args.batch_size
    kw = dict(split="train", subset=n, seed=0, progress=False, cache_dir=args.cache_dir)
    native = UTKFace(args.utkface, image_size=200, **kw)
    small = UTKFace(args.utkface, image_size=32, **kw)
    names = ("previous", "robust_fp32", "robust_fast")
    times: dict[str, list[float]] = {k: [] for k in names}
    for rep in range(args.repeats):
        for name in names:
            total, rec = _variant(name, native, small, args.batches, args.batch_size)
            times[name].append(total)
            print(f"[fit bench] repeat {rep + 1} {name}: {total:.2f}s for {args.batches} batches", flush=True)
    per_batch = {k: statistics.median(v) / args.batches for k, v in times.items()}
    rounds = {k: v * args.train_size / args.batch_size for k, v in per_batch.items()}
    result = {
        "benchmark": "Alg. 1 generator batches (bench/fit.py)", "versions": _versions(),
        "load_average": [round(v, 2) for v in os.getloadavg()], "batch_size": args.batch_size,
        "batches_per_call": args.batches, "repeats": args.repeats, "seconds_per_call": times,
        "seconds_per_batch_median": per_batch, "projected_seconds_per_round": rounds,
        "ratio_fp32_over_fast": per_batch["robust_fp32"] / per_batch["robust_fast"],
        "note": "each call includes one fit_generator setup (a few ms); TAP rounds have no surrogate-accuracy pass; "
                "medians over interleaved repeats; the surrogates are untrained (the cost does not depend on the "
                "weights)",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(args.out)
    print(json.dumps({k: result[k] for k in ("seconds_per_batch_median", "ratio_fp32_over_fast")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
