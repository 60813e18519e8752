"""Benchmark mtlguard's fused ops against the eager PyTorch compositions they replace (the reference ops).

Both run in the same process on the same inputs: warm-up, then the median of ``--repeats`` timed calls
(CUDA: CUDA events; CPU: perf_counter).  On CUDA the device's copy bandwidth is measured first (clone of a
1 GiB tensor) and every op's achieved bandwidth (bytes it must read + write / time) is reported as a fraction
of it.  Writes JSON to bench/results/ops_<device>.json (atomically).

    python bench/ops.py                    # CPU, default sizes (a few minutes on 2 cores)
    python bench/ops.py --device cuda      # on a GPU machine
    python bench/ops.py --quick            # tiny smoke run

Goals (issue 2): CPU fused/eager speed-up >= 2x for balanced_sign and pgd_step; on an H100 >= 70% of the
measured copy bandwidth.

``apply_delta_u8`` (issue 15): on the CPU its "eager" column is the engine's previous numpy path (numpy gathers
with Pillow's bilinear taps, clip, add, rint, clip, astype; perturb.apply_delta_batch_numpy without the max-diff),
on CUDA the pure-PyTorch reference on the GPU.  ``nan_fix`` (CPU): pgd_step / pgd_step_ with the NaN-propagating
clamps against the previous std::max/std::min form (mtlguard._C._bench_legacy_clamp), interleaved in this run.
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
from typing import Callable

import torch

from _machine import cpu_model, git_commit  # noqa: E402  (bench/_machine.py)

import mtlguard
from mtlguard import ops
from mtlguard.ops import reference as R

ROOT = Path(__file__).resolve().parents[1]


def _time_ms(fn: Callable[[], object], device: str, warmup: int, repeats: int, stat=statistics.median) -> float:
    for _ in range(warmup):
        fn()
    times = []
    if device == "cuda":
        torch.cuda.synchronize()
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        _time_ms.last_min = min(times)
        return stat(times)
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    _time_ms.last_min = min(times)
    return stat(times)


def _copy_bandwidth_gbs(device: str, warmup: int, repeats: int) -> float:
    x = torch.empty(256 * 1024 * 1024, dtype=torch.float32, device=device)  # 1 GiB
    x.fill_(1.0)
    ms = _time_ms(lambda: x.clone(), device, warmup, repeats)
    return 2 * x.numel() * 4 / (ms * 1e-3) / 1e9


def _cases(quick: bool, device: str):
    """(op, label, sizes dict, fused fn, eager fn, bytes moved by an ideal single pass)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    images = [(64, 3, 64, 64), (256, 3, 64, 64), (64, 3, 288, 384)]
    tasks = [(3, (64, 3, 64, 64)), (10, (64, 3, 64, 64)), (40, (64, 3, 64, 64)), (3, (64, 3, 288, 384)),
             (10, (64, 3, 128, 128))]
    if device == "cuda":
        images += [(512, 3, 288, 384)]
        tasks += [(40, (128, 3, 128, 128)), (10, (256, 3, 288, 384))]
    if quick:
        images, tasks = [(8, 3, 32, 32)], [(3, (8, 3, 32, 32))]

    def rand(*shape, dtype=torch.float32):
        return torch.rand(*shape, generator=g).to(device=device, dtype=dtype)

    for shape in images:
        b = shape[0]
        x = rand(*shape)
        delta = (rand(*shape) - 0.5) * 0.1
        direction = torch.sign(rand(*shape) - 0.5).to(torch.int8)
        x_adv = (x + delta).clamp(0, 1)
        n = x.numel()
        eps_b = rand(b) * 0.05
        sizes = {"shape": list(shape), "dtype": "float32"}
        yield ("project_linf", "eps=float", sizes, lambda: ops.project_linf(x, delta, 8 / 255),
               lambda: R.project_linf(x, delta, 8 / 255), 4 * n * 4)
        yield ("project_linf", "eps=[B]", sizes, lambda: ops.project_linf(x, delta, eps_b),
               lambda: R.project_linf(x, delta, eps_b), 4 * n * 4)
        yield ("pgd_step", "int8 direction", sizes, lambda: ops.pgd_step(x_adv, x, direction, 2 / 255, 8 / 255),
               lambda: R.pgd_step(x_adv, x, direction, 2 / 255, 8 / 255), n * (4 + 4 + 1 + 4))
        buf = x_adv.clone()
        yield ("pgd_step_", "in place, int8 direction", sizes,
               lambda: ops.pgd_step_(buf, x, direction, 2 / 255, 8 / 255),
               lambda: buf.copy_(R.pgd_step(buf, x, direction, 2 / 255, 8 / 255)), n * (4 + 4 + 1 + 4))
        del x, delta, direction, x_adv, buf
    for t, shape in tasks:
        grads = [rand(*shape) - 0.5 for _ in range(t)]
        losses = rand(t, shape[0]) + 0.1
        n = grads[0].numel()
        sizes = {"T": t, "shape": list(shape), "dtype": "float32"}
        for mode in ("gbmta", "signtotal"):
            yield ("balanced_sign", f"mode={mode}, list of T", sizes,
                   lambda mode=mode: ops.balanced_sign(grads, losses, mode),
                   lambda mode=mode: R.balanced_sign(grads, losses, mode), n * (4 * t + 1))
        del grads
    # the engine's native-resolution step: UTKFace-size groups, a 12 MP photo, a luma delta
    from mtlguard.engine import perturb

    applies = [(32, 200, 200, 3, 32), (8, 200, 200, 3, 64), (1, 3000, 4000, 3, 32), (16, 200, 200, 1, 32)]
    if device == "cuda":
        applies += [(256, 200, 200, 3, 32), (8, 3000, 4000, 3, 64)]
    if quick:
        applies = [(4, 40, 30, 3, 16)]
    for n, hh, ww, c, h in applies:
        cd = 1 if c == 1 else 3
        img = torch.randint(0, 256, (n, hh, ww, 3), generator=g, dtype=torch.uint8).to(device)
        dl = ((torch.rand(n, cd, h, h, generator=g) - 0.5) * 0.1).to(device)
        sizes = {"image": [n, hh, ww, 3], "delta": [n, cd, h, h], "dtype": "uint8/float32"}
        nbytes = 2 * img.numel() + dl.numel() * 4
        if device == "cpu":
            img_np, dl_np = img.numpy(), dl.numpy()
            eager = (lambda img_np=img_np, dl_np=dl_np: _numpy_apply(perturb, img_np, dl_np, 8 / 255))
            label = "vs numpy gathers (engine before)"
        else:
            eager = (lambda img=img, dl=dl: R.apply_delta_u8(img, dl, 8 / 255))
            label = "vs torch reference"
        yield ("apply_delta_u8", label + (", luma delta" if cd == 1 and c == 1 else ""), sizes,
               lambda img=img, dl=dl: ops.apply_delta_u8(img, dl, 8 / 255), eager, nbytes)
    # MTL-UE generator input at UTKFace scale: z [B, 64, 16, 16], 3 tasks (9/2/5 classes), E = 16
    for b in ([512, 64] if not quick else [8]):
        cz, e, h, w, classes = 64, 16, 16, 16, (9, 2, 5)
        z = rand(b, cz, h, w)
        offsets = torch.tensor([0, 9, 11, 16], device=device)
        table = rand(16, e * h * w)
        labels = torch.stack([torch.randint(-1, c, (b,), generator=g) for c in classes], 1).to(device)
        out_numel = b * (cz + 3 * e) * h * w
        sizes = {"B": b, "z": [cz, h, w], "E": e, "classes": list(classes), "dtype": "float32"}
        yield ("embed_concat", "forward", sizes, lambda: ops.embed_concat(z, table, labels, offsets, (e, h, w)),
               lambda: R.embed_concat(z, table, labels, offsets, (e, h, w)), 2 * out_numel * 4)
        zz, tt = z.clone().requires_grad_(), table.clone().requires_grad_()
        grad = rand(b, cz + 3 * e, h, w)

        def fused_bw():
            with torch.enable_grad():
                torch.autograd.grad(ops.embed_concat(zz, tt, labels, offsets, (e, h, w)), (zz, tt), grad)

        def eager_bw():
            with torch.enable_grad():
                torch.autograd.grad(R.embed_concat(zz, tt, labels, offsets, (e, h, w)), (zz, tt), grad)

        yield ("embed_concat", "forward+backward", sizes, fused_bw, eager_bw, 4 * out_numel * 4)


def _numpy_apply(perturb, rgb, delta, eps):
    """The engine's numpy path without its max-diff step (what apply_delta_u8 replaces)."""
    import numpy as np

    n, h, w, c = rgb.shape
    e = np.float32(eps * 255.0)
    up = perturb.upsample_delta(delta, h, w, scale=255.0)
    np.clip(up, -e, e, out=up)
    if up.shape[3] != c:
        up = np.repeat(up, c, axis=3)
    up += rgb
    np.rint(up, out=up)
    np.clip(up, 0.0, 255.0, out=up)
    return up.astype(np.uint8)


def _nan_fix_timings(quick: bool, warmup: int, repeats: int) -> list[dict]:
    """pgd_step / pgd_step_ (CPU) with the NaN-propagating clamps (after) and the previous form (before),
    interleaved in this process (mtlguard._C._bench_legacy_clamp switches the kernel's clamp form)."""
    try:
        from mtlguard import _C
        switch = _C._bench_legacy_clamp
    except (ImportError, AttributeError):
        return []
    g = torch.Generator().manual_seed(1)
    rows = []
    for shape in ([(8, 3, 32, 32)] if quick else [(64, 3, 64, 64), (256, 3, 64, 64), (64, 3, 288, 384)]):
        x = torch.rand(*shape, generator=g)
        xa = (x + (torch.rand(*shape, generator=g) - 0.5) * 0.05).clamp(0, 1)
        d = torch.sign(torch.rand(*shape, generator=g) - 0.5).to(torch.int8)
        buf = xa.clone()
        for op, fn in (("pgd_step", lambda: ops.pgd_step(xa, x, d, 2 / 255, 8 / 255)),
                       ("pgd_step_", lambda: ops.pgd_step_(buf, x, d, 2 / 255, 8 / 255))):
            before, after = [], []
            for _ in range(3):  # interleave: a drifting load hits both forms alike
                prev = switch(True)
                try:
                    before.append(_time_ms(fn, "cpu", warmup, repeats))
                finally:
                    switch(prev)
                after.append(_time_ms(fn, "cpu", warmup, repeats))
            b, a = statistics.median(before), statistics.median(after)
            rows.append({"op": op, "shape": list(shape), "ms_before_std_minmax": round(b, 4),
                         "ms_after_nan_propagating": round(a, 4), "after_over_before": round(a / b, 3)})
            print(f"nan fix {op:10s} {str(shape):20s} before {b:8.3f} ms  after {a:8.3f} ms  x{a / b:5.2f}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (median)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default bench/results/ops_<device>.json)")
    args = p.parse_args(argv)
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    if device == "cuda" and not torch.cuda.is_available():
        print("bench/ops.py: --device cuda requested but no CUDA GPU is available", file=sys.stderr)
        return 2
    repeats = args.repeats or (20 if device == "cuda" else 5)
    info = ops.backend_info()
    if info["backend"] != "extension":
        print(f"bench/ops.py: WARNING: fused kernels not in use ({info['error']}); 'fused' == reference", file=sys.stderr)
    bandwidth = _copy_bandwidth_gbs(device, args.warmup, repeats) if device == "cuda" else None
    results = []
    with torch.no_grad():
        for op, variant, sizes, fused, eager, nbytes in _cases(args.quick, device):
            ms_f = _time_ms(fused, device, args.warmup, repeats)
            min_f = _time_ms.last_min
            ms_e = _time_ms(eager, device, args.warmup, repeats)
            min_e = _time_ms.last_min
            row = {"op": op, "variant": variant, "sizes": sizes, "ms_fused": round(ms_f, 4), "ms_eager": round(ms_e, 4),
                   "ms_fused_min": round(min_f, 4), "ms_eager_min": round(min_e, 4),
                   "speedup_of_min": round(min_e / min_f, 3),
                   "speedup": round(ms_e / ms_f, 3), "bytes_ideal": nbytes,
                   "gbs_fused": round(nbytes / (ms_f * 1e-3) / 1e9, 2)}
            if bandwidth:
                row["fraction_of_copy_bandwidth"] = round(row["gbs_fused"] / bandwidth, 3)
            results.append(row)
            print(f"{op:14s} {variant:26s} {json.dumps(sizes):70s} fused {ms_f:9.3f} ms  eager {ms_e:9.3f} ms  "
                  f"x{ms_e / ms_f:5.2f}" + (f"  {row['fraction_of_copy_bandwidth']:.0%} of copy BW" if bandwidth else ""),
                  flush=True)
    speedups = {}
    for op in ("balanced_sign", "pgd_step", "pgd_step_", "project_linf", "embed_concat", "apply_delta_u8"):
        vals = [r["speedup"] for r in results if r["op"] == op]
        if vals:
            speedups[op] = {"min": min(vals), "median": statistics.median(vals), "max": max(vals)}
    nan_fix = _nan_fix_timings(args.quick, args.warmup, repeats) if device == "cpu" else []
    import numpy

    report = {
        "command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + (argv if argv is not None else sys.argv[1:])),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "cpu_model": cpu_model(),
        "threads": torch.get_num_threads(),
        "machine_shared": ("yes: other jobs (model training) ran on the same cores; read noisy rows with loadavg"
                           if device == "cpu" else None),
        "loadavg_at_start": _LOAD0,
        "loadavg_at_end": [round(v, 2) for v in os.getloadavg()],  # other jobs share the CPU: read noisy rows with it
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "mtlguard": mtlguard.__version__,
        "git_commit": git_commit(),
        "backend": info,
        "warmup": args.warmup,
        "repeats": repeats,
        "statistic": "median (speedup); min also given (speedup_of_min): less sensitive to other jobs on the CPU",
        "copy_bandwidth_gbs": round(bandwidth, 2) if bandwidth else None,
        "speedup_summary": speedups,
        "goals": {"cpu_speedup_balanced_sign_and_pgd_step": 2.0, "cuda_fraction_of_copy_bandwidth": 0.7},
        "results": results,
        "nan_fix": nan_fix,
    }
    suffix = ("_quick" if args.quick else "") + (f"_{args.threads}thread" if args.threads else "")
    out = args.out or ROOT / "bench" / "results" / f"ops_{device}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"wrote {out}")
    return 0


_LOAD0 = [round(v, 2) for v in os.getloadavg()]

if __name__ == "__main__":
    raise SystemExit(main())
