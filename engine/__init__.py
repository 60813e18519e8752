"""mtlguard.engine: the high-throughput bulk-protection engine behind ``mtlguard-engine``.

Python API::

    from mtlguard.engine import protect_directory
    report = protect_directory("photos/", "protected/", model="gen.onnx", labels="labels.csv")
    print(report["done"], report["failed"], report["images_per_s"])

See :func:`protect_directory` for the options, :mod:`mtlguard.engine.pipeline` for the stages,
:mod:`mtlguard.engine.labels` for label sources, :mod:`mtlguard.engine.journal` for resuming and
:mod:`mtlguard.engine.ray_executor` for running on a Ray cluster.
"""
from .pipeline import default_model, protect_directory

__all__ = ["protect_directory", "default_model"]
