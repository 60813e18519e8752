"""Metrics of every task kind, streaming evaluation, and the cross-task summaries of the papers.

* :func:`evaluate` -- ``{task: {metric: value}, "average": {...}}`` in one pass over a loader.
* per-kind meters: accuracy / AUC-ROC, mIoU / pixel accuracy, depth abs / rel error / delta<1.25^k,
  normal mean / median angle / within 11.25, 22.5, 30 degrees, MAE.
* :func:`arp` (GB-MTA Eq. 10), :func:`delta_m`, :func:`delta_acc`, :func:`relative_task_vulnerability`
  (Ghamizi et al.), :func:`attack_transferability` (GB-MTA Eq. 11), :func:`intra_class_std` (MTL-UE Table 1).
"""
from .classification import ClassificationMeter, RegressionMeter, auc_roc
from .dense import DepthMeter, NormalMeter, SegmentationMeter
from .evaluate import MultiTaskMeter, average_metrics, build_meter, evaluate
from .features import IntraClassStdMeter, intra_class_std
from .multitask import arp, attack_transferability, delta_acc, delta_m, relative_task_vulnerability, task_arp

__all__ = ["auc_roc", "ClassificationMeter", "RegressionMeter", "SegmentationMeter", "DepthMeter", "NormalMeter",
           "MultiTaskMeter", "build_meter", "evaluate", "average_metrics", "IntraClassStdMeter", "intra_class_std",
           "arp", "task_arp", "delta_m", "delta_acc", "relative_task_vulnerability", "attack_transferability"]
