"""TensorRT engine from an exported ONNX file (TensorRT 11 Python API).

The network is created *strongly typed*, so precision comes from the ONNX file itself (export with
``fp16=True`` for an fp16 engine; TensorRT 11 dropped the FP16 builder flag).  One optimization
profile covers batches ``min_batch <= N <= max_batch`` (tuned for ``opt_batch``).  The generator's
facts are written beside the engine as ``<engine>.json``.

``tensorrt`` is an optional extra (``pip install "mtlguard[tensorrt]"``) and needs an NVIDIA GPU.
"""
from __future__ import annotations

from pathlib import Path

from mtlguard.atomic import atomic_write_bytes, atomic_write_text
from .metadata import read_onnx_facts

MISSING = ("TensorRT is not installed: install the optional extra with `pip install \"mtlguard[tensorrt]\"` "
           "on a machine with an NVIDIA GPU, or use the onnxruntime/torch backend.")


def import_tensorrt():
    """``import tensorrt`` or raise ``RuntimeError`` with one clear sentence."""
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise RuntimeError(MISSING) from e
    return trt


def build_tensorrt_engine(onnx_path, engine_path, min_batch: int = 1, opt_batch: int = 32, max_batch: int = 256,
                          workspace_gib: float = 4.0) -> Path:
    """Build a serialized TensorRT engine from ``onnx_path``; returns ``engine_path``."""
    trt = import_tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    facts = read_onnx_facts(onnx_path)
    if not (1 <= min_batch <= opt_batch <= max_batch):
        raise ValueError(f"need 1 <= min_batch <= opt_batch <= max_batch, got {min_batch}, {opt_batch}, {max_batch}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT could not parse the ONNX file: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    h, w = facts.image_size
    c, k = facts.in_channels, len(facts.tasks)
    image_shape = (lambda n: (n, h, w, c)) if facts.io == "uint8_nhwc" else (lambda n: (n, c, h, w))
    profile = builder.create_optimization_profile()
    profile.set_shape("image", image_shape(min_batch), image_shape(opt_batch), image_shape(max_batch))
    profile.set_shape("labels", (min_batch, k), (opt_batch, k), (max_batch, k))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT failed to build an engine (see the TensorRT log above)")
    atomic_write_bytes(engine_path, bytes(serialized))
    atomic_write_text(engine_path.with_name(engine_path.name + ".json"), facts.to_json())
    return engine_path
