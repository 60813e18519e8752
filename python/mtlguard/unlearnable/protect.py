"""Turning a clean dataset into its protected (unlearnable) copy, in memory or on disk.

A *protector* maps a batch ``(x float [B, C, H, W] in [0, 1], targets, indices)`` to a perturbation.
:func:`protect_images` runs it over a dataset and stores every protected image as uint8
(``x_uint8 + round(delta * 255)``, clipped, as the official MTL-UE code), checking the L-inf bound
for L-inf methods.  :class:`ProtectedDataset` serves the result with the source's labels (victim
training); :func:`write_protected` writes it in the source layout with
:func:`mtlguard.data.write_folder_dataset` (lossless PNG, never into the source tree).

ISS defenses (Liu et al., 2023; MTL-UE B.3) on the protected training images: :func:`iss_jpeg`
(quality 10), :func:`iss_grayscale`, :func:`iss_bit_depth` (2 bits).
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..color import BT601_LUMA
from ..data.tasks import TaskSpec
from .generator import MTLUEGenerator
from .patterns import ClasswisePatterns
from .quantize import check_linf_bound, quantize_protected
from .surrogate import Indexed, make_loader

Protector = Callable[[torch.Tensor, Mapping[str, torch.Tensor], torch.Tensor], torch.Tensor]


def generator_protector(gen: MTLUEGenerator, protect_tasks: Sequence[str] | None = None, device="cpu") -> Protector:
    """Perturbations of a fitted MTL-UE generator; tasks not in ``protect_tasks`` get label -1
    (mean embedding: partial task protection, Table 8)."""
    gen = gen.to(device).eval()
    keep = None
    if protect_tasks is not None:
        names = [t.name for t in gen.class_tasks]
        bad = [n for n in protect_tasks if n not in names]
        if bad:
            raise ValueError(f"protect_tasks {bad} are not classification tasks of the generator ({names})")
        keep = torch.tensor([n in protect_tasks for n in names])

    @torch.no_grad()
    def run(x, targets, idx):
        labels = gen.labels_from_targets(targets).to(device)
        if keep is not None:
            labels = torch.where(keep.to(device)[None, :], labels, torch.full_like(labels, -1))
        dense = {t.name: targets[t.name].to(device) for t in gen.dense_tasks} or None
        return gen(x.to(device), labels, dense)[1].cpu()

    return run


def generator_file_protector(path: str | os.PathLike, tasks: Sequence[TaskSpec], backend: str | None = None,
                             device: str = "cpu") -> Protector:
    """Perturbations of an exported generator file (``.onnx``, ``.pt2``, ``.safetensors``, ...) applied exactly as
    ``mtlguard-engine`` applies them: the engine's backend at the generator's input size, its bilinear delta
    upsampling, clip and rounding (:func:`mtlguard.engine.perturb.apply_delta_batch`).  The returned delta is
    ``protected_u8 / 255 - x``, so :func:`protect_images` stores the engine's bytes.

    Raises ``ValueError`` naming the file when its tasks or class counts differ from ``tasks``."""
    from mtlguard.engine.backends import load_backend
    from mtlguard.engine.perturb import apply_delta_batch, model_input

    model = load_backend(path, backend=backend, device=device)
    facts = model.facts
    theirs = dict(zip(facts.task_names, facts.num_classes))
    ours = {t.name: t.num_classes for t in tasks if t.name in theirs}
    if ours != theirs:
        raise ValueError(f"{path}: generator tasks {theirs} do not match the dataset's tasks "
                         f"{ {t.name: t.num_classes for t in tasks} }")

    def run(x, targets, idx):
        u8 = np.rint(x.permute(0, 2, 3, 1).numpy() * 255.0).astype(np.uint8)
        inputs = np.stack([model_input(im, tuple(facts.image_size), facts.in_channels) for im in u8])
        labels = np.stack([targets[name].numpy().astype(np.int64) for name in facts.task_names], axis=1)
        delta = model.run(inputs, labels)
        out, _ = apply_delta_batch(np.ascontiguousarray(u8), np.ascontiguousarray(delta), float(facts.eps))
        return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255.0 - x

    return run


def protected_subset(n: int, fraction: float, seed: int = 0) -> np.ndarray:
    """Partial data protection (MTL-UE Table 9, after Huang et al. 2021): a bool mask ``[n]`` selecting
    ``round(fraction * n)`` items by a permutation seeded with ``seed`` -- the images ``P_r`` to protect; the
    others stay clean (``T_{1-r}``)."""
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"protect fraction must be in (0, 1], got {fraction}")
    mask = np.zeros(int(n), dtype=bool)
    k = int(round(fraction * n))
    order = torch.randperm(int(n), generator=torch.Generator().manual_seed(int(seed))).numpy()
    mask[order[:k]] = True
    return mask


def fraction_protector(protector: Protector, mask: np.ndarray) -> Protector:
    """``protector`` on the items selected by ``mask`` (:func:`protected_subset`); zero perturbation (the clean
    image, exactly) elsewhere."""
    keep = torch.from_numpy(np.asarray(mask, dtype=bool))

    def run(x, targets, idx):
        delta = protector(x, targets, idx)
        sel = keep[idx.cpu()].to(delta.device).reshape((-1,) + (1,) * (delta.dim() - 1))
        return torch.where(sel, delta, torch.zeros_like(delta))

    return run


def pattern_protector(patterns: ClasswisePatterns) -> Protector:
    """Class-wise LSP / AR perturbations."""

    @torch.no_grad()
    def run(x, targets, idx):
        labels = torch.stack([targets[t.name].reshape(-1).long() for t in patterns.tasks], 1)
        return patterns.protect(x, labels)[1]

    return run


def table_protector(deltas: torch.Tensor) -> Protector:
    """Precomputed sample-wise perturbations ``[N, C, H, W]`` in dataset order."""

    def run(x, targets, idx):
        return deltas[idx]

    return run


def _source_uint8(dataset, i: int) -> np.ndarray:
    if hasattr(dataset, "load_uint8"):
        return np.asarray(dataset.load_uint8(i))
    x, _ = dataset[i]
    return torch.round(x * 255).to(torch.uint8).permute(1, 2, 0).numpy()


def protect_images(dataset: Dataset, protector: Protector, eps: float | None = 8 / 255, batch_size: int = 256,
                   progress: bool = True, desc: str = "protecting") -> np.ndarray:
    """``uint8 [N, H, W, C]`` protected images; ``eps`` (L-inf, in [0, 1] units) is checked on the stored
    uint8 images when given (``None`` for the l2-bounded LSP / AR)."""
    from tqdm.auto import tqdm

    n = len(dataset)
    out = None
    for x, targets, idx in tqdm(make_loader(Indexed(dataset), batch_size, 0, shuffle=False), desc=desc,
                                disable=not progress, leave=False):
        delta = protector(x, targets, idx).detach().cpu().float()
        src = torch.from_numpy(np.stack([_source_uint8(dataset, int(i)) for i in idx])).permute(0, 3, 1, 2)
        if not torch.equal(src.float() / 255, x):
            # the float image the protector saw must be the stored uint8 image
            raise ValueError(f"dataset items {int(idx[0])}..{int(idx[-1])}: image is not load_uint8(i)/255")
        prot = quantize_protected(src, delta)
        if eps is not None:
            check_linf_bound(src, prot, eps, name=f"items {int(idx[0])}..{int(idx[-1])}")
        if out is None:
            out = np.empty((n,) + tuple(prot.shape[2:]) + (prot.shape[1],), np.uint8)
        out[idx.numpy()] = prot.permute(0, 2, 3, 1).numpy()
    return out


class ProtectedDataset(Dataset):
    """``(protected image, source targets)``: the source's labels with replaced uint8 images."""

    def __init__(self, source: Dataset, images_uint8: np.ndarray):
        if len(images_uint8) != len(source):
            raise ValueError(f"{len(images_uint8)} protected images for a dataset of {len(source)} items")
        self.source = source
        self.images = images_uint8
        self.tasks = getattr(source, "tasks", ())
        self.num_channels = images_uint8.shape[-1]
        self.image_size = tuple(images_uint8.shape[1:3])

    def __len__(self):
        return len(self.images)

    def load_uint8(self, i: int) -> np.ndarray:
        return self.images[i]

    def targets(self, i: int):
        if hasattr(self.source, "targets"):
            return self.source.targets(i)
        return self.source[i][1]

    def __getitem__(self, i):
        arr = self.images[i]
        x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float().div_(255.0)
        return x, self.targets(i)


# --- ISS defenses (Liu et al., 2023) ----------------------------------------------------------------
def iss_jpeg(images: np.ndarray, quality: int = 10) -> np.ndarray:
    """JPEG-compress every ``uint8 [N, H, W, C]`` image at ``quality`` and decode it back."""
    from PIL import Image

    out = np.empty_like(images)
    for i, a in enumerate(images):
        img = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(quality))
        dec = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
        out[i] = dec[..., None] if dec.ndim == 2 else dec
    return out


def iss_grayscale(images: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, replicated to the image's channels."""
    if images.shape[-1] == 1:
        return images.copy()
    y = images[..., :3].astype(np.float32) @ np.array(BT601_LUMA, np.float32)
    y = np.clip(np.round(y), 0, 255).astype(np.uint8)
    return np.repeat(y[..., None], images.shape[-1], axis=-1)


def iss_bit_depth(images: np.ndarray, bits: int = 2) -> np.ndarray:
    """Bit-depth reduction to ``bits`` bits per channel (``round(x * (2^b - 1)) / (2^b - 1)``)."""
    levels = 2 ** int(bits) - 1
    x = images.astype(np.float32) / 255.0
    return np.clip(np.round(np.round(x * levels) / levels * 255.0), 0, 255).astype(np.uint8)


DEFENSES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda a: a,
    "jpeg": iss_jpeg,
    "grayscale": iss_grayscale,
    "bdr": iss_bit_depth,
}


def write_protected(dataset, images_uint8: np.ndarray, out_dir: str | os.PathLike, overwrite: bool = False,
                    progress: bool = True, input_roots: Sequence[str | os.PathLike] = ()) -> Path:
    """Write the protected copy with the source's relative file names (extension -> ``.png``) and labels.

    ``out_dir`` may not be, or lie inside, the dataset's root or any of ``input_roots`` (e.g. the
    ``--root`` the user gave, which can be a parent of the image folder)."""
    from ..data.folder import write_folder_dataset

    out_r = Path(out_dir).resolve()
    for r in [getattr(dataset, "root", None), *input_roots]:
        if r is None:
            continue
        r = Path(r).resolve()
        if out_r == r or r in out_r.parents:
            raise ValueError(f"refusing to write the protected copy into the input tree: {str(out_dir)!r} is "
                             f"inside {str(r)!r}")

    files = getattr(dataset, "files", None)
    if files is None:
        files = [f"images/{i:06d}.png" for i in range(len(dataset))]
    tasks: Sequence[TaskSpec] = dataset.tasks
    labels = {}
    src_labels = getattr(dataset, "label_arrays", None)
    for t in tasks:
        if src_labels is not None and t.name in src_labels and not t.is_dense:
            labels[t.name] = np.asarray(src_labels[t.name])
        else:
            vals = [dataset.targets(i)[t.name] if hasattr(dataset, "targets") else dataset[i][1][t.name]
                    for i in range(len(dataset))]
            labels[t.name] = torch.stack(vals).numpy()
    root = getattr(dataset, "root", None)
    return write_folder_dataset(out_dir, files, images_uint8, labels, tasks, source_root=root,
                                image_format="png", overwrite=overwrite, progress=progress)


class TaskView(Dataset):
    """A dataset restricted to some of its tasks (targets and ``.tasks`` filtered, images shared)."""

    def __init__(self, dataset, tasks: Sequence[TaskSpec]):
        have = {t.name for t in dataset.tasks}
        missing = [t.name for t in tasks if t.name not in have]
        if missing:
            raise KeyError(f"task(s) {missing} not in the dataset (has {sorted(have)})")
        self.dataset, self.tasks = dataset, tuple(tasks)
        names = {t.name for t in self.tasks}
        self._names = names
        for attr in ("root", "files", "num_channels", "image_size"):
            if hasattr(dataset, attr):
                setattr(self, attr, getattr(dataset, attr))
        if hasattr(dataset, "label_arrays"):
            self.label_arrays = {k: v for k, v in dataset.label_arrays.items() if k in names}

    def __len__(self):
        return len(self.dataset)

    def load_uint8(self, i):
        return _source_uint8(self.dataset, i)

    def targets(self, i):
        t = self.dataset.targets(i) if hasattr(self.dataset, "targets") else self.dataset[i][1]
        return {k: v for k, v in t.items() if k in self._names}

    def __getitem__(self, i):
        x, t = self.dataset[i]
        return x, {k: v for k, v in t.items() if k in self._names}
