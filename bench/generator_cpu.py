"""The generator on CPU (issue 15, section 3): generator-only throughput per runtime, and the engine end to end,
all measured side by side in one run (``python bench/engine.py --generators`` runs this script).

Generator variants, all on the same pre-decoded model-resolution batches of real UTKFace images (labels from the
file names), interleaved batch by batch (every batch runs on every variant before the next batch, the order rotated
per batch) so a drifting machine load hits all alike:

* ``torch_eager_t{1,2}``: the engine's torch backend (``TorchBackend``: fused-op MTLUEGenerator, inference mode) with
  1 / 2 torch threads.  The bundled default generator ships as ONNX only, so its torch weights are rebuilt from the
  ONNX initializers (:func:`mtlguard.export._load.generator_from_onnx`; max |delta| difference ~1e-7 is checked);
* ``ort_fp32_default``: THE ENGINE'S DEFAULT PATH (``OnnxRuntimeBackend`` on the bundled .onnx, all graph
  optimizations, the runtime's default intra-op threads, no spinning); ``ort_fp32_t{1,2}``: intra-op threads set;
  ``ort_fp32_noopt_default``: graph optimizations off (what the optimizations bring);
* ``ort_int8_static_{default,t1}``: the ``mtlguard export --int8`` variant (static QDQ encoder convolutions,
  calibrated on other real UTKFace images, eps clip float32); ``ort_int8_dynamic_default``: onnxruntime's dynamic
  quantization (``ConvInteger``) of the same convolutions.

Engine end to end (``protect_directory``, PNG, no PSNR/SSIM, default threads): ``a`` the decode+encode floor
(passthrough), ``c`` the engine with the default generator, ``c_int8`` with the int8 variant (information only:
int8 is not the engine's default).  Ratios: engine default path / best torch eager; ``c`` / the shared-core bound
``1 / (1/a + 1/b)`` with ``b`` = the engine's default generator path (as ``bench/engine.py`` defines it).
Also: eps bound and fp32 agreement of the int8 variants (at 32x32 and in the engine's native-size outputs).

Example::

    python bench/generator_cpu.py --utkface ../shared/data/utkface --images 192 --repeats 3 \\
        --out bench/results/generator_cpu.json
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_model  # noqa: E402  (bench/_machine.py)
from engine import _load, _timed, _versions  # noqa: E402  (bench/engine.py helpers)

GOAL_DEFAULT_OVER_TORCH = 1.5
GOAL_C_OVER_BOUND = 0.9


def pick_files(utkface: Path, n: int, offset: int = 0) -> list[Path]:
    """``n`` valid UTKFace files spread evenly over the sorted names, starting at ``offset``."""
    from mtlguard.data.utkface import parse_utkface_name

    src = sorted(p for p in (utkface / "images").iterdir() if parse_utkface_name(p.name))
    return src[offset::max(1, len(src) // n)][:n]


def batches(files, size, batch: int):
    """Engine-identical model inputs and labels (age bin, gender, race) in batches of ``batch``."""
    from mtlguard.data.utkface import age_to_bin, parse_utkface_name
    from mtlguard.engine.imageio import decode_file
    from mtlguard.engine.perturb import model_input

    x = np.stack([model_input(decode_file(f).rgb, size) for f in files])
    y = np.array([[age_to_bin(a), g, r] for a, g, r in (parse_utkface_name(f.name) for f in files)], dtype=np.int64)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(files), batch)]


class TorchThreads:
    """A torch backend run with a fixed torch thread count (restored afterwards)."""

    def __init__(self, backend, threads: int):
        self.backend, self.threads = backend, threads

    def run(self, x, y):
        import torch

        saved = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return self.backend.run(x, y)
        finally:
            torch.set_num_threads(saved)


def ort_session(path, threads: int | None, optimize: bool = True):
    """An engine ``OnnxRuntimeBackend``; ``optimize=False`` rebuilds its session with graph optimizations off."""
    import onnxruntime as ort

    from mtlguard.engine.backends import OnnxRuntimeBackend

    be = OnnxRuntimeBackend(path, "cpu", threads)
    if not optimize:
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        be.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    return be


def dynamic_int8(src: Path, dst: Path) -> Path:
    """onnxruntime's dynamic quantization (``ConvInteger``) of the same ops the static variant quantizes."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from mtlguard.export import read_onnx_facts
    from mtlguard.export.int8 import INT8_OPS, check_float_eps_clip, tail_nodes

    import onnx

    pre = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    eps = read_onnx_facts(src).eps
    quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=list(INT8_OPS),
                     nodes_to_exclude=tail_nodes(onnx.load(str(pre)), eps))
    check_float_eps_clip(onnx.load(str(dst)), eps)
    return dst


def rotated(names: list[str], k: int) -> list[str]:
    k %= len(names)
    return names[k:] + names[:k]


def generator_round(variants: dict, feeds) -> dict:
    """One pass over ``feeds`` for every variant, interleaved BATCH BY BATCH (each batch runs on every variant, in
    an order rotated per batch, after one untimed warm-up batch each): img/s and process CPU ms/img per variant."""
    names = list(variants)
    wall, cpu = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
    for be in variants.values():
        be.run(*feeds[0])
    for i, (x, y) in enumerate(feeds):
        for name in rotated(names, i):
            _, w, c = _timed(lambda: variants[name].run(x, y))
            wall[name] += w
            cpu[name] += c
    n, load = sum(len(x) for x, _ in feeds), _load()
    return {k: {"img_per_s": round(n / wall[k], 2), "cpu_ms_per_img": round(1e3 * cpu[k] / n, 3), "loadavg": load}
            for k in names}


def max_abs_diff(be, ref, feeds) -> float:
    """max |delta_be - delta_ref| over ``feeds``."""
    return float(max(np.abs(be.run(x, y) - ref.run(x, y)).max() for x, y in feeds))


def agreement(be, ref, feeds, eps: float) -> dict:
    """max |delta| / eps of ``be`` and its difference from ``ref`` (fp32) at the model's resolution."""
    d = np.concatenate([be.run(x, y) for x, y in feeds])
    d0 = np.concatenate([ref.run(x, y) for x, y in feeds])
    x = np.concatenate([x for x, _ in feeds])
    u8 = lambda dd: np.rint(np.clip(x + dd, 0, 1) * 255)  # noqa: E731
    return {"max_abs_delta_over_eps": round(float(np.abs(d).max() / eps), 6),
            "eps_bound_holds": bool(np.abs(d).max() <= eps * (1 + 1e-6)),
            "max_abs_diff_vs_fp32_over_eps": round(float(np.abs(d - d0).max() / eps), 4),
            "mean_abs_diff_vs_fp32_over_eps": round(float(np.abs(d - d0).mean() / eps), 5),
            "uint8_pixels_differing_vs_fp32": round(float((u8(d) != u8(d0)).mean()), 4),
            "uint8_max_level_diff_vs_fp32": int(np.abs(u8(d) - u8(d0)).max())}


def ort_op_profile(path, feeds, runs: int = 4) -> dict:
    """Share of onnxruntime's kernel time per op type (1 thread, graph optimizations on): where the time goes."""
    import collections

    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="mtlguard-prof-") as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "prof")
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            sess.run(None, {"image": feeds[0][0], "labels": feeds[0][1]})
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per_op[e["args"].get("op_name", "?")] += e["dur"]
    total = sum(per_op.values()) or 1
    return {op: round(v / total, 4) for op, v in per_op.most_common(6)}


def native_agreement(inp: Path, out_fp32: Path, out_int8: Path, eps: float) -> dict:
    """The engine's written PNGs with the int8 vs the fp32 generator, against the input pixels (uint8 levels)."""
    from mtlguard.engine.imageio import decode_file
    from mtlguard.unlearnable.quantize import eps_levels

    diff, moved, worst, n = 0, 0, 0, 0
    for f in sorted(inp.iterdir()):
        src = decode_file(f).rgb.astype(np.int16)
        a = decode_file(out_fp32 / (f.stem + ".png")).rgb.astype(np.int16)
        b = decode_file(out_int8 / (f.stem + ".png")).rgb.astype(np.int16)
        diff = max(diff, int(np.abs(a - b).max()))
        moved += int((a != b).sum())
        n += a.size
        worst = max(worst, int(np.abs(b - src).max()))
    return {"images": len(list(inp.iterdir())), "max_abs_change_int8_uint8": worst, "bound_uint8": eps_levels(eps),
            "eps_bound_holds": worst <= eps_levels(eps), "pixels_differing_int8_vs_fp32": round(moved / n, 4),
            "max_level_diff_int8_vs_fp32": diff}


def engine_run(inp: Path, out: Path, model, passthrough: bool = False) -> dict:
    """One engine run (PNG, no PSNR/SSIM, default threads and workers): img/s and CPU ms/img."""
    from mtlguard.engine import protect_directory

    kw = dict(passthrough=True) if passthrough else dict(model=model, dataset="utkface")
    rep, wall, cpu = _timed(lambda: protect_directory(inp, out, progress=False, metrics=False, **kw))
    n = len(list(inp.iterdir()))
    if rep["done"] != n:
        raise RuntimeError(f"engine run incomplete: {rep['failures'][:3]}")
    row = {"img_per_s": round(n / wall, 2), "cpu_ms_per_img": round(1e3 * cpu / n, 3), "loadavg": _load()}
    if not passthrough:
        row["max_abs_delta_written_uint8"] = rep["max_abs_delta_written_uint8"]
    return row


def median(rows: list[dict], key: str = "img_per_s") -> float:
    return round(statistics.median(r[key] for r in rows), 3)


def build_variants(model: Path, int8: Path, dyn: Path, tmp: Path, threads: list[int]) -> dict:
    """name -> backend-like object with ``run(x, y) -> delta``."""
    from mtlguard.engine.backends import TorchBackend
    from mtlguard.export._load import generator_from_onnx

    ckpt = generator_from_onnx(model).save(tmp / "torch_gen.safetensors")
    torch_be = TorchBackend(ckpt, "cpu", None)
    v = {f"torch_eager_t{t}": TorchThreads(torch_be, t) for t in threads}
    v["ort_fp32_default"] = ort_session(model, None)
    v.update({f"ort_fp32_t{t}": ort_session(model, t) for t in threads})
    v["ort_fp32_noopt_default"] = ort_session(model, None, optimize=False)
    v["ort_int8_static_default"] = ort_session(int8, None)
    v["ort_int8_static_t1"] = ort_session(int8, 1)
    v["ort_int8_dynamic_default"] = ort_session(dyn, None)
    return v


def measure(variants: dict, feeds, inp: Path, tmp: Path, model, int8: Path, repeats: int) -> dict:
    """Per repeat: the generator variants interleaved batch by batch (:func:`generator_round`), then the engine
    runs (floor, default, int8) in an order rotated between repeats."""
    engine = {"engine_a_floor": lambda: engine_run(inp, tmp / "a", None, passthrough=True),
              "engine_c_default": lambda: engine_run(inp, tmp / "c", model),
              "engine_c_int8": lambda: engine_run(inp, tmp / "c8", int8)}
    runs = {k: [] for k in [*variants, *engine]}
    for r in range(repeats):
        for name, row in generator_round(variants, feeds).items():
            runs[name].append(row)
        for name in rotated(list(engine), r):
            runs[name].append(engine[name]())
            shutil.rmtree(tmp / {"engine_a_floor": "a", "engine_c_default": "c", "engine_c_int8": "c8"}[name])
        print(f"repeat {r + 1}/{repeats} done, loadavg {_load()}", file=sys.stderr, flush=True)
    return runs


def ratios(med: dict, cpu: dict, threads: list[int]) -> dict:
    """The issue's two ratios (img/s), plus per-thread ones, the int8 / fp32 speed-ups, and the same generator
    ratios by process CPU time per image (less sensitive to other jobs on the machine)."""
    torch_best = max(med[f"torch_eager_t{t}"] for t in threads)
    a, b, c = med["engine_a_floor"], med["ort_fp32_default"], med["engine_c_default"]
    bound = 1.0 / (1.0 / a + 1.0 / b)
    ort_best = max(med[f"ort_fp32_t{t}"] for t in threads)
    out = {"engine_default_over_best_torch_eager": round(b / torch_best, 3),
           "torch_eager_best_img_per_s": torch_best,
           "ort_fp32_best_tuned_threads_over_best_torch_eager": round(max(ort_best, b) / torch_best, 3),
           "shared_core_bound_img_per_s": round(bound, 2),
           "engine_c_over_shared_core_bound": round(c / bound, 3),
           "int8_static_over_fp32_default": round(med["ort_int8_static_default"] / b, 3),
           "int8_static_t1_over_fp32_t1": round(med["ort_int8_static_t1"] / med["ort_fp32_t1"], 3),
           "int8_dynamic_over_fp32_default": round(med["ort_int8_dynamic_default"] / b, 3),
           "graph_optimizations_on_over_off": round(b / med["ort_fp32_noopt_default"], 3),
           "engine_c_int8_over_c_default": round(med["engine_c_int8"] / c, 3)}
    torch_cpu = min(cpu[f"torch_eager_t{t}"] for t in threads)
    fp32, int8 = cpu["ort_fp32_default"], cpu["ort_int8_static_default"]
    out["by_cpu_time"] = {"engine_default_over_best_torch_eager": round(torch_cpu / fp32, 3),
                          "int8_static_over_fp32_default": round(fp32 / int8, 3)}
    for t in threads:
        out[f"ort_fp32_t{t}_over_torch_eager_t{t}"] = round(med[f"ort_fp32_t{t}"] / med[f"torch_eager_t{t}"], 3)
        out["by_cpu_time"][f"ort_fp32_t{t}_over_torch_eager_t{t}"] = round(
            cpu[f"torch_eager_t{t}"] / cpu[f"ort_fp32_t{t}"], 3)
    return out


def default_path_note(r: dict, cpu: dict, threads: list[int], profile: dict) -> str:
    """Why the engine's default path misses 1.5x torch eager: thread count and/or convolution compute (measured)."""
    per = {t: r[f"ort_fp32_t{t}_over_torch_eager_t{t}"] for t in threads}
    tuned = [t for t, v in per.items() if v >= GOAL_DEFAULT_OVER_TORCH]
    conv = round(100 * (profile.get("Conv", 0) + profile.get("ConvTranspose", 0)), 1)
    text = (f"Goal engine default path >= {GOAL_DEFAULT_OVER_TORCH}x torch eager missed with the runtime's default "
            f"intra-op thread count ({r['engine_default_over_best_torch_eager']}x in img/s, "
            f"{r['by_cpu_time']['engine_default_over_best_torch_eager']}x in CPU ms/img: {cpu['ort_fp32_default']} vs "
            f"torch {min(cpu[f'torch_eager_t{t}'] for t in threads)}). At equal threads: "
            + ", ".join(f"{t} thread(s) {v}x" for t, v in per.items()) + ". ")
    if tuned:
        text += (f"With tuned threads (intra-op {tuned[0]}) it is met: on this 2-core machine shared with a training "
                 f"job, more intra-op threads cost CPU (ort fp32 CPU ms/img by threads: "
                 + ", ".join(f"{t}: {cpu[f'ort_fp32_t{t}']}" for t in threads)
                 + f", default: {cpu['ort_fp32_default']}) instead of adding throughput; the engine's --threads "
                 "sets it. ")
    text += (f"The fp32 generator is convolution compute (Conv + ConvTranspose: {conv} % of onnxruntime's kernel time, "
             f"graph optimizations on: x{r['graph_optimizations_on_over_off']} over off); int8 static QDQ is "
             f"x{r['int8_static_over_fp32_default']} over fp32 but is not the default (protection not re-verified). "
             "Tried in development, not in this run: rewriting the stride-1 ConvTranspose nodes as Conv changed "
             "nothing measurable (3.10 vs 3.12 CPU ms/img, 1 thread).")
    return text


def notes(r: dict, cpu: dict, threads: list[int], profile: dict) -> list[str]:
    """Why a goal is missed (from the measured numbers), and the int8 caveat."""
    out = ["Measured side by side in one run: per repeat the generator variants ran interleaved batch by batch "
           "(order rotated per batch), then the engine runs (order rotated per repeat); medians over repeats. The "
           "machine was shared with a long training job (see loadavg): absolute img/s are depressed and noisy, the "
           "ratios and the CPU ms/img are the comparable numbers.",
           "int8 is an export option (mtlguard export --int8 --calibration DIR), never the engine default: the "
           "protection of a quantized generator has not been re-verified by victim training (the deploy protocol), "
           "and it changes the written pixels (see int8_agreement)."]
    if r["engine_default_over_best_torch_eager"] < GOAL_DEFAULT_OVER_TORCH:
        out.append(default_path_note(r, cpu, threads, profile))
    if r["engine_c_over_shared_core_bound"] < GOAL_C_OVER_BOUND:
        out.append(f"Goal engine >= {GOAL_C_OVER_BOUND} x shared-core bound missed "
                   f"({r['engine_c_over_shared_core_bound']}); CPU ms/img: floor {cpu['engine_a_floor']} + generator "
                   f"{cpu['ort_fp32_default']} = {round(cpu['engine_a_floor'] + cpu['ort_fp32_default'], 3)} vs "
                   f"engine {cpu['engine_c_default']} (the engine's own overhead is the difference).")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--utkface", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "utkface"))
    ap.add_argument("--images", type=int, default=192, help="images timed per variant (real UTKFace, 200x200)")
    ap.add_argument("--calibration-images", type=int, default=256, help="int8 calibration images (other files)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", default="1,2", help="thread counts of the torch / onnxruntime thread sweeps")
    ap.add_argument("--out", default="bench/results/generator_cpu.json")
    args = ap.parse_args(argv)

    from mtlguard.engine.pipeline import default_model
    from mtlguard.export import quantize_int8, read_onnx_facts

    threads = [int(t) for t in args.threads.split(",") if t.strip()]
    model = default_model()
    facts = read_onnx_facts(model)
    utk = Path(args.utkface)
    picked, load0, t0 = pick_files(utk, args.images), _load(), time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mtlguard-gencpu-") as tmp:
        tmp = Path(tmp)
        calib = tmp / "calib"
        calib.mkdir()
        for p in pick_files(utk, args.calibration_images, offset=7):  # other files than the timed ones
            shutil.copyfile(p, calib / p.name)
        int8 = quantize_int8(model, tmp / "int8.onnx", calib, images=args.calibration_images)
        dyn = dynamic_int8(model, tmp / "dyn.onnx")
        inp = tmp / "in"
        inp.mkdir()
        for p in picked:
            shutil.copyfile(p, inp / p.name)
        feeds = batches(sorted(inp.iterdir()), tuple(facts.image_size), args.batch_size)
        variants = build_variants(model, int8, dyn, tmp, threads)
        ref = variants["ort_fp32_t1"]
        torch_diff = max_abs_diff(variants[f"torch_eager_t{threads[0]}"], ref, feeds)
        profile = ort_op_profile(model, feeds)
        checks = {k: agreement(variants[k], ref, feeds, facts.eps)
                  for k in ("ort_int8_static_default", "ort_int8_dynamic_default")}
        engine_run(inp, tmp / "warm", model)  # page cache, runtimes (not timed)
        engine_run(inp, tmp / "warm8", int8)
        checks["engine_native_size"] = native_agreement(inp, tmp / "warm", tmp / "warm8", facts.eps)
        runs = measure(variants, feeds, inp, tmp, model, int8, args.repeats)
    med = {k: median(v) for k, v in runs.items()}
    cpu = {k: median(v, "cpu_ms_per_img") for k, v in runs.items()}
    r = ratios(med, cpu, threads)
    report = {
        "command": "python " + " ".join(sys.argv),
        "device": {"kind": "cpu", "cpu": cpu_model(), "logical_cores": __import__("os").cpu_count(),
                   "loadavg_start": load0, "loadavg_end": _load(), "shared_machine": True,
                   "note": "a long training job held the cores during this run (loadavg); ratios measured side by "
                           "side (interleaved, rotated order) in this one run"},
        "versions": _versions(),
        "wall_s": round(time.perf_counter() - t0, 1),
        "data": {"timed": f"{len(picked)} real UTKFace images (200x200 JPEG), labels from file names",
                 "calibration": f"{args.calibration_images} other real UTKFace images (offset 7 in the sorted list)"},
        "generator": {"model": "bundled default (python/mtlguard/assets/default_generator.onnx)",
                      "image_size": list(facts.image_size), "eps": facts.eps,
                      "torch_weights": "rebuilt from the ONNX initializers (generator_from_onnx: encoder BatchNorms "
                                       "folded by the exporter, rebuilt as identity + bias)",
                      "torch_vs_onnx_max_abs_delta_diff": torch_diff},
        "ort_fp32_kernel_time_share_1thread": profile,
        "settings": {"batch_size": args.batch_size, "repeats": args.repeats, "threads_sweep": threads,
                     "default_threads": "onnxruntime's / torch's own default (not set)",
                     "engine": "protect_directory, PNG level 1 RLE, metrics off, default workers/threads"},
        "img_per_s_median": med, "cpu_ms_per_img_median": cpu, "ratios": r,
        "goals": {"engine_default_over_torch_eager_ge_1.5":
                      r["engine_default_over_best_torch_eager"] >= GOAL_DEFAULT_OVER_TORCH,
                  "ort_fp32_tuned_threads_over_torch_eager_ge_1.5":
                      r["ort_fp32_best_tuned_threads_over_best_torch_eager"] >= GOAL_DEFAULT_OVER_TORCH,
                  "engine_c_over_shared_core_bound_ge_0.9": r["engine_c_over_shared_core_bound"] >= GOAL_C_OVER_BOUND},
        "int8_agreement": checks,
        "notes": notes(r, cpu, threads, profile),
        "runs": runs,
    }
    from mtlguard.atomic import atomic_write_text

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(report, indent=1))
    print(json.dumps({k: report[k] for k in ("img_per_s_median", "ratios", "goals")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
