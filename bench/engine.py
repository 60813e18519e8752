"""Benchmark of mtlguard-engine on real UTKFace images (issue 5), all on the same files in one run:

(a) floor: decode + encode only (the engine's passthrough mode);
(b) generator only: the inference backend on pre-decoded model-resolution batches;
(c) engine end to end (decode -> inference -> native-size delta -> encode -> atomic write);
(d) naive baseline: one image at a time -- PIL open, torch eager generator, PIL save.
Goals: (c) >= 0.8 x min(a, b) and (c) >= 5 x (d).  Also: simplejpeg vs Pillow full-size JPEG decode.

Example (copies N real UTKFace images to a temp dir; never writes into the data folder)::

    python bench/engine.py --utkface ../shared/data/utkface --images 300 \\
        --checkpoint runs/default/generator.safetensors --out bench/results/engine_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


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
    return MTLUEGenerator(tasks, 3, (image_size, image_size)).eval(), "random weights (same architecture)"


def decode_compare(files) -> dict:
    import simplejpeg
    from PIL import Image

    blobs = [f.read_bytes() for f in files]
    t = time.perf_counter()
    for b in blobs:
        simplejpeg.decode_jpeg(b, colorspace="RGB")
    sj = len(blobs) / (time.perf_counter() - t)
    import io

    t = time.perf_counter()
    for b in blobs:
        with Image.open(io.BytesIO(b)) as im:
            np.asarray(im.convert("RGB"))
    pil = len(blobs) / (time.perf_counter() - t)
    return {"simplejpeg_img_per_s": round(sj, 1), "pillow_img_per_s": round(pil, 1), "single_thread": True}


def naive(files, gen, out_dir: Path) -> float:
    """(d): one image at a time, PIL + torch eager, no batching/threads/pipelining."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from mtlguard.data.utkface import age_to_bin, parse_utkface_name

    h, w = gen.image_size
    out_dir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    for f in files:
        im = Image.open(f).convert("RGB")
        x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        small = torch.from_numpy(np.asarray(im.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        a, g, r = parse_utkface_name(f.name)
        with torch.no_grad():
            _, d = gen(small, torch.tensor([[age_to_bin(a), g, r]]))
            d = F.interpolate(d, size=x.shape[2:], mode="bilinear", align_corners=False).clamp(-gen.eps, gen.eps)
            y = (x + d).clamp(0, 1)
        Image.fromarray((y[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(out_dir / (f.stem + ".png"))
    return len(files) / (time.perf_counter() - t)


def generator_only(onnx_path: Path, files, batch_size: int, threads: int | None) -> float:
    """(b): the onnxruntime session on pre-decoded model-resolution batches (same files)."""
    from mtlguard.engine.backends import OnnxRuntimeBackend
    from mtlguard.engine.imageio import decode_file
    from mtlguard.engine.perturb import model_input

    be = OnnxRuntimeBackend(onnx_path, "cpu", threads)
    size = tuple(be.facts.image_size)
    xs = np.stack([model_input(decode_file(f).rgb, size) for f in files])
    ys = np.zeros((len(files), len(be.facts.tasks)), dtype=np.int64)
    be.run(xs[:batch_size], ys[:batch_size])  # warm-up
    t = time.perf_counter()
    for i in range(0, len(files), batch_size):
        be.run(xs[i:i + batch_size], ys[i:i + batch_size])
    return len(files) / (time.perf_counter() - t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--utkface", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "utkface"))
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--checkpoint", default=None, help="generator checkpoint (default: random weights)")
    ap.add_argument("--image-size", type=int, default=32, help="generator resolution when no checkpoint is given")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads")
    ap.add_argument("--naive-images", type=int, default=60,
                    help="(d) runs on the first N of the same files (it is ~20x slower; per-image cost is flat)")
    ap.add_argument("--out", default="bench/results/engine_cpu.json")
    args = ap.parse_args(argv)

    from mtlguard.data.utkface import parse_utkface_name
    from mtlguard.engine import protect_directory
    from mtlguard.export import export_onnx

    src_all = sorted(p for p in (Path(args.utkface) / "images").iterdir() if parse_utkface_name(p.name))
    step = max(1, len(src_all) // args.images)
    picked = src_all[::step][: args.images]
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="mtlguard-bench-") as tmp:
        tmp = Path(tmp)
        inp = tmp / "in"
        inp.mkdir()
        for p in picked:
            shutil.copyfile(p, inp / p.name)
        files = sorted(inp.iterdir())
        gen, weights = _generator(args.checkpoint, args.image_size)
        onnx_path = export_onnx(gen, tmp / "gen.onnx")
        kw = dict(batch_size=args.batch_size, workers=args.workers, progress=False, threads=args.threads)
        # warm the page cache and the runtimes on a few files (not timed)
        protect_directory(inp, tmp / "warm", model=onnx_path, dataset="utkface", **kw)
        res = {}
        res["decoder_comparison"] = decode_compare(files)
        rep_a = protect_directory(inp, tmp / "a", passthrough=True, **kw)
        res["a_passthrough_img_per_s"] = rep_a["images_per_s"]
        res["b_generator_only_img_per_s"] = round(generator_only(onnx_path, files, args.batch_size, args.threads), 2)
        rep_c = protect_directory(inp, tmp / "c", model=onnx_path, dataset="utkface", **kw)
        res["c_engine_img_per_s"] = rep_c["images_per_s"]
        res["c_stage_seconds"] = rep_c["stage_seconds"]
        res["c_max_abs_delta_written_uint8"] = rep_c["max_abs_delta_written_uint8"]
        res["d_naive_img_per_s"] = round(naive(files[: args.naive_images], gen, tmp / "d"), 2)
        res["d_naive_images"] = min(len(files), args.naive_images)
        floor = min(res["a_passthrough_img_per_s"], res["b_generator_only_img_per_s"])
        res["c_over_min_ab"] = round(res["c_engine_img_per_s"] / floor, 3)
        res["c_over_d"] = round(res["c_engine_img_per_s"] / res["d_naive_img_per_s"], 3)
        res["goal_c_ge_0.8_min_ab"] = res["c_over_min_ab"] >= 0.8
        res["goal_c_ge_5_d"] = res["c_over_d"] >= 5
    out = {
        "command": "python " + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        "device": {"kind": "cpu", "cpu": _cpu_name(), "logical_cores": os.cpu_count(),
                   "loadavg_start": [round(v, 2) for v in load0], "loadavg_end": [round(v, 2) for v in os.getloadavg()]},
        "versions": _versions(),
        "data": {"dataset": "UTKFace (real)", "images": len(picked), "native_size": "200x200 JPEG",
                 "selection": f"every {step}th valid name, sorted"},
        "generator": {"weights": weights, "image_size": list(gen.image_size), "eps": gen.eps, "backend": "onnxruntime"},
        "settings": {"batch_size": args.batch_size, "workers": rep_c["workers"], "format": "png", "png_level": 1,
                     "seed": 0},
        "results": res,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
