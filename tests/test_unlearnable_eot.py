"""EOT victim pipelines (mtlguard.unlearnable.eot) and the generator's luma / native-resolution options:
each transformation against its reference (Pillow JPEG, ISS grayscale, the engine's numpy recipe)."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from mtlguard.data.utkface import UTKFACE_TASKS, UTKFace
from mtlguard.unlearnable import MTLUEGenerator
from mtlguard.unlearnable.eot import (EOTConfig, VictimView, bit_depth, gaussian_blur, grayscale, jpeg,
                                      quantize_uint8, random_resized_crop)
from mtlguard.unlearnable.protect import iss_grayscale

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def faces(utkface_root, tmp_path_factory):
    ds = UTKFace(utkface_root, split="train", image_size=200, subset=6, seed=0,
                 cache_dir=tmp_path_factory.mktemp("cache"), progress=False)
    return ds, np.stack([ds.load_uint8(i) for i in range(len(ds))])


def _float(u8):
    return torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 255


def test_jpeg_matches_pillow_and_passes_gradients(faces):
    _, u8 = faces
    x = _float(u8)
    for q in (10, 30):
        pil = []
        for a in u8:
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, "JPEG", quality=q)
            pil.append(np.asarray(Image.open(io.BytesIO(buf.getvalue()))))
        ref = _float(np.stack(pil))
        ours = jpeg(x, q)
        # ours is much closer to Pillow's JPEG than either is to the input (same quantization)
        assert (ours - ref).abs().mean() < 0.3 * (ref - x).abs().mean(), q
    xg = x.clone().requires_grad_(True)
    jpeg(xg, 10).sum().backward()
    assert xg.grad.abs().mean() > 0.5  # straight-through: gradient ~ identity


def test_grayscale_keeps_a_luma_delta_and_equals_iss(faces):
    _, u8 = faces
    x = _float(u8)
    gray = grayscale(x)
    ref = _float(iss_grayscale(u8))
    assert (gray - ref).abs().max() <= 0.5 / 255 + 1e-6  # ISS rounds to uint8
    d = torch.rand(len(x), 1, 200, 200).mul(2).sub(1).mul(8 / 255).expand(-1, 3, -1, -1)
    assert torch.allclose(grayscale(x + d) - grayscale(x), d, atol=1e-6)  # luma weights sum to 1
    rgb_d = torch.zeros_like(x)
    rgb_d[:, 0] = 8 / 255  # a red-only delta is mostly removed
    assert (grayscale(x + rgb_d) - grayscale(x)).abs().max() < 0.31 * 8 / 255


def test_quantize_blur_bitdepth_values_and_gradients():
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    q = quantize_uint8(x)
    assert torch.equal(q * 255, torch.round(q * 255))
    b = bit_depth(x, torch.tensor([2, 3]))
    assert set(torch.unique(b[0] * 3).round().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    assert len(torch.unique(b[1])) <= 8
    (q.sum() + b.sum()).backward()
    assert torch.allclose(x.grad, torch.full_like(x, 2.0))
    const = torch.full((1, 1, 20, 20), 0.3)
    assert torch.allclose(gaussian_blur(const, 2.0), const, atol=1e-6)  # normalized kernel
    imp = torch.zeros(1, 1, 21, 21)
    imp[0, 0, 10, 10] = 1
    out = gaussian_blur(imp, 1.5)
    assert abs(out.sum().item() - 1) < 1e-5 and out[0, 0, 10, 10] < 0.1


def test_random_resized_crop_is_seeded_and_sized():
    x = torch.rand(4, 3, 50, 60)
    a = random_resized_crop(x, 24, (0.3, 1.0), (0.75, 1.33), True, torch.Generator().manual_seed(1))
    b = random_resized_crop(x, 24, (0.3, 1.0), (0.75, 1.33), True, torch.Generator().manual_seed(1))
    c = random_resized_crop(x, 24, (0.3, 1.0), (0.75, 1.33), True, torch.Generator().manual_seed(2))
    assert a.shape == (4, 3, 24, 24) and torch.equal(a, b) and not torch.equal(a, c)
    full = random_resized_crop(x[:, :, :40, :40], 20, (1.0, 1.0), (1.0, 1.0), False, None)
    from mtlguard.unlearnable.eot import resize
    assert torch.allclose(full, resize(x[:, :, :40, :40], (20, 20)))  # scale 1, ratio 1: the whole image


def test_victim_view_draws_sizes_and_rejects_bad_config():
    view = VictimView(EOTConfig(sizes=(16, 24), p_gray=0.25, p_jpeg=0.25, p_blur=0.25, p_bdr=0.25))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 48, 48, requires_grad=True)
    sizes = set()
    for _ in range(6):
        out = view(x, g)
        sizes.add(out.shape[-1])
        assert out.shape[:2] == (8, 3)
    assert sizes == {16, 24}
    view(x, g).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="sum to <= 1"):
        EOTConfig(p_gray=0.6, p_jpeg=0.6)
    with pytest.raises(ValueError, match="sizes"):
        EOTConfig(sizes=(4,))
    with pytest.raises(ValueError, match="crop_scale"):
        EOTConfig(crop_scale=(0.5, 1.5))


def test_luma_generator_replicates_one_plane_and_round_trips(tmp_path):
    gen = MTLUEGenerator(UTKFACE_TASKS, image_size=16, delta_channels="luma").eval()
    assert gen.decoder[-1].out_channels == 1
    x = torch.rand(3, 3, 16, 16)
    labels = torch.tensor([[0, 1, 2], [3, 0, 4], [-1, 1, 0]])
    _, d = gen(x * 0 + 0.5, labels)  # away from the [0, 1] box: the box projection keeps the channels equal
    assert torch.equal(d[:, 0], d[:, 1]) and torch.equal(d[:, 1], d[:, 2]) and d.abs().max() <= 8 / 255 + 1e-7
    gen.save(tmp_path / "g")
    back = MTLUEGenerator.load(tmp_path / "g").eval()
    assert back.delta_channels == "luma" and torch.equal(back(x, labels)[1], gen(x, labels)[1])
    cfg = gen.config()
    del cfg["delta_channels"]  # configs saved before the option: every channel has its own plane
    assert MTLUEGenerator.from_config(cfg).delta_channels == "all"
    with pytest.raises(ValueError, match="delta_channels"):
        MTLUEGenerator(UTKFACE_TASKS, image_size=16, delta_channels="rgb")


def test_protect_native_matches_the_engine_recipe(faces):
    from mtlguard.engine.perturb import apply_delta_batch, model_input

    ds, u8 = faces
    torch.manual_seed(0)
    gen = MTLUEGenerator(ds.tasks, image_size=32, delta_channels="luma").eval()
    labels = ds.labels_tensor()
    with torch.no_grad():
        prot, delta = gen.protect_native(_float(u8), labels)
    # the engine: Pillow resize in, generator at 32x32, numpy upsampling with Pillow's weights, round
    small = torch.from_numpy(np.stack([model_input(a, (32, 32)) for a in u8]))
    with torch.no_grad():
        _, d32 = gen(small, labels)
    engine, _ = apply_delta_batch(u8, d32.numpy(), 8 / 255)
    ours = torch.round(prot * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    diff = np.abs(ours.astype(int) - engine.astype(int))
    # torch's antialiased resize vs Pillow's differ by float rounding: a level now and then
    assert diff.max() <= 1 and (diff > 0).mean() < 0.02
    assert delta.abs().max() <= 8 / 255 + 1e-6


def test_eot_options_scale_or_name_each_transformation():
    """``--eot-defenses`` scales the default probabilities or names each one (the rest 0); ``--eot-crop-scale``
    sets the crop range; a bad spelling is refused in one line naming the option."""
    import argparse

    from mtlguard.cli.options import add_robust_fit_args
    from mtlguard.unlearnable.cli_common import eot_config

    p = argparse.ArgumentParser()
    add_robust_fit_args(p)

    def probs(*argv):
        c = eot_config(p.parse_args(["--eot", "victim", *argv]))
        return c.crop_scale, (c.p_gray, c.p_jpeg, c.p_blur, c.p_bdr)

    assert probs() == ((0.35, 1.0), (0.15, 0.2, 0.1, 0.1))
    assert probs("--eot-defenses", "1.5")[1] == pytest.approx((0.225, 0.3, 0.15, 0.15))
    assert probs("--eot-defenses", "gray=0.5", "--eot-crop-scale", "1,1") == ((1.0, 1.0), (0.5, 0.0, 0.0, 0.0))
    assert probs("--eot-defenses", "jpeg=0.3,bdr=0.1")[1] == (0.0, 0.3, 0.0, 0.1)
    assert eot_config(p.parse_args(["--eot-defenses", "gray=0.5"])) is None  # views only with --eot victim
    with pytest.raises(SystemExit, match="sum to <= 1"):
        probs("--eot-defenses", "gray=0.7,jpeg=0.5")
    with pytest.raises(SystemExit, match="--eot-crop-scale needs LO,HI"):
        probs("--eot-crop-scale", "0.5")
    for bad in ("grey=0.5", "gray=half", "gray"):
        with pytest.raises(SystemExit, match=f"'{bad}' is not NAME=P with NAME one of gray, jpeg, blur, bdr"):
            probs("--eot-defenses", bad)
