"""apply_delta_u8 (the engine's native-resolution step as one fused op) is bit-identical to the engine's numpy
path (engine.perturb.apply_delta_batch) and to its pure-PyTorch reference: random sizes (enlarging and
shrinking, 1/3/4 channels, luma deltas, NaN, eps 0 and huge), real UTKFace images, CUDA when a GPU is present.

With ``MTLGUARD_REQUIRE_CUDA=1`` (bench/gpu_check.sh) a visible GPU without compiled CUDA kernels fails instead
of silently comparing the reference with itself."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from mtlguard import ops
from mtlguard.engine import perturb
from mtlguard.ops import reference as R

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA GPU not available on this machine")
DEVICES = ["cpu", pytest.param("cuda", marks=CUDA)]
pytestmark = pytest.mark.usefixtures("one_thread")


def _numpy_path(rgb: np.ndarray, delta: np.ndarray, eps: float) -> np.ndarray:
    return perturb.apply_delta_batch_numpy(rgb, delta, eps)[0]


def _op(rgb: np.ndarray, delta: np.ndarray, eps: float, device: str = "cpu") -> np.ndarray:
    out = ops.apply_delta_u8(torch.from_numpy(rgb).to(device), torch.from_numpy(delta).to(device), eps)
    assert out.dtype == torch.uint8 and out.shape == rgb.shape and out.device.type == device
    return out.cpu().numpy()


def _require_kernels(device: str) -> None:
    """The fused kernel itself must run (not the reference fallback) where it is built."""
    if ops.backend() != "extension":
        if os.environ.get("MTLGUARD_REQUIRE_CUDA") == "1":
            pytest.fail(f"mtlguard._C is not in use: {ops.backend_info()['error']}")
        pytest.skip(f"mtlguard._C not built: {ops.backend_info()['error']}")
    if device == "cuda" and not ops.cuda_kernels_compiled():
        pytest.fail("a CUDA GPU is visible but mtlguard._C has no CUDA kernels (build it with nvcc)")


def _random_case(rng, i: int):
    n = int(rng.integers(1, 4))
    big, small = int(rng.integers(1, 97)), int(rng.integers(1, 41))
    H, W = (big, int(rng.integers(1, 97))) if i % 3 else (small, int(rng.integers(1, 30)))  # enlarge / shrink
    h, w = int(rng.integers(1, 41)), int(rng.integers(1, 41))
    C = int(rng.choice([1, 3, 4]))
    cd = C if rng.random() < 0.7 else 1
    eps = float(rng.choice([8 / 255, 4 / 255, 0.0, 0.3, 1.0, 1e30]))
    rgb = rng.integers(0, 256, (n, H, W, C), dtype=np.uint8)
    delta = (rng.standard_normal((n, cd, h, w)) * rng.choice([0.01, 0.05, 2.0])).astype(np.float32)
    return rgb, delta, eps


@pytest.mark.parametrize("device", DEVICES)
def test_random_sizes_bit_identical_to_numpy_and_reference(device):
    _require_kernels(device)
    rng = np.random.default_rng(15)
    for i in range(150):
        rgb, delta, eps = _random_case(rng, i)
        want = _numpy_path(rgb, delta, eps)
        got = _op(rgb, delta, eps, device)
        np.testing.assert_array_equal(got, want, err_msg=f"case {i}: {rgb.shape} {delta.shape} eps={eps}")
        if i % 5 == 0:
            with ops.use_reference():
                ref = _op(rgb, delta, eps, device)
            np.testing.assert_array_equal(ref, want, err_msg=f"reference, case {i}")


@pytest.mark.parametrize("device", DEVICES)
def test_nan_and_inf_deltas_match_numpy(device):
    _require_kernels(device)
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (2, 37, 53, 3), dtype=np.uint8)
    delta = (rng.standard_normal((2, 3, 11, 9)) * 0.05).astype(np.float32)
    delta[0, 1, 3, 4] = np.nan
    delta[1, 0, 5, 5] = np.inf
    delta[1, 2, 0, 0] = -np.inf
    for eps in (8 / 255, 1e30):
        with np.errstate(invalid="ignore"):
            want = _numpy_path(rgb, delta, eps)
        np.testing.assert_array_equal(_op(rgb, delta, eps, device), want)
        with ops.use_reference():
            np.testing.assert_array_equal(_op(rgb, delta, eps, device), want)


@pytest.mark.parametrize("device", DEVICES)
def test_same_size_and_one_axis_same_size(device):
    _require_kernels(device)
    rng = np.random.default_rng(2)
    for shape, dshape in (((3, 32, 32, 3), (3, 3, 32, 32)), ((2, 32, 70, 3), (2, 3, 32, 16)),
                          ((2, 70, 16, 1), (2, 1, 32, 16)), ((1, 1, 1, 3), (1, 3, 1, 1)), ((1, 5, 7, 3), (1, 1, 64, 64))):
        rgb = rng.integers(0, 256, shape, dtype=np.uint8)
        delta = (rng.standard_normal(dshape) * 0.04).astype(np.float32)
        np.testing.assert_array_equal(_op(rgb, delta, 8 / 255, device), _numpy_path(rgb, delta, 8 / 255))


def _utkface_images(root, count: int, seed: int = 0) -> list[np.ndarray]:
    from PIL import Image

    files = sorted((root / "images").glob("*.jpg"))
    pick = np.random.default_rng(seed).choice(len(files), size=min(count, len(files)), replace=False)
    return [np.asarray(Image.open(files[i]).convert("RGB")) for i in pick]


@pytest.mark.parametrize("device", DEVICES)
def test_real_utkface_images_bit_identical(utkface_root, device):
    """Real faces at their native 200x200, enlarged (phone-like 3:4 crops) and shrunk, 32 and 64 px deltas."""
    _require_kernels(device)
    from PIL import Image

    rng = np.random.default_rng(3)
    faces = _utkface_images(utkface_root, 12)
    batch = np.stack(faces[:8])  # same-size group, as the engine applies it
    for h in (32, 64):
        delta = (np.tanh(rng.standard_normal((8, 3, h, h))) * (8 / 255)).astype(np.float32)
        np.testing.assert_array_equal(_op(batch, delta, 8 / 255, device), _numpy_path(batch, delta, 8 / 255))
    for size in ((301, 403), (480, 640), (17, 23), (50, 50), (199, 200)):
        img = np.asarray(Image.fromarray(faces[8]).resize(size[::-1], Image.Resampling.BILINEAR))[None]
        delta = (np.tanh(rng.standard_normal((1, 3, 32, 32))) * (8 / 255)).astype(np.float32)
        np.testing.assert_array_equal(_op(img, delta, 8 / 255, device), _numpy_path(img, delta, 8 / 255))
        luma = delta[:, :1]
        np.testing.assert_array_equal(_op(img, luma, 4 / 255, device), _numpy_path(img, luma, 4 / 255))


def test_tap_tables_equal_the_engines():
    for n_in in (1, 2, 3, 7, 16, 32, 33, 64, 224, 300):
        for n_out in (1, 2, 5, 16, 31, 32, 100, 200, 513, 4000):
            i1, w1 = perturb.bilinear_taps(n_in, n_out)
            i2, w2 = R.bilinear_taps(n_in, n_out)
            np.testing.assert_array_equal(i2.numpy(), i1)
            np.testing.assert_array_equal(w2.numpy(), w1)


def test_bound_holds():
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (4, 50, 60, 3), dtype=np.uint8)
    delta = (rng.standard_normal((4, 3, 32, 32)) * 0.5).astype(np.float32)
    for eps in (2 / 255, 8 / 255, 16 / 255):
        out = _op(rgb, delta, eps)
        assert np.abs(out.astype(np.int16) - rgb).max() <= perturb.bound_uint8(eps)


def test_errors_and_empty():
    img = torch.zeros(2, 8, 8, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        ops.apply_delta_u8(img.float(), torch.zeros(2, 3, 4, 4), 0.1)
    with pytest.raises(ValueError, match="channels"):
        ops.apply_delta_u8(img, torch.zeros(2, 2, 4, 4), 0.1)
    with pytest.raises(ValueError, match="images"):
        ops.apply_delta_u8(img, torch.zeros(3, 3, 4, 4), 0.1)
    with pytest.raises(ValueError, match="eps"):
        ops.apply_delta_u8(img, torch.zeros(2, 3, 4, 4), -0.1)
    with pytest.raises(ValueError, match="eps"):
        ops.apply_delta_u8(img, torch.zeros(2, 3, 4, 4), float("nan"))
    empty = ops.apply_delta_u8(torch.zeros(0, 8, 8, 3, dtype=torch.uint8), torch.zeros(0, 3, 4, 4), 0.1)
    assert empty.shape == (0, 8, 8, 3) and empty.dtype == torch.uint8
    # float64 deltas are accepted (converted to float32, as the numpy path does)
    d = torch.randn(2, 3, 4, 4, dtype=torch.float64) * 0.01
    np.testing.assert_array_equal(ops.apply_delta_u8(img, d, 0.1).numpy(), _numpy_path(img.numpy(), d.numpy(), 0.1))


def test_non_contiguous_inputs():
    rng = np.random.default_rng(5)
    rgb = torch.from_numpy(rng.integers(0, 256, (2, 3, 40, 30), dtype=np.uint8)).permute(0, 2, 3, 1)  # NHWC view
    delta = torch.from_numpy((rng.standard_normal((2, 16, 16, 3)) * 0.03).astype(np.float32)).permute(0, 3, 1, 2)
    want = _numpy_path(np.ascontiguousarray(rgb.numpy()), np.ascontiguousarray(delta.numpy()), 8 / 255)
    np.testing.assert_array_equal(ops.apply_delta_u8(rgb, delta, 8 / 255).numpy(), want)


def test_fake_kernel_shapes():
    if ops.backend() != "extension":
        pytest.skip("mtlguard._C not built")
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        out = torch.ops.mtlguard.apply_delta_u8(torch.empty(2, 50, 60, 3, dtype=torch.uint8),
                                                torch.empty(2, 3, 32, 32), 0.03)
        assert out.shape == (2, 50, 60, 3) and out.dtype == torch.uint8
