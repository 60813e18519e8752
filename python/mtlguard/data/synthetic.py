"""SyntheticScenes: procedural 3D rooms ray cast in numpy, with exact segmentation, depth and normals.

No real dense multi-task data (NYUv2) can be had on the CPU machines, so dense code paths
(segmentation / depth / normal heads, losses, metrics, the MTL-UE dense embedders of Sec. 4.4)
are exercised on these scenes, which have real geometric structure.

Scene model (world frame: ``y`` up, floor ``y = 0``)
--------------------------------------------------
* an open-top room: floor, a back wall, two side walls (and a front wall behind the camera);
  rays leaving through the top (no ceiling) hit **nothing**;
* 1-3 oriented boxes resting on the floor (random size, yaw, colour) and 1-3 spheres (on the floor or
  floating);
* a pinhole camera inside the room (random position, height, yaw, downward pitch, field of view);
* a directional light with hard shadows cast by the objects, Lambert shading
  ``albedo * (0.35 + 0.65 * max(0, n.l) * lit)``, a checker texture on the floor, smooth
  stripes on the walls and a little per-pixel noise.

Targets (exact, one ray per pixel centre, no antialiasing)
----------------------------------------------------------
* ``segmentation``: int64 ``[H, W]`` in ``{0 wall, 1 floor, 2 box, 3 sphere}``, ``-1`` (ignore) = nothing;
* ``depth``: float32 ``[1, H, W]``, the metric **z-depth** of the hit point in the camera frame
  (the coordinate along the optical axis, as NYUv2/Kinect depth), ``> 0``; ``0`` = nothing (invalid);
* ``normal``: float32 ``[3, H, W]``, the unit surface normal in the **camera frame**
  (OpenCV convention: x right, y down, z forward), facing the camera; ``0`` = nothing.

Pixel ``(u, v)`` (column, row) has the ray ``d = K^-1 [u + 0.5, v + 0.5, 1]^T`` whose z is 1, so the
hit point is ``p = depth * d``; :meth:`SyntheticScenes.scene_info` returns ``K``, the floor plane
``n . p + d0 = 0`` and the spheres in the camera frame for checking this geometry.

Every scene is a pure function of ``(seed, split, index)`` (``numpy.random.default_rng``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .base import MultiTaskDataset
from .imageio import _as_size
from .tasks import TaskSpec

SCENE_CLASSES = ("wall", "floor", "box", "sphere")
WALL, FLOOR, BOX, SPHERE = range(4)
IGNORE = -1
SPLIT_IDS = {"train": 0, "test": 1, "val": 2}

SCENE_TASKS = (
    TaskSpec("segmentation", "segmentation", len(SCENE_CLASSES), SCENE_CLASSES, ignore_index=IGNORE),
    TaskSpec("depth", "depth"),
    TaskSpec("normal", "normal"),
)

_EPS = 1e-6


@dataclass
class SceneParams:
    """The random parameters of one scene (world frame, y up)."""

    half_width: float
    back_z: float
    front_z: float
    height: float
    cam_pos: np.ndarray
    R_cw: np.ndarray  # rows: camera x (right), y (down), z (forward) in world coordinates
    fx: float
    fy: float
    cx: float
    cy: float
    light: np.ndarray  # unit vector towards the light
    wall_color: np.ndarray
    floor_colors: tuple[np.ndarray, np.ndarray]
    tile: float
    sky: tuple[np.ndarray, np.ndarray]
    boxes: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    spheres: list[tuple[np.ndarray, float, np.ndarray]] = field(default_factory=list)

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], dtype=np.float64)


def _rot_y(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def sample_scene(rng: np.random.Generator, image_size: tuple[int, int]) -> SceneParams:
    """Draw the parameters of one scene."""
    h_img, w_img = image_size
    a = rng.uniform(2.0, 3.5)
    back = rng.uniform(5.0, 8.0)
    height = rng.uniform(2.2, 3.2)
    cam = np.array([rng.uniform(-0.6, 0.6), rng.uniform(1.0, 1.7), 0.0])
    yaw = rng.uniform(-0.25, 0.25)
    pitch = rng.uniform(0.15, 0.45)  # looking down
    fwd = np.array([math.sin(yaw) * math.cos(pitch), -math.sin(pitch), math.cos(yaw) * math.cos(pitch)])
    right = np.cross(fwd, [0.0, 1.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    R_cw = np.stack([right, down, fwd])
    hfov = rng.uniform(math.radians(55), math.radians(75))
    fx = (w_img / 2) / math.tan(hfov / 2)
    light = np.array([rng.uniform(-0.8, 0.8), 1.0, rng.uniform(-0.9, 0.3)])
    light /= np.linalg.norm(light)
    wall = rng.uniform(0.55, 0.9, 3)
    f1 = rng.uniform(0.3, 0.8, 3)
    f2 = np.clip(f1 * rng.uniform(0.55, 0.8), 0, 1)
    sky_top, sky_bot = rng.uniform(0.6, 1.0, 3), rng.uniform(0.4, 0.8, 3)
    p = SceneParams(a, back, -1.0, height, cam, R_cw, fx, fx, w_img / 2, h_img / 2, light, wall,
                    (f1, f2), rng.uniform(0.35, 0.7), (sky_top, sky_bot))
    for _ in range(int(rng.integers(1, 4))):
        half = rng.uniform(0.2, 0.6, 3)
        center = np.array([rng.uniform(-a + 0.7, a - 0.7), half[1], rng.uniform(1.8, back - 0.8)])
        p.boxes.append((center, half, _rot_y(rng.uniform(0, math.pi)), rng.uniform(0.1, 0.95, 3)))
    for _ in range(int(rng.integers(1, 4))):
        r = rng.uniform(0.2, 0.55)
        y = r if rng.random() < 0.7 else rng.uniform(r, 1.6)
        center = np.array([rng.uniform(-a + 0.6, a - 0.6), y, rng.uniform(1.8, back - 0.6)])
        p.spheres.append((center, float(r), rng.uniform(0.1, 0.95, 3)))
    return p


MAX_BOXES = 3


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dot product over the last axis (length 3), broadcasting; faster than einsum for tiny axes."""
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]
MAX_SPHERES = 3


def _hit_sphere(o: np.ndarray, d: np.ndarray, c: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Smallest ``t > 1e-4`` with ``|o + t d - c| = r`` per ray, ``inf`` if none.

    o: ``[B, 1 or N, 3]``, d: ``[B, N, 3]``, c: ``[B, 3]``, r: ``[B]`` (``r <= 0``: absent).
    """
    oc = o - c[:, None, :]
    a = _dot(d, d)
    b = _dot(d, oc)
    cc = _dot(oc, oc) - (r * r)[:, None]
    disc = b * b - a * cc
    ok = (disc >= 0) & (r > 0)[:, None]
    sq = np.sqrt(np.where(ok, disc, 0.0))
    t0 = (-b - sq) / a
    t1 = (-b + sq) / a
    return np.where(ok & (t0 > 1e-4), t0, np.where(ok & (t1 > 1e-4), t1, np.inf))


def _hit_box(o, d, center, half, R, want_normal=True):
    """Entry ``t`` [B, N] and world normal [B, N, 3] of oriented boxes (slab method).

    ``R`` [B, 3, 3] has the box axes in its columns; ``half`` [B, 3] (all zero: absent).
    """
    ol = (o - center[:, None, :]) @ R
    dl = d @ R
    tmin = np.full(dl.shape[:2], -np.inf)
    tmax = np.full(dl.shape[:2], np.inf)
    axis = np.zeros(dl.shape[:2], np.int8)
    with np.errstate(divide="ignore", invalid="ignore"):
        for k in range(3):
            dk = dl[..., k]
            hk = half[:, k, None]
            t1 = (-hk - ol[..., k]) / dk
            t2 = (hk - ol[..., k]) / dk
            near = np.fmin(t1, t2)  # fmin/fmax drop the NaNs of rays parallel to a slab face
            far = np.fmax(t1, t2)
            if want_normal:
                axis = np.where(near > tmin, np.int8(k), axis)
            tmin = np.fmax(tmin, near)
            tmax = np.fmin(tmax, far)
    hit = (tmax >= tmin) & (tmin > 1e-4) & (half[:, 0] > 0)[:, None]
    t = np.where(hit, tmin, np.inf)
    if not want_normal:
        return t, None
    sel = axis[..., None] == np.arange(3)
    nl = np.where(sel, -np.sign(dl), 0.0)
    return t, nl @ R.transpose(0, 2, 1)


def _stack_objects(params: list[SceneParams]):
    b = len(params)
    box_c = np.zeros((MAX_BOXES, b, 3)); box_h = np.zeros((MAX_BOXES, b, 3))
    box_R = np.tile(np.eye(3), (MAX_BOXES, b, 1, 1)); box_col = np.zeros((MAX_BOXES, b, 3))
    sph_c = np.zeros((MAX_SPHERES, b, 3)); sph_r = np.zeros((MAX_SPHERES, b)); sph_col = np.zeros((MAX_SPHERES, b, 3))
    for i, p in enumerate(params):
        for k, (c, h, R, col) in enumerate(p.boxes):
            box_c[k, i], box_h[k, i], box_R[k, i], box_col[k, i] = c, h, R, col
        for k, (c, r, col) in enumerate(p.spheres):
            sph_c[k, i], sph_r[k, i], sph_col[k, i] = c, r, col
    return (box_c, box_h, box_R, box_col), (sph_c, sph_r, sph_col)


def render_scenes(params: list[SceneParams], image_size: tuple[int, int], rngs: list[np.random.Generator]):
    """Ray cast a batch of scenes (all at ``image_size``).

    Returns ``image uint8 [B,H,W,3]``, ``seg int16 [B,H,W]``, ``depth float32 [B,H,W]``,
    ``normal float32 [B,H,W,3]`` (camera frame).
    """
    h, w = image_size
    bsz = len(params)
    n = h * w
    v, u = np.mgrid[0:h, 0:w]
    u = (u.reshape(-1) + 0.5)[None]
    v = (v.reshape(-1) + 0.5)[None]
    fx = np.array([p.fx for p in params])[:, None]
    fy = np.array([p.fy for p in params])[:, None]
    cx = np.array([p.cx for p in params])[:, None]
    cy = np.array([p.cy for p in params])[:, None]
    d_cam = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones((bsz, n))], -1)
    R_cw = np.stack([p.R_cw for p in params])
    d = d_cam @ R_cw  # world directions; z_cam = 1 so t is the z-depth
    o = np.stack([p.cam_pos for p in params])[:, None, :]
    # --- room (seen from inside): nearest exit plane ---
    hw = np.array([p.half_width for p in params])
    planes = [  # (axis, value [B], class, inward normal)
        (1, np.zeros(bsz), FLOOR, (0, 1, 0)),
        (1, np.array([p.height for p in params]), IGNORE, (0, -1, 0)),
        (0, -hw, WALL, (1, 0, 0)),
        (0, hw, WALL, (-1, 0, 0)),
        (2, np.array([p.back_z for p in params]), WALL, (0, 0, -1)),
        (2, np.array([p.front_z for p in params]), WALL, (0, 0, 1)),
    ]
    best_t = np.full((bsz, n), np.inf)
    cls = np.full((bsz, n), IGNORE, np.int16)
    nrm = np.zeros((bsz, n, 3))
    with np.errstate(divide="ignore", invalid="ignore"):
        for axis, value, c, normal in planes:
            t = (value[:, None] - o[:, :, axis]) / d[:, :, axis]
            t = np.where(np.isfinite(t) & (t > 1e-4), t, np.inf)
            m = t < best_t
            best_t = np.where(m, t, best_t)
            cls = np.where(m, np.int16(c), cls)
            nrm = np.where(m[..., None], np.asarray(normal, np.float64), nrm)
    (box_c, box_h, box_R, box_col), (sph_c, sph_r, sph_col) = _stack_objects(params)
    obj_color = np.zeros((bsz, n, 3))
    for k in range(MAX_BOXES):
        t, nw = _hit_box(o, d, box_c[k], box_h[k], box_R[k])
        m = t < best_t
        best_t = np.where(m, t, best_t)
        cls = np.where(m, np.int16(BOX), cls)
        nrm = np.where(m[..., None], nw, nrm)
        obj_color = np.where(m[..., None], box_col[k][:, None, :], obj_color)
    for k in range(MAX_SPHERES):
        t = _hit_sphere(o, d, sph_c[k], sph_r[k])
        m = t < best_t
        best_t = np.where(m, t, best_t)
        cls = np.where(m, np.int16(SPHERE), cls)
        obj_color = np.where(m[..., None], sph_col[k][:, None, :], obj_color)
        safe_r = np.where(sph_r[k] > 0, sph_r[k], 1.0)[:, None, None]
        sn = (o + np.where(m, t, 0.0)[..., None] * d - sph_c[k][:, None, :]) / safe_r
        nrm = np.where(m[..., None], sn, nrm)
    valid = cls != IGNORE
    pts = o + np.where(valid, best_t, 0.0)[..., None] * d
    # --- shading: albedo * (ambient + diffuse * lit), hard shadows from the objects ---
    albedo = np.broadcast_to(np.stack([p.wall_color for p in params])[:, None, :], (bsz, n, 3)).copy()
    albedo *= (0.92 + 0.08 * np.sin(pts[..., 1] * 6.0 + pts[..., 0] * 1.5 + pts[..., 2] * 1.5))[..., None]
    tile = np.array([p.tile for p in params])[:, None]
    checker = ((np.floor(pts[..., 0] / tile) + np.floor(pts[..., 2] / tile)) % 2 == 0)[..., None]
    f1 = np.stack([p.floor_colors[0] for p in params])[:, None, :]
    f2 = np.stack([p.floor_colors[1] for p in params])[:, None, :]
    fl = cls == FLOOR
    albedo[fl] = np.where(checker, f1, f2)[fl]
    ob = (cls == BOX) | (cls == SPHERE)
    albedo[ob] = obj_color[ob]
    light = np.stack([p.light for p in params])
    so = pts + 1e-3 * nrm
    sd = np.broadcast_to(light[:, None, :], (bsz, n, 3))
    lit = valid.copy()
    for k in range(MAX_BOXES):
        lit &= ~np.isfinite(_hit_box(so, sd, box_c[k], box_h[k], box_R[k], want_normal=False)[0])
    for k in range(MAX_SPHERES):
        lit &= ~np.isfinite(_hit_sphere(so, sd, sph_c[k], sph_r[k]))
    diffuse = np.clip(_dot(nrm, light[:, None, :]), 0, None) * lit
    color = albedo * (0.35 + 0.65 * diffuse)[..., None]
    vv = (v / h)[..., None]
    sky = np.stack([p.sky[0] for p in params])[:, None, :] * (1 - vv) + np.stack([p.sky[1] for p in params])[:, None, :] * vv
    color = np.where(valid[..., None], color, sky)
    color += np.stack([r.normal(0.0, 0.015, (n, 3)) for r in rngs])
    image = np.clip(np.rint(color * 255), 0, 255).astype(np.uint8).reshape(bsz, h, w, 3)
    depth = np.where(valid, best_t, 0.0).astype(np.float32).reshape(bsz, h, w)
    normal_cam = (nrm @ R_cw.transpose(0, 2, 1)).astype(np.float32)
    normal_cam[~valid] = 0
    return image, cls.reshape(bsz, h, w), depth, normal_cam.reshape(bsz, h, w, 3)


def render_scene(p: SceneParams, image_size: tuple[int, int], rng: np.random.Generator):
    """Ray cast one scene (see :func:`render_scenes`); arrays without the batch dimension."""
    return tuple(a[0] for a in render_scenes([p], image_size, [rng]))


class SyntheticScenes(MultiTaskDataset):
    """``n`` procedural indoor scenes with tasks ``segmentation`` (4 classes), ``depth``, ``normal``.

    Args:
        n: number of scenes.
        image_size: int or ``(H, W)``.
        seed: base seed; scene ``i`` of ``split`` is drawn from ``default_rng([seed, split_id, i])``.
        split: ``"train"``, ``"test"`` or ``"val"`` (different scenes for the same seed).
        progress: show a progress bar while rendering (``None``: only for more than 2000 scenes).

    All scenes are rendered at construction, batched (500 scenes at 64x64: about 4 s of CPU time).
    """

    def __init__(self, n: int, image_size=(64, 64), seed: int = 0, split: str = "train",
                 progress: bool | None = None) -> None:
        if split not in SPLIT_IDS:
            raise ValueError(f"SyntheticScenes split must be one of {list(SPLIT_IDS)}, got {split!r}")
        if int(n) < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        from tqdm.auto import tqdm

        self.n = int(n)
        self.image_size = _as_size(image_size)
        self.seed = int(seed)
        self.split = split
        self.tasks = SCENE_TASKS
        self.num_channels = 3
        self.label_arrays = {}
        h, w = self.image_size
        self._images = np.empty((self.n, h, w, 3), np.uint8)
        self._seg = np.empty((self.n, h, w), np.int16)
        self._depth = np.empty((self.n, h, w), np.float32)
        self._normal = np.empty((self.n, h, w, 3), np.float32)
        self._params: list[SceneParams] = []
        show = self.n > 2000 if progress is None else progress
        chunk = max(1, (1 << 18) // (h * w))
        for s in tqdm(range(0, self.n, chunk), desc="rendering scenes", disable=not show):
            idx = range(s, min(self.n, s + chunk))
            rngs = [np.random.default_rng([self.seed, SPLIT_IDS[split], i]) for i in idx]
            params = [sample_scene(r, self.image_size) for r in rngs]
            self._params.extend(params)
            out = render_scenes(params, self.image_size, rngs)
            self._images[s:s + len(idx)], self._seg[s:s + len(idx)], self._depth[s:s + len(idx)], \
                self._normal[s:s + len(idx)] = out

    def __len__(self) -> int:
        return self.n

    def load_uint8(self, i: int) -> np.ndarray:
        return self._images[i]

    def images_uint8(self, progress: bool = True) -> np.ndarray:
        return self._images

    def targets(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "segmentation": torch.from_numpy(self._seg[i].astype(np.int64)),
            "depth": torch.from_numpy(self._depth[i][None].copy()),
            "normal": torch.from_numpy(np.ascontiguousarray(self._normal[i].transpose(2, 0, 1))),
        }

    def dense_targets(self) -> dict[str, torch.Tensor]:
        """All targets stacked: ``segmentation [N,H,W]`` int64, ``depth [N,1,H,W]``, ``normal [N,3,H,W]``."""
        return {
            "segmentation": torch.from_numpy(self._seg.astype(np.int64)),
            "depth": torch.from_numpy(self._depth[:, None].copy()),
            "normal": torch.from_numpy(np.ascontiguousarray(self._normal.transpose(0, 3, 1, 2))),
        }

    def scene_info(self, i: int) -> dict:
        """Camera-frame geometry of scene ``i``: ``K`` [3,3], ``up`` (world up in the camera frame),
        ``floor_plane`` ``(n, d0)`` with ``n . p + d0 = 0``, ``spheres`` [(center, radius)], ``params``."""
        p = self._params[i]
        up = p.R_cw @ np.array([0.0, 1.0, 0.0])
        return {
            "K": p.K,
            "up": up,
            "floor_plane": (up, float(p.cam_pos[1])),
            "spheres": [(p.R_cw @ (c - p.cam_pos), r) for c, r, _ in p.spheres],
            "params": p,
        }


def save_preview(dataset: SyntheticScenes, path, n: int = 8) -> None:
    """Save a grid (rows: image, segmentation, depth, normals) of the first ``n`` scenes (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(dataset))
    fig, axes = plt.subplots(4, n, figsize=(1.6 * n, 6.6), squeeze=False)
    for i in range(n):
        seg = np.ma.masked_equal(dataset._seg[i], IGNORE)
        depth = np.ma.masked_equal(dataset._depth[i], 0)
        nrm = (dataset._normal[i] + 1) / 2 * (dataset._seg[i] != IGNORE)[..., None]
        axes[0, i].imshow(dataset._images[i])
        axes[1, i].imshow(seg, cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
        axes[2, i].imshow(depth, cmap="viridis")
        axes[3, i].imshow(nrm, interpolation="nearest")
        for r in range(4):
            axes[r, i].set_xticks([])
            axes[r, i].set_yticks([])
    for r, name in enumerate(["image", "segmentation\n(" + ", ".join(SCENE_CLASSES) + ")", "depth (z)", "normal"]):
        axes[r, 0].set_ylabel(name, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":  # python -m mtlguard.data.synthetic OUT.png [N] [SIZE] [SEED]
    import sys

    args = sys.argv[1:]
    if not args:
        print("usage: python -m mtlguard.data.synthetic OUT.png [N=8] [SIZE=96] [SEED=0]")
        sys.exit(2)
    count = int(args[1]) if len(args) > 1 else 8
    size = int(args[2]) if len(args) > 2 else 96
    seed = int(args[3]) if len(args) > 3 else 0
    save_preview(SyntheticScenes(count, image_size=size, seed=seed), args[0], count)
    print(args[0])
