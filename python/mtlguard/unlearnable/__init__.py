"""Unlearnable examples for multi-task data: MTL-UE (Yu et al., ICML 2025) and its baselines.

* :class:`MTLUEGenerator` -- encoder + class-wise embeddings + decoder, ``forward(x, labels) -> (protected, delta)``.
* :func:`intra_er` / :func:`inter_er` -- embedding regularizers (Eq. 4 / Eq. 5).
* :func:`fit_generator` + :class:`FitConfig` -- Alg. 1 with the EM / TAP / SEP base losses.
* :mod:`.samplewise` -- sample-wise EM / TAP / SEP (PGD) baselines; :mod:`.patterns` -- LSP / AR
  class-wise patterns with averaging- or patch-based multi-task fusion (Sec. 4.2, A.1).
* :func:`quantize_protected` / :func:`check_linf_bound` -- uint8 storage with the L-inf bound checked.
"""
from .base_losses import BASE_LOSSES, base_loss, em_loss, tap_loss, target_labels
from .fitting import FitConfig, FitResult, fit_generator, protected_accuracy
from .generator import MTLUEGenerator
from .quantize import check_linf_bound, eps_levels, quantize_protected, to_uint8
from .regularizers import LAMBDA_INTER, LAMBDA_INTRA, inter_er, intra_er
from .surrogate import build_surrogate, train_clean_surrogate
from .patterns import ClasswisePatterns, num_patches
from .samplewise import samplewise_em, samplewise_tap
from .protect import (DEFENSES, ProtectedDataset, TaskView, generator_protector, pattern_protector, protect_images,
                      table_protector, write_protected)

__all__ = [
    "MTLUEGenerator", "intra_er", "inter_er", "LAMBDA_INTRA", "LAMBDA_INTER",
    "FitConfig", "FitResult", "fit_generator", "protected_accuracy",
    "BASE_LOSSES", "base_loss", "em_loss", "tap_loss", "target_labels",
    "build_surrogate", "train_clean_surrogate",
    "quantize_protected", "check_linf_bound", "eps_levels", "to_uint8",
    "ClasswisePatterns", "num_patches", "samplewise_em", "samplewise_tap",
    "DEFENSES", "ProtectedDataset", "TaskView", "generator_protector", "pattern_protector", "protect_images",
    "table_protector", "write_protected",
]
# The benchmark / report layer: ``from mtlguard.unlearnable.evaluation import ProtectionBenchmark, ProtectionConfig``.
