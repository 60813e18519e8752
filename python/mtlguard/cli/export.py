"""``mtlguard export``: a trained generator checkpoint -> ONNX / TorchScript / .pt2 / TensorRT engine.

Examples::

    mtlguard export --model runs/gen --out gen.onnx                                # ONNX fp32 (run folder)
    mtlguard export --model runs/gen/generator.safetensors --out gen_fp16.onnx --fp16
    mtlguard export --model runs/gen --out gen_u8.onnx --uint8-io
    mtlguard export --model runs/gen --out gen_any.onnx --any-size                 # uint8 HxWxC, any size
    mtlguard export --onnx gen.onnx --out gen_fp16.onnx --fp16                     # variant of an export
    mtlguard export --onnx gen.onnx --out gen_int8.onnx --int8 --calibration DIR   # int8 QDQ (not re-verified)
    mtlguard export --model runs/gen --out gen.ts --format torchscript
    mtlguard export --model runs/gen --out gen.pt2 --format pt2
    mtlguard export --onnx gen.onnx --out gen.engine --format tensorrt --max-batch 256
"""
from __future__ import annotations

import json
import sys

FORMATS = ("onnx", "torchscript", "pt2", "tensorrt")
HELP = "export a trained generator (ONNX incl. the any-size variant, TorchScript, .pt2, TensorRT)"


def add_parser(subparsers) -> None:
    from .options import add_out_arg

    p = subparsers.add_parser("export", help=HELP, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="generator checkpoint: the .safetensors file MTLUEGenerator.save / `mtlguard fit` "
                                    "writes (with its .json), or their run folder")
    p.add_argument("--onnx", help="an exported float32 ONNX file: source of --fp16/--uint8-io/--any-size variants, "
                                   "or of a TensorRT engine")
    add_out_arg(p, "output file", aliases=("--output",))
    p.add_argument("--format", choices=FORMATS, default=None, help="default: from the output suffix")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: mtlguard.export.DEFAULT_OPSET)")
    p.add_argument("--fp16", action="store_true", help="ONNX: float16 weights/compute, float32 I/O and InstanceNorm")
    p.add_argument("--uint8-io", action="store_true", help="ONNX: uint8 NHWC image in, uint8 NHWC protected out")
    p.add_argument("--any-size", action="store_true",
                   help="ONNX: one uint8 HxWxC image of any size + int64 [K] labels in, the protected uint8 image out "
                        "(the engine's resize / upsample / clip / round recipe inside the graph, bit-identical)")
    p.add_argument("--int8", action="store_true",
                   help="ONNX: int8 static QDQ encoder convolutions, calibrated on --calibration images; the eps clip "
                        "stays float32. Its protection is NOT re-verified by victim training (opt in knowingly)")
    p.add_argument("--calibration", help="--int8: a folder of real images like those you will protect")
    p.add_argument("--calibration-images", type=int, default=256, help="--int8: images used from --calibration")
    p.add_argument("--min-batch", type=int, default=1, help="TensorRT profile")
    p.add_argument("--opt-batch", type=int, default=32, help="TensorRT profile")
    p.add_argument("--max-batch", type=int, default=256, help="TensorRT profile")
    p.set_defaults(func=run)


def _format_from(path: str) -> str:
    s = path.lower()
    if s.endswith(".onnx"):
        return "onnx"
    if s.endswith(".pt2"):
        return "pt2"
    if s.endswith((".engine", ".plan", ".trt")):
        return "tensorrt"
    if s.endswith((".ts", ".torchscript", ".jit", ".pt")):
        return "torchscript"
    raise ValueError(f"cannot tell the export format from {path!r}; pass --format {{{','.join(FORMATS)}}}")


def _tensorrt(args, ex):
    from mtlguard.export.tensorrt import import_tensorrt

    import_tensorrt()
    onnx_path = args.onnx
    if onnx_path is None:
        if not args.model:
            raise ValueError("--format tensorrt needs --onnx FILE or --model CHECKPOINT")
        onnx_path = ex.export_onnx(ex.load_generator(args.model), args.out + ".onnx", fp16=args.fp16,
                                   opset=args.opset or ex.DEFAULT_OPSET)
    return ex.build_tensorrt_engine(onnx_path, args.out, args.min_batch, args.opt_batch, args.max_batch)


def _from_checkpoint(args, ex, fmt: str):
    from mtlguard.export._load import load_training_config

    if not args.model:
        raise ValueError("--model CHECKPOINT (or --onnx FILE for a variant) is required")
    gen = ex.load_generator(args.model)
    training = load_training_config(args.model)
    if fmt == "onnx":
        return ex.export_onnx(gen, args.out, opset=args.opset or ex.DEFAULT_OPSET, fp16=args.fp16,
                              uint8_io=args.uint8_io, training_config=training, any_size=args.any_size)
    if args.any_size or args.fp16 or args.uint8_io:
        raise ValueError("--any-size / --fp16 / --uint8-io are ONNX variants (the output must end in .onnx)")
    if fmt == "torchscript":
        return ex.export_torchscript(gen, args.out, training_config=training)
    return ex.export_pt2(gen, args.out, training_config=training)


def _int8(args, ex, fmt: str):
    """``--int8``: quantize ``--onnx`` (or a float32 export of ``--model``, made in a temp folder)."""
    import tempfile

    if fmt != "onnx" or args.fp16 or args.uint8_io or args.any_size:
        raise ValueError("--int8 is an ONNX variant of its own (float32 I/O): the output must end in .onnx, and it "
                         "does not combine with --fp16, --uint8-io or --any-size")
    if not args.calibration:
        raise ValueError("--int8 needs --calibration DIR (real images like those you will protect)")
    if args.onnx and not args.model:
        return ex.quantize_int8(args.onnx, args.out, args.calibration, images=args.calibration_images)
    with tempfile.TemporaryDirectory(prefix="mtlguard-export-") as tmp:
        args_fp32 = type(args)(**{**vars(args), "out": f"{tmp}/fp32.onnx"})
        src = _from_checkpoint(args_fp32, ex, "onnx")
        return ex.quantize_int8(src, args.out, args.calibration, images=args.calibration_images)


def run(args) -> int:
    from mtlguard import export as ex

    try:
        fmt = args.format or _format_from(args.out)
        if getattr(args, "int8", False):
            out = _int8(args, ex, fmt)
        elif fmt == "tensorrt":
            out = _tensorrt(args, ex)
        elif fmt == "onnx" and args.onnx and not args.model:  # derive a variant of an exported ONNX file
            if not (args.fp16 or args.uint8_io or args.any_size):
                raise ValueError("with --onnx, pass --fp16, --uint8-io, --any-size or --int8 (the variant to derive)")
            out = ex.onnx_variant(args.onnx, args.out, fp16=args.fp16, uint8_io=args.uint8_io, any_size=args.any_size)
        else:
            out = _from_checkpoint(args, ex, fmt)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"mtlguard export: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"output": str(out), "format": fmt}))
    return 0
