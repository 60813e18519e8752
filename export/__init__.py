"""mtlguard.export: export generators to ONNX, TorchScript, torch.export (.pt2) and TensorRT.

* :func:`export_onnx` -- the primary artifact: standard ONNX ops, dynamic batch, the generator's
  facts in ``metadata_props`` (:mod:`mtlguard.export.metadata`); ``fp16`` and ``uint8_io`` variants.
* :func:`export_torchscript` -- ``torch.jit.trace`` (runs with plain torch).
* :func:`export_pt2` -- ``torch.export`` + AOTInductor package (runs with plain torch).
* :func:`build_tensorrt_engine` -- a TensorRT 11 engine from the ONNX file (optional ``tensorrt``).
* :func:`load_generator` -- a trained generator checkpoint (``MTLUEGenerator.load``).
* :func:`quantize_int8` -- the int8 (static QDQ, calibrated) variant of a float32 ONNX export
  (:mod:`mtlguard.export.int8`; the eps clip stays float32; protection not re-verified, never a default).

Every exported graph has the signature ``(image, labels) -> (protected, delta)``, except the
any-size ONNX variant (``export_onnx(..., any_size=True)``, :mod:`mtlguard.export.anysize`): one uint8
image of any size + its labels -> the protected uint8 image.

The names below are imported on first use: reading metadata (:mod:`.metadata`) does not import torch.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "GeneratorFacts": "metadata", "generator_facts": "metadata", "read_onnx_facts": "metadata",
    "export_onnx": "onnx_export", "onnx_variant": "onnx_export", "DEFAULT_OPSET": "onnx_export",
    "FP16_TOLERANCE": "onnx_export", "export_torchscript": "torchscript", "load_torchscript": "torchscript",
    "export_pt2": "pt2", "load_pt2": "pt2", "build_tensorrt_engine": "tensorrt", "load_generator": "_load",
    "quantize_int8": "int8", "check_float_eps_clip": "int8",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "GeneratorFacts", "generator_facts", "read_onnx_facts",
    "export_onnx", "onnx_variant", "DEFAULT_OPSET", "FP16_TOLERANCE",
    "export_torchscript", "load_torchscript",
    "export_pt2", "load_pt2",
    "build_tensorrt_engine",
    "load_generator",
    "quantize_int8", "check_float_eps_clip",
]
