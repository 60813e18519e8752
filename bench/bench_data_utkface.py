"""Time decoding all UTKFace images (cold, no cache) and the cached reload; writes bench/results/data_utkface_decode.json.

Usage: python bench/bench_data_utkface.py [--root ../shared/data/utkface] [--size 64] [--workers N] [--pillow-only]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
import torch

from mtlguard.data import UTKFace


def main() -> int:
    repo = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser()
    p.add_argument("--root", default=str(repo.parent / "shared" / "data" / "utkface"))
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--pillow-only", action="store_true", help="disable the simplejpeg fast path")
    p.add_argument("--out", default=None, help="default: bench/results/data_utkface_decode[_pillow].json")
    a = p.parse_args()
    import mtlguard.data.imageio as imageio

    decoder = "pillow (draft mode)"
    if a.pillow_only:
        imageio._simplejpeg = None
    elif imageio._simplejpeg is not None:
        decoder = f"simplejpeg {imageio._simplejpeg.__version__} (DCT scaling) + pillow resize"
    out = a.out or str(repo / "bench" / "results" / f"data_utkface_decode{'_pillow' if a.pillow_only else ''}.json")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        ds = UTKFace(a.root, split="all", image_size=a.size, cache_dir=cache, num_workers=a.workers)
        cold = time.perf_counter() - t0
        assert ds.cache_hit is False
        t0 = time.perf_counter()
        ds2 = UTKFace(a.root, split="all", image_size=a.size, cache_dir=cache, num_workers=a.workers)
        arr = np.asarray(ds2.images_uint8())
        warm = time.perf_counter() - t0
        assert ds2.cache_hit is True and np.array_equal(arr, ds.images_uint8())
    res = {
        "command": "python " + " ".join([os.path.relpath(__file__, repo)] + sys.argv[1:]),
        "num_images": len(ds), "image_size": [a.size, a.size],
        "workers": a.workers or min(8, os.cpu_count() or 1),
        "cold_decode_s": round(cold, 2), "images_per_s": round(len(ds) / cold, 1),
        "cached_reload_s": round(warm, 3),
        "decoder": decoder,
        "load_avg_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "note": "2-core machine shared with other jobs; cached reload = scan + mmap load + full comparison",
        "device": f"cpu ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "versions": {"python": platform.python_version(), "pillow": PIL.__version__, "numpy": np.__version__,
                     "torch": torch.__version__},
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
