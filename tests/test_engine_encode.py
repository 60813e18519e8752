"""The engine's fast paths: PNG level / strategy options (validated, lossless, the L-inf bound holds),
the vectorized native-size delta (= Pillow's bilinear resize, batch = one at a time), and the
simplejpeg decode path for plain JPEGs (= Pillow's pixels)."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_engine_standin import copy_utk, exported_onnx

from mtlguard.engine import protect_directory
from mtlguard.engine.cli import main as engine_main
from mtlguard.engine.imageio import PNG_STRATEGIES, decode_bytes, encode
from mtlguard.engine.perturb import apply_delta, apply_delta_batch, bound_uint8, upsample_delta

BOUND = math.ceil(8 / 255 * 255)


def _read(p: Path) -> np.ndarray:
    with Image.open(p) as im:
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def utk4(utkface_root, tmp_path_factory):
    root = tmp_path_factory.mktemp("utk4")
    copy_utk(utkface_root, root, 4)
    return root


@pytest.mark.parametrize("bad", [10, -1, 2.5, True, "6"])
def test_png_compression_out_of_range_is_refused_naming_the_value(utk4, tmp_path, bad):
    with pytest.raises(ValueError, match=r"png_compression must be an integer zlib level 0-9.*got " + repr(bad).replace(".", r"\.")):
        protect_directory(utk4, tmp_path / "out", model=exported_onnx(), dataset="utkface", png_compression=bad,
                          progress=False)
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_png_strategy_unknown_is_refused(utk4, tmp_path):
    with pytest.raises(ValueError, match=r"png_strategy must be one of .*'lz4'"):
        protect_directory(utk4, tmp_path / "out", passthrough=True, png_strategy="lz4", progress=False)


@pytest.mark.parametrize("value", ["12", "-1", "fast"])
def test_cli_png_compression_out_of_range_exits_2_with_clear_message(utk4, tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exc:
        engine_main(["protect", "--model", str(exported_onnx()), "--input", str(utk4), "--output", str(tmp_path / "o"),
                     "--dataset", "utkface", "--no-progress", "--png-compression", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--png-compression must be an integer 0-9" in err and repr(value) in err
    assert not (tmp_path / "o").exists()


def test_png_levels_and_strategies_are_lossless_and_keep_the_bound(utk4, tmp_path, capsys):
    """Every level/strategy writes the same protected pixels (PNG is lossless); level 0 stores."""
    runs = {}
    for level, strategy in ((0, "default"), (9, "default"), (1, "rle")):
        out = tmp_path / f"l{level}_{strategy}"
        assert engine_main(["protect", "--model", str(exported_onnx()), "--input", str(utk4), "--output", str(out),
                            "--dataset", "utkface", "--no-progress", "--png-compression", str(level),
                            "--png-strategy", strategy]) == 0
        rep = json.loads(capsys.readouterr().out)
        assert rep["done"] == 4 and rep["png_compression"] == level and rep["png_strategy"] == strategy
        assert 0 < rep["max_abs_delta_written_uint8"] <= BOUND
        runs[(level, strategy)] = out
    names = sorted(p.name for p in utk4.glob("*.jpg"))
    for name in names:
        png = Path(name).with_suffix(".png")
        orig = _read(utk4 / name)
        pix = {k: _read(d / png) for k, d in runs.items()}
        ref = pix[(1, "rle")]
        assert ref.shape == orig.shape
        assert 0 < np.abs(ref.astype(int) - orig.astype(int)).max() <= BOUND
        for k, p in pix.items():
            assert np.array_equal(p, ref), (name, k)
        sizes = {k: (d / png).stat().st_size for k, d in runs.items()}
        assert sizes[(0, "default")] > 200 * 200 * 3 > sizes[(9, "default")]  # 0 = stored, 9 = compressed


def test_rle_strategy_beats_default_level1_on_protected_pixels(utk4):
    """The measured reason for the default: on noisy protected pixels zlib's RLE strategy gives smaller files
    than the default strategy at level 1 (bench/engine.py has the timings), and every strategy is lossless."""
    rgb = decode_bytes(sorted(utk4.glob("*.jpg"))[0].read_bytes()).rgb
    noise = np.random.default_rng(0).integers(-8, 9, rgb.shape)
    prot = np.clip(rgb.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    sizes = {}
    for strategy in PNG_STRATEGIES:
        for level in (0, 1, 6):
            data = encode(prot, "png", png_compression=level, png_strategy=strategy)
            with Image.open(io.BytesIO(data)) as im:
                assert im.format == "PNG" and np.array_equal(np.asarray(im), prot), (strategy, level)
            sizes[strategy, level] = len(data)
    assert sizes["rle", 1] < sizes["default", 1]
    assert sizes["rle", 1] == sizes["rle", 6]  # zlib ignores the level under RLE (except 0 = store)
    assert sizes["default", 0] > prot.size


@pytest.mark.parametrize("shape", [(32, 32, 200, 200), (32, 32, 57, 301), (32, 32, 16, 16), (32, 32, 7, 5),
                                   (32, 32, 32, 32), (8, 16, 1, 1), (1, 1, 5, 3)])
def test_upsample_delta_equals_pillow_bilinear(shape):
    h, w, H, W = shape
    d = np.random.default_rng(h * W + H).uniform(-0.05, 0.05, (3, h, w)).astype(np.float32)
    want = np.stack([np.asarray(Image.fromarray(d[c]).resize((W, H), Image.Resampling.BILINEAR)) for c in range(3)], -1)
    got = upsample_delta(d, H, W)
    assert got.shape == (H, W, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("eps", [8 / 255, 0.6])  # 0.6: bound 153 > 127, the int16 difference path
def test_apply_delta_batch_equals_one_at_a_time_and_keeps_the_bound(eps):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (5, 40, 23, 3), dtype=np.uint8)
    rgb[0] = 0
    rgb[1] = 255  # clipping at both ends of the pixel range
    delta = rng.uniform(-1.5 * eps, 1.5 * eps, (5, 3, 32, 32)).astype(np.float32)  # exceeds eps: re-clipped
    out, max_abs = apply_delta_batch(rgb, delta, eps)
    diff = np.abs(out.astype(int) - rgb.astype(int))
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    assert diff.max() <= bound_uint8(eps)
    assert max_abs.tolist() == diff.reshape(5, -1).max(1).tolist()
    assert diff.reshape(5, -1).max(1)[2:].min() == bound_uint8(eps)  # the budget is used, not undershot
    for i in range(5):
        one, m = apply_delta(rgb[i], delta[i], eps)
        assert np.array_equal(one, out[i]) and m == max_abs[i]


def test_plain_jpeg_decodes_with_simplejpeg_to_pillows_pixels(utk4):
    for p in sorted(utk4.glob("*.jpg")):
        data = p.read_bytes()
        dec = decode_bytes(data)
        assert dec.decoder == "simplejpeg" and dec.fmt == "JPEG"
        assert np.array_equal(dec.rgb, _read(p))
        assert decode_bytes(data, decoder="pillow").decoder == "pillow"
