"""mtlguard.engine: the high-throughput bulk-protection engine behind ``mtlguard-engine``.

Python API::

    from mtlguard.engine import protect_directory
    report = protect_directory("photos/", "protected/", model="gen.onnx", labels="labels.csv",
                               exclude_split="test", format="webp")
    print(report["done"], report["failed"], report["images_per_s"], report["quality"])

    from mtlguard.engine import validate_labels         # before running an exported ONNX generator yourself
    labels = validate_labels([[3, 1, 0]], session.get_modelmeta().custom_metadata_map)

Every keyword of :func:`protect_directory` is a field of :class:`EngineOptions` (validated once and
recorded in ``report["options"]``).

Throughput (bench/engine.py, bench/results/engine_cpu.json): decode (simplejpeg for plain JPEGs),
inference and encode overlap in threads, the decoded pixels held at once bounded by a pixel budget; the delta is
applied to groups of same-size images at once (the fused ``mtlguard.ops.apply_delta_u8`` kernel, or numpy gathers
with Pillow's bilinear weights without the extension: the same bytes); PNG defaults to zlib level 1 with the RLE strategy,
measured on protected UTKFace images to give level-6 file size at level-1 speed
(``--png-compression`` / ``--png-strategy``).  Where decode+encode and inference share the same
cores, the engine's rate is bounded by ``1 / (1/floor + 1/generator)``, not by the slower of the two.

Modules: :mod:`~mtlguard.engine.pipeline` (the steps of a run), :mod:`~mtlguard.engine.options`,
:mod:`~mtlguard.engine.discovery` (selection), :mod:`~mtlguard.engine.labels` (label sources,
:func:`validate_labels`), :mod:`~mtlguard.engine.journal` (resuming), :mod:`~mtlguard.engine.work`
(per-file work), :mod:`~mtlguard.engine.executor` (the executor interface) with
:mod:`~mtlguard.engine.local_executor` and :mod:`~mtlguard.engine.ray_executor` (a Ray cluster),
:mod:`~mtlguard.engine.outputs` (labels.csv / tasks.json), :mod:`~mtlguard.engine.quality` (PSNR / SSIM),
:mod:`~mtlguard.engine.report`.
"""
from .labels import validate_labels
from .options import EngineOptions
from .pipeline import default_model, protect_directory

__all__ = ["protect_directory", "default_model", "validate_labels", "EngineOptions"]
