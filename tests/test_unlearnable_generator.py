"""MTL-UE generator: shapes (K tasks, grayscale, dense, large stem), the eps bound, partial protection
(label -1 = mean embedding), save/load, and uint8 quantization with the L-inf check."""
import json

import pytest
import torch

from mtlguard import ops
from mtlguard.data.tasks import TaskSpec
from mtlguard.unlearnable import (MTLUEGenerator, check_linf_bound, eps_levels, quantize_protected, to_uint8)

UTK = (TaskSpec("age", "multiclass", 9), TaskSpec("gender", "multiclass", 2), TaskSpec("race", "multiclass", 5))


@pytest.mark.parametrize("k", [1, 3])
def test_shapes_and_bound_k_tasks(k):
    tasks = UTK[:k]
    g = MTLUEGenerator(tasks, image_size=(16, 12))
    assert g.table.shape == (sum(t.num_classes for t in tasks), 16 * 8 * 6)
    assert g.decoder[0].in_channels == 128 + 16 * k
    x = torch.rand(5, 3, 16, 12)
    labels = torch.stack([torch.randint(0, t.num_classes, (5,)) for t in tasks], 1)
    prot, delta = g(x, labels)
    assert prot.shape == x.shape and delta.shape == x.shape
    assert float(delta.abs().max()) <= 8 / 255 + 1e-6
    assert float(prot.min()) >= 0 and float(prot.max()) <= 1
    assert torch.allclose(prot, x + delta, atol=1e-6)
    assert float(delta.abs().max()) > 0  # the decoder does produce a perturbation


def test_grayscale_and_large_stem():
    g = MTLUEGenerator(UTK, in_channels=1, image_size=16, eps=4 / 255)
    prot, delta = g(torch.rand(2, 1, 16, 16), torch.tensor([[0, 1, 2], [8, 0, 4]]))
    assert prot.shape == (2, 1, 16, 16) and float(delta.abs().max()) <= 4 / 255 + 1e-6
    g2 = MTLUEGenerator(UTK, image_size=32, large_stem=True)
    assert g2.latent_size == (4, 4)
    assert g2(torch.rand(2, 3, 32, 32), torch.tensor([[0, 1, 2], [8, 0, 4]]))[0].shape == (2, 3, 32, 32)


def test_dense_tasks_use_label_embedders():
    tasks = (TaskSpec("seg", "segmentation", 13), TaskSpec("depth", "depth"), TaskSpec("normal", "normal"))
    g = MTLUEGenerator(tasks, image_size=(8, 12))
    assert g.table is None and set(g.embedders) == {"seg", "depth", "normal"}
    x = torch.rand(2, 3, 8, 12)
    dense = {"seg": torch.randint(0, 13, (2, 8, 12)), "depth": torch.rand(2, 1, 8, 12), "normal": torch.randn(2, 3, 8, 12)}
    _, d1 = g(x, torch.zeros(2, 0, dtype=torch.long), dense)
    dense2 = dict(dense, seg=(dense["seg"] + 5) % 13)
    _, d2 = g(x, torch.zeros(2, 0, dtype=torch.long), dense2)
    assert d1.shape == x.shape and not torch.allclose(d1, d2)  # the label map drives the perturbation
    with pytest.raises(KeyError, match="normal"):
        g(x, torch.zeros(2, 0, dtype=torch.long), {"seg": dense["seg"], "depth": dense["depth"]})


def test_unprotected_label_uses_mean_embedding():
    g = MTLUEGenerator(UTK, image_size=8).eval()
    x = torch.rand(3, 3, 8, 8)
    o = g.offsets.tolist()
    with torch.no_grad():
        # make every race embedding equal to the race mean: then label -1 must equal any label
        rows = g.table[o[2]:o[3]]
        rows.copy_(rows.mean(0, keepdim=True).expand_as(rows))
        a = g(x, torch.tensor([[1, 0, -1]] * 3))[1]
        b = g(x, torch.tensor([[1, 0, 3]] * 3))[1]
        c = g(x, torch.tensor([[-1, 0, 3]] * 3))[1]
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(b, c)


def test_export_friendly_path_matches_fused_op():
    g = MTLUEGenerator(UTK, image_size=8)
    z = torch.randn(4, 128, 4, 4)
    labels = torch.tensor([[0, 1, -1], [8, -1, 4], [-1, -1, -1], [3, 0, 2]])
    ref = ops.embed_concat(z, g.table, labels, g.offsets, (16, 4, 4))
    assert torch.allclose(g._embed_concat_static(z, labels), ref)


def test_tiled_embeddings_repeat_one_class_tile(tmp_path):
    """``emb_tile=t``: each class code is a ``[16, t, t]`` tile repeated over the latent grid -- the same
    generator as an untiled one whose table holds the repeated tiles, and it round-trips (export: test_export_onnx)."""
    g = MTLUEGenerator(UTK, image_size=16, emb_tile=4).eval()
    assert g.table.shape == (16, 16 * 4 * 4) and g.config()["emb_tile"] == 4
    x, y = torch.rand(3, 3, 16, 16), torch.tensor([[0, 1, 2], [8, -1, 4], [3, 0, -1]])
    feats = g._embed_concat_static(g.encoder(x), y)[:, 128:]
    assert torch.equal(feats[..., :4, :4], feats[..., 4:8, 4:8]) and torch.equal(feats[..., :4, :], feats[..., 4:, :])
    full = MTLUEGenerator(UTK, image_size=16).eval()
    full.load_state_dict({**g.state_dict(), "table": g.table.detach().reshape(16, 16, 1, 4, 1, 4)
                          .expand(-1, -1, 2, -1, 2, -1).reshape(16, -1)})
    with torch.no_grad():
        assert torch.allclose(full(x, y)[1], g(x, y)[1], atol=1e-6)  # untiled = fused op path
        g.save(tmp_path / "g")
        back = MTLUEGenerator.load(tmp_path / "g").eval()
        assert back.emb_tile == 4 and torch.equal(back(x, y)[1], g(x, y)[1])
    cfg = g.config()
    del cfg["emb_tile"]  # configs saved before the option: embeddings cover the latent grid
    assert MTLUEGenerator.from_config(cfg).table.shape == (16, 16 * 8 * 8)
    for bad in (0, 3, 16):
        with pytest.raises(ValueError, match="emb_tile"):
            MTLUEGenerator(UTK, image_size=16, emb_tile=bad)


def test_bad_inputs_are_named():
    g = MTLUEGenerator(UTK, image_size=8)
    with pytest.raises(ValueError, match=r"labels must be \[N, K\]"):
        g(torch.rand(2, 3, 8, 8), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(IndexError, match="label 9"):
        g(torch.rand(1, 3, 8, 8), torch.tensor([[9, 0, 0]]))
    with pytest.raises(ValueError, match="image must be"):
        g(torch.rand(1, 3, 10, 8), torch.tensor([[0, 0, 0]]))
    with pytest.raises(ValueError, match="divisible"):
        MTLUEGenerator(UTK, image_size=9)
    with pytest.raises(ValueError, match="neither classification"):
        MTLUEGenerator([TaskSpec("y", "regression")], image_size=8)


def test_save_load_roundtrip(tmp_path):
    g = MTLUEGenerator(UTK, in_channels=1, image_size=8, eps=6 / 255).eval()
    path = g.save(tmp_path / "gen", extra={"base": "tap"})
    assert path.name == "gen.safetensors" and (tmp_path / "gen.json").is_file()
    cfg = json.loads((tmp_path / "gen.json").read_text())
    assert cfg["eps"] == pytest.approx(6 / 255) and cfg["extra"] == {"base": "tap"}
    assert not list(tmp_path.glob(".tmp-*"))
    h = MTLUEGenerator.load(tmp_path / "gen.safetensors").eval()
    x, y = torch.rand(2, 1, 8, 8), torch.tensor([[0, 1, 2], [-1, 0, 4]])
    with torch.no_grad():
        assert torch.equal(g(x, y)[1], h(x, y)[1])
    cfg["tasks"][0]["num_classes"] = 10  # config no longer matches the weights
    (tmp_path / "gen.json").write_text(json.dumps(cfg))
    with pytest.raises((ValueError, RuntimeError)):
        MTLUEGenerator.load(tmp_path / "gen")
    with pytest.raises(FileNotFoundError):
        MTLUEGenerator.load(tmp_path / "missing")


def test_quantize_protected_and_bound():
    x = torch.tensor([[0, 3, 250, 128]], dtype=torch.uint8)
    d = torch.tensor([[-8 / 255, -8 / 255, 8 / 255, 2.4 / 255]])
    q = quantize_protected(x, d)
    assert q.dtype == torch.uint8 and q.tolist() == [[0, 0, 255, 130]]
    assert eps_levels(8 / 255) == 8 and eps_levels(4 / 255) == 4
    # generator output, quantized, always within ceil(eps * 255) levels of the original
    g = MTLUEGenerator(UTK, image_size=8).eval()
    img = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    with torch.no_grad():
        _, delta = g(img.float() / 255, torch.tensor([[0, 1, 2]] * 4))
    prot = quantize_protected(img, delta)
    assert check_linf_bound(img, prot, 8 / 255) <= 8
    assert to_uint8(img.float() / 255).equal(img)
    bad = prot.clone()
    bad[2, 1, 3, 4] = (int(img[2, 1, 3, 4]) + 9) % 256 if int(img[2, 1, 3, 4]) < 240 else int(img[2, 1, 3, 4]) - 9
    with pytest.raises(ValueError, match=r"index \(2, 1, 3, 4\)"):
        check_linf_bound(img, bad, 8 / 255)


def test_delta_units_eps_reads_decoder_output_in_units_of_eps(tmp_path):
    torch.manual_seed(0)
    raw = MTLUEGenerator(UTK, image_size=8, delta_units="raw").eval()
    scaled = MTLUEGenerator(UTK, image_size=8).eval()  # "eps" is the default
    scaled.load_state_dict(raw.state_dict())
    x, y = torch.rand(4, 3, 8, 8) * 0.5 + 0.25, torch.tensor([[0, 1, 2]] * 4)  # away from the [0, 1] box
    with torch.no_grad():
        d_raw = raw.perturbation(x, y)
        _, delta = scaled(x, y)
        _, delta_raw = raw(x, y)
    eps = scaled.eps
    assert torch.allclose(delta, (d_raw * eps).clamp(-eps, eps), atol=1e-6)
    assert torch.allclose(delta_raw, d_raw.clamp(-eps, eps), atol=1e-6)
    # the point of the option: far fewer pixels start clipped (no gradient) than with "raw"
    assert float((delta.abs() < eps * 0.999).float().mean()) > 4 * float((delta_raw.abs() < eps * 0.999).float().mean())
    path = scaled.save(tmp_path / "g")
    assert json.loads((tmp_path / "g.json").read_text())["delta_units"] == "eps"
    assert MTLUEGenerator.load(path).delta_units == "eps"
    cfg = json.loads((tmp_path / "g.json").read_text())
    del cfg["delta_units"]  # a generator saved before the option existed is "raw"
    assert MTLUEGenerator.from_config(cfg).delta_units == "raw"
    with pytest.raises(ValueError, match="delta_units"):
        MTLUEGenerator(UTK, image_size=8, delta_units="tanh")
