"""mtlguard.export: export generators to ONNX, TorchScript, torch.export (.pt2) and TensorRT.

* :func:`export_onnx` -- the primary artifact: standard ONNX ops, dynamic batch, the generator's
  facts in ``metadata_props`` (:mod:`mtlguard.export.metadata`); ``fp16`` and ``uint8_io`` variants.
* :func:`export_torchscript` -- ``torch.jit.trace`` (runs with plain torch).
* :func:`export_pt2` -- ``torch.export`` + AOTInductor package (runs with plain torch).
* :func:`build_tensorrt_engine` -- a TensorRT 11 engine from the ONNX file (optional ``tensorrt``).
* :func:`load_generator` -- a trained generator checkpoint (``MTLUEGenerator.load``).

Every exported graph has the signature ``(image, labels) -> (protected, delta)``.
"""
from .metadata import GeneratorFacts, generator_facts, read_onnx_facts
from .onnx_export import DEFAULT_OPSET, FP16_TOLERANCE, export_onnx, onnx_variant
from .pt2 import export_pt2, load_pt2
from .tensorrt import build_tensorrt_engine
from .torchscript import export_torchscript, load_torchscript
from ._load import load_generator

__all__ = [
    "GeneratorFacts", "generator_facts", "read_onnx_facts",
    "export_onnx", "onnx_variant", "DEFAULT_OPSET", "FP16_TOLERANCE",
    "export_torchscript", "load_torchscript",
    "export_pt2", "load_pt2",
    "build_tensorrt_engine",
    "load_generator",
]
