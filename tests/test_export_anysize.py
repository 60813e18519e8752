"""The any-size ONNX variant (``mtlguard export --any-size``): bit-identical to the engine's recipe on real
UTKFace images of several sizes, its resize equal to Pillow's on random sizes, the eps bound held by the
graph, standard ops + metadata, and a run in a process where mtlguard cannot be imported."""
from __future__ import annotations

import json
import subprocess
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from isolated_python import isolated_command
from test_engine_standin import make_generator, utk_labels, utk_names

from mtlguard.engine.perturb import apply_delta_batch, bound_uint8, model_input
from mtlguard.export import read_onnx_facts
from mtlguard.export.anysize import ANY_SIZE_IO, model_input_graph, to_any_size
from mtlguard.export.metadata import GeneratorFacts



def _session(path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def generators(tmp_path_factory):
    """``{name: (float32 ONNX, any-size ONNX)}``: the bundled default generator (32x32, variant derived with
    ``--onnx``) and a non-square 28x24 generator exported from its run folder with ``--model``."""
    from importlib.resources import files

    from mtlguard.cli.main import main

    tmp = tmp_path_factory.mktemp("anysize")
    bundled = files("mtlguard") / "assets" / "default_generator.onnx"
    assert main(["export", "--onnx", str(bundled), "--out", str(tmp / "default_any.onnx"), "--any-size"]) == 0
    make_generator((28, 24), seed=1).save(tmp / "run" / "generator.safetensors")
    assert main(["export", "--model", str(tmp / "run"), "--out", str(tmp / "g28.onnx")]) == 0
    assert main(["export", "--model", str(tmp / "run"), "--output", str(tmp / "g28_any.onnx"), "--any-size"]) == 0
    return {"default": (str(bundled), tmp / "default_any.onnx"), "g28x24": (tmp / "g28.onnx", tmp / "g28_any.onnx")}


def _real_images(root, n: int = 6) -> list[tuple[np.ndarray, np.ndarray]]:
    """Real UTKFace faces at several sizes: the 200x200 original, odd/non-square crops, a Pillow
    enlargement, and sizes below the generator's; each with its filename labels (some set to -1)."""
    names = utk_names(root, n)
    labels = utk_labels(names)
    labels[1, 0] = -1
    labels[3, :] = -1
    out = []
    for i, name in enumerate(names):
        with Image.open(root / "images" / name) as im:
            im = im.convert("RGB")
            variants = [im, im.crop((23, 11, 120, 162)), im.resize((263, 341), Image.Resampling.BICUBIC),
                        im.crop((5, 7, 50, 38)), im.resize((26, 20), Image.Resampling.LANCZOS),
                        im.crop((0, 0, 199, 57))]
        out.append((np.asarray(variants[i % len(variants)]), labels[i]))
    return out


def _engine(gen_onnx, rgb: np.ndarray, labels: np.ndarray, facts) -> np.ndarray:
    """The engine's recipe: model_input -> float32 generator (onnxruntime) -> apply_delta_batch."""
    x = model_input(rgb, facts.image_size)[None]
    _, delta = _session(gen_onnx).run(None, {"image": x, "labels": labels[None].astype(np.int64)})
    return apply_delta_batch(rgb[None], delta, facts.eps)[0][0]


@pytest.mark.parametrize("name", ["default", "g28x24"])
def test_bit_identical_to_the_engine_on_real_utkface(utkface_root, generators, name):
    gen_onnx, any_onnx = generators[name]
    facts = read_onnx_facts(gen_onnx)
    sess = _session(any_onnx)
    sizes = set()
    for rgb, labels in _real_images(utkface_root):
        (prot,) = sess.run(None, {"image": rgb, "labels": labels})
        expect = _engine(gen_onnx, rgb, labels, facts)
        assert prot.dtype == np.uint8 and prot.shape == rgb.shape
        assert np.array_equal(prot, expect), f"{rgb.shape}: {(prot != expect).sum()} pixels differ"
        diff = np.abs(prot.astype(np.int16) - rgb.astype(np.int16))
        assert diff.max() <= bound_uint8(facts.eps) and diff.mean() > 0.5  # bounded, and a real perturbation
        sizes.add(rgb.shape[:2])
    assert {(200, 200), (151, 97), (341, 263)} <= sizes and len(sizes) == 6


def test_resize_equals_pillow_on_random_sizes():
    """Step 1 alone against engine.perturb.model_input (Pillow), including Pillow's vertical-first order."""
    rng = np.random.default_rng(0)
    graphs = {}
    vertical_first = 0
    for trial in range(80):
        c = 1 if trial % 4 == 0 else 3
        size = [(32, 32), (28, 24), (17, 45)][trial % 3]
        h_in, w_in = (int(v) for v in rng.integers(1, 330, 2))
        img = rng.integers(0, 256, (h_in, w_in, c), dtype=np.uint8)
        key = (size, c)
        if key not in graphs:
            graphs[key] = ort.InferenceSession(model_input_graph(size, c).SerializeToString(),
                                               providers=["CPUExecutionProvider"])
        (x,) = graphs[key].run(None, {"image": img})
        assert np.array_equal(x[0], model_input(img, size)), (h_in, w_in, size, c)
        vertical_first += h_in > size[0] and h_in - size[0] > 2 * (w_in - size[1])
    assert vertical_first >= 10  # both pass orders were exercised


def test_luma_resize_equals_pillow_convert_l():
    """1-channel generators see colour images as Pillow's convert("L") (BT.601, fixed point)."""
    rng = np.random.default_rng(3)
    sess = ort.InferenceSession(model_input_graph((32, 32), 3, luma=True).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    for h_in, w_in in [(200, 200), (151, 97), (31, 45), (32, 32)]:
        img = rng.integers(0, 256, (h_in, w_in, 3), dtype=np.uint8)
        gray = np.asarray(Image.fromarray(img).convert("L"))[:, :, None]
        (x,) = sess.run(None, {"image": img})
        assert np.array_equal(x[0], model_input(gray, (32, 32)))


def test_one_channel_generator_keeps_colour(utkface_root, tmp_path):
    """A 1-channel generator on colour photos: luma in, the same delta on every channel (the engine's rule),
    colour images stay colour; gray images work too."""
    import inspect

    import torch

    from mtlguard.export import export_onnx, onnx_variant
    from mtlguard.unlearnable import MTLUEGenerator

    from test_engine_standin import UTK_TASKS

    if "channels" not in inspect.signature(model_input).parameters:
        pytest.skip("this engine has no luma model input (model_input(..., channels=1))")
    torch.manual_seed(0)
    gen = export_onnx(MTLUEGenerator(UTK_TASKS, in_channels=1, image_size=(32, 32)).eval(), tmp_path / "g1.onnx")
    sess = _session(onnx_variant(gen, tmp_path / "g1_any.onnx", any_size=True))
    facts = read_onnx_facts(gen)
    labels = np.array([2, 0, -1], np.int64)
    with Image.open(utkface_root / "images" / utk_names(utkface_root, 1)[0]) as im:
        colour = np.asarray(im.convert("RGB").crop((23, 11, 120, 162)))
    for rgb in (colour, np.asarray(Image.fromarray(colour).convert("L"))[:, :, None]):
        (prot,) = sess.run(None, {"image": rgb, "labels": labels})
        x = model_input(rgb, facts.image_size, channels=1)[None]
        _, delta = _session(gen).run(None, {"image": x, "labels": labels[None]})
        expect = apply_delta_batch(rgb[None], delta, facts.eps)[0][0]
        assert prot.shape == rgb.shape and np.array_equal(prot, expect)


def _fake_generator(delta_value: float, size=(8, 8), eps=4 / 255):
    """A float32 'generator' graph whose delta ignores eps (constant ``delta_value``), with its facts."""
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Mul", ["image", "zero"], ["z"]), helper.make_node("Add", ["z", "dv"], ["delta"]),
         helper.make_node("Add", ["image", "delta"], ["protected"])], "fake",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, *size]),
         helper.make_tensor_value_info("labels", TensorProto.INT64, ["N", 1])],
        [helper.make_tensor_value_info("protected", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("delta", TensorProto.FLOAT, None)],
        initializer=[helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
                     helper.make_tensor("dv", TensorProto.FLOAT, [], [delta_value])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    facts = GeneratorFacts(tasks=[{"name": "t", "kind": "multiclass", "num_classes": 2, "class_names": None}],
                           eps=eps, image_size=size, in_channels=3)
    return model, facts


@pytest.mark.parametrize("delta_value", [5.0, -5.0])
def test_eps_bound_is_enforced_by_the_graph(delta_value):
    model, facts = _fake_generator(delta_value)
    sess = ort.InferenceSession(to_any_size(model, facts).SerializeToString(), providers=["CPUExecutionProvider"])
    img = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    (prot,) = sess.run(None, {"image": img, "labels": np.array([1], np.int64)})
    diff = prot.astype(np.int16) - img.astype(np.int16)
    b = bound_uint8(facts.eps)
    assert np.abs(diff).max() == b  # a delta of 5.0 (1275 steps) is cut to ceil(eps * 255)
    assert np.array_equal(prot, np.clip(img.astype(np.int16) + int(np.sign(delta_value)) * b, 0, 255))


def test_graph_ops_io_and_metadata(generators):
    _, any_onnx = generators["g28x24"]
    m = onnx.load(str(any_onnx))
    onnx.checker.check_model(m, full_check=True)
    assert {n.domain for n in m.graph.node} <= {"", "ai.onnx"}
    assert [(i.name, i.type.tensor_type.elem_type) for i in m.graph.input] == [
        ("image", onnx.TensorProto.UINT8), ("labels", onnx.TensorProto.INT64)]
    assert [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim] == ["H", "W", 3]
    assert [(o.name, o.type.tensor_type.elem_type) for o in m.graph.output] == [("protected", onnx.TensorProto.UINT8)]
    props = {p.key: p.value for p in m.metadata_props}
    assert props["mtlguard.io"] == ANY_SIZE_IO and "Pillow" in props["mtlguard.resize"]
    assert json.loads(props["mtlguard.image_size"]) == [28, 24]
    assert {"If", "CumSum", "Gather", "Round", "Clip"} <= {n.op_type for n in m.graph.node}  # MatMul: in If


def test_runs_where_mtlguard_cannot_be_imported(utkface_root, generators, tmp_path):
    gen_onnx, any_onnx = generators["default"]
    name = utk_names(utkface_root, 1)[0]
    script = tmp_path / "consumer.py"
    script.write_text(textwrap.dedent(f"""
        import importlib.util, json
        import numpy as np, onnxruntime as ort
        from PIL import Image
        assert importlib.util.find_spec("mtlguard") is None, "mtlguard must not be importable here"
        sess = ort.InferenceSession({str(any_onnx)!r}, providers=["CPUExecutionProvider"])
        meta = sess.get_modelmeta().custom_metadata_map
        tasks = json.loads(meta["mtlguard.tasks"])
        rgb = np.asarray(Image.open({str(utkface_root / "images" / name)!r}).convert("RGB").crop((23, 11, 120, 162)))
        labels = np.array([t["class_names"].index(v) for t, v in zip(tasks, ["20-29", "female", "Asian"])], np.int64)
        (prot,) = sess.run(None, {{"image": rgb, "labels": labels}})
        np.save("protected.npy", prot)
        print(json.dumps({{"labels": labels.tolist(), "io": meta["mtlguard.io"]}}))
    """))
    r = subprocess.run(isolated_command(script), capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {"labels": [3, 1, 2], "io": ANY_SIZE_IO}
    with Image.open(utkface_root / "images" / name) as im:
        rgb = np.asarray(im.convert("RGB").crop((23, 11, 120, 162)))
    expect = _engine(gen_onnx, rgb, np.array([3, 1, 2]), read_onnx_facts(gen_onnx))
    assert np.array_equal(np.load(tmp_path / "protected.npy"), expect)


def test_cli_refuses_mixed_variants(generators, tmp_path, capsys):
    from mtlguard.cli.main import main

    gen_onnx, any_onnx = generators["g28x24"]
    assert main(["export", "--onnx", str(gen_onnx), "--out", str(tmp_path / "x.onnx"), "--any-size", "--fp16"]) == 2
    assert "do not combine it with --fp16" in capsys.readouterr().err
    assert main(["export", "--onnx", str(any_onnx), "--out", str(tmp_path / "y.onnx"), "--any-size"]) == 2
    assert "float32 NCHW export" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "y.onnx").exists()


def test_check_labels_validates_names_indices_and_ranges(generators):
    facts = read_onnx_facts(generators["default"][1])
    assert facts.check_labels(["20-29", "female", -1]).tolist() == [3, 1, -1]
    assert facts.check_labels([[8, "1", None], [0, 0, "Others"]]).tolist() == [[8, 1, -1], [0, 0, 4]]
    for bad, match in [([9, 0, 0], r"task 'age': invalid label 9"), ([0, "robot", 0], "'gender'.*'robot'"),
                       ([0, 0, -5], "'race'.*-5"), ([0, 0], "3 entries per image"), ([0, 1.5, 0], "1.5")]:
        with pytest.raises(ValueError, match=match):
            facts.check_labels(bad)
