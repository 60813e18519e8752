"""Export-friendly translations of mtlguard's fused ops (standard ONNX ops only).

:func:`mtlguard.ops.reference.embed_concat` validates labels and slices the packed embedding table
with Python integers read from the ``offsets`` tensor; ``torch.export`` cannot trace those
data-dependent reads.  :func:`embed_concat_static` computes the same result with shape-static tensor
ops (Gather / Where / MatMul / Concat), and :func:`export_ops` swaps it in (on top of
``mtlguard.ops.use_reference()``) for the duration of an export.  Label ranges are not checked
inside the graph: the engine validates labels against the class counts in the model metadata.
"""
from __future__ import annotations

import contextlib

import torch

import mtlguard.ops as _ops


def embed_concat_static(z: torch.Tensor, table: torch.Tensor, labels: torch.Tensor, offsets: torch.Tensor, emb_shape):
    """Same semantics as :func:`mtlguard.ops.reference.embed_concat` (MTL-UE Sec. 4.1, partial
    protection: label ``-1`` -> mean of that task's class embeddings), without data-dependent
    Python control flow."""
    e, h, w = (int(v) for v in emb_shape)
    b = z.shape[0]
    k = offsets.shape[0] - 1
    rows = torch.arange(table.shape[0], device=table.device)
    start, stop = offsets[:-1], offsets[1:]
    member = ((rows[None, :] >= start[:, None]) & (rows[None, :] < stop[:, None])).to(table.dtype)  # [K, R]
    means = (member @ table) / (stop - start).to(table.dtype)[:, None]  # [K, E*h*w]
    idx = labels.clamp_min(0) + start[None, :]  # [B, K]
    picked = table[idx.reshape(-1)].reshape(b, k, -1)  # Gather
    emb = torch.where((labels >= 0)[:, :, None], picked, means[None].expand(b, -1, -1))
    return torch.cat([z, emb.reshape(b, k * e, h, w).to(z.dtype)], dim=1)


@contextlib.contextmanager
def export_ops():
    """Context: reference ops plus the export-friendly ``embed_concat`` (standard ops only)."""
    saved = _ops.embed_concat
    _ops.embed_concat = embed_concat_static
    try:
        with _ops.use_reference():
            yield
    finally:
        _ops.embed_concat = saved
