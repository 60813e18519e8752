"""Metrics of every task kind, streaming evaluation, and the cross-task summaries of the papers.

* :func:`evaluate` -- ``{task: {metric: value}, "average": {...}}`` in one pass over a loader.
* per-kind meters: accuracy / AUC-ROC, mIoU / pixel accuracy, depth abs / rel error / delta<1.25^k,
  normal mean / median angle / within 11.25, 22.5, 30 degrees, MAE.
* :func:`arp` (GB-MTA Eq. 10), :func:`delta_m`, :func:`delta_acc`, :func:`attack_transferability` and
  :func:`transferability_matrix` (GB-MTA Eq. 11), :func:`intra_class_std` (MTL-UE Table 1).
* Ghamizi et al. (:mod:`.vulnerability`): :func:`adversarial_vulnerability` (Def. 1, first order from input
  gradients), :func:`empirical_vulnerability`, :func:`marginal_vulnerability` (Def. 3 + Thm. 4's bound),
  :func:`relative_task_vulnerability` (ratio of mean errors by default), :func:`pearson` (RQ4).
"""
from .classification import ClassificationMeter, RegressionMeter, auc_roc
from .dense import DepthMeter, NormalMeter, SegmentationMeter
from .evaluate import MultiTaskMeter, average_metrics, build_meter, evaluate
from .features import IntraClassStdMeter, intra_class_std
from .multitask import arp, attack_transferability, delta_acc, delta_m, task_arp, transferability_matrix
from .vulnerability import (adversarial_vulnerability, dual_norm, empirical_vulnerability, gradient_norms,
                            marginal_vulnerability, pearson, relative_task_vulnerability, task_input_gradients)

__all__ = ["auc_roc", "ClassificationMeter", "RegressionMeter", "SegmentationMeter", "DepthMeter", "NormalMeter",
           "MultiTaskMeter", "build_meter", "evaluate", "average_metrics", "IntraClassStdMeter", "intra_class_std",
           "arp", "task_arp", "delta_m", "delta_acc", "relative_task_vulnerability", "attack_transferability",
           "transferability_matrix", "adversarial_vulnerability", "empirical_vulnerability", "marginal_vulnerability",
           "gradient_norms", "dual_norm", "task_input_gradients", "pearson"]
