"""The bundled sample directory (``mtlguard/assets/samples``): images we may redistribute.

* ``grace_hopper.jpg`` -- matplotlib's bundled sample photo (``matplotlib.cbook.get_sample_data``),
  an official U.S. Navy photograph of Rear Admiral Grace M. Hopper (public domain).
* ``rendered/*.png`` -- images rendered by :func:`render_scene` (this code; no third-party content).
* ``labels.csv`` -- UTKFace-style task labels for them (age bin, gender, race; the rendered images
  carry illustrative labels only).

UTKFace images are NOT bundled: its NOTICE forbids redistribution.
Rebuild with ``python -m mtlguard.engine.samples <dest>``.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

#: The bundled sample directory installed with the package (``mtlguard-engine protect --sample``).
SAMPLES_DIR = Path(str(__import__("importlib.resources").resources.files("mtlguard") / "assets" / "samples"))

SCENES = {  # name -> (seed, labels: age bin, gender, race)
    "rendered/sunset.png": (1, "4,1,2"),
    "rendered/shapes.png": (2, "2,0,3"),
    "rendered/nested/stripes.png": (3, "6,0,1"),
}


def render_scene(seed: int, size: tuple[int, int] = (160, 200)) -> Image.Image:
    """A deterministic synthetic scene: a colour gradient, circles, boxes and a few lines."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = ((xx / w + yy / h) / 2)[..., None]
    img = Image.fromarray((c0 * (1 - t) + c1 * t).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        r = int(rng.integers(8, 40))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x0 + r, y0 + r], fill=fill)
        else:
            draw.rectangle([x0, y0, x0 + r, y0 + r // 2 + 4], fill=fill)
    for _ in range(4):
        pts = [tuple(int(v) for v in rng.integers(0, [w, h])) for _ in range(2)]
        draw.line(pts, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=3)
    return img


def build_samples(dest) -> Path:
    """Write the sample directory to ``dest`` (images + labels.csv)."""
    import matplotlib.cbook as cbook

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False), dest / "grace_hopper.jpg")
    rows = ["path,age,gender,race", "grace_hopper.jpg,8,1,0"]  # 70+, female, White (photo from 1984)
    for rel, (seed, labels) in SCENES.items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        render_scene(seed).save(dest / rel, optimize=True)
        rows.append(f"{rel},{labels}")
    (dest / "labels.csv").write_text("\n".join(rows) + "\n")
    return dest


if __name__ == "__main__":  # pragma: no cover
    build_samples(sys.argv[1] if len(sys.argv) > 1 else "samples")
