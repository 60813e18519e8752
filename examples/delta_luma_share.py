"""How much of an exported generator's perturbation survives a grayscale conversion.

A victim that trains on grayscale images sees only the luma part of the perturbation, Y(delta) = 0.299 dR +
0.587 dG + 0.114 dB (ITU-R BT.601, what torchvision's ``Grayscale`` computes); the chroma part, delta - Y(delta),
is removed.  This prints, per generator, the mean |delta| and the RMS of its luma and chroma parts (in 1/255
units) and the luma share of the perturbation's energy, 3 * sum Y^2 / sum delta^2 (1 = a luma delta, which
grayscale keeps whole).  The generators run in onnxruntime on the first ``--images`` faces of a seeded UTKFace
train subset, as the fit saw them.

Usage (the numbers in reports/protection_deploy_defenses.md's session-24 notes):
    python examples/delta_luma_share.py --root ../shared/data/utkface --cache-dir runs/cache \\
        runs/gens/tap32_sur20.onnx runs/gens/tap32_sur20_graymb3.onnx
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import onnxruntime as ort
import torch

from mtlguard.data import build_dataset
from mtlguard.unlearnable.eot import LUMA

BT601 = np.array(LUMA, np.float32)[None, :, None, None]  # the weights the fit's grayscale view uses


def luma_share(delta: np.ndarray) -> dict:
    """Luma / chroma statistics of a batch of RGB perturbations ``(N, 3, H, W)`` in [0, 1] units."""
    luma = (delta * BT601).sum(1, keepdims=True)
    chroma = delta - luma
    return {"mean_abs_delta_255": float(np.abs(delta).mean() * 255),
            "rms_luma_255": float(np.sqrt((luma ** 2).mean()) * 255),
            "rms_chroma_255": float(np.sqrt((chroma ** 2).mean()) * 255),
            "luma_energy_share": float(3 * (luma ** 2).sum() / max((delta ** 2).sum(), 1e-30))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("generators", nargs="+", help="exported ONNX generators (inputs image, labels; output delta)")
    p.add_argument("--root", default="../shared/data/utkface")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    sessions = {}
    for path in a.generators:
        try:
            sessions[path] = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        except Exception as e:  # a missing or corrupt file: one line naming it
            print(f"delta_luma_share: {path}: cannot load ({type(e).__name__})", file=sys.stderr)
            return 2
    size = sessions[a.generators[0]].get_inputs()[0].shape[-1]
    ds = build_dataset("utkface", root=a.root, split="train", image_size=int(size), subset=2000, seed=a.seed,
                       cache_dir=a.cache_dir, progress=False)
    items = [ds[i] for i in range(min(a.images, len(ds)))]
    x = torch.stack([im for im, _ in items]).numpy().astype(np.float32)
    labels = np.array([[int(y[t.name]) for t in ds.tasks] for _, y in items], np.int64)
    for path, sess in sessions.items():
        delta = sess.run(["delta"], {"image": x, "labels": labels})[0]
        print(json.dumps({"generator": path, "images": len(items), **luma_share(delta)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
