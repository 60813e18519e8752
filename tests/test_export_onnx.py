"""ONNX export: parity with PyTorch on real UTKFace images, standard ops, metadata, fp16 and uint8
variants, the ``mtlguard export`` CLI, and a consumer process that never imports mtlguard."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from test_engine_standin import exported_onnx, saved_checkpoint, shared_generator, utk_batch

from mtlguard._version import __version__
from mtlguard.export import FP16_TOLERANCE, read_onnx_facts


def _torch_out(images: np.ndarray, labels: np.ndarray):
    with torch.no_grad():
        p, d = shared_generator()(torch.from_numpy(images), torch.from_numpy(labels))
    return p.numpy(), d.numpy()


def _ort_out(path, images, labels):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(["protected", "delta"], {"image": images, "labels": labels})


@pytest.mark.parametrize("partial", [False, True], ids=["all-protected", "partial-protection"])
def test_onnx_fp32_parity_on_real_images(utkface_root, partial):
    images, labels, _ = utk_batch(utkface_root, 6)
    if partial:  # -1 = task not protected (mean embedding)
        labels = labels.copy()
        labels[::2, 0] = -1
        labels[1::3, :] = -1
    tp, td = _torch_out(images, labels)
    op, od = _ort_out(exported_onnx(), images, labels)
    assert np.abs(op - tp).max() <= 1e-5
    assert np.abs(od - td).max() <= 1e-5
    # dynamic batch: a single image and an odd batch give the same per-image results
    op1, _ = _ort_out(exported_onnx(), images[:1], labels[:1])
    assert np.abs(op1 - tp[:1]).max() <= 1e-5
    eps = shared_generator().eps
    assert np.abs(od).max() <= eps + 1e-6 and od.std() > 0  # a real, bounded perturbation


def test_onnx_standard_ops_checker_and_metadata():
    path = exported_onnx()
    m = onnx.load(str(path))
    onnx.checker.check_model(m, full_check=True)
    assert {n.domain for n in m.graph.node} <= {"", "ai.onnx"}, "custom-domain ops found"
    assert not any(n.op_type.startswith("mtlguard") for n in m.graph.node)
    assert [i.name for i in m.graph.input] == ["image", "labels"]
    assert [o.name for o in m.graph.output] == ["protected", "delta"]
    batch_dim = m.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value"), "batch must be dynamic"
    assert m.graph.input[1].type.tensor_type.elem_type == onnx.TensorProto.INT64
    facts = read_onnx_facts(path)
    assert facts.task_names == ["age", "gender", "race"]
    assert facts.tasks[1]["class_names"] == ["male", "female"]
    assert facts.eps == pytest.approx(8 / 255)
    assert facts.image_size == (32, 32) and facts.in_channels == 3
    assert facts.version == __version__ and len(facts.config_hash) == 64
    props = {p.key: p.value for p in m.metadata_props}
    assert json.loads(props["mtlguard.tasks"])[0]["num_classes"] == 9


def test_onnx_fp16_within_documented_bound(utkface_root):
    path = exported_onnx(fp16=True)
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # I/O kept fp32
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer)
    inits = {t.name: t.data_type for t in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    norms = [n for n in m.graph.node if n.op_type == "InstanceNormalization"]
    assert norms, "the generator's InstanceNorm layers are missing from the graph"
    for node in norms:  # kept in fp32: fp32 scale/bias and a Cast-to-float32 feeding it
        assert [inits.get(i) for i in node.input[1:]] == [onnx.TensorProto.FLOAT] * 2
        cast = producer[node.input[0]]
        assert cast.op_type == "Cast" and onnx.helper.get_attribute_value(cast.attribute[0]) == onnx.TensorProto.FLOAT
    assert read_onnx_facts(path).precision == "fp16"
    images, labels, _ = utk_batch(utkface_root, 6)
    tp, td = _torch_out(images, labels)
    op, od = _ort_out(path, images, labels)
    assert np.abs(op - tp).max() <= FP16_TOLERANCE
    assert np.abs(od - td).max() <= FP16_TOLERANCE


def test_onnx_uint8_nhwc_variant(utkface_root):
    path = exported_onnx(uint8_io=True)
    images, labels, _ = utk_batch(utkface_root, 4)
    u8 = np.rint(images * 255).astype(np.uint8).transpose(0, 2, 3, 1).copy()
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert s.get_inputs()[0].type == "tensor(uint8)" and s.get_outputs()[0].type == "tensor(uint8)"
    prot, delta = s.run(None, {"image": u8, "labels": labels})
    assert prot.shape == u8.shape and prot.dtype == np.uint8
    tp, _ = _torch_out(u8.transpose(0, 3, 1, 2).astype(np.float32) / 255, labels)
    expect = np.rint(tp * 255).clip(0, 255).astype(np.int16).transpose(0, 2, 3, 1)
    assert np.abs(prot.astype(np.int16) - expect).max() <= 1  # rounding at .5 boundaries
    assert np.abs(prot.astype(np.int16) - u8.astype(np.int16)).max() <= int(np.ceil(8 / 255 * 255))


def test_onnx_runs_in_a_process_that_never_imports_mtlguard(utkface_root, tmp_path):
    images, labels, names = utk_batch(utkface_root, 5)
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np, onnxruntime as ort
        from PIL import Image
        sess = ort.InferenceSession({str(exported_onnx())!r}, providers=["CPUExecutionProvider"])
        meta = sess.get_modelmeta().custom_metadata_map
        h, w = json.loads(meta["mtlguard.image_size"])
        tasks = [t["name"] for t in json.loads(meta["mtlguard.tasks"])]
        imgs = []
        for name in {names!r}:
            im = Image.open({str(utkface_root / "images")!r} + "/" + name).convert("RGB").resize((w, h), Image.Resampling.BILINEAR)
            imgs.append(np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0)
        labels = np.asarray({labels.tolist()!r}, dtype=np.int64)
        prot, delta = sess.run(None, {{"image": np.stack(imgs), "labels": labels}})
        np.save({str(tmp_path / "prot.npy")!r}, prot)
        assert "mtlguard" not in sys.modules and not any(m.startswith("mtlguard") for m in sys.modules)
        print(json.dumps({{"tasks": tasks, "eps": float(meta["mtlguard.eps"])}}))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["tasks"] == ["age", "gender", "race"]
    tp, _ = _torch_out(images, labels)
    assert np.abs(np.load(tmp_path / "prot.npy") - tp).max() <= 1e-5


def test_export_cli_output_and_errors(tmp_path, capsys):
    from mtlguard.cli.main import main

    # exported_onnx() is produced by `mtlguard export --model <checkpoint>`; the parity tests above
    # compare it with the in-memory generator, so save/load/export round-trip is covered there.
    out = exported_onnx()
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []  # no temp files left
    assert main(["export", "--model", str(tmp_path / "missing.safetensors"), "--output", str(tmp_path / "x.onnx")]) == 2
    assert "missing.safetensors" in capsys.readouterr().err
    assert main(["export", "--model", str(saved_checkpoint()), "--output", str(tmp_path / "x.bin")]) == 2
    assert "--format" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_export_rejects_a_non_generator_onnx(tmp_path):
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(g), str(tmp_path / "plain.onnx"))
    with pytest.raises(ValueError, match="plain.onnx.*not an mtlguard generator"):
        read_onnx_facts(tmp_path / "plain.onnx")


def test_fp16_uint8_variant_together(utkface_root, tmp_path):
    """Both variants at once (uint8 surgery, then fp16 conversion) on the exported fp32 file."""
    from mtlguard.export import onnx_variant

    both = onnx_variant(exported_onnx(), tmp_path / "both.onnx", fp16=True, uint8_io=True)
    facts = read_onnx_facts(both)
    assert (facts.io, facts.precision) == ("uint8_nhwc", "fp16")
    images, labels, _ = utk_batch(utkface_root, 3)
    u8 = np.rint(images * 255).astype(np.uint8).transpose(0, 2, 3, 1).copy()
    prot, _ = ort.InferenceSession(str(both), providers=["CPUExecutionProvider"]).run(None, {"image": u8, "labels": labels})
    tp, _ = _torch_out(u8.transpose(0, 3, 1, 2).astype(np.float32) / 255, labels)
    expect = np.rint(tp * 255).astype(np.int16).transpose(0, 2, 3, 1)
    assert np.abs(prot.astype(np.int16) - expect).max() <= 2  # fp16 + rounding
    with pytest.raises(ValueError, match="derive variants from the float32"):
        onnx_variant(both, tmp_path / "again.onnx", fp16=True)


def test_delta_units_eps_generator_exports_with_parity(utkface_root, tmp_path):
    """A generator fitted with ``delta_units="eps"`` (decoder output scaled by eps before the clip)
    keeps that scaling through save -> load -> ``mtlguard export`` -> onnxruntime."""
    from mtlguard.cli.main import main
    from mtlguard.unlearnable import MTLUEGenerator

    from test_engine_standin import make_generator

    g = make_generator((32, 32), seed=1)
    cfg = g.config()
    cfg["delta_units"] = "eps"
    h = MTLUEGenerator.from_config(cfg)
    h.load_state_dict(g.state_dict())
    last = [m for m in h.decoder if isinstance(m, torch.nn.ConvTranspose2d)][-1]
    with torch.no_grad():
        last.weight.mul_(1 / h.eps)  # undo make_generator's shrink so the eps-scaled output is ~eps, partly clipped
    h.eval()
    ckpt = h.save(tmp_path / "gen_eps")
    out = tmp_path / "gen_eps.onnx"
    assert main(["export", "--model", str(ckpt), "--output", str(out)]) == 0
    images, labels, _ = utk_batch(utkface_root, 4)
    with torch.no_grad():
        tp, td = h(torch.from_numpy(images), torch.from_numpy(labels))
        raw = h.perturbation(torch.from_numpy(images), torch.from_numpy(labels))
    op, od = _ort_out(out, images, labels)
    assert np.abs(od - td.numpy()).max() <= 1e-5 and np.abs(op - tp.numpy()).max() <= 1e-5
    x = torch.from_numpy(images)
    expect = (x + (raw * h.eps).clamp(-h.eps, h.eps)).clamp(0, 1) - x  # eps-scaled, then the two boxes
    assert np.allclose(td.numpy(), expect.numpy(), atol=1e-6)
    clipped = float((td.abs() >= h.eps * 0.999).float().mean())
    assert 0.0 < clipped < 1.0  # both regimes of the clip are exercised


def test_tiled_embedding_generator_exports_with_parity(utkface_root, tmp_path):
    """``emb_tile`` (periodic class codes) survives ``mtlguard export``: the ONNX graph repeats the tile
    like the eager module, on real faces with protected and unprotected (-1) labels."""
    from mtlguard.cli.main import main
    from mtlguard.unlearnable import MTLUEGenerator

    from test_engine_standin import make_generator

    g = make_generator((32, 32), seed=2)
    h = MTLUEGenerator.from_config({**g.config(), "emb_tile": 4})
    torch.manual_seed(2)
    h.load_state_dict({**g.state_dict(), "table": torch.randn_like(h.table)})
    h.eval()
    out = tmp_path / "gen_tile.onnx"
    assert main(["export", "--model", str(h.save(tmp_path / "gen_tile")), "--out", str(out)]) == 0
    assert read_onnx_facts(out).config["generator"]["emb_tile"] == 4
    images, labels, _ = utk_batch(utkface_root, 4)
    labels[1, 2] = -1
    with torch.no_grad():
        tp, td = h(torch.from_numpy(images), torch.from_numpy(labels))
    op, od = _ort_out(out, images, labels)
    assert np.abs(od - td.numpy()).max() <= 1e-5 and np.abs(op - tp.numpy()).max() <= 1e-5
    from mtlguard.export._load import generator_from_onnx

    assert torch.equal(generator_from_onnx(out).table, h.table)  # the small table is not folded into copies


def test_split_delta_generator_keeps_a_luma_floor_and_exports_with_parity(utkface_root, tmp_path):
    """``delta_channels="split"``: the decoder's luma plane and per-channel planes each carry at most half
    the budget, so grayscale (BT.601 weights sum to 1) keeps the luma half; the ONNX graph and the
    generator rebuilt from it compute the same delta."""
    from mtlguard.cli.main import main
    from mtlguard.export._load import generator_from_onnx
    from mtlguard.data.utkface import UTKFACE_TASKS
    from mtlguard.unlearnable import MTLUEGenerator
    from mtlguard.unlearnable.eot import grayscale

    torch.manual_seed(3)
    g = MTLUEGenerator(UTKFACE_TASKS, image_size=32, delta_channels="split").eval()
    assert g.decoder[-1].out_channels == 4
    images, labels, _ = utk_batch(utkface_root, 4)
    x, lab = torch.from_numpy(images), torch.from_numpy(labels)
    outs = {}
    g.decoder.register_forward_hook(lambda m, i, o: outs.__setitem__("d", o))
    with torch.no_grad():
        tp, td = g(x * 0 + 0.5, lab)  # mid-grey: the [0, 1] box does not bind
    d = outs["d"]
    expect = g.eps * 0.5 * (d[:, :1].clamp(-1, 1) + d[:, 1:].clamp(-1, 1))
    assert torch.allclose(td, expect, atol=1e-7) and td.abs().max() <= g.eps + 1e-7
    assert float((d.abs() > 1).float().mean()) > 0.05  # the per-half clip is exercised
    # grayscale keeps the luma half: gray(delta) - eps/2 * clip(u) is the per-channel half's luma, |.| <= eps/2
    rest = grayscale(td)[:, 0] - g.eps * 0.5 * d[:, 0].clamp(-1, 1)
    assert rest.abs().max() <= g.eps / 2 + 1e-6
    out = tmp_path / "gen_split.onnx"
    assert main(["export", "--model", str(g.save(tmp_path / "gen_split")), "--out", str(out)]) == 0
    with torch.no_grad():
        tp, td = g(x, lab)
    op, od = _ort_out(out, images, labels)
    assert np.abs(od - td.numpy()).max() <= 1e-5 and np.abs(op - tp.numpy()).max() <= 1e-5
    back = generator_from_onnx(out).eval()
    assert back.delta_channels == "split"
    with torch.no_grad():
        assert torch.allclose(back(x, lab)[1], td, atol=1e-6)
    with pytest.raises(ValueError, match="split.*in_channels=1"):
        MTLUEGenerator(UTKFACE_TASKS, in_channels=1, image_size=32, delta_channels="split")
