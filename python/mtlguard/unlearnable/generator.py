"""The MTL-UE perturbation generator (Yu et al., ICML 2025, Sec. 4.3-4.4, Fig. 3-4, A.2).

``delta = Clip(s * D([E(x), e^1_{y1}, ..., e^K_{yK}]), -eps, eps)``, ``protected = clip(x + delta, 0, 1)``,
with ``s = eps`` (``delta_units="eps"``, the default) or ``s = 1`` (``"raw"``, Alg. 1 as written).

* Encoder E (A.2, "9 convolutional layers and x0.5 downsampling"): the ResNet-18 stem up to
  ``layer2`` -- 3x3/1 conv 64 -> BN -> ReLU -> layer1 (2 BasicBlocks, 64) -> layer2 (2 BasicBlocks,
  128, stride 2), so ``z`` is ``[128, H/2, W/2]``.  ``large_stem=True`` uses the 7x7/2 conv + 3x3/2
  max-pool stem instead (``z`` at ``H/8``), for large images.
* Class-wise spatial embeddings ``e^k_c`` of shape ``[16, h, w]`` (``h, w`` = z's size) for every
  classification task k and class c, stored as ONE packed table ``[sum_k C_k, 16*h*w]`` and read
  through the fused :func:`mtlguard.ops.embed_concat`.  ``emb_tile=t`` (our option, off by default)
  stores ``[16, t, t]`` tiles instead and repeats them over the ``h x w`` grid: the class code becomes
  periodic (period ``2t`` generator pixels with the 3x3 stem), so a random crop of the protected image
  shows the same code at another phase instead of another part of it.  Label ``-1`` = task not protected -> the
  mean of that task's embeddings (partial task protection, Sec. 5.3 / Table 8).  Initialised
  N(0, 1) like ``nn.Embedding`` (official code).
* Dense tasks (segmentation / depth / normal, Sec. 4.4): a per-task label embedder with the
  structure of E maps the label map (1 channel; 3 for normals) to features; a 1x1 conv reduces
  them to the same 16 channels (our choice so every task adds 16 channels to D's input).
* Decoder D (A.2, "4 ConvTranspose2d layers and one x2 upsampling", official layout):
  ConvT(k4, s2) -> ConvT(k3) -> IN -> ReLU -> ConvT(k3) -> IN -> ReLU -> ConvT(k3) -> image
  channels.  With ``large_stem`` two more ConvT(k4, s2) upsamplings reach full resolution.
* ``delta`` = hard clip to ``[-eps, eps]`` and the ``[0, 1]`` box via :func:`mtlguard.ops.project_linf`
  (the official code clamps too; no tanh).
* ``delta_units`` (our choice; default ``"eps"``): ``"raw"`` is Alg. 1 literally, ``Clip(D(.), -eps, eps)``.
  With the default initialisation D's output is ~16x eps, so ~98% of the pixels start clipped and pass
  no gradient.  ``"eps"`` reads D's output in units of eps, ``Clip(eps * D(.), -eps, eps)``: the same
  function class (scale D's last layer by 1/eps), with ~40% of the pixels clipped at initialisation.
  Measured on UTKFace 32x32 (``reports/protection_utkface.md`` vs ``protection_utkface_eps.md``):
  with ``"raw"``, MTL-UE-EM's surrogate reached 0.61 protected-train accuracy in 30 rounds and the
  victims learned as on clean data; with ``"eps"`` it reached 0.89 and the victims' age / race fell
  below the majority rate.  The TAP loss after 30 rounds was 5.63 (``"eps"``) vs 5.86 (``"raw"``).
  Generators saved before the option load as ``"raw"``.
* ``delta_channels`` (our choice; default ``"all"``): ``"luma"`` makes D output one plane that is
  replicated to the image's channels.  The ISS grayscale defense, ``Y = 0.299 R + 0.587 G + 0.114 B``,
  then leaves the perturbation unchanged (the weights sum to 1), and JPEG stores it in the finely
  quantized, full-resolution luma channel rather than in subsampled chroma.  ``"split"`` gives each
  half of the budget its own plane set: D outputs one luma plane ``u`` and one plane per channel ``v``,
  each clipped to the budget, and ``delta = Clip(s * (u + v) / 2)``: at least ``eps/2`` of every pixel's
  perturbation is luma that grayscale keeps, the rest free per channel (a luma share with a floor,
  between ``"luma"``, which survives grayscale but protects less under standard training, and ``"all"``).
  Measured with the default's recipe (``reports/protection_deploy_defenses.md``, seed 0, ResNet-18@32,
  PR age / gender / race): grayscale 0.39 / 0.44 / 0.36 vs 0.24 / 0.23 / 0.33 with ``"all"``, PGD-AT race
  0.12 vs 0.00, but BDR-2 0.54-0.63 and mixup age 0.48 (``"all"``: >= 0.88), and under standard training on
  architectures it never saw as low as 0.57 (DenseNet-121@32 gender): not the default.
* :meth:`MTLUEGenerator.protect_native` applies the generator to an image of any size exactly as
  ``mtlguard-engine`` does (resize to the generator's size, delta upsampled bilinearly, re-clipped to eps,
  added), differentiably: robust fitting (:mod:`.eot`) optimizes what the engine writes.

Image size must be divisible by 2 (by 8 with ``large_stem``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..atomic import atomic_write, atomic_write_text
from ..data.tasks import TaskSpec, validate_tasks

EMB_CHANNELS = 16
#: how the decoder output is read before the clip: ``raw`` (Alg. 1) or in units of ``eps``
DELTA_UNITS = ("raw", "eps")
#: what generators, fit states and work folders saved before ``delta_units`` existed were made with
LEGACY_DELTA_UNITS = "raw"
#: which channels the perturbation has: one per image channel (``all``, Alg. 1) or one luma plane
#: replicated to every channel (``luma``: grayscale conversion keeps it exactly; JPEG keeps luma at full
#: resolution and quantizes it more finely than chroma), or half of the budget each (``split``)
DELTA_CHANNELS = ("all", "luma", "split")
Z_CHANNELS = 128
FORMAT_VERSION = 1


class BasicBlock(nn.Module):
    """ResNet BasicBlock (He et al., 2016)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class StemEncoder(nn.Module):
    """ResNet-18 stem up to layer2: ``[B, C, H, W] -> [B, 128, H/2, W/2]`` (``H/8`` with ``large_stem``)."""

    def __init__(self, in_channels: int, large_stem: bool = False):
        super().__init__()
        if large_stem:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
            self.pool = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
            self.pool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = nn.Sequential(BasicBlock(64, 64), BasicBlock(64, 64))
        self.layer2 = nn.Sequential(BasicBlock(64, Z_CHANNELS, 2), BasicBlock(Z_CHANNELS, Z_CHANNELS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(F.relu(self.bn1(self.conv1(x))))
        return self.layer2(self.layer1(out))


class LabelEmbedder(nn.Module):
    """Dense-task label embedder E^k (Sec. 4.4): E's structure + 1x1 conv to ``emb_channels``."""

    def __init__(self, label_channels: int, emb_channels: int, large_stem: bool = False):
        super().__init__()
        self.stem = StemEncoder(label_channels, large_stem)
        self.proj = nn.Conv2d(Z_CHANNELS, emb_channels, 1)

    def forward(self, label_map: torch.Tensor) -> torch.Tensor:
        return self.proj(self.stem(label_map))


def _decoder(cin: int, out_channels: int, large_stem: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.ConvTranspose2d(cin, 64, 4, stride=2, padding=1),
        nn.ConvTranspose2d(64, 64, 3, stride=1, padding=1),
        nn.InstanceNorm2d(64),
        nn.ReLU(),
    ]
    if large_stem:  # z at H/8: two more x2 upsamplings
        layers += [nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.InstanceNorm2d(32), nn.ReLU(),
                   nn.ConvTranspose2d(32, out_channels, 4, stride=2, padding=1)]
    else:
        layers += [nn.ConvTranspose2d(64, 32, 3, stride=1, padding=1), nn.InstanceNorm2d(32), nn.ReLU(),
                   nn.ConvTranspose2d(32, out_channels, 3, stride=1, padding=1)]
    return nn.Sequential(*layers)


def dense_label_input(spec: TaskSpec, target: torch.Tensor) -> torch.Tensor:
    """A dense target as the float label map E^k reads: ``[B, 1, H, W]`` (``[B, 3, H, W]`` for normals).

    Segmentation labels are scaled to [0, 1] by ``1/(C-1)``; ignored pixels become ``-1``.
    """
    if spec.kind == "segmentation":
        if target.dim() != 3:
            raise ValueError(f"task {spec.name!r}: segmentation target must be [B, H, W], got {tuple(target.shape)}")
        t = target.long()
        valid = t != spec.ignore_index
        m = torch.where(valid, t.to(torch.float32) / max(spec.num_classes - 1, 1), torch.full_like(t, -1, dtype=torch.float32))
        return m[:, None]
    want = 3 if spec.kind == "normal" else 1
    if target.dim() != 4 or target.shape[1] != want:
        raise ValueError(f"task {spec.name!r}: {spec.kind} target must be [B, {want}, H, W], got {tuple(target.shape)}")
    return target.to(torch.float32)


class MTLUEGenerator(nn.Module):
    """MTL-UE generator: ``forward(image, labels, dense=None) -> (protected, delta)``.

    Args:
        tasks: the dataset's task specs.  Classification tasks (binary / multiclass) get class-wise
            embeddings; dense tasks (segmentation / depth / normal) get label embedders.  Multilabel
            and regression tasks are not supported (split a multilabel task into binary tasks).
        in_channels: image channels (1 for grayscale).
        image_size: ``(H, W)`` (an int means square).  Embeddings are spatial, so the size is fixed.
        eps: L-inf bound of the perturbation (default 8/255).
        emb_channels: channels of each task's embedding (16 in the paper).
        large_stem: 7x7/2 + max-pool stem (z at H/8) instead of the 3x3/1 stem (z at H/2).
        delta_units: ``"eps"`` (``Clip(eps * D(.))``, default) or ``"raw"`` (Alg. 1 as written, ``Clip(D(.))``);
            see the module notes for why ``"eps"`` is the default.
        delta_channels: ``"all"`` (one perturbation plane per image channel), ``"luma"`` (one plane
            replicated to every channel) or ``"split"`` (half the budget each; see the module notes).
        emb_tile: ``None`` (embeddings cover the latent grid, the paper) or ``t``: ``[emb, t, t]`` class
            tiles repeated over it (``t`` must divide the latent size; see the module notes).

    ``labels``: int64 ``[N, K]`` over the classification tasks in ``tasks`` order (``-1`` = that
    task is not protected for that sample).  ``dense``: ``{task name: target}`` for dense tasks.
    """

    def __init__(
        self,
        tasks: Sequence[TaskSpec],
        in_channels: int = 3,
        image_size: int | Sequence[int] = (32, 32),
        eps: float = 8 / 255,
        emb_channels: int = EMB_CHANNELS,
        large_stem: bool = False,
        delta_units: str = "eps",
        delta_channels: str = "all",
        emb_tile: int | None = None,
    ):
        super().__init__()
        self.tasks = validate_tasks(tasks)
        bad = [t.name for t in self.tasks if not (t.is_classification or t.is_dense)]
        if bad:
            raise ValueError(f"MTLUEGenerator: tasks {bad} are neither classification (binary/multiclass) nor dense; "
                             "split multilabel tasks into binary tasks")
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        h, w = (int(v) for v in image_size)
        div = 8 if large_stem else 2
        if h % div or w % div or h <= 0 or w <= 0:
            raise ValueError(f"MTLUEGenerator: image_size {(h, w)} must be positive and divisible by {div}")
        if in_channels not in (1, 3):
            raise ValueError(f"MTLUEGenerator: in_channels must be 1 or 3, got {in_channels}")
        if not (0 < float(eps) <= 1):
            raise ValueError(f"MTLUEGenerator: eps must be in (0, 1], got {eps}")
        if delta_units not in DELTA_UNITS:
            raise ValueError(f"MTLUEGenerator: delta_units must be one of {DELTA_UNITS}, got {delta_units!r}")
        if delta_channels not in DELTA_CHANNELS:
            raise ValueError(f"MTLUEGenerator: delta_channels must be one of {DELTA_CHANNELS}, got {delta_channels!r}")
        if delta_channels == "split" and in_channels != 3:
            raise ValueError("MTLUEGenerator: delta_channels='split' needs a colour image (in_channels=3), "
                             f"got in_channels={in_channels}")
        lat = (h // div, w // div)
        if emb_tile is not None and (int(emb_tile) <= 0 or lat[0] % int(emb_tile) or lat[1] % int(emb_tile)):
            raise ValueError(f"MTLUEGenerator: emb_tile {emb_tile} must be positive and divide the latent size {lat} "
                             f"(image_size / {div})")
        self.delta_units = delta_units
        self.delta_channels = delta_channels
        self.emb_tile = None if emb_tile is None else int(emb_tile)
        self.in_channels = int(in_channels)
        self.image_size = (h, w)
        self.eps = float(eps)
        self.emb_channels = int(emb_channels)
        self.large_stem = bool(large_stem)
        self.latent_size = lat
        #: the ``[h, w]`` of one class embedding: the latent grid, or one tile of it
        self.emb_size = (self.emb_tile, self.emb_tile) if self.emb_tile else lat
        self.class_tasks = tuple(t for t in self.tasks if t.is_classification)
        self.dense_tasks = tuple(t for t in self.tasks if t.is_dense)

        self.encoder = StemEncoder(self.in_channels, self.large_stem)
        sizes = [t.num_classes for t in self.class_tasks]
        offs = [0]
        for c in sizes:
            offs.append(offs[-1] + c)
        self.register_buffer("offsets", torch.tensor(offs, dtype=torch.int64), persistent=False)
        eh, ew = self.emb_size
        self.table = nn.Parameter(torch.randn(offs[-1], self.emb_channels * eh * ew)) if sizes else None
        self.embedders = nn.ModuleDict({
            t.name: LabelEmbedder(3 if t.kind == "normal" else 1, self.emb_channels, self.large_stem)
            for t in self.dense_tasks
        })
        cin = Z_CHANNELS + self.emb_channels * len(self.tasks)
        planes = {"all": self.in_channels, "luma": 1, "split": 1 + self.in_channels}[delta_channels]
        self.decoder = _decoder(cin, planes, self.large_stem)

    # --- embeddings ------------------------------------------------------------------------------
    @property
    def num_class_tasks(self) -> int:
        return len(self.class_tasks)

    def task_embeddings(self) -> list[torch.Tensor]:
        """Per classification task, its class embeddings flattened: ``[C_k, emb*h*w]`` (views of the table)."""
        if self.table is None:
            return []
        o = self.offsets.tolist()
        return [self.table[o[k]:o[k + 1]] for k in range(len(self.class_tasks))]

    def _embed_concat_static(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Same semantics as :func:`mtlguard.ops.reference.embed_concat`, written with Python-int task
        offsets and no data-dependent checks so ``torch.export`` / ONNX (dynamo) can trace it; also the
        eager path of tiled embeddings (``emb_tile``), repeated over the latent grid here."""
        b = z.shape[0]
        eh, ew = self.emb_size
        reps = (self.latent_size[0] // eh, self.latent_size[1] // ew)
        o = [0]
        for t in self.class_tasks:
            o.append(o[-1] + t.num_classes)
        # index_select on the parameter itself (no cast unless needed): advanced indexing exports as
        # Transpose + GatherND, and the exporter folds a small table's Transpose into a copy, leaving the
        # file without ``generator.table`` (which :func:`mtlguard.export._load.generator_from_onnx` reads)
        table = self.table if self.table.dtype == z.dtype else self.table.to(z.dtype)
        parts = [z]
        for k in range(len(self.class_tasks)):
            lab = labels[:, k]
            picked = table.index_select(0, lab.clamp(0, o[k + 1] - o[k] - 1) + o[k])
            mean = table[o[k]:o[k + 1]].mean(0, keepdim=True).expand(b, -1)
            emb = torch.where((lab >= 0)[:, None], picked, mean)
            emb = emb.reshape(b, self.emb_channels, eh, ew)
            parts.append(emb.repeat(1, 1, *reps) if reps != (1, 1) else emb)
        return torch.cat(parts, dim=1)

    def labels_from_targets(self, targets: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[B, K]`` int64 class labels of the classification tasks from a ``{task: target}`` batch."""
        cols = []
        for t in self.class_tasks:
            if t.name not in targets:
                raise KeyError(f"targets have no entry for task {t.name!r} (has {list(targets)})")
            cols.append(targets[t.name].reshape(-1).long())
        if not cols:
            b = next(iter(targets.values())).shape[0]
            return torch.zeros(b, 0, dtype=torch.int64)
        return torch.stack(cols, 1)

    # --- forward ---------------------------------------------------------------------------------
    def perturbation(self, image: torch.Tensor, labels: torch.Tensor, dense: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Raw decoder output ``D([E(x), e...])`` (before the clip), with the image's channel count
        (a ``luma`` plane is replicated; ``split`` returns ``(clip(u) + clip(v)) / 2``)."""
        if image.dim() != 4 or image.shape[1] != self.in_channels or tuple(image.shape[2:]) != self.image_size:
            raise ValueError(f"MTLUEGenerator: image must be [N, {self.in_channels}, {self.image_size[0]}, "
                             f"{self.image_size[1]}], got {tuple(image.shape)}")
        z = self.encoder(image)
        if self.table is not None:
            if labels.dim() != 2 or labels.shape != (image.shape[0], self.num_class_tasks):
                raise ValueError(f"MTLUEGenerator: labels must be [N, K] = [{image.shape[0]}, {self.num_class_tasks}] "
                                 f"(tasks {[t.name for t in self.class_tasks]}), got {tuple(labels.shape)}")
            lh, lw = self.latent_size
            if _is_exporting() or self.emb_tile:
                feats = self._embed_concat_static(z, labels.to(torch.int64))
            else:
                feats = ops.embed_concat(z, self.table.to(z.dtype), labels.to(torch.int64),
                                         self.offsets.to(labels.device), (self.emb_channels, lh, lw))
        else:
            feats = z
        if self.dense_tasks:
            parts = [feats]
            for t in self.dense_tasks:
                if dense is None or t.name not in dense:
                    raise KeyError(f"MTLUEGenerator: dense label map for task {t.name!r} missing")
                parts.append(self.embedders[t.name](dense_label_input(t, dense[t.name]).to(z.dtype)))
            feats = torch.cat(parts, 1)
        out = self.decoder(feats)
        if self.delta_channels == "split":
            bound = 1.0 if self.delta_units == "eps" else self.eps
            return 0.5 * (out[:, :1].clamp(-bound, bound) + out[:, 1:].clamp(-bound, bound))
        if out.shape[1] != self.in_channels:
            out = out.expand(-1, self.in_channels, -1, -1)
        return out

    def forward(self, image: torch.Tensor, labels: torch.Tensor, dense: Mapping[str, torch.Tensor] | None = None):
        """``(protected, delta)`` with ``|delta| <= eps`` and ``protected = clip(image + delta, 0, 1)``."""
        raw = self.perturbation(image, labels, dense)
        if self.delta_units == "eps":
            raw = raw * self.eps

        return ops.project_linf(image, raw, self.eps)

    def protect_native(self, image: torch.Tensor, labels: torch.Tensor,
                       dense: Mapping[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(protected, delta)`` at ``image``'s own size, as ``mtlguard-engine`` computes it (differentiable).

        The image is resized to :attr:`image_size` (antialiased bilinear, as the engine's Pillow resize),
        the generator's delta (already box-projected there) is upsampled bilinearly with half-pixel centres
        (equal to Pillow's bilinear enlargement), re-clipped to ``[-eps, eps]`` and added; the sum is
        clipped to ``[0, 1]``.  Rounding to uint8 is left to the caller (the engine rounds;
        :func:`mtlguard.unlearnable.eot.quantize_uint8` rounds straight-through)."""
        size = tuple(image.shape[-2:])
        if size == self.image_size:
            return self(image, labels, dense)
        small = F.interpolate(image, size=self.image_size, mode="bilinear", align_corners=False, antialias=True)
        _, delta = self(small, labels, dense)
        up = F.interpolate(delta, size=size, mode="bilinear", align_corners=False).clamp(-self.eps, self.eps)
        protected = (image + up).clamp(0, 1)
        return protected, protected - image

    # --- persistence -----------------------------------------------------------------------------
    def config(self) -> dict:
        """JSON-able description (everything needed to rebuild the module)."""
        return {
            "format": "mtlguard.MTLUEGenerator",
            "format_version": FORMAT_VERSION,
            "tasks": [t.to_dict() for t in self.tasks],
            "in_channels": self.in_channels,
            "image_size": list(self.image_size),
            "eps": self.eps,
            "emb_channels": self.emb_channels,
            "large_stem": self.large_stem,
            "delta_units": self.delta_units,
            "delta_channels": self.delta_channels,
            **({"emb_tile": self.emb_tile} if self.emb_tile else {}),
            "class_tasks": [t.name for t in self.class_tasks],
            "dense_tasks": [t.name for t in self.dense_tasks],
        }

    @classmethod
    def from_config(cls, cfg: Mapping) -> "MTLUEGenerator":
        if cfg.get("format") != "mtlguard.MTLUEGenerator":
            raise ValueError(f"not an MTLUEGenerator config (format={cfg.get('format')!r})")
        tasks = [TaskSpec.from_dict(d) for d in cfg["tasks"]]
        return cls(tasks, in_channels=cfg["in_channels"], image_size=tuple(cfg["image_size"]), eps=cfg["eps"],
                   emb_channels=cfg["emb_channels"], large_stem=cfg["large_stem"],
                   delta_units=cfg.get("delta_units", LEGACY_DELTA_UNITS),
                   delta_channels=cfg.get("delta_channels", "all"), emb_tile=cfg.get("emb_tile"))

    def save(self, path: str | os.PathLike, extra: Mapping | None = None) -> Path:
        """Write ``<path>`` (safetensors weights) and ``<path>.json`` (config), both atomically.

        ``path`` may end with ``.safetensors`` or not (then it is added).  ``extra`` (JSON-able) is
        stored in the config under ``"extra"`` (e.g. fit settings).
        """
        from safetensors.torch import save_file

        path = _weights_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        from .._version import __version__

        cfg = self.config()
        cfg["mtlguard_version"] = __version__
        if extra:
            cfg["extra"] = dict(extra)
        atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"format": "mtlguard.MTLUEGenerator"}))
        atomic_write_text(_config_path(path), json.dumps(cfg, indent=2))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "MTLUEGenerator":
        """Rebuild a generator saved with :meth:`save` (strict key/shape check)."""
        from safetensors.torch import load_file

        path = _weights_path(path)
        cfg_path = _config_path(path)
        if not path.is_file():
            raise FileNotFoundError(f"generator weights not found: {path}")
        if not cfg_path.is_file():
            raise FileNotFoundError(f"generator config not found: {cfg_path}")
        cfg = json.loads(cfg_path.read_text())
        gen = cls.from_config(cfg)
        state = load_file(str(path), device=str(map_location))
        missing, unexpected = gen.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: weights do not match the config (missing {missing}, unexpected {unexpected})")
        return gen.to(map_location)


def _is_exporting() -> bool:
    try:
        return bool(torch.compiler.is_exporting())
    except AttributeError:  # pragma: no cover - older torch
        return False


def _weights_path(path) -> Path:
    p = Path(path)
    return p if p.suffix == ".safetensors" else p.with_name(p.name + ".safetensors")


def _config_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


