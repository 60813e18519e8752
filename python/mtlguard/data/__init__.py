"""Multi-task datasets and their task specifications.

Every dataset is a :class:`MultiTaskDataset`: items ``(image float32 [C, H, W] in [0, 1],
{task: target})`` (targets as in the table of :mod:`mtlguard.data.tasks`), ``.tasks`` (tuple of
:class:`TaskSpec`), ``.num_channels``, ``.image_size`` ``(H, W)``, ``.labels_tensor()`` (int64
``[N, K]`` class labels of the classification tasks, what the MTL-UE generator embeds) and
``.load_uint8(i)`` / ``.images_uint8()`` (``uint8 [H, W, C]`` / ``[N, H, W, C]``).  File-backed
datasets also expose ``.root`` and ``.files`` (relative paths) so that a protected copy can be
written with :func:`write_folder_dataset` under the same names.

Loaders: :class:`UTKFace`, :class:`CelebA`, :class:`ChestXray14`, :class:`NYUv2`, :class:`Office31`,
:class:`FolderDataset`, :class:`SyntheticScenes`; by name: :func:`build_dataset`, :func:`dataset_tasks`.
"""
from .tasks import (
    CLASSIFICATION_KINDS,
    DENSE_KINDS,
    KINDS,
    TaskSpec,
    select_tasks,
    tasks_from_json,
    tasks_to_json,
    validate_tasks,
)
from .base import ImageFileDataset, MultiTaskDataset, MultiTaskSubset, image_to_tensor
from .imageio import decode_image, default_cache_dir
from .utkface import UTKFACE_TASKS, UTKFace, age_to_bin, parse_utkface_name
from .synthetic import SCENE_CLASSES, SCENE_TASKS, SyntheticScenes
from .folder import FolderDataset, dataset_labels, read_task_file, write_folder_dataset, write_protected_copy
from .celeba import CelebA
from .chestxray import CHESTX_FINDINGS, ChestXray14
from .nyuv2 import NYUV2_TASKS, NYUv2
from .office31 import OFFICE31_CLASSES, OFFICE31_DOMAINS, Office31
from .registry import CELEBA_ATTRIBUTES, DATASETS, build_dataset, dataset_num_channels, dataset_tasks

__all__ = [
    "TaskSpec", "KINDS", "CLASSIFICATION_KINDS", "DENSE_KINDS",
    "validate_tasks", "select_tasks", "tasks_to_json", "tasks_from_json",
    "MultiTaskDataset", "MultiTaskSubset", "ImageFileDataset", "image_to_tensor", "decode_image", "default_cache_dir",
    "UTKFace", "UTKFACE_TASKS", "age_to_bin", "parse_utkface_name",
    "SyntheticScenes", "SCENE_CLASSES", "SCENE_TASKS",
    "FolderDataset", "write_folder_dataset", "write_protected_copy", "dataset_labels", "read_task_file",
    "CelebA", "CELEBA_ATTRIBUTES", "ChestXray14", "CHESTX_FINDINGS", "NYUv2", "NYUV2_TASKS",
    "Office31", "OFFICE31_CLASSES", "OFFICE31_DOMAINS",
    "build_dataset", "dataset_tasks", "dataset_num_channels", "DATASETS",
]
