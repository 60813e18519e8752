"""int8 variant of an exported generator: static QDQ quantization of its encoder's convolutions (onnxruntime).

:func:`quantize_int8` turns a float32 NCHW export into a QDQ model (``QuantizeLinear`` / ``DequantizeLinear``
around the ``Conv`` nodes: uint8 activations, per-channel int8 weights), calibrated with MinMax ranges on real
images of a folder (decoded and resized exactly as ``mtlguard-engine`` does).  What stays float32:

* the decoder (``ConvTranspose``: quantized, onnxruntime 1.32's CPU provider still ran it in float after
  dequantizing -- measured slower, with twice the error) and the label-embedding path (gathers, means);
* the tail from the eps scaling on: ``Mul(eps)`` -> ``Clip(-eps, eps)`` -> ``Add(image)`` -> ``Clip(0, 1)`` ->
  ``Sub(image)``.  These nodes are excluded from quantization by name, and :func:`check_float_eps_clip`
  refuses a model in which the ``Clip(-eps, eps)`` is not float32 with float32 bounds or in which any
  quantize/dequantize node lies between it and the outputs: ``|delta| <= eps`` holds by construction (as in
  the fp32 graph, up to the float32 rounding of ``(x + d) - x``; the engine clips the upsampled delta again).

Quantization changes the perturbation (bundled generator, real UTKFace images: about 6 % of the engine's written
uint8 pixels differ from the fp32 generator's, by at most 4 levels; ``bench/results/generator_cpu.json``).
The protection of an int8 generator has **not** been re-verified with victim training: it is an export option,
never the engine's default.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

#: op types quantized (the encoder's convolutions; everything else stays float32)
INT8_OPS = ("Conv",)
#: onnx ops that carry quantized tensors (none may lie between the eps clip and the outputs)
QUANT_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "ConvInteger",
             "QLinearAdd", "QLinearMul", "MatMulInteger", "QLinearMatMul")
DEFAULT_CALIBRATION_IMAGES = 256


def _initializers(model) -> dict:
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _scalar(inits: dict, name: str):
    v = inits.get(name)
    return None if v is None or v.size != 1 else v


def find_eps_clip(model, eps: float):
    """The ``Clip`` node whose bounds are the constants ``-eps`` and ``+eps`` (float32), or ``None``."""
    inits = _initializers(model)
    for node in model.graph.node:
        if node.op_type != "Clip" or len(node.input) < 3:
            continue
        lo, hi = _scalar(inits, node.input[1]), _scalar(inits, node.input[2])
        if lo is None or hi is None or lo.dtype != np.float32 or hi.dtype != np.float32:
            continue
        if np.isclose(float(lo), -eps, rtol=0, atol=1e-7) and np.isclose(float(hi), eps, rtol=0, atol=1e-7):
            return node
    return None


def _downstream(model, start) -> list:
    """Nodes reachable from ``start``'s outputs (``start`` excluded), in graph order."""
    live, out = set(start.output), []
    for node in model.graph.node:
        if any(i in live for i in node.input):
            out.append(node)
            live.update(node.output)
    return out


def _producer(model, tensor: str):
    return next((n for n in model.graph.node if tensor in n.output), None)


def tail_nodes(model, eps: float) -> list[str]:
    """Names of the nodes to keep float: the ``Mul`` feeding the eps clip (if any), the clip, and all nodes after it."""
    clip = find_eps_clip(model, eps)
    if clip is None:
        raise ValueError("no Clip(-eps, eps) node with float32 constant bounds in the graph: cannot keep the eps "
                         "bound outside the quantized part")
    mul = _producer(model, clip.input[0])
    nodes = ([mul] if mul is not None and mul.op_type == "Mul" else []) + [clip] + _downstream(model, clip)
    missing = [n.op_type for n in nodes if not n.name]
    if missing:
        raise ValueError(f"unnamed tail nodes {missing}: cannot exclude them from quantization")
    return [n.name for n in nodes]


def check_float_eps_clip(model, eps: float) -> str:
    """Raise ``ValueError`` unless ``delta`` and ``protected`` are computed in float32 from a float32
    ``Clip(-eps, eps)`` with no quantized node between that clip and the outputs; returns the clip's name."""
    clip = find_eps_clip(model, eps)
    if clip is None:
        raise ValueError(f"the eps clip Clip(-{eps:.6g}, {eps:.6g}) with float32 bounds is missing")
    after = _downstream(model, clip)
    produced = {o for n in after for o in n.output}
    for out in ("delta", "protected"):
        if out not in produced:
            raise ValueError(f"output {out!r} is not computed from the eps clip {clip.name!r}")
    bad = [f"{n.op_type} {n.name}" for n in after if n.op_type in QUANT_OPS or n.domain not in ("", "ai.onnx")]
    if bad:
        raise ValueError(f"quantized or non-standard nodes after the eps clip {clip.name!r}: {bad[:4]}")
    q_in = _producer(model, clip.input[0])
    if q_in is not None and q_in.op_type in QUANT_OPS:
        raise ValueError(f"the eps clip {clip.name!r} reads a quantized tensor ({q_in.op_type}), not a float32 one")
    return clip.name


def calibration_files(folder, count: int = DEFAULT_CALIBRATION_IMAGES) -> list[Path]:
    """``count`` image files spread evenly over the sorted image files under ``folder`` (recursive)."""
    from mtlguard.engine.discovery import IMAGE_EXTENSIONS

    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{folder}: calibration folder not found")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise ValueError(f"{folder}: no images to calibrate with (expected {', '.join(IMAGE_EXTENSIONS[:4])}, ...)")
    step = max(1, len(files) // max(1, count))
    return files[::step][:count]


def calibration_batches(facts, files, batch: int = 32, seed: int = 0) -> list[dict]:
    """Engine-identical model inputs of ``files`` with seeded uniform labels (each class and -1): feeds."""
    from mtlguard.engine.imageio import decode_file
    from mtlguard.engine.perturb import model_input

    size, ch = tuple(facts.image_size), facts.in_channels
    x = np.stack([model_input(decode_file(f).rgb, size, ch) for f in files])
    rng = np.random.default_rng(seed)
    y = np.stack([rng.integers(-1, max(1, n), len(files)) for n in facts.num_classes], 1).astype(np.int64)
    return [{"image": x[i:i + batch], "labels": y[i:i + batch]} for i in range(0, len(files), batch)]


def _reader(feeds: list[dict]):
    """An onnxruntime ``CalibrationDataReader`` over ``feeds``."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    return Reader()


def _quantize_graph(src: Path, feeds: list[dict], eps: float):
    """The QDQ model (onnx ModelProto) of the float32 file ``src``."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="mtlguard-int8-") as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        keep = tail_nodes(onnx.load(str(pre)), eps)
        quantize_static(str(pre), str(out), _reader(feeds), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(INT8_OPS), nodes_to_exclude=keep)
        return onnx.load(str(out))


def quantize_int8(src, path, calibration, images: int = DEFAULT_CALIBRATION_IMAGES, seed: int = 0) -> Path:
    """Write the int8 (static QDQ) variant of the float32 NCHW export ``src`` to ``path``, calibrated on up to
    ``images`` images of the folder ``calibration``.  The eps clip stays float32 (checked, see the module
    docstring); ``mtlguard.precision`` is ``int8`` and ``mtlguard.quantization`` records how it was made."""
    import onnx
    import onnxruntime

    from mtlguard.atomic import atomic_write

    from .metadata import read_onnx_facts

    src, path = Path(src), Path(path)
    facts = read_onnx_facts(src)
    if facts.io != "float32_nchw" or facts.precision != "fp32":
        raise ValueError(f"{src}: quantize the float32 NCHW export (this one is {facts.io}, {facts.precision})")
    files = calibration_files(calibration, images)
    model = _quantize_graph(src, calibration_batches(facts, files, seed=seed), facts.eps)
    check_float_eps_clip(model, facts.eps)
    facts.precision = "int8"
    info = {"method": "static QDQ (onnxruntime.quantization)", "ops": list(INT8_OPS), "activations": "uint8",
            "weights": "int8 per channel", "calibration": "MinMax", "calibration_images": len(files),
            "calibration_folder": Path(calibration).name, "labels": f"uniform incl. -1, seed {seed}",
            "onnxruntime": onnxruntime.__version__, "float32": "decoder, embeddings, eps clip and everything after",
            "protection": "not re-verified by victim training"}
    model.producer_name = "mtlguard"
    model.doc_string = (f"mtlguard generator (int8 QDQ encoder): image float32_nchw -> (protected, delta); "
                        f"eps={facts.eps:.6g} (float32 clip); tasks={facts.task_names}")
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {**facts.to_props(), "mtlguard.quantization": json.dumps(info)})
    onnx.checker.check_model(model, full_check=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: onnx.save_model(model, tmp))
    return path


__all__ = ["quantize_int8", "check_float_eps_clip", "find_eps_clip", "tail_nodes", "calibration_files",
           "calibration_batches", "INT8_OPS", "DEFAULT_CALIBRATION_IMAGES"]
