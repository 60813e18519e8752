"""The int8 (static QDQ) export of a generator (issue 15, section 3): the eps clip stays float32 (checked, and the
checker refuses graphs where it does not), the bound holds on real UTKFace images (at the model's size and in the
engine's native-size outputs), the output stays close to fp32, the CLI option and its refusals; and the torch
generator rebuilt from an ONNX export (the torch-eager comparison of bench/generator_cpu.py) matches it."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from mtlguard.engine.pipeline import default_model
from mtlguard.export import read_onnx_facts
from mtlguard.export.int8 import INT8_OPS, QUANT_OPS, check_float_eps_clip, quantize_int8, tail_nodes

#: |(x + d) - x| can exceed |d| by float32 rounding at values up to 1 (the fp32 graph has the same slack)
FLOAT_SLACK = 2.0 ** -22


def _utk_files(root, start: int, count: int):
    from mtlguard.data.utkface import parse_utkface_name

    files = sorted(p for p in (root / "images").iterdir() if parse_utkface_name(p.name))
    return files[start::max(1, len(files) // count)][:count]


def _feeds(files, facts):
    from mtlguard.data.utkface import age_to_bin, parse_utkface_name
    from mtlguard.engine.imageio import decode_file
    from mtlguard.engine.perturb import model_input

    x = np.stack([model_input(decode_file(f).rgb, tuple(facts.image_size)) for f in files])
    y = np.array([[age_to_bin(a), g, r] for a, g, r in (parse_utkface_name(f.name) for f in files)], dtype=np.int64)
    return x, y


def _session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def int8_model(utkface_root, tmp_path_factory):
    """The bundled default generator quantized with 32 real UTKFace calibration images."""
    tmp = tmp_path_factory.mktemp("int8")
    calib = tmp / "calib"
    calib.mkdir()
    for f in _utk_files(utkface_root, 3, 32):
        shutil.copyfile(f, calib / f.name)
    return quantize_int8(default_model(), tmp / "gen_int8.onnx", calib, images=32)


def test_int8_file_keeps_the_eps_clip_float_and_records_itself(int8_model):
    m = onnx.load(str(int8_model))
    facts = read_onnx_facts(int8_model)
    assert facts.precision == "int8" and facts.io == "float32_nchw"
    ops = {n.op_type for n in m.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # it is quantized...
    assert {n.domain for n in m.graph.node} <= {"", "ai.onnx"}  # ...with standard ops only
    clip = check_float_eps_clip(m, facts.eps)  # ...and the eps clip and everything after it stay float32
    names = tail_nodes(m, facts.eps)
    assert clip in names and names[0] != clip  # the Mul(eps) before the clip is kept float too
    tail_ops = [n.op_type for n in m.graph.node if n.name in names]
    assert tail_ops == ["Mul", "Clip", "Add", "Clip", "Sub"]
    info = json.loads({p.key: p.value for p in m.metadata_props}["mtlguard.quantization"])
    assert info["ops"] == list(INT8_OPS) and info["calibration_images"] == 32
    assert "not re-verified" in info["protection"]


def test_the_runtime_optimized_int8_graph_still_clips_in_float(int8_model, tmp_path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(int8_model), sess_options=opts, providers=["CPUExecutionProvider"])
    opt = onnx.load(str(tmp_path / "opt.onnx"))
    assert any(n.op_type == "QLinearConv" for n in opt.graph.node)  # the fused int8 kernels are used
    check_float_eps_clip(opt, read_onnx_facts(int8_model).eps)


def _with_node_after_clip(model, eps, make_nodes):
    """A copy of ``model`` with ``make_nodes(clip_out) -> (nodes, new_out)`` spliced after the eps clip."""
    from mtlguard.export.int8 import find_eps_clip

    m = onnx.ModelProto()
    m.CopyFrom(model)
    clip = find_eps_clip(m, eps)
    old = clip.output[0]
    nodes, new = make_nodes(old)
    for n in m.graph.node:
        n.input[:] = [new if i == old else i for i in n.input]
    at = list(m.graph.node).index(clip) + 1
    for k, n in enumerate(nodes):
        m.graph.node.insert(at + k, n)
    return m


def test_checker_refuses_quantized_tails_and_missing_clips():
    model = onnx.load(str(default_model()))
    eps = read_onnx_facts(default_model()).eps
    check_float_eps_clip(model, eps)  # the fp32 export passes
    model.graph.initializer.extend([helper.make_tensor("t_scale", TensorProto.FLOAT, [], [eps / 127]),
                                    helper.make_tensor("t_zero", TensorProto.INT8, [], [0])])

    def qdq(x):
        return [helper.make_node("QuantizeLinear", [x, "t_scale", "t_zero"], ["t_q"], name="t_q"),
                helper.make_node("DequantizeLinear", ["t_q", "t_scale", "t_zero"], ["t_dq"], name="t_dq")], "t_dq"

    with pytest.raises(ValueError, match="quantized or non-standard nodes after the eps clip"):
        check_float_eps_clip(_with_node_after_clip(model, eps, qdq), eps)
    with pytest.raises(ValueError, match="missing"):
        check_float_eps_clip(model, eps / 2)  # no Clip(-eps/2, eps/2): the bound is not in the graph
    unhooked = onnx.ModelProto()
    unhooked.CopyFrom(model)
    sub = next(n for n in unhooked.graph.node if "delta" in n.output)
    sub.output[0] = "delta_unused"
    unhooked.graph.node.append(helper.make_node("Identity", ["image"], ["delta"], name="t_id"))
    with pytest.raises(ValueError, match="not computed from the eps clip"):
        check_float_eps_clip(unhooked, eps)
    assert set(QUANT_OPS) >= {"QuantizeLinear", "DequantizeLinear"}


def test_int8_eps_bound_and_fp32_agreement_on_real_images(int8_model, utkface_root):
    facts = read_onnx_facts(int8_model)
    x, y = _feeds(_utk_files(utkface_root, 11, 64), facts)  # other images than the calibration ones
    _, d8 = _session(int8_model).run(None, {"image": x, "labels": y})
    _, d32 = _session(default_model()).run(None, {"image": x, "labels": y})
    assert np.abs(d8).max() <= facts.eps + FLOAT_SLACK
    assert np.abs(d8).max() >= 0.99 * facts.eps  # the perturbation is not collapsed
    diff = np.abs(d8 - d32) / facts.eps
    assert diff.mean() < 0.03 and np.corrcoef(d8.ravel(), d32.ravel())[0, 1] > 0.99
    u8 = lambda d: np.rint(np.clip(x + d, 0, 1) * 255)  # noqa: E731
    assert (u8(d8) != u8(d32)).mean() < 0.15


def test_engine_with_the_int8_model_keeps_the_uint8_bound(int8_model, utkface_root, tmp_path):
    from mtlguard.engine import protect_directory
    from mtlguard.engine.imageio import decode_file

    inp = tmp_path / "in"
    inp.mkdir()
    for f in _utk_files(utkface_root, 17, 12):
        shutil.copyfile(f, inp / f.name)
    kw = dict(dataset="utkface", progress=False, metrics=False, threads=1, workers=1)
    rep8 = protect_directory(inp, tmp_path / "o8", model=int8_model, **kw)
    rep32 = protect_directory(inp, tmp_path / "o32", model=default_model(), **kw)
    assert rep8["done"] == rep32["done"] == 12 and rep8["max_abs_delta_written_uint8"] <= 8
    moved = differ = total = 0
    for f in sorted(inp.iterdir()):
        src = decode_file(f).rgb.astype(np.int16)
        a = decode_file(tmp_path / "o8" / (f.stem + ".png")).rgb.astype(np.int16)
        b = decode_file(tmp_path / "o32" / (f.stem + ".png")).rgb.astype(np.int16)
        assert np.abs(a - src).max() <= 8
        moved += int((a != src).sum())
        differ += int((a != b).sum())
        total += a.size
    assert moved / total > 0.3 and differ / total < 0.15  # it perturbs, and mostly like fp32


def test_export_cli_int8_and_its_refusals(int8_model, tmp_path, capsys):
    from mtlguard.cli.main import main

    calib = int8_model.parent / "calib"
    out = tmp_path / "g8.onnx"
    assert main(["export", "--onnx", str(default_model()), "--out", str(out), "--int8", "--calibration",
                 str(calib), "--calibration-images", "8"]) == 0
    assert read_onnx_facts(out).precision == "int8"
    assert json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["mtlguard.quantization"])[
        "calibration_images"] == 8
    capsys.readouterr()
    assert main(["export", "--onnx", str(default_model()), "--out", str(tmp_path / "x.onnx"), "--int8"]) == 2
    assert "--calibration" in capsys.readouterr().err
    assert main(["export", "--onnx", str(default_model()), "--out", str(tmp_path / "x.onnx"), "--int8", "--fp16",
                 "--calibration", str(calib)]) == 2
    assert "does not combine" in capsys.readouterr().err
    assert main(["export", "--onnx", str(out), "--out", str(tmp_path / "y.onnx"), "--int8", "--calibration",
                 str(calib)]) == 2  # an int8 file is not re-quantized
    assert "float32 NCHW" in capsys.readouterr().err
    assert main(["export", "--onnx", str(default_model()), "--out", str(tmp_path / "z.onnx"), "--int8",
                 "--calibration", str(tmp_path / "nowhere")]) == 2
    assert not (tmp_path / "z.onnx").exists()


def test_torch_generator_rebuilt_from_onnx_matches_it(utkface_root):
    import torch

    from mtlguard.export._load import generator_from_onnx

    facts = read_onnx_facts(default_model())
    gen = generator_from_onnx(default_model())
    x, y = _feeds(_utk_files(utkface_root, 5, 16), facts)
    y[::3, 1] = -1  # an unprotected task too
    _, d_onnx = _session(default_model()).run(None, {"image": x, "labels": y})
    with torch.inference_mode():
        _, d_torch = gen(torch.from_numpy(x), torch.from_numpy(y))
    assert np.abs(d_torch.numpy() - d_onnx).max() < 1e-5
    assert np.abs(d_onnx).max() > 0.5 * facts.eps  # a non-trivial comparison


def test_torch_rebuild_refuses_a_non_fp32_file(int8_model):
    from mtlguard.export._load import generator_from_onnx

    with pytest.raises(ValueError, match="float32 NCHW"):
        generator_from_onnx(int8_model)


def test_export_cli_int8_from_a_checkpoint(int8_model, tmp_path):
    """``--model CKPT --int8``: a raw-units generator (no Mul before its clip) exported and quantized in one step."""
    from test_engine_standin import saved_checkpoint

    from mtlguard.cli.main import main

    out = tmp_path / "ckpt8.onnx"
    calib = int8_model.parent / "calib"
    assert main(["export", "--model", str(saved_checkpoint()), "--out", str(out), "--int8", "--calibration",
                 str(calib), "--calibration-images", "8"]) == 0
    m, facts = onnx.load(str(out)), read_onnx_facts(out)
    assert facts.precision == "int8" and any(n.op_type == "QuantizeLinear" for n in m.graph.node)
    check_float_eps_clip(m, facts.eps)
    assert [n.op_type for n in m.graph.node if n.name in tail_nodes(m, facts.eps)][0] == "Clip"
    assert not list(tmp_path.glob("*fp32*"))  # the intermediate float32 export stayed in its temp folder
