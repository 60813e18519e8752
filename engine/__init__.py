"""mtlguard.engine: the high-throughput bulk-protection engine behind ``mtlguard-engine``.

Python API::

    from mtlguard.engine import protect_directory
    report = protect_directory("photos/", "protected/", model="gen.onnx", labels="labels.csv")
    print(report["done"], report["failed"], report["images_per_s"])

Throughput (bench/engine.py, bench/results/engine_cpu.json): decode (simplejpeg for plain JPEGs),
inference and encode overlap in threads; the delta is applied to groups of same-size images at once
(numpy gathers with Pillow's bilinear weights); PNG defaults to zlib level 1 with the RLE strategy,
measured on protected UTKFace images to give level-6 file size at level-1 speed
(``--png-compression`` / ``--png-strategy``).  Where decode+encode and inference share the same
cores, the engine's rate is bounded by ``1 / (1/floor + 1/generator)``, not by the slower of the two.

See :func:`protect_directory` for the options, :mod:`mtlguard.engine.pipeline` for the stages,
:mod:`mtlguard.engine.labels` for label sources, :mod:`mtlguard.engine.journal` for resuming and
:mod:`mtlguard.engine.ray_executor` for running on a Ray cluster.
"""
from .pipeline import default_model, protect_directory

__all__ = ["protect_directory", "default_model"]
