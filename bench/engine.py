"""Benchmark of mtlguard-engine on real UTKFace images (issue 5), all on the same files in one run:

(a) floor: decode + encode only (the engine's passthrough mode, SAME format / PNG level / strategy as (c));
(b) generator only: the inference backend (``--backend onnxruntime`` (default) or ``torch``, on ``--device``)
    on pre-decoded model-resolution batches;
(c) engine end to end (decode -> inference -> native-size delta -> encode -> atomic write);
(d) naive baseline: one image at a time -- PIL open, torch eager generator (on ``--device``), PIL save (same PNG settings).
On a GPU: ``python bench/engine.py --backend torch --device cuda --checkpoint GEN`` -> bench/results/engine_cuda_torch.json.
Goals (issue 5): (c) >= 0.8 x min(a, b) and (c) >= 5 x (d).

(a), (b), (c) run interleaved ``--repeats`` times (medians reported) so that a drifting machine load
hits them alike; each also records its process CPU time per image, which does not depend on how
much of the machine other jobs take.  On a machine where all stages share the same cores, (c) cannot
beat ``1 / (1/a + 1/b)`` (every image needs the floor's decode+encode work AND the generator's
work); the JSON states that bound and whether the 0.8 x min(a, b) goal is reachable under it.
Also recorded: simplejpeg vs Pillow decode, and PNG size / encode time per zlib level and strategy
on the protected images (the evidence for the engine's PNG defaults).

``--photos`` (issue 15) measures phone-size photos instead: synthetic 12 MP (4000x3000) and 50 MP (8160x6120) JPEGs
made from real UTKFace faces (upscaled, with sensor-like noise) in a temp dir, protected with the engine's
DEFAULT options (PNG, PSNR/SSIM on) by this engine and by the engine of ``--baseline-rev`` (the engine before
issue 15, extracted from git), each run in its own process: img/s, MP/s, output bytes per image, CPU s per image
and peak RSS.  Goal: >= 3x the baseline's img/s on 12 MP photos on 2 cores, peak RSS <= 1.5 GB.

``--generators`` (issue 15, section 3) runs ``bench/generator_cpu.py`` (its own options follow): generator-only
throughput of torch eager, onnxruntime fp32 (the engine's default path; threads swept, optimizations on/off) and
int8 (static QDQ, dynamic), plus the floor and the engine end to end, all interleaved in one run; ratios against the
goals (engine default >= 1.5x torch eager, engine >= 0.9 x its shared-core bound) ->
bench/results/generator_cpu.json.

Example (copies N real UTKFace images to a temp dir; never writes into the data folder)::

    python bench/engine.py --utkface ../shared/data/utkface --images 300 \\
        --checkpoint runs/default/generator.safetensors --out bench/results/engine_cpu.json
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _machine import cpu_model  # noqa: E402  (bench/_machine.py)


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _versions() -> dict:
    import onnxruntime
    import PIL
    import torch

    import mtlguard

    v = {"python": sys.version.split()[0], "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
         "numpy": np.__version__, "pillow": PIL.__version__, "mtlguard": mtlguard.__version__}
    try:
        import simplejpeg

        v["simplejpeg"] = simplejpeg.__version__
    except ImportError:
        pass
    return v


def _generator(checkpoint: str | None, image_size: int):
    import torch

    from mtlguard.export import load_generator

    if checkpoint:
        return load_generator(checkpoint), f"trained checkpoint {checkpoint}"
    from mtlguard.data.tasks import TaskSpec
    from mtlguard.unlearnable.generator import MTLUEGenerator

    torch.manual_seed(0)
    tasks = (TaskSpec("age", "multiclass", 9), TaskSpec("gender", "multiclass", 2), TaskSpec("race", "multiclass", 5))
    return MTLUEGenerator(tasks, 3, (image_size, image_size)).eval(), "random weights (same architecture), seed 0"


def _timed(fn):
    """``(result, wall s, process CPU s)`` of ``fn()``."""
    w, c = time.perf_counter(), time.process_time()
    r = fn()
    return r, time.perf_counter() - w, time.process_time() - c


def decode_compare(files) -> dict:
    import simplejpeg
    from PIL import Image

    blobs = [f.read_bytes() for f in files]
    t = time.perf_counter()
    for b in blobs:
        simplejpeg.decode_jpeg(b, colorspace="RGB")
    sj = len(blobs) / (time.perf_counter() - t)
    t = time.perf_counter()
    for b in blobs:
        with Image.open(io.BytesIO(b)) as im:
            np.asarray(im.convert("RGB"))
    pil = len(blobs) / (time.perf_counter() - t)
    return {"simplejpeg_img_per_s": round(sj, 1), "pillow_img_per_s": round(pil, 1), "single_thread": True}


def naive(files, gen, out_dir: Path, png_compression: int, png_strategy: str, device: str = "cpu") -> tuple[float, float]:
    """(d): one image at a time, PIL + torch eager, no batching/threads/pipelining; PNG saved with the
    engine's level and strategy (so (c) / (d) does not count the PNG settings as engine speed-up).
    Returns ``(img/s, process CPU ms/img)``."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from mtlguard.data.utkface import age_to_bin, parse_utkface_name
    from mtlguard.engine.imageio import PNG_STRATEGIES

    h, w = gen.image_size
    out_dir.mkdir(parents=True, exist_ok=True)

    def one(f):
        im = Image.open(f).convert("RGB")
        x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        small = torch.from_numpy(np.asarray(im.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        a, g, r = parse_utkface_name(f.name)
        with torch.no_grad():
            x, small = x.to(device), small.to(device)
            _, d = gen(small, torch.tensor([[age_to_bin(a), g, r]], device=device))
            d = F.interpolate(d, size=x.shape[2:], mode="bilinear", align_corners=False).clamp(-gen.eps, gen.eps)
            y = (x + d).clamp(0, 1).cpu()
        Image.fromarray((y[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
            out_dir / (f.stem + ".png"), compress_level=png_compression, compress_type=PNG_STRATEGIES[png_strategy])

    one(files[0])  # warm-up (lazy initialisation), not timed
    _, wall, cpu = _timed(lambda: [one(f) for f in files])
    return len(files) / wall, 1e3 * cpu / len(files)


def generator_only(be, files, batch_size: int) -> tuple[float, float]:
    """(b): the inference session on pre-decoded model-resolution batches (same files): ``(img/s, CPU ms/img)``."""
    from mtlguard.engine.imageio import decode_file
    from mtlguard.engine.perturb import model_input

    size = tuple(be.facts.image_size)
    xs = np.stack([model_input(decode_file(f).rgb, size) for f in files])
    ys = np.zeros((len(files), len(be.facts.tasks)), dtype=np.int64)
    be.run(xs[:batch_size], ys[:batch_size])  # warm-up

    def run():
        for i in range(0, len(files), batch_size):
            be.run(xs[i:i + batch_size], ys[i:i + batch_size])

    _, wall, cpu = _timed(run)
    return len(files) / wall, 1e3 * cpu / len(files)


def png_options(files, be, eps: float, levels=(0, 1, 3, 6), strategies=("default", "rle"), n: int = 96) -> dict:
    """PNG bytes and single-thread encode CPU time per image for each zlib level x strategy, on the
    engine's protected outputs of the first ``n`` files (and on the clean originals, for reference)."""
    from mtlguard.data.utkface import age_to_bin, parse_utkface_name
    from mtlguard.engine.imageio import decode_file, encode
    from mtlguard.engine.perturb import apply_delta_batch, model_input

    files = files[:n]
    rgb = np.stack([decode_file(f).rgb for f in files])
    size = tuple(be.facts.image_size)
    x = np.stack([model_input(r, size) for r in rgb])
    y = np.array([[age_to_bin(a), g, r] for a, g, r in (parse_utkface_name(f.name) for f in files)], dtype=np.int64)
    delta = np.concatenate([be.run(x[i:i + 32], y[i:i + 32]) for i in range(0, len(files), 32)])
    prot = apply_delta_batch(rgb, delta, eps)[0]
    table = []
    for kind, imgs in (("protected", prot), ("clean", rgb)):
        for strategy in strategies:
            for level in levels:
                if strategy != "default" and level == 0:
                    continue  # level 0 stores: the strategy does not matter
                enc = lambda: [encode(im, "png", png_compression=level, png_strategy=strategy) for im in imgs]  # noqa: E731
                enc()
                best_cpu, data = float("inf"), None
                for _ in range(2):
                    data, _, cpu = _timed(enc)
                    best_cpu = min(best_cpu, cpu)
                table.append({"images": kind, "strategy": strategy, "level": level,
                              "kb_per_img": round(float(np.mean([len(b) for b in data])) / 1e3, 1),
                              "encode_cpu_ms_per_img": round(1e3 * best_cpu / len(imgs), 2)})
    return {"images": len(files), "size": "200x200", "threads": 1, "encoder": "Pillow (zlib)", "timing": "best of 2",
            "table": table}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--generators" in argv:  # issue 15, section 3: bench/generator_cpu.py with the remaining options
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from generator_cpu import main as generators_main

        return generators_main([a for a in argv if a != "--generators"])
    from mtlguard.engine.imageio import DEFAULT_PNG_COMPRESSION, DEFAULT_PNG_STRATEGY, PNG_STRATEGIES

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--utkface", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "utkface"))
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--checkpoint", default=None, help="generator checkpoint (default: random weights)")
    ap.add_argument("--image-size", type=int, default=32, help="generator resolution when no checkpoint is given")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None, help="engine decode/encode threads (default: the engine's)")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: the runtime's)")
    ap.add_argument("--png-compression", type=int, default=DEFAULT_PNG_COMPRESSION)
    ap.add_argument("--png-strategy", choices=sorted(PNG_STRATEGIES), default=DEFAULT_PNG_STRATEGY)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repetitions of (a), (b), (c); medians reported")
    ap.add_argument("--c-configs", default="",
                    help="extra engine thread configs for (c), measured in the same repeats: 'THREADS:WORKERS,...' "
                         "(onnxruntime intra-op threads : decode/encode threads), e.g. 1:2,2:1")
    ap.add_argument("--naive-images", type=int, default=60,
                    help="(d) runs on the first N of the same files (it is ~5-20x slower; per-image cost is flat)")
    ap.add_argument("--backend", choices=("onnxruntime", "torch"), default="onnxruntime",
                    help="inference backend of (b) and (c); (d) is always torch eager")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="device of (b), (c) and (d) (cuda: onnxruntime needs onnxruntime-gpu; use --backend torch)")
    ap.add_argument("--out", default=None, help="default: bench/results/engine_<device>[_torch].json")
    ap.add_argument("--photos", action="store_true",
                    help="phone-size photos (12 MP and 50 MP) instead: this engine vs --baseline-rev, img/s, MP/s, "
                         "bytes per image, peak RSS (default out: bench/results/engine_photos_<device>.json)")
    ap.add_argument("--photos-12mp", type=int, default=16, help="--photos: number of 12 MP photos")
    ap.add_argument("--photos-50mp", type=int, default=4, help="--photos: number of 50 MP photos")
    ap.add_argument("--baseline-rev", default=BASELINE_REV,
                    help="--photos: git revision of the engine compared against ('none': skip)")
    ap.add_argument("--eval-path", default=None,
                    help="--photos: a folder with extra packages (imagecodecs, pyvips) to compare encoders against")
    ap.add_argument("--generators", action="store_true",
                    help="the generator on CPU instead (torch eager vs onnxruntime fp32 / int8, and the engine, side by "
                         "side): runs bench/generator_cpu.py with the other options (see its --help)")
    ap.add_argument("--synthetic", type=int, default=0,
                    help="use N synthetic 200x200 JPEG faces (UTKFace file names) instead of --utkface (GPU check)")
    args = ap.parse_args(argv)
    if args.photos:
        return photos_main(args, argv)

    from mtlguard.data.utkface import parse_utkface_name
    from mtlguard.engine import protect_directory
    from mtlguard.engine.backends import OnnxRuntimeBackend, TorchBackend
    from mtlguard.export import export_onnx

    if args.out is None:
        args.out = f"bench/results/engine_{args.device}" + ("_torch" if args.backend == "torch" else "") + ".json"

    if args.synthetic:
        import atexit

        synth = Path(tempfile.mkdtemp(prefix="mtlguard-synth-"))
        atexit.register(shutil.rmtree, synth, True)
        args.utkface = str(_synthetic_faces(synth, args.synthetic))
    src_all = sorted(p for p in (Path(args.utkface) / "images").iterdir() if parse_utkface_name(p.name))
    step = max(1, len(src_all) // args.images)
    picked = src_all[::step][: args.images]
    load0 = _load()
    png = dict(png_compression=args.png_compression, png_strategy=args.png_strategy)
    extra = [tuple(int(v) for v in cfg.split(":")) for cfg in args.c_configs.split(",") if cfg.strip()]
    with tempfile.TemporaryDirectory(prefix="mtlguard-bench-") as tmp:
        tmp = Path(tmp)
        inp = tmp / "in"
        inp.mkdir()
        for p in picked:
            shutil.copyfile(p, inp / p.name)
        files = sorted(inp.iterdir())
        gen, weights = _generator(args.checkpoint, args.image_size)
        if args.backend == "onnxruntime":
            model_path = export_onnx(gen, tmp / "gen.onnx")
        else:
            model_path = gen.save(tmp / "gen.safetensors")
        kw = dict(batch_size=args.batch_size, workers=args.workers, progress=False, threads=args.threads,
                  backend=args.backend, device=args.device, metrics=False, **png)  # PSNR/SSIM: +15% CPU, not timed
        pkw = {k: v for k, v in kw.items() if k not in ("backend", "device")}  # passthrough: no model
        # warm the page cache and the runtimes (not timed)
        protect_directory(inp, tmp / "warm", model=model_path, dataset="utkface", **kw)
        res: dict = {"decoder_comparison": decode_compare(files)}
        be = (OnnxRuntimeBackend(model_path, args.device, args.threads) if args.backend == "onnxruntime"
              else TorchBackend(model_path, args.device, args.threads))
        runs = {"a": [], "b": [], "c": []}
        sweep = {f"threads={t},workers={w}": [] for t, w in extra}
        rep_c = None
        for r in range(args.repeats):
            rep_a, w, cpu = _timed(lambda: protect_directory(inp, tmp / f"a{r}", passthrough=True, **pkw))
            assert rep_a["done"] == len(files), rep_a["failures"][:3]
            runs["a"].append({"img_per_s": round(len(files) / w, 2), "cpu_ms_per_img": round(1e3 * cpu / len(files), 2),
                              "loadavg": _load()})
            ips, cpu_ms = generator_only(be, files, args.batch_size)
            runs["b"].append({"img_per_s": round(ips, 2), "cpu_ms_per_img": round(cpu_ms, 2), "loadavg": _load()})
            rep_c, w, cpu = _timed(lambda: protect_directory(inp, tmp / f"c{r}", model=model_path, dataset="utkface", **kw))
            assert rep_c["done"] == len(files), rep_c["failures"][:3]
            runs["c"].append({"img_per_s": round(len(files) / w, 2), "cpu_ms_per_img": round(1e3 * cpu / len(files), 2),
                              "loadavg": _load(), "stage_seconds": rep_c["stage_seconds"],
                              "stage_cpu_ms_per_img": {k: round(1e3 * v / len(files), 2)
                                                       for k, v in rep_c["stage_cpu_seconds"].items()},
                              "max_abs_delta_written_uint8": rep_c["max_abs_delta_written_uint8"]})
            shutil.rmtree(tmp / f"a{r}")
            shutil.rmtree(tmp / f"c{r}")
            for t, wk in extra:
                kx = dict(kw, threads=t, workers=wk)
                rep, w, cpu = _timed(lambda: protect_directory(inp, tmp / "cx", model=model_path, dataset="utkface", **kx))
                assert rep["done"] == len(files), rep["failures"][:3]
                sweep[f"threads={t},workers={wk}"].append({"img_per_s": round(len(files) / w, 2),
                                                          "cpu_ms_per_img": round(1e3 * cpu / len(files), 2),
                                                          "loadavg": _load()})
                shutil.rmtree(tmp / "cx")
        med = {k: round(statistics.median(x["img_per_s"] for x in v), 2) for k, v in runs.items()}
        cpu_med = {k: round(statistics.median(x["cpu_ms_per_img"] for x in v), 2) for k, v in runs.items()}
        a, b, c = med["a"], med["b"], med["c"]
        res.update({"a_passthrough_img_per_s": a, "b_generator_only_img_per_s": b, "c_engine_img_per_s": c})
        # (d) with torch's default threads, and with one thread (torch's OpenMP workers spin-wait, which
        # collapses when other jobs hold the cores): (c) / (d) uses the faster of the two
        import torch

        nthreads = torch.get_num_threads()
        gen = gen.to(args.device)
        d_default = naive(files[: args.naive_images], gen, tmp / "d", device=args.device, **png)
        torch.set_num_threads(1)
        try:
            d_one = naive(files[: args.naive_images], gen, tmp / "d1", device=args.device, **png)
        finally:
            torch.set_num_threads(nthreads)
        res["d_naive_variants"] = {
            f"torch_threads={nthreads}": {"img_per_s": round(d_default[0], 2), "cpu_ms_per_img": round(d_default[1], 2)},
            "torch_threads=1": {"img_per_s": round(d_one[0], 2), "cpu_ms_per_img": round(d_one[1], 2)}}
        res["d_naive_img_per_s"] = round(max(d_default[0], d_one[0]), 2)
        res["d_naive_images"] = min(len(files), args.naive_images)
        res["cpu_ms_per_img"] = cpu_med
        res["runs"] = runs
        if sweep:
            res["c_thread_configs"] = {k: {"img_per_s_median": round(statistics.median(x["img_per_s"] for x in v), 2),
                                           "cpu_ms_per_img_median": round(statistics.median(x["cpu_ms_per_img"] for x in v), 2),
                                           "runs": v} for k, v in sweep.items()}
        res["c_bound_uint8"] = rep_c["bound_uint8"]
        res["c_max_abs_delta_written_uint8"] = max(x["max_abs_delta_written_uint8"] for x in runs["c"])
        floor = min(a, b)
        shared = 1.0 / (1.0 / a + 1.0 / b)
        res["min_ab_img_per_s"] = floor
        res["shared_core_bound_img_per_s"] = round(shared, 2)
        res["c_over_min_ab"] = round(c / floor, 3)
        res["c_over_shared_core_bound"] = round(c / shared, 3)
        res["c_over_d"] = round(c / res["d_naive_img_per_s"], 3)
        res["goal_c_ge_0.8_min_ab"] = res["c_over_min_ab"] >= 0.8
        res["goal_c_ge_5_d"] = res["c_over_d"] >= 5
        res["goal_0.8_min_ab_reachable_with_shared_cores"] = 0.8 * floor <= shared
        # (c) needs >= the CPU of (a) + (b) per image and has os.cpu_count() cores; the 1-thread naive loop
        # gets a whole core on an idle machine, so (c)/(d) <= cores * cpu(d, 1 thread) / (cpu(a) + cpu(b))
        cores = os.cpu_count() or 1
        cpu_d1 = res["d_naive_variants"]["torch_threads=1"]["cpu_ms_per_img"]
        res["c_over_d_upper_bound_by_cpu"] = round(cores * cpu_d1 / (cpu_med["a"] + cpu_med["b"]), 2)
        res["goal_5_d_reachable_by_cpu"] = res["c_over_d_upper_bound_by_cpu"] >= 5
        res["bound_note"] = (
            "(a) and (b) each use every core on their own; in (c) decode+encode and inference run on the same cores, so "
            "per image (c) needs at least the CPU of (a) plus that of (b): (c) <= 1/(1/a + 1/b) = shared_core_bound. "
            f"0.8 x min(a, b) = {0.8 * floor:.1f} img/s vs that bound {shared:.1f} img/s: the 0.8 goal is "
            + ("reachable" if 0.8 * floor <= shared else "NOT reachable on this machine (not an engine inefficiency)")
            + f". CPU per image (contention-proof): a {cpu_med['a']} + b {cpu_med['b']} = "
            f"{cpu_med['a'] + cpu_med['b']:.2f} ms vs c {cpu_med['c']} ms. The naive loop with 1 torch thread costs "
            f"{cpu_d1} CPU ms/img on one core, so with {cores} cores (c)/(d) cannot exceed {cores} x {cpu_d1} / "
            f"{cpu_med['a'] + cpu_med['b']:.2f} = {res['c_over_d_upper_bound_by_cpu']}"
            + (" (the 5x goal is NOT reachable here)." if res["c_over_d_upper_bound_by_cpu"] < 5 else "."))
        if args.device != "cpu":
            res["bound_note"] = ("(b) runs on the GPU, so (a) and (b) do not share cores: the shared-core bound "
                                 "and the CPU-based (c)/(d) bound above do not apply; compare c with min(a, b).")
        res["png_options"] = png_options(files, be, gen.eps)
    out = {
        "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        "device": {"kind": args.device, "cpu": cpu_model(), "logical_cores": os.cpu_count(),
                   **({"gpu": torch.cuda.get_device_name(0)} if args.device == "cuda" else {}),
                   "loadavg_start": load0, "loadavg_end": _load(),
                   "note": "shared machine: other users' jobs ran alongside; see each run's loadavg and the CPU ms/img"},
        "versions": _versions(),
        "data": {"dataset": "synthetic faces (UTKFace names)" if args.synthetic else "UTKFace (real)",
                 "images": len(picked), "native_size": "200x200 JPEG",
                 "selection": f"every {step}th valid name, sorted"},
        "generator": {"weights": weights, "image_size": list(gen.image_size), "eps": gen.eps, "backend": args.backend},
        "settings": {"batch_size": args.batch_size, "workers": rep_c["workers"],
                     "onnxruntime_threads": args.threads or "runtime default (all cores)", "format": "png",
                     "png_compression": args.png_compression, "png_strategy": args.png_strategy,
                     "repeats": args.repeats, "seed": 0,
                     "floor_a_encodes": "the unmodified pixels with the same format, PNG level and strategy as (c)",
                     "naive_d_encodes": "PNG with the same level and strategy as (c)",
                     "naive_d_reported": "the faster of torch's default threads and 1 thread"},
        "results": res,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    from mtlguard.atomic import atomic_write_text

    atomic_write_text(args.out, json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


# ------------------------------------------------------------------------------------------------ --photos

#: The engine before issue 15 (count-based batches, numpy delta application, Pillow PNG encoder).
BASELINE_REV = "66b5114802aa84ce2b397e0e2f8d7977d5629b18"
ROOT = Path(__file__).resolve().parents[1]


def _synthetic_faces(root: Path, n: int) -> Path:
    """``n`` 200x200 JPEGs with UTKFace names (smooth random colour fields + noise) under ``root/images``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(small).resize((200, 200), Image.Resampling.BICUBIC)).astype(np.int16)
        img = np.clip(img + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)
        name = f"{rng.integers(1, 90)}_{rng.integers(0, 2)}_{rng.integers(0, 5)}_2017010{i % 10}{i:09d}.jpg.chip.jpg"
        Image.fromarray(img).save(root / "images" / name, quality=90)
    return root


def _make_photo(face: np.ndarray, w: int, h: int, seed: int) -> bytes:
    """A phone-like JPEG: a face upscaled to ``w x h`` with sensor-like noise (quality 90)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    a = np.asarray(Image.fromarray(face).resize((w, h), Image.Resampling.BICUBIC)).astype(np.float32)
    noise = rng.normal(0, 3.0, (h // 2 + 1, w // 2 + 1, 3)).astype(np.float32)
    a += np.repeat(np.repeat(noise, 2, 0), 2, 1)[:h, :w]
    a += rng.normal(0, 1.5, a.shape).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _photo_set(dst: Path, faces: list[Path], count: int, w: int, h: int, distinct: int) -> list[Path]:
    """``count`` photos (``distinct`` different ones, the rest copies under other UTKFace names)."""
    from PIL import Image

    dst.mkdir(parents=True, exist_ok=True)
    blobs = [_make_photo(np.asarray(Image.open(faces[i]).convert("RGB")), w, h, i) for i in range(min(distinct, count))]
    out = []
    for i in range(count):
        f = dst / faces[i % len(faces)].name.replace(".jpg.chip.jpg", f"{i:03d}.jpg.chip.jpg")
        f.write_bytes(blobs[i % len(blobs)])
        out.append(f)
    return out


_CHILD = r"""
import importlib, json, os, sys, time
def _hwm_mb():  # this process's peak RSS (VmHWM is per address space: not inherited through fork + exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return None
cfg = json.loads(sys.argv[1])
if cfg.get("pkg_root"):
    sys.path.insert(0, cfg["pkg_root"])
mod = importlib.import_module(cfg["module"])
t, c = time.perf_counter(), time.process_time()
rep = mod.protect_directory(cfg["input"], cfg["output"], model=cfg["model"], dataset="utkface", progress=False,
                            **cfg["options"])
wall, cpu = time.perf_counter() - t, time.process_time() - c
sizes = [e.stat().st_size for e in os.scandir(cfg["output"]) if e.is_file() and e.name.endswith(".png")]
print("RESULT " + json.dumps({"wall_s": wall, "cpu_s": cpu, "done": rep["done"], "failed": len(rep["failures"]),
      "failures": [f["reason"] for f in rep["failures"][:2]], "bytes": sum(sizes), "files": len(sizes),
      "peak_rss_mb": _hwm_mb(),
      "stage_cpu_seconds": rep.get("stage_cpu_seconds"), "workers": rep.get("workers")}))
"""


def _encoders(photo: Path, eval_path: str | None) -> dict:
    """Lossless encoders (and JPEG decoders) side by side on one protected 12 MP photo, one thread: CPU ms and MB;
    imagecodecs / pyvips when importable (``--eval-path DIR``: a folder they were pip-installed into)."""
    import zlib

    import torch
    from PIL import Image

    from mtlguard import ops
    from mtlguard.engine import imageio

    if eval_path:
        sys.path.insert(0, eval_path)
    data = photo.read_bytes()
    rgb = imageio.decode_bytes(data).rgb
    g = torch.Generator().manual_seed(0)
    d = torch.tanh(torch.randn(1, 3, 32, 32, generator=g)) * (8 / 255)
    prot = ops.apply_delta_u8(torch.from_numpy(np.ascontiguousarray(rgb))[None], d, 8 / 255)[0].numpy()
    rle = imageio.PNG_STRATEGIES["rle"]

    def pillow_png():
        b = io.BytesIO()
        Image.fromarray(prot).save(b, format="PNG", compress_level=1, compress_type=rle)
        return b.getvalue()

    def up_zlib():
        saved, imageio.isal_zlib = imageio.isal_zlib, None
        try:
            return imageio.encode_png_fast(prot, None, 1, rle)
        finally:
            imageio.isal_zlib = saved

    cands = {"pillow PNG (adaptive filters, zlib level 1 RLE) [engine before]": pillow_png,
             "Up filter + zlib level 1 RLE": up_zlib}
    if imageio.isal_zlib is not None:
        cands["Up filter + ISA-L level 1 (python-isal) [engine after]"] = \
            lambda: imageio.encode_png_fast(prot, None, 1, rle)
    cands["pillow lossless WebP (method 0)"] = lambda: (lambda b: (Image.fromarray(prot).save(
        b, format="WEBP", lossless=True, quality=0, method=0), b.getvalue())[1])(io.BytesIO())
    try:
        import imagecodecs

        cands[f"imagecodecs {imagecodecs.__version__} png_encode level 1"] = lambda: imagecodecs.png_encode(prot, level=1)
    except ImportError:
        pass
    try:
        import pyvips

        vim = pyvips.Image.new_from_memory(prot.tobytes(), prot.shape[1], prot.shape[0], 3, "uchar")
        cands[f"pyvips {pyvips.__version__} pngsave compression 1"] = lambda: vim.pngsave_buffer(compression=1)
    except (ImportError, OSError):
        pass
    nthreads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {"photo": "4000x3000, protected (random 32x32 delta, eps 8/255)", "encoders": {}, "jpeg_decoders": {}}
    try:
        for name, fn in cands.items():
            fn()
            c = time.process_time()
            blob = fn()
            cpu = time.process_time() - c
            back = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
            out["encoders"][name] = {"cpu_ms": round(cpu * 1e3, 1), "mb": round(len(blob) / 1e6, 2),
                                     "lossless": bool(np.array_equal(back, prot))}
        decs = {"simplejpeg (libjpeg-turbo) [engine]": lambda: imageio.decode_bytes(data).rgb,
                "pillow": lambda: np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))}
        try:
            import imagecodecs

            decs["imagecodecs jpeg8_decode"] = lambda: imagecodecs.jpeg8_decode(data)
        except ImportError:
            pass
        for name, fn in decs.items():
            fn()
            c = time.process_time()
            fn()
            out["jpeg_decoders"][name] = {"cpu_ms": round((time.process_time() - c) * 1e3, 1)}
    finally:
        torch.set_num_threads(nthreads)
    _ = zlib
    return out


def _extract_engine(rev: str, dst: Path) -> str:
    """The ``engine/`` package of git revision ``rev`` as importable package ``mtlguard_engine_<rev[:7]>``."""
    import subprocess

    name = f"mtlguard_engine_{rev[:7]}"
    pkg = dst / name
    pkg.mkdir(parents=True)
    files = subprocess.run(["git", "ls-tree", "--name-only", rev, "engine/"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if f.endswith(".py"):
            data = subprocess.run(["git", "show", f"{rev}:{f}"], cwd=ROOT, capture_output=True, check=True).stdout
            (pkg / Path(f).name).write_bytes(data)
    return name


def _run_child(module: str, pkg_root: str | None, inp: Path, out: Path, model: Path, options: dict) -> dict:
    import subprocess

    cfg = {"module": module, "pkg_root": pkg_root, "input": str(inp), "output": str(out), "model": str(model),
           "options": options}
    r = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cfg)], capture_output=True, text=True, timeout=3600)
    line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
    if r.returncode != 0 or not line:
        raise RuntimeError(f"{module} failed (rc {r.returncode}): {r.stderr[-2000:]}")
    res = json.loads(line[-1][7:])
    shutil.rmtree(out, ignore_errors=True)
    return res


def photos_main(args, argv) -> int:
    from mtlguard.data.utkface import parse_utkface_name
    from mtlguard.engine.work import DEFAULT_PIXEL_BUDGET_MP
    from mtlguard.export import export_onnx

    out_path = args.out or f"bench/results/engine_photos_{args.device}.json"
    faces = sorted(p for p in (Path(args.utkface) / "images").iterdir() if parse_utkface_name(p.name))[::997]
    load0 = _load()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="mtlguard-photos-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        sets = {"12MP": (_photo_set(tmp / "p12", faces, args.photos_12mp, 4000, 3000, 4), 12.0),
                "50MP": (_photo_set(tmp / "p50", faces, args.photos_50mp, 8160, 6120, 2), 49.94)}
        print(f"made the photos in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        gen, weights = _generator(args.checkpoint, args.image_size)
        model = export_onnx(gen, tmp / "gen.onnx") if args.backend == "onnxruntime" else gen.save(tmp / "gen.safetensors")
        base_mod = None
        if args.baseline_rev != "none":
            base_mod = _extract_engine(args.baseline_rev, tmp / "pkgs")
        opts = {"backend": args.backend, "device": args.device}
        runs = [("after", "mtlguard.engine", None, dict(opts))]
        if base_mod:
            runs.insert(0, ("before", base_mod, str(tmp / "pkgs"), dict(opts)))
        runs.append(("after_no_metrics", "mtlguard.engine", None, dict(opts, metrics=False)))
        results["encoders_12MP"] = _encoders(sets["12MP"][0][0], args.eval_path) if sets["12MP"][0] else None
        for label, (files, mp) in sets.items():
            if not files:
                continue
            inp = files[0].parent
            for name, module, root, o in runs:
                res = _run_child(module, root, inp, tmp / "out", model, o)
                n = res["done"]
                row = {"images": len(files), "megapixels_each": mp, "done": n, "failed": res["failed"],
                       "img_per_s": round(n / res["wall_s"], 3), "mp_per_s": round(n * mp / res["wall_s"], 2),
                       "wall_s": round(res["wall_s"], 2), "cpu_s_per_img": round(res["cpu_s"] / max(1, n), 3),
                       "bytes_per_img": int(res["bytes"] / max(1, res["files"])),
                       "input_bytes_per_img": int(sum(f.stat().st_size for f in files) / len(files)),
                       "peak_rss_mb": round(res["peak_rss_mb"], 1), "loadavg": _load(),
                       "stage_cpu_seconds": res["stage_cpu_seconds"], "workers": res["workers"]}
                if res["failures"]:
                    row["failures_first"] = res["failures"]
                results.setdefault(label, {})[name] = row
                print(f"{label} {name:18s} {row['img_per_s']:6.2f} img/s {row['mp_per_s']:7.1f} MP/s "
                      f"{row['cpu_s_per_img']:6.2f} CPU-s/img {row['bytes_per_img'] / 1e6:6.2f} MB/img "
                      f"peak RSS {row['peak_rss_mb']:7.0f} MB", file=sys.stderr, flush=True)
    r12 = results.get("12MP", {})
    ratio = (round(r12["after"]["img_per_s"] / r12["before"]["img_per_s"], 3)
             if "before" in r12 and "after" in r12 else None)
    peak = max((r["peak_rss_mb"] for k in ("after", "after_no_metrics") for v in results.values() if k in v
                for r in [v[k]]), default=None)
    report = {
        "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        "device": {"kind": args.device, "cpu": cpu_model(), "logical_cores": os.cpu_count(),
                   "loadavg_start": load0, "loadavg_end": _load(),
                   "note": "shared machine: other users' jobs (model training) ran alongside; see each run's loadavg"},
        "versions": _versions(),
        "data": "synthetic phone photos: real UTKFace faces upscaled (bicubic) to 4000x3000 / 8160x6120 with "
                "sensor-like noise, JPEG quality 90 (4 / 2 distinct photos, the rest copies under other names)",
        "generator": {"weights": weights, "image_size": list(gen.image_size), "backend": args.backend},
        "options": "engine defaults (PNG level 1 RLE, PSNR/SSIM on, batch 32, workers = cores) + "
                   f"after: pixel budget {DEFAULT_PIXEL_BUDGET_MP} MP; after_no_metrics: --no-metrics",
        "baseline_rev": args.baseline_rev,
        "results": results,
        "ratio_after_over_before_img_per_s_12MP": ratio,
        "goal_ratio_12MP": 3.0,
        "goal_met": None if ratio is None else ratio >= 3.0,
        "peak_rss_mb_after_max": peak,
        "goal_peak_rss_mb": 1536,
        "peak_rss_goal_met": None if peak is None else peak <= 1536,
    }
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    from mtlguard.atomic import atomic_write_text

    atomic_write_text(out_path, json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("ratio_after_over_before_img_per_s_12MP", "peak_rss_mb_after_max")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
