"""Deterministic splits and subsets that do not depend on the file system's listing order."""
from __future__ import annotations

import hashlib

import numpy as np


def split_test_mask(names: list[str], test_fraction: float, split_seed: int = 0) -> np.ndarray:
    """Boolean mask of the test items: the ``round(test_fraction * N)`` smallest name hashes."""
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    keys = [hashlib.sha256(f"{split_seed}:{n}".encode()).hexdigest() for n in names]
    order = sorted(range(len(names)), key=lambda i: (keys[i], names[i]))
    mask = np.zeros(len(names), bool)
    mask[order[: int(round(test_fraction * len(names)))]] = True
    return mask


def stratified_subset(strata: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices (sorted) of ``n`` items drawn proportionally from each stratum (rows of ``strata``).

    Each item's score is ``(rank within its stratum + 0.5) / stratum size`` with ranks from a seeded
    random permutation; the ``n`` smallest scores win, so every stratum gets ~its share.
    """
    total = len(strata)
    if not 0 < n <= total:
        raise ValueError(f"subset={n} must be in [1, {total}] (the split has {total} items)")
    rng = np.random.default_rng(seed)
    u = rng.random(total)
    _, stratum = np.unique(strata, axis=0, return_inverse=True)
    stratum = stratum.reshape(-1)
    score = np.empty(total)
    for s in np.unique(stratum):
        idx = np.flatnonzero(stratum == s)
        ranks = np.argsort(np.argsort(u[idx], kind="stable"), kind="stable")
        score[idx] = (ranks + 0.5) / len(idx)
    order = np.lexsort((u, score))
    return np.sort(order[:n])
