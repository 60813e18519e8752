"""The any-size ONNX variant: the engine's whole recipe inside one graph.

Graph: ``image`` uint8 [H, W, C] (one image, any H and W; C = the generator's channels, or 1 or 3 for a
1-channel generator, which then sees the image's luma and moves every channel alike, as the engine does)
and ``labels`` int64 [K] (-1 = task unprotected) -> ``protected`` uint8 [H, W, C], with
``|protected - image| <= ceil(eps * 255)`` enforced by the graph's last Clip.  Standard ONNX ops only.

The recipe is :mod:`mtlguard.engine.perturb`'s, step by step, in the same floating-point operations,
so the output is bit-identical to the engine's (``apply_delta_batch(image, delta(model_input(image)))``):

1. **model input** (``model_input``: Pillow's antialiased BILINEAR resize to the generator's size).  For
   uint8 images Pillow works in fixed point: per axis it computes double triangle weights, normalizes them
   by their running sum, rounds them to 22-bit integers, sums ``pixel * weight`` in integers, adds 2^21 and
   shifts right by 22 (clipped to [0, 255]).  ONNX Resize (linear, antialias) rounds differently, so the
   graph rebuilds Pillow's integer weights from H and W (Range/Floor/Where, the sequential weight sum as a
   CumSum) as dense [h, H] / [w, W] matrices and applies them with a float64 MatMul: every product and
   partial sum is an integer below 2^53, so the MatMul is exact in any summation order.  The pass order is
   Pillow 13's (vertical first when ``H - h > 2 * (W - w)`` and ``H > h``, else horizontal first; an If
   node).  Then ``/ 255`` in float32.
2. **generator**: the float32 export's graph on [1, C, h, w] and ``labels[None]``; only its ``delta`` is used.
3. **delta upsampling** (``upsample_delta``/``bilinear_taps``): the engine's tap table (half-pixel triangle
   weights, antialiased when shrinking, normalized, cast to float32) rebuilt from H and W; the taps are
   gathered and accumulated in the engine's order with a CumSum over the tap axis (sequential float32
   adds), W axis first, then H with the weights times 255.
4. ``Clip(-e, e)`` (``e = float32(eps * 255)``), ``+ image``, ``Round`` (half to even, as ``np.rint``),
   ``Clip(0, 255)``, then ``Clip(image - b, image + b)`` with ``b = ceil(eps * 255)`` (a no-op on the
   engine's result; it makes the bound a property of the graph), ``Cast`` to uint8.

Exactness holds for every size at least a quarter of the generator's per side: there the engine
normalizes each output's taps with a sequential sum (numpy sums fewer than 8 numbers in order), which the
CumSum reproduces; for smaller images numpy's pairwise sum may differ in the last bit (tests:
``tests/test_export_anysize.py``).
"""
from __future__ import annotations

import math

import numpy as np

#: ``mtlguard.io`` of the any-size variant.
ANY_SIZE_IO = "uint8_hwc_anysize"
#: the resize convention reproduced by the graph (recorded in its metadata as ``mtlguard.resize``).
RESIZE_CONVENTION = "Pillow>=13 BILINEAR uint8 (fixed point, vertical pass first when H-h > 2*(W-w)) + engine bilinear_taps"
PRECISION_BITS = 22  # Pillow's fixed-point weight precision for 8-bit images


class _Graph:
    """A tiny ONNX node builder: ``op`` appends a node and returns its (unique) output name."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.nodes: list = []
        self.inits: list = []
        self._n = 0

    def _name(self, hint: str) -> str:
        self._n += 1
        return f"{self.prefix}/{hint}_{self._n}"

    def const(self, value, dtype) -> str:
        from onnx import numpy_helper

        name = self._name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, outputs: int = 1, **attrs):
        from onnx import helper

        names = [self._name(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, name=names[0], **attrs))
        return names[0] if outputs == 1 else names

    def f64(self, v) -> str:
        return self.const(v, np.float64)

    def i64(self, v) -> str:
        return self.const(v, np.int64)


def _as_f64(g: _Graph, x: str) -> str:
    from onnx import TensorProto

    return g.op("Cast", x, to=TensorProto.DOUBLE)


def _rows(g: _Graph, n_out: str) -> str:
    """``(i + 0.5)`` as float64 [n_out, 1] for ``i = 0..n_out-1``."""
    i = _as_f64(g, g.op("Range", g.i64(0), n_out, g.i64(1)))
    return g.op("Unsqueeze", g.op("Add", i, g.f64(0.5)), g.i64([1]))


def _triangle(g: _Graph, t: str) -> str:
    """Bilinear filter ``max(0, 1 - |t|)`` (Pillow's ``bilinear_filter``, the engine's ``np.maximum``)."""
    return g.op("Max", g.op("Sub", g.f64(1.0), g.op("Abs", t)), g.f64(0.0))


def _sequential_sum_last(g: _Graph, w: str) -> str:
    """Row sums of ``w`` [R, K] added left to right (CumSum), as [R, 1]; 0 -> 1 (no division by zero)."""
    total = g.op("Gather", g.op("CumSum", w, g.i64(1)), g.i64([-1]), axis=1)
    return g.op("Where", g.op("Equal", total, g.f64(0.0)), g.f64(1.0), total)


def pillow_weights(g: _Graph, n_in: str, n_out: str) -> str:
    """Pillow's fixed-point BILINEAR weights from ``n_in`` to ``n_out`` samples (int64 scalars) as a dense
    float64 [n_out, n_in] matrix of integers (``precompute_coeffs`` + ``normalize_coeffs_8bpc``)."""
    n_in_d = _as_f64(g, n_in)
    scale = g.op("Div", n_in_d, _as_f64(g, n_out))
    support = g.op("Max", scale, g.f64(1.0))  # filterscale; bilinear support 1.0 * filterscale
    center = g.op("Mul", _rows(g, n_out), scale)  # [n_out, 1]
    half = g.f64(0.5)
    # (int) truncation then max(.., 0) equals floor then max(.., 0); the upper end is positive
    xmin = g.op("Max", g.op("Floor", g.op("Add", g.op("Sub", center, support), half)), g.f64(0.0))
    xmax = g.op("Min", g.op("Floor", g.op("Add", g.op("Add", center, support), half)), n_in_d)
    x = g.op("Unsqueeze", _as_f64(g, g.op("Range", g.i64(0), n_in, g.i64(1))), g.i64([0]))  # [1, n_in]
    inside = g.op("And", g.op("GreaterOrEqual", x, xmin), g.op("Less", x, xmax))
    t = g.op("Mul", g.op("Add", g.op("Sub", x, center), half), g.op("Div", g.f64(1.0), support))
    w = g.op("Where", inside, _triangle(g, t), g.f64(0.0))
    k = g.op("Div", w, _sequential_sum_last(g, w))
    return g.op("Floor", g.op("Add", g.op("Mul", k, g.f64(float(1 << PRECISION_BITS))), half))


def _fixed_point(g: _Graph, s: str) -> str:
    """Pillow's ``clip8((2^21 + sum) >> 22)`` on exact float64 sums."""
    shifted = g.op("Mul", g.op("Add", s, g.f64(float(1 << (PRECISION_BITS - 1)))), g.f64(2.0 ** -PRECISION_BITS))
    return g.op("Clip", g.op("Floor", shifted), g.f64(0.0), g.f64(255.0))


def _pass_w(g: _Graph, x: str, mw: str) -> str:
    """Horizontal pass: [C, H', W] -> [C, H', w]."""
    return _fixed_point(g, g.op("MatMul", x, g.op("Transpose", mw, perm=[1, 0])))


def _pass_h(g: _Graph, x: str, mh: str) -> str:
    """Vertical pass: [C, H, W'] -> [C, h, W']."""
    return _fixed_point(g, g.op("MatMul", mh, x))


def _branch(name: str, build, out_name: str):
    """A no-input subgraph (If branch) whose nodes ``build(g)`` adds; its output is renamed ``out_name``."""
    from onnx import TensorProto, helper

    g = _Graph(name)
    out = build(g)
    g.nodes.append(helper.make_node("Identity", [out], [out_name], name=f"{name}/out"))
    return helper.make_graph(g.nodes, name, [], [helper.make_tensor_value_info(out_name, TensorProto.DOUBLE, None)],
                             initializer=g.inits)


def _luma_if_colour(g: _Graph, image_f64: str) -> str:
    """float64 [H, W, C] -> [H, W, 1]: Pillow's ``convert("L")`` of a colour image (``(19595 R + 38470 G
    + 7471 B + 2^15) >> 16``, exact in float64), the image itself when C = 1."""
    channels = g.op("Gather", g.op("Shape", image_f64), g.i64(2))

    def luma(b: _Graph) -> str:
        s = b.op("MatMul", image_f64, b.f64([[19595.0], [38470.0], [7471.0]]))
        return b.op("Floor", b.op("Mul", b.op("Add", s, b.f64(32768.0)), b.f64(2.0 ** -16)))

    return g.op("If", g.op("Equal", channels, g.i64(3)),
                then_branch=_branch(f"{g.prefix}/luma", luma, f"{g.prefix}/luma_out"),
                else_branch=_branch(f"{g.prefix}/gray", lambda b: b.op("Identity", image_f64), f"{g.prefix}/gray_out"))


def model_input(g: _Graph, image_u8: str, size: tuple[int, int], hw: tuple[str, str], luma: bool = False) -> str:
    """uint8 [H, W, C] -> float32 [1, C, h, w] in [0, 1], as ``engine.perturb.model_input`` (Pillow);
    ``hw``: H and W as int64 scalars.  ``luma``: a 1-channel generator, fed the luma of colour images
    (``model_input(..., channels=1)``)."""
    from onnx import TensorProto

    h, w = (g.i64(int(v)) for v in size)
    H, W = hw
    mh, mw = pillow_weights(g, H, h), pillow_weights(g, W, w)
    image = _as_f64(g, image_u8)
    if luma:
        image = _luma_if_colour(g, image)
    x = g.op("Transpose", image, perm=[2, 0, 1])  # [C, H, W]
    dh, dw = g.op("Sub", H, h), g.op("Sub", W, w)
    vertical_first = g.op("And", g.op("Greater", dh, g.i64(0)), g.op("Greater", dh, g.op("Mul", dw, g.i64(2))))
    small = g.op("If", vertical_first,
                 then_branch=_branch(f"{g.prefix}/vfirst", lambda b: _pass_w(b, _pass_h(b, x, mh), mw), f"{g.prefix}/vf_out"),
                 else_branch=_branch(f"{g.prefix}/hfirst", lambda b: _pass_h(b, _pass_w(b, x, mw), mh), f"{g.prefix}/hf_out"))
    scaled = g.op("Div", g.op("Cast", small, to=TensorProto.FLOAT), g.const(255.0, np.float32))
    return g.op("Unsqueeze", scaled, g.i64([0]))


def engine_taps(g: _Graph, n_in: int, n_out: str) -> tuple[str, str, str]:
    """The engine's ``bilinear_taps(n_in, n_out)`` rebuilt in-graph: ``(index int64 [n_out, K],
    weight float32 [n_out, K], K - 1 int64 [1])``, taps in ascending input order (zero-weight padding)."""
    from onnx import TensorProto

    n_in_d = g.f64(float(n_in))
    scale = g.op("Div", n_in_d, _as_f64(g, n_out))
    support = g.op("Max", scale, g.f64(1.0))
    center = g.op("Mul", _rows(g, n_out), scale)  # [n_out, 1]
    half = g.f64(0.5)
    lo = g.op("Max", g.op("Floor", g.op("Add", g.op("Sub", center, support), half)), g.f64(0.0))
    hi = g.op("Max", g.op("Min", g.op("Floor", g.op("Add", g.op("Add", center, support), half)), n_in_d),
              g.op("Add", lo, g.f64(1.0)))
    k = g.op("Max", g.op("Cast", g.op("Ceil", g.op("Mul", support, g.f64(2.0))), to=TensorProto.INT64), g.i64(1))
    taps = g.op("Unsqueeze", _as_f64(g, g.op("Range", g.i64(0), k, g.i64(1))), g.i64([0]))  # [1, K]
    x = g.op("Add", lo, taps)  # [n_out, K]
    t = g.op("Div", g.op("Add", g.op("Sub", x, center), half), support)
    w = g.op("Where", g.op("Less", x, hi), _triangle(g, t), g.f64(0.0))
    wn = g.op("Cast", g.op("Div", w, _sequential_sum_last(g, w)), to=TensorProto.FLOAT)
    idx = g.op("Cast", g.op("Min", x, g.f64(float(n_in - 1))), to=TensorProto.INT64)
    last = g.op("Reshape", g.op("Sub", k, g.i64(1)), g.i64([1]))
    return idx, wn, last


def _resample(g: _Graph, a: str, axis: int, taps, weight_shape: str, scale: float | None) -> str:
    """``engine.perturb._resample_axis``: gather the taps on ``axis``, weight them, add them in order."""
    idx, wn, last = taps
    if scale is not None:
        wn = g.op("Mul", wn, g.const(scale, np.float32))
    picked = g.op("Gather", a, idx, axis=axis)  # the tap axis follows ``axis``
    terms = g.op("Mul", picked, g.op("Reshape", wn, weight_shape))
    return g.op("Squeeze", g.op("Gather", g.op("CumSum", terms, g.i64(axis + 1)), last, axis=axis + 1),
                g.i64([axis + 1]))


def upsample_delta(g: _Graph, delta_hwc: str, size: tuple[int, int], hw: tuple[str, str]) -> str:
    """float32 [h, w, C] -> [H, W, C] times 255 (``upsample_delta(..., scale=255.0)``: W first, then H);
    ``hw``: H and W as int64 scalars."""
    h, w = (int(v) for v in size)
    H, W = hw
    minus1 = g.i64([-1])
    shape_w = g.op("Concat", g.i64([1]), g.op("Unsqueeze", W, g.i64([0])), minus1, g.i64([1]), axis=0)  # [1, W, K, 1]
    shape_h = g.op("Concat", g.op("Unsqueeze", H, g.i64([0])), minus1, g.i64([1, 1]), axis=0)  # [H, K, 1, 1]
    wide = _resample(g, delta_hwc, 1, engine_taps(g, w, W), shape_w, None)
    return _resample(g, wide, 0, engine_taps(g, h, H), shape_h, 255.0)


def apply_delta(g: _Graph, image_u8: str, up: str, eps: float) -> str:
    """Clip to eps, add, round, clip to [0, 255] and to ``image +- ceil(eps * 255)``; uint8 out."""
    from onnx import TensorProto

    e = float(np.float32(eps * 255.0))
    b = float(math.ceil(eps * 255.0 - 1e-9))  # = mtlguard.engine.perturb.bound_uint8 (export does not import engine)
    img = g.op("Cast", image_u8, to=TensorProto.FLOAT)
    f32 = lambda v: g.const(v, np.float32)  # noqa: E731
    prot = g.op("Round", g.op("Add", g.op("Clip", up, f32(-e), f32(e)), img))
    prot = g.op("Clip", prot, f32(0.0), f32(255.0))
    lo, hi = g.op("Sub", img, f32(b)), g.op("Add", img, f32(b))
    prot = g.op("Max", g.op("Min", prot, hi), lo)
    return g.op("Cast", prot, to=TensorProto.UINT8)


def _embed_generator(model, g: _Graph) -> str:
    """Rename the float32 generator graph's boundary tensors (``image``/``labels`` in, ``delta`` out) to
    internal names, drop its graph inputs/outputs; returns the name of its ``delta`` tensor."""
    rename = {"image": f"{g.prefix}/gen_image", "labels": f"{g.prefix}/gen_labels", "delta": f"{g.prefix}/gen_delta",
              "protected": f"{g.prefix}/gen_protected"}
    graph = model.graph
    for node in graph.node:
        node.input[:] = [rename.get(x, x) for x in node.input]
        node.output[:] = [rename.get(x, x) for x in node.output]
    del graph.input[:]
    del graph.output[:]
    del graph.value_info[:]
    return rename


def to_any_size(model, facts):
    """The any-size variant of a float32 NCHW generator export ``model`` (an ``onnx.ModelProto``, changed
    in place and returned): ``image`` uint8 [H, W, C] + ``labels`` int64 [K] -> ``protected`` uint8 [H, W, C]."""
    import onnx
    from onnx import TensorProto, helper

    if facts.io != "float32_nchw" or facts.precision != "fp32":
        raise ValueError(f"the any-size variant is built from the float32 NCHW export (this one is {facts.io}, {facts.precision})")
    g = _Graph("anysize")
    names = _embed_generator(model, g)
    c, k = int(facts.in_channels), len(facts.tasks)
    shape = g.op("Shape", "image")
    H = g.op("Squeeze", g.op("Slice", shape, g.i64([0]), g.i64([1])), g.i64([0]))
    W = g.op("Squeeze", g.op("Slice", shape, g.i64([1]), g.i64([2])), g.i64([0]))
    x = model_input(g, "image", facts.image_size, (H, W), luma=c == 1)
    g.nodes.append(helper.make_node("Identity", [x], [names["image"]], name="anysize/gen_in"))
    g.nodes.append(helper.make_node("Unsqueeze", ["labels", g.i64([0])], [names["labels"]], name="anysize/labels"))
    pre = list(g.nodes)
    g.nodes.clear()
    delta_hwc = g.op("Transpose", g.op("Squeeze", names["delta"], g.i64([0])), perm=[1, 2, 0])  # [h, w, C]
    up = upsample_delta(g, delta_hwc, facts.image_size, (H, W))
    out = apply_delta(g, "image", up, facts.eps)
    g.nodes.append(helper.make_node("Identity", [out], ["protected"], name="anysize/protected"))
    nodes = pre + list(model.graph.node) + g.nodes
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(g.inits)
    dims = ["H", "W", c if c == 3 else "C"]  # a 1-channel generator takes gray or colour images (C = 1 or 3)
    model.graph.input.extend([helper.make_tensor_value_info("image", TensorProto.UINT8, dims),
                              helper.make_tensor_value_info("labels", TensorProto.INT64, [k])])
    model.graph.output.extend([helper.make_tensor_value_info("protected", TensorProto.UINT8, dims)])
    facts.io = ANY_SIZE_IO
    return onnx.shape_inference.infer_shapes(model)


def model_input_graph(size: tuple[int, int], channels: int, opset: int = 18, luma: bool = False):
    """A standalone graph of step 1 only: ``image`` uint8 [H, W, C] -> ``x`` float32 [1, C', h, w]
    (for checking the resize against :func:`mtlguard.engine.perturb.model_input`; ``luma``: C' = 1)."""
    from onnx import TensorProto, helper

    g = _Graph("resize")
    shape = g.op("Shape", "image")
    H = g.op("Squeeze", g.op("Slice", shape, g.i64([0]), g.i64([1])), g.i64([0]))
    W = g.op("Squeeze", g.op("Slice", shape, g.i64([1]), g.i64([2])), g.i64([0]))
    x = model_input(g, "image", size, (H, W), luma=luma)
    g.nodes.append(helper.make_node("Identity", [x], ["x"], name="resize/out"))
    graph = helper.make_graph(g.nodes, "model_input", [helper.make_tensor_value_info("image", TensorProto.UINT8, ["H", "W", channels])],
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1 if luma else channels, *size])],
                              initializer=g.inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
