"""ONNX export of a generator (dynamo-based ``torch.onnx.export``, standard ONNX ops only).

Graph: ``image`` float32 [N, C, H, W] in [0, 1], ``labels`` int64 [N, K] (-1 = task unprotected)
-> ``protected`` = clip(image + delta, 0, 1) and ``delta`` with ``|delta| <= eps`` (MTL-UE, Alg. 1:
``delta = Clip(D([E(x), e_y1, ..., e_yK]), -eps, eps)``).  The batch dimension is dynamic.

Variants (derived from the float32 graph, also from a file with :func:`onnx_variant`): ``fp16=True`` converts weights/activations to float16 with onnxruntime's converter, keeping
I/O float32 and InstanceNormalization (plus onnxruntime's default block list) in float32 (fp16
InstanceNorm overflows its variance); ``uint8_io=True`` takes raw uint8 NHWC pixels and returns
rounded uint8 NHWC ``protected`` (plus float32 NHWC ``delta``); ``any_size=True`` builds the any-size
variant (uint8 [H, W, C] image of any size + int64 [K] labels -> uint8 protected image, the engine's
whole recipe in the graph, :mod:`mtlguard.export.anysize`).
"""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch

from mtlguard.atomic import atomic_write
from ._translate import export_ops
from .metadata import GeneratorFacts, generator_facts
from .wrappers import FloatIO, example_inputs

DEFAULT_OPSET = 18
#: ops kept in float32 by the fp16 conversion (on top of onnxruntime's default block list).
FP16_KEEP_FP32 = ("InstanceNormalization", "ReduceMean", "Resize")
#: the documented fp16 bound: max |protected_fp16 - protected_fp32| (the fp16 tests enforce it).
FP16_TOLERANCE = 4e-3


@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress prints (it writes to stdout)."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prev = logging.getLogger("torch.onnx").level
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            yield
        finally:
            logging.getLogger("torch.onnx").setLevel(prev)


def _atomic_save_onnx(model, path: Path) -> None:
    import onnx

    atomic_write(path, lambda tmp: onnx.save_model(model, tmp))


def to_fp16(model):
    """float16 weights/activations, float32 I/O, InstanceNorm & co. in float32 (onnxruntime's converter)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    del model.graph.value_info[:]  # stale intermediate types confuse the converter's shape inference
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(FP16_KEEP_FP32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
    from onnxruntime.transformers.onnx_model import OnnxModel

    wrapped = OnnxModel(model)
    wrapped.topological_sort()  # the converter appends its input Casts at the end of the node list
    return wrapped.model


def to_uint8_io(model):
    """Graph surgery: uint8 NHWC ``image`` in, rounded uint8 NHWC ``protected`` + float32 NHWC ``delta`` out.

    Wraps the float32 NCHW graph with standard ops (Cast/Transpose/Div in; Mul/Round/Clip/Cast/
    Transpose out), so the variant needs no second export."""
    import onnx
    from onnx import TensorProto, helper

    g = model.graph
    old_in = next(i for i in g.input if i.name == "image")
    dims = old_in.type.tensor_type.shape.dim
    n, c, h, w = (d.dim_param or d.dim_value for d in dims)
    # rename the float graph's boundary tensors
    rename = {"image": "image_f32", "protected": "protected_f32", "delta": "delta_f32"}
    for node in g.node:
        node.input[:] = [rename.get(x, x) for x in node.input]
        node.output[:] = [rename.get(x, x) for x in node.output]
    g.input.remove(old_in)
    g.input.insert(0, helper.make_tensor_value_info("image", TensorProto.UINT8, [n, h, w, c]))
    outs = {o.name: o for o in g.output}
    for name in ("protected", "delta"):
        g.output.remove(outs[name])
    g.initializer.extend([
        helper.make_tensor("u8_scale", TensorProto.FLOAT, [], [255.0]),
        helper.make_tensor("u8_lo", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("u8_hi", TensorProto.FLOAT, [], [255.0]),
    ])
    pre = [
        helper.make_node("Cast", ["image"], ["image_cast"], to=TensorProto.FLOAT, name="u8_in_cast"),
        helper.make_node("Transpose", ["image_cast"], ["image_nchw"], perm=[0, 3, 1, 2], name="u8_in_nchw"),
        helper.make_node("Div", ["image_nchw", "u8_scale"], ["image_f32"], name="u8_in_scale"),
    ]
    post = [
        helper.make_node("Mul", ["protected_f32", "u8_scale"], ["prot_255"], name="u8_out_scale"),
        helper.make_node("Round", ["prot_255"], ["prot_round"], name="u8_out_round"),
        helper.make_node("Clip", ["prot_round", "u8_lo", "u8_hi"], ["prot_clip"], name="u8_out_clip"),
        helper.make_node("Cast", ["prot_clip"], ["prot_u8"], to=TensorProto.UINT8, name="u8_out_cast"),
        helper.make_node("Transpose", ["prot_u8"], ["protected"], perm=[0, 2, 3, 1], name="u8_out_nhwc"),
        helper.make_node("Transpose", ["delta_f32"], ["delta"], perm=[0, 2, 3, 1], name="u8_delta_nhwc"),
    ]
    nodes = pre + list(g.node) + post
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    g.output.extend([helper.make_tensor_value_info("protected", TensorProto.UINT8, [n, h, w, c]),
                     helper.make_tensor_value_info("delta", TensorProto.FLOAT, [n, h, w, c])])
    return onnx.shape_inference.infer_shapes(model)


def _finish(model, facts: GeneratorFacts, path: Path, check: bool, fp16: bool, uint8_io: bool,
            any_size: bool = False) -> Path:
    """Apply the requested variants (uint8 I/O, then fp16; or any-size) to the float32 graph, record them
    in ``facts``, stamp the metadata, check and save (creating ``path``'s folder)."""
    import onnx

    extra = {}
    if any_size:
        if fp16 or uint8_io:
            raise ValueError("--any-size is a variant of its own (uint8 HWC in and out, float32 inside): "
                             "do not combine it with --fp16 or --uint8-io")
        from .anysize import RESIZE_CONVENTION, to_any_size

        model = to_any_size(model, facts)
        extra["mtlguard.resize"] = RESIZE_CONVENTION
    if uint8_io:
        model = to_uint8_io(model)
        facts.io = "uint8_nhwc"
    if fp16:
        model = to_fp16(model)
        facts.precision = "fp16"
    path.parent.mkdir(parents=True, exist_ok=True)
    model.producer_name = "mtlguard"
    model.doc_string = _doc_string(facts)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {**facts.to_props(), **extra})
    if check:
        onnx.checker.check_model(model, full_check=True)
    _atomic_save_onnx(model, path)
    return path


def _doc_string(facts: GeneratorFacts) -> str:
    k = len(facts.tasks)
    if facts.io == "uint8_hwc_anysize":
        return (f"mtlguard generator (any size): image uint8 [H, W, {facts.in_channels}] + labels int64 [{k}] "
                f"(-1 = unprotected) -> protected uint8 [H, W, {facts.in_channels}]; eps={facts.eps:.6g}; "
                f"tasks={facts.task_names}")
    return (f"mtlguard generator: image {facts.io} -> (protected, delta); eps={facts.eps:.6g}; "
            f"tasks={facts.task_names}; labels int64 [N, {k}], -1 = unprotected")


def onnx_variant(src, path, fp16: bool = False, uint8_io: bool = False, check: bool = True,
                 any_size: bool = False) -> Path:
    """Derive the fp16 and/or uint8-I/O variant, or the any-size variant, of an exported float32 ONNX
    file (no re-export)."""
    from .metadata import load_onnx, read_onnx_facts

    src, path = Path(src), Path(path)
    facts = read_onnx_facts(src)
    if facts.io != "float32_nchw" or facts.precision != "fp32":
        raise ValueError(f"{src}: derive variants from the float32 NCHW export (this one is {facts.io}, {facts.precision})")
    model = load_onnx(src)
    return _finish(model, facts, path, check, fp16, uint8_io, any_size)


def export_onnx(generator: torch.nn.Module, path, opset: int = DEFAULT_OPSET, fp16: bool = False,
                uint8_io: bool = False, training_config: dict | None = None, check: bool = True,
                any_size: bool = False) -> Path:
    """Export ``generator`` (``forward(image, labels) -> (protected, delta)``, ``config()``) to ``path``.

    Returns the path.  The file is self-contained (no external data), written atomically, and carries
    the generator's facts in ``metadata_props`` (see :mod:`mtlguard.export.metadata`).  The variants
    (``fp16``, ``uint8_io``, or ``any_size``: :mod:`mtlguard.export.anysize`) are derived from the float32
    graph (:func:`onnx_variant`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    facts = generator_facts(generator, training_config)
    was_training = generator.training
    generator = generator.eval().cpu()
    wrapper = FloatIO(generator).eval()
    image, labels = example_inputs(facts, batch=2)
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    try:
        with torch.no_grad(), export_ops(), _quiet():
            program = torch.onnx.export(
                wrapper, (image, labels), None, dynamo=True, opset_version=opset,
                input_names=["image", "labels"], output_names=["protected", "delta"],
                dynamic_shapes={"image": {0: batch}, "labels": {0: batch}},
            )
    finally:
        generator.train(was_training)
    return _finish(program.model_proto, facts, path, check, fp16, uint8_io, any_size)


def onnx_op_types(path) -> set[str]:
    """The set of op types in an ONNX file (for checking 'standard ops only')."""
    import onnx

    m = onnx.load(str(path))
    return {n.op_type for n in m.graph.node}, {n.domain for n in m.graph.node}


__all__ = ["export_onnx", "onnx_variant", "to_uint8_io", "to_fp16", "onnx_op_types", "DEFAULT_OPSET", "FP16_TOLERANCE", "GeneratorFacts"]
