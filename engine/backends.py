"""Inference backends: ``run(images float32 [N, C, h, w], labels int64 [N, K]) -> delta float32 [N, C, h, w]``.

* ``onnxruntime`` (default): an exported ``.onnx`` file (float32 or uint8-I/O variant); CPU, or the
  CUDA / TensorRT execution providers when onnxruntime-gpu provides them (``device="cuda"``).
* ``torch``: a generator checkpoint (``MTLUEGenerator.save`` -> ``.safetensors`` + ``.json``, fused
  ops), a TorchScript file (``.ts``/``.torchscript``) or an AOTInductor package (``.pt2``); bf16
  autocast on CUDA.
* ``tensorrt``: a serialized engine from :func:`mtlguard.export.build_tensorrt_engine` (CUDA only).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mtlguard.export.metadata import GeneratorFacts, generator_facts, read_onnx_facts

BACKENDS = ("onnxruntime", "torch", "tensorrt")


class Backend:
    name = "?"
    facts: GeneratorFacts
    device = "cpu"

    def run(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> dict:
        return {"backend": self.name, "device": self.device}


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path, device: str = "cpu", threads: int | None = None):
        import onnxruntime as ort

        self.facts = read_onnx_facts(path)
        if self.facts.io not in ("float32_nchw", "uint8_nhwc"):
            raise ValueError(f"{path}: this ONNX file is the {self.facts.io!r} variant (mtlguard export --any-size, one "
                             "image per call, for services); mtlguard-engine needs a batch export (mtlguard export "
                             "without --any-size)")
        available = ort.get_available_providers()
        if device == "cuda":
            providers = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
            if not providers:
                raise RuntimeError("--device cuda with the onnxruntime backend needs onnxruntime-gpu (CUDA execution "
                                   f"provider); this onnxruntime has only {available}")
            providers.append("CPUExecutionProvider")
        else:
            providers = ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no busy-waiting between ops/runs: the decode/encode threads need those cycles (pipeline overlap)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        self.providers = self.session.get_providers()
        self.device = device

    def run(self, images, labels):
        if self.facts.io == "uint8_nhwc":
            u8 = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
            _, delta = self.session.run(None, {"image": np.ascontiguousarray(u8), "labels": labels})
            return np.ascontiguousarray(delta.transpose(0, 3, 1, 2), dtype=np.float32)
        _, delta = self.session.run(None, {"image": images, "labels": labels})
        return delta.astype(np.float32, copy=False)

    def describe(self):
        return {"backend": self.name, "device": self.device, "providers": self.providers}


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, path, device: str = "cpu", threads: int | None = None, amp: bool = True):
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda: no CUDA GPU is available to torch on this machine")
        if threads:
            torch.set_num_threads(int(threads))
        self.torch = torch
        self.device = device
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix in (".ts", ".torchscript", ".jit"):
            from mtlguard.export.torchscript import load_torchscript

            self.module, self.facts = load_torchscript(path, device)
        elif suffix == ".pt2":
            from mtlguard.export.pt2 import load_pt2

            self.module, self.facts = load_pt2(path, device)
        else:
            from mtlguard.export._load import load_generator

            self.module = load_generator(path, device)
            self.facts = generator_facts(self.module)
        self.amp = amp and device == "cuda"

    def run(self, images, labels):
        torch = self.torch
        x = torch.from_numpy(images).to(self.device, non_blocking=True)
        y = torch.from_numpy(labels).to(self.device, non_blocking=True)
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            _, delta = self.module(x, y)
        return delta.float().cpu().numpy()


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, path, device: str = "cuda", threads: int | None = None):
        import torch

        from mtlguard.export.tensorrt import import_tensorrt

        trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise RuntimeError("the tensorrt backend needs a CUDA GPU; none is available on this machine")
        path = Path(path)
        side = path.with_name(path.name + ".json")
        if not side.is_file():
            raise FileNotFoundError(f"{side}: the engine's metadata file (written by build_tensorrt_engine) is missing")
        self.facts = GeneratorFacts.from_json(side.read_text(), source=str(path))
        self.torch, self.device = torch, "cuda"
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise RuntimeError(f"{path}: TensorRT could not deserialize the engine (built for another TensorRT/GPU?)")
        self.context = self.engine.create_execution_context()

    def run(self, images, labels):
        torch = self.torch
        if self.facts.io == "uint8_nhwc":
            x = torch.from_numpy(np.clip(np.rint(images * 255), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1).copy()).cuda()
        else:
            x = torch.from_numpy(images).cuda()
        y = torch.from_numpy(labels).cuda()
        n = x.shape[0]
        self.context.set_input_shape("image", tuple(x.shape))
        self.context.set_input_shape("labels", tuple(y.shape))
        prot = torch.empty(tuple(self.context.get_tensor_shape("protected")), device="cuda",
                           dtype=torch.uint8 if self.facts.io == "uint8_nhwc" else torch.float32)
        delta = torch.empty(tuple(self.context.get_tensor_shape("delta")), device="cuda", dtype=torch.float32)
        for name, t in (("image", x), ("labels", y), ("protected", prot), ("delta", delta)):
            self.context.set_tensor_address(name, t.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        d = delta.cpu().numpy()
        return d.transpose(0, 3, 1, 2).copy() if self.facts.io == "uint8_nhwc" else d[:n]


MODEL_SUFFIXES = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt", ".trt": "tensorrt",
                  ".safetensors": "torch", ".ts": "torch", ".torchscript": "torch", ".jit": "torch", ".pt2": "torch"}


class ModelError(ValueError):
    """A model file the engine cannot use; ``str(e)`` is one line naming the file."""


def one_line(e: BaseException, limit: int = 300) -> str:
    """``"Type: first line of the message"``, shortened to ``limit`` characters."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_model_file(model) -> Path:
    """``model`` as a Path after checking it exists and has a known format (a suffix of
    :data:`MODEL_SUFFIXES`, or a checkpoint directory)."""
    path = Path(model)
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    if path.is_dir() or path.suffix.lower() in MODEL_SUFFIXES:
        return path
    raise ModelError(f"{path}: unknown model format {path.suffix or '(no suffix)'!r}; expected .onnx (onnxruntime), "
                     ".safetensors (generator checkpoint), .ts/.torchscript/.jit (TorchScript), .pt2 (AOTInductor) "
                     "or .engine/.plan/.trt (TensorRT)")


def default_backend_for(model) -> str:
    return MODEL_SUFFIXES.get(Path(model).suffix.lower(), "torch")


def _construct(model: Path, backend: str, device: str, threads: int | None) -> Backend:
    if backend == "onnxruntime":
        if model.suffix.lower() != ".onnx":
            raise ModelError(f"{model}: the onnxruntime backend needs an .onnx file "
                             "(export one with `mtlguard export`)")
        return OnnxRuntimeBackend(model, device, threads)
    if backend == "torch":
        return TorchBackend(model, device, threads)
    if backend == "tensorrt":
        return TensorRTBackend(model, device, threads)
    raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


def load_backend(model, backend: str | None = None, device: str = "cpu", threads: int | None = None) -> Backend:
    """The backend for ``model`` (``backend=None``: chosen from the file suffix).

    A model that cannot be loaded (corrupt, truncated, not a generator export) raises
    :class:`ModelError` with one line naming the file."""
    model = check_model_file(model)
    backend = backend or default_backend_for(model)
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    try:
        return _construct(model, backend, device, threads)
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - protobuf / onnxruntime / torch errors: one line naming the file
        raise ModelError(f"{model}: cannot load the model with {backend} ({one_line(e)})") from e


def read_facts(model, backend: str | None = None) -> GeneratorFacts:
    """The generator facts of ``model`` without an inference session (the Ray driver's view)."""
    model = check_model_file(model)
    backend = backend or default_backend_for(model)
    try:
        if backend == "onnxruntime":
            return read_onnx_facts(model)
        if backend == "tensorrt":
            return GeneratorFacts.from_json(model.with_name(model.name + ".json").read_text(), source=str(model))
        return TorchBackend(model, "cpu").facts
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"{model}: cannot read the model ({one_line(e)})") from e
