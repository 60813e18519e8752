"""SyntheticScenes: exact geometry of the ray-cast targets, determinism, item contract."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mtlguard.data import SCENE_CLASSES, SyntheticScenes
from mtlguard.data.synthetic import BOX, FLOOR, IGNORE, SPHERE, WALL


@pytest.fixture(scope="module")
def scenes():
    return SyntheticScenes(24, image_size=(40, 56), seed=7)


def _points(ds, i):
    """Camera-frame hit points p = depth * K^-1 [u+0.5, v+0.5, 1] of scene i, [H, W, 3]."""
    info = ds.scene_info(i)
    h, w = ds.image_size
    v, u = np.mgrid[0:h, 0:w]
    ray = np.stack([u + 0.5, v + 0.5, np.ones_like(u, dtype=float)], -1) @ np.linalg.inv(info["K"]).T
    return ray * ds._depth[i][..., None], info


def test_item_contract(scenes):
    x, y = scenes[3]
    assert x.shape == (3, 40, 56) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert y["segmentation"].shape == (40, 56) and y["segmentation"].dtype == torch.int64
    assert y["depth"].shape == (1, 40, 56) and y["depth"].dtype == torch.float32
    assert y["normal"].shape == (3, 40, 56) and y["normal"].dtype == torch.float32
    assert [t.name for t in scenes.tasks] == ["segmentation", "depth", "normal"]
    seg_spec = scenes.tasks[0]
    assert seg_spec.kind == "segmentation" and seg_spec.num_classes == len(SCENE_CLASSES)
    assert seg_spec.ignore_index == IGNORE
    assert scenes.labels_tensor().shape == (24, 0)
    xb, yb = next(iter(DataLoader(scenes, batch_size=5)))
    assert xb.shape == (5, 3, 40, 56) and yb["depth"].shape == (5, 1, 40, 56)


def test_all_classes_and_invalid_pixels_consistent(scenes):
    seg, depth, normal = scenes._seg, scenes._depth, scenes._normal
    counts = np.bincount(seg.ravel() + 1, minlength=5)
    assert (counts > 0).all(), counts  # ignore, wall, floor, box, sphere all present
    valid = seg != IGNORE
    assert (depth[valid] > 0).all() and (depth[~valid] == 0).all()
    assert (normal[~valid] == 0).all()
    np.testing.assert_allclose(np.linalg.norm(normal[valid], axis=-1), 1.0, atol=1e-5)
    # every surface faces the camera: n . p < 0 for the hit point p
    for i in range(len(scenes)):
        p, _ = _points(scenes, i)
        m = valid[i]
        assert (np.einsum("ij,ij->i", normal[i][m], p[m]) < 1e-6).all()


def test_floor_normals_point_up_and_lie_on_the_plane(scenes):
    for i in range(len(scenes)):
        p, info = _points(scenes, i)
        n, d0 = info["floor_plane"]
        up = info["up"]
        assert up[1] < 0  # world up is image-up (-y) in the camera frame (OpenCV axes)
        m = scenes._seg[i] == FLOOR
        assert m.any()
        np.testing.assert_allclose(scenes._normal[i][m], np.broadcast_to(up, (m.sum(), 3)), atol=1e-6)
        np.testing.assert_allclose(p[m] @ n + d0, 0.0, atol=1e-4)
        # floor is below the camera: its pixels are in the lower part of the image
        rows = np.nonzero(m)[0]
        assert rows.mean() > scenes.image_size[0] / 2


def test_sphere_normals_are_radial(scenes):
    checked = 0
    for i in range(len(scenes)):
        p, info = _points(scenes, i)
        m = scenes._seg[i] == SPHERE
        if not m.any():
            continue
        pts, nrm = p[m], scenes._normal[i][m]
        # each sphere pixel lies on one of the scene's spheres with n = (p - c) / r
        best = np.full(len(pts), np.inf)
        for c, r in info["spheres"]:
            err = np.abs(np.linalg.norm(pts - c, axis=1) - r) + np.linalg.norm((pts - c) / r - nrm, axis=1)
            best = np.minimum(best, err)
        assert best.max() < 1e-4
        checked += m.sum()
    assert checked > 50


def test_walls_and_boxes_are_planar_patches(scenes):
    """Wall and box pixels have one of few distinct normals (planar faces), unlike spheres."""
    for i in range(4):
        for cls, most in ((WALL, 4), (BOX, 9)):
            m = scenes._seg[i] == cls
            if m.any():
                uniq = np.unique(np.round(scenes._normal[i][m], 4), axis=0)
                assert len(uniq) <= most


def test_deterministic_per_seed_split_index():
    a = SyntheticScenes(6, image_size=32, seed=3)
    b = SyntheticScenes(9, image_size=32, seed=3)  # prefix of a longer set is the same scenes
    c = SyntheticScenes(6, image_size=32, seed=3, split="test")
    d = SyntheticScenes(6, image_size=32, seed=4)
    np.testing.assert_array_equal(a._images, b._images[:6])
    np.testing.assert_array_equal(a._depth, b._depth[:6])
    assert not np.array_equal(a._images, c._images) and not np.array_equal(a._images, d._images)
    assert a.image_size == (32, 32)


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        SyntheticScenes(2, split="validation")
    with pytest.raises(ValueError, match="n must be"):
        SyntheticScenes(-1)


def test_subset_view_keeps_the_contract(scenes):
    sub = scenes.subset([5, 0, -1])
    assert len(sub) == 3 and sub.tasks == scenes.tasks and sub.image_size == scenes.image_size
    assert torch.equal(sub[0][0], scenes[5][0]) and torch.equal(sub[2][1]["depth"], scenes[23][1]["depth"])
    np.testing.assert_array_equal(sub.images_uint8(), scenes.images_uint8()[[5, 0, 23]])
    assert sub.labels_tensor().shape == (3, 0)
    with pytest.raises(IndexError, match="subset indices"):
        scenes.subset([24])
