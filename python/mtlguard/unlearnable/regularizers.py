"""MTL-UE embedding regularizers (Sec. 4.3): Intra-ER (Eq. 4) and Inter-ER (Eq. 5).

Both take a list of per-task embedding matrices ``[C_k, D]`` (one row per class, flattened spatial
embedding) and use the cosine similarity of rows.  Default weights in Alg. 1: ``lambda1 = 20`` (Intra),
``lambda2 = 100`` (Inter).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

LAMBDA_INTRA = 20.0
LAMBDA_INTER = 100.0


def _cos_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[Ca, Cb]`` cosine similarities between the rows of ``a`` and ``b``."""
    return F.normalize(a, dim=1, eps=1e-12) @ F.normalize(b, dim=1, eps=1e-12).t()


def intra_er(embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
    """Eq. 4: ``2 / sum_k C_k (C_k - 1) * sum_k sum_{m<n} cos(e^k_m, e^k_n)``.

    Tasks with a single class contribute nothing; returns 0 when no task has two classes.
    """
    embeddings = list(embeddings)
    if not embeddings:
        raise ValueError("intra_er: no task embeddings")
    total = embeddings[0].new_zeros(())
    denom = 0
    for e in embeddings:
        c = e.shape[0]
        if c < 2:
            continue
        cos = _cos_matrix(e, e)
        iu = torch.triu_indices(c, c, offset=1, device=e.device)
        total = total + cos[iu[0], iu[1]].sum()
        denom += c * (c - 1)
    if denom == 0:
        return total
    return 2.0 * total / denom


def inter_er(embeddings: Sequence[torch.Tensor]) -> torch.Tensor:
    """Eq. 5: ``1 / sum_{k<l} C_k C_l * sum_{k<l} sum_{m,n} |cos(e^k_m, e^l_n)|`` (0 for one task)."""
    embeddings = list(embeddings)
    if not embeddings:
        raise ValueError("inter_er: no task embeddings")
    total = embeddings[0].new_zeros(())
    denom = 0
    for k in range(len(embeddings)):
        for l in range(k + 1, len(embeddings)):
            total = total + _cos_matrix(embeddings[k], embeddings[l]).abs().sum()
            denom += embeddings[k].shape[0] * embeddings[l].shape[0]
    if denom == 0:
        return total
    return total / denom
