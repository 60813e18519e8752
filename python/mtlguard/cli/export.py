"""``mtlguard export``: a trained generator checkpoint -> ONNX / TorchScript / .pt2 / TensorRT engine.

Examples::

    mtlguard export --model runs/gen.safetensors --output gen.onnx                 # ONNX fp32
    mtlguard export --model runs/gen.safetensors --output gen_fp16.onnx --fp16
    mtlguard export --model runs/gen.safetensors --output gen_u8.onnx --uint8-io
    mtlguard export --onnx gen.onnx --output gen_fp16.onnx --fp16                   # variant of an export
    mtlguard export --model runs/gen.safetensors --output gen.ts --format torchscript
    mtlguard export --model runs/gen.safetensors --output gen.pt2 --format pt2
    mtlguard export --onnx gen.onnx --output gen.engine --format tensorrt --max-batch 256
"""
from __future__ import annotations

import json
import sys

FORMATS = ("onnx", "torchscript", "pt2", "tensorrt")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a trained generator (ONNX, TorchScript, .pt2, TensorRT)")
    p.add_argument("--model", help="generator checkpoint (MTLUEGenerator.save: .safetensors + .json)")
    p.add_argument("--onnx", help="an exported float32 ONNX file: source of --fp16/--uint8-io variants, or of a TensorRT engine")
    p.add_argument("--output", required=True, help="output file")
    p.add_argument("--format", choices=FORMATS, default=None, help="default: from the --output suffix")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: mtlguard.export.DEFAULT_OPSET)")
    p.add_argument("--fp16", action="store_true", help="ONNX: float16 weights/compute, float32 I/O and InstanceNorm")
    p.add_argument("--uint8-io", action="store_true", help="ONNX: uint8 NHWC image in, uint8 NHWC protected out")
    p.add_argument("--min-batch", type=int, default=1)
    p.add_argument("--opt-batch", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=256)
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


def run(args) -> int:
    from mtlguard import export as ex
    from mtlguard.export._load import load_training_config

    try:
        fmt = args.format or _format_from(args.output)
        if fmt == "tensorrt":
            ex.tensorrt.import_tensorrt()
            onnx_path = args.onnx
            if onnx_path is None:
                if not args.model:
                    raise ValueError("--format tensorrt needs --onnx FILE or --model CHECKPOINT")
                onnx_path = ex.export_onnx(ex.load_generator(args.model), args.output + ".onnx", fp16=args.fp16,
                                           opset=args.opset or ex.DEFAULT_OPSET)
            out = ex.build_tensorrt_engine(onnx_path, args.output, args.min_batch, args.opt_batch, args.max_batch)
        elif fmt == "onnx" and args.onnx and not args.model:  # derive a variant of an exported ONNX file
            if not (args.fp16 or args.uint8_io):
                raise ValueError("with --onnx, pass --fp16 and/or --uint8-io (the variant to derive)")
            out = ex.onnx_variant(args.onnx, args.output, fp16=args.fp16, uint8_io=args.uint8_io)
        else:
            if not args.model:
                raise ValueError("--model CHECKPOINT is required")
            gen = ex.load_generator(args.model)
            training = load_training_config(args.model)
            if fmt == "onnx":
                out = ex.export_onnx(gen, args.output, opset=args.opset or ex.DEFAULT_OPSET, fp16=args.fp16,
                                     uint8_io=args.uint8_io, training_config=training)
            elif fmt == "torchscript":
                out = ex.export_torchscript(gen, args.output, training_config=training)
            else:
                out = ex.export_pt2(gen, args.output, training_config=training)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"mtlguard export: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"output": str(out), "format": fmt}))
    return 0
