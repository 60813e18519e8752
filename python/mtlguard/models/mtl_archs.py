"""Multi-task architectures beyond hard parameter sharing: MTAN, Cross-stitch and branched (tree) models.

All three are built by :func:`mtlguard.models.build_model` (``mtl="mtan" | "cross_stitch" |
"branched:<spec>"``) over the four :meth:`~mtlguard.models.backbones.Backbone.stages` of a CNN backbone, and
share the interface of :class:`~mtlguard.models.hps.HPSModel`: images in [0, 1] (ImageNet normalization
inside), ``forward(x) -> {task: output}`` with the same heads (:class:`LinearHead` on the pooled task
features, :class:`DenseHead` on the task's stride-4 ``low`` and last maps), ``features(x)``,
``shared_parameters()`` (encoder parameters that at least two tasks' losses reach), ``task_parameters(t)``
(the head of ``t`` plus encoder parameters only ``t`` reaches), ``tasks`` and ``config``.  So the trainer,
every weighting, the attacks, the MTL-UE victims and the ONNX exporter use them unchanged.

* **MTAN** (Liu, Johns & Davison, CVPR 2019, "End-to-End Multi-Task Learning with Attention"): one
  shared trunk (the backbone); per task and stage ``j`` a soft attention mask
  ``a_j^t = sigmoid(g_j^t([h_j ; r_j^t(p_{j-1}^t)]))`` (``g``: 1x1 conv-BN-ReLU-1x1 conv-BN, as the
  authors' attention layers), and the task feature ``p_j^t = a_j^t * h_j`` (elementwise), where ``h_j``
  is the shared output of stage ``j`` and ``r_j^t`` a 3x3 conv-BN-ReLU that carries the previous task
  feature to stage ``j``'s width, pooled to its size (``p_0``: the mask sees ``h_0`` only).  The paper
  feeds the mask with a feature taken inside the stage; here it is the stage output (one rule for every
  backbone).  Heads read ``p^t``.
* **Cross-stitch** (Misra et al., CVPR 2016): one column (a full backbone) per task; after each of the four
  stages a cross-stitch unit mixes the columns, ``h~_j^t = sum_s alpha_j[t, s] * h_j^s`` with one
  ``alpha`` per channel.  Units start as identity-like mixes: ``alpha[t, t] = 0.9`` and
  ``alpha[t, s] = 0.1 / (T - 1)`` (the paper's ``alpha_S = 0.9, alpha_D = 0.1`` for two tasks), and are
  learned with the network.
* **Branched** (TreeMTL-style; GB-MTA RQ3.1 "task sharing"): ``branched:<group>@<k>[,<group>@<k>...]``;
  a group is task names joined by ``+`` (its tasks share every block), ``k`` in 0-4 is the last of the
  four backbone blocks that the group shares with the rest.  Block ``j`` is one trunk module for all groups
  with ``k >= j``; a group with ``k < j`` runs its own copy of block ``j`` on its own branch.  So two
  groups share ``min(k_g, k_h)`` blocks, ``k = 0`` is an independent column, ``branched:a@4,b@4`` is
  HPS, and ``branched:age+gender@3,race@1`` splits race off after block 1 and age+gender (which share
  everything) after block 3.

Every column / branch is a freshly initialized backbone (its own random draw).
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.tasks import TaskSpec, validate_tasks
from .backbones import Backbone, BackboneOutput
from .hps import IMAGENET_MEAN, IMAGENET_STD, DenseHead, LinearHead

MTL_ARCHS = ("hps", "mtan", "cross_stitch", "branched")
#: initial self-weight of a cross-stitch unit (Misra et al.: alpha_S = 0.9, alpha_D = 0.1)
CROSS_STITCH_SELF = 0.9


def canonical_mtl(mtl: str) -> str:
    """``"hps"``, ``"mtan"``, ``"cross_stitch"`` or ``"branched:<spec>"`` (aliases: ``cross-stitch``,
    ``crossstitch``); raises ``ValueError`` otherwise (the spec itself is checked against the tasks later)."""
    if not isinstance(mtl, str) or not mtl.strip():
        raise ValueError(f"mtl must be a non-empty string, got {mtl!r}")
    m = mtl.strip()
    low = m.lower()
    if low in ("hps", "mtan"):
        return low
    if low in ("cross_stitch", "cross-stitch", "crossstitch"):
        return "cross_stitch"
    if low.startswith("branched:"):
        return "branched:" + m[len("branched:"):].replace(" ", "")
    raise ValueError(f"unknown mtl architecture {mtl!r}; expected hps, mtan, cross_stitch or "
                     "branched:<group>@<k>[,<group>@<k>...]")


def split_arch(arch: str, mtl: str | None = None) -> tuple[str, str]:
    """``"resnet18/mtan"`` -> ``("resnet18", "mtan")``; a plain ``arch`` takes ``mtl`` (default ``hps``)."""
    if isinstance(arch, str) and "/" in arch:
        a, m = arch.split("/", 1)
        if mtl is not None and canonical_mtl(mtl) != "hps" and canonical_mtl(mtl) != canonical_mtl(m):
            raise ValueError(f"arch {arch!r} names mtl {m!r} but mtl={mtl!r} was also given")
        return a.strip(), canonical_mtl(m)
    return arch, canonical_mtl(mtl or "hps")


def split_arch_list(text: str) -> list[str]:
    """``"resnet18,small_cnn/branched:age+gender@3,race@1,vgg11/mtan"`` -> ``["resnet18",
    "small_cnn/branched:age+gender@3,race@1", "vgg11/mtan"]``: a comma list of ``ARCH[/MTL]`` where a branched
    spec's own commas stay with it (an item ``<group>@<k>`` without ``/`` continues the previous branched spec)."""
    out: list[str] = []
    for tok in (t.strip() for t in str(text).split(",")):
        if not tok:
            continue
        if out and "/" not in tok and "@" in tok and "branched:" in out[-1]:
            out[-1] += "," + tok
        else:
            out.append(tok)
    return out


def parse_branched(spec: str, task_names: Sequence[str]) -> list[tuple[tuple[str, ...], int]]:
    """``"branched:age+gender@3,race@1"`` -> ``[(("age", "gender"), 3), (("race",), 1)]``.

    Every task must be in exactly one group; ``k`` is an integer in 0-4.
    """
    body = spec[len("branched:"):] if spec.startswith("branched:") else spec
    if not body:
        raise ValueError("branched spec is empty; expected branched:<group>@<k>[,<group>@<k>...]")
    groups, seen = [], []
    for part in body.split(","):
        m = re.fullmatch(r"([^@]+)@(-?\d+)", part.strip())
        if not m:
            raise ValueError(f"branched spec {spec!r}: bad group {part!r}; expected <task>[+<task>...]@<k>")
        names = tuple(n.strip() for n in m.group(1).split("+") if n.strip())
        k = int(m.group(2))
        if not 0 <= k <= 4:
            raise ValueError(f"branched spec {spec!r}: group {part!r} has k={k}; k is the last shared block, 0-4")
        unknown = [n for n in names if n not in task_names]
        if unknown:
            raise ValueError(f"branched spec {spec!r}: unknown task(s) {unknown}; the model's tasks are "
                             f"{list(task_names)}")
        dup = [n for n in names if n in seen]
        if dup or len(set(names)) != len(names):
            raise ValueError(f"branched spec {spec!r}: task(s) {dup or list(names)} appear in more than one group")
        seen += list(names)
        groups.append((names, k))
    missing = [n for n in task_names if n not in seen]
    if missing:
        raise ValueError(f"branched spec {spec!r}: task(s) {missing} are in no group (every task needs one)")
    return groups


@torch.no_grad()
def _stage_shapes(stages: Sequence[nn.Module], in_channels: int, image_size: int) -> list[tuple[int, int, int]]:
    """(channels, h, w) of every stage output for a ``image_size`` input (eval mode: no BN statistics move)."""
    mods = [m for s in stages for m in s.modules()]
    modes = [m.training for m in mods]
    for m in mods:
        m.training = False
    try:
        h = torch.zeros(1, in_channels, image_size, image_size)
        shapes = []
        for s in stages:
            h = s(h)
            shapes.append(tuple(int(v) for v in h.shape[1:]))
        return shapes
    finally:
        for m, t in zip(mods, modes):
            m.training = t


class TaskRoutedModel(nn.Module):
    """Base of the non-HPS models: normalization, heads on per-task encoder outputs, parameter roles.

    Subclasses implement :meth:`encode_tasks` (normalized images -> ``{task: BackboneOutput}``) and
    :meth:`module_users` (encoder modules with the set of tasks whose losses reach them).
    """

    mtl = "base"

    def __init__(self, tasks: Sequence[TaskSpec], in_channels: int, config: dict) -> None:
        super().__init__()
        self.tasks = validate_tasks(tasks)
        self.config = dict(config)
        self.in_channels = int(in_channels)
        mean = torch.tensor(IMAGENET_MEAN if in_channels == 3 else [sum(IMAGENET_MEAN) / 3] * in_channels)
        std = torch.tensor(IMAGENET_STD if in_channels == 3 else [sum(IMAGENET_STD) / 3] * in_channels)
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, -1, 1, 1), persistent=False)

    def _build_heads(self, pooled_dim: int, low_channels: int, high_channels: int) -> None:
        heads = {}
        for t in self.tasks:
            heads[t.name] = (DenseHead(high_channels, low_channels, t.out_channels, t.kind) if t.is_dense
                             else LinearHead(pooled_dim, t))
        self.heads = nn.ModuleDict(heads)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images [B, {self.in_channels}, H, W], got shape {tuple(x.shape)}")

    def encode_tasks(self, xn: torch.Tensor) -> dict[str, BackboneOutput]:  # pragma: no cover - abstract
        raise NotImplementedError

    def module_users(self) -> list[tuple[nn.Module, frozenset]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> dict[str, BackboneOutput]:
        """``{task: BackboneOutput}``: the pooled features and maps each task's head reads."""
        self._check(x)
        return self.encode_tasks((x - self.mean) / self.std)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's representation ``[B, D]``: the distinct pooled task features, concatenated in task
        order (one per branch / column / attention path; MTL-UE Table 1's ``z`` for HPS)."""
        enc = self.encode(x)
        seen, parts = set(), []
        for t in self.tasks:
            p = enc[t.name].pooled
            if id(p) not in seen:
                seen.add(id(p))
                parts.append(p)
        return torch.cat(parts, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        enc = self.encode(x)
        size = x.shape[-2:]
        out = {}
        for t in self.tasks:
            e, head = enc[t.name], self.heads[t.name]
            out[t.name] = head(e.maps[0], e.maps[-1], size) if t.is_dense else head(e.pooled)
        return out

    def _params_by_users(self):
        seen: dict[int, tuple[nn.Parameter, set]] = {}
        for mod, users in self.module_users():
            for p in mod.parameters():
                if id(p) in seen:
                    seen[id(p)][1].update(users)
                else:
                    seen[id(p)] = (p, set(users))
        return list(seen.values())

    def shared_parameters(self) -> list[nn.Parameter]:
        """Encoder parameters that the losses of two or more tasks reach (the weightings' ``G`` rows)."""
        return [p for p, users in self._params_by_users() if len(users) >= 2 and p.requires_grad]

    def task_parameters(self, task: str | None = None) -> list[nn.Parameter]:
        """Head of ``task`` (all heads when ``None``) plus encoder parameters only that task reaches."""
        names = [task] if task is not None else [t.name for t in self.tasks]
        own = [p for p, users in self._params_by_users() if len(users) == 1 and next(iter(users)) in names]
        heads = [p for n in names for p in self.heads[n].parameters()]
        return [p for p in own + heads if p.requires_grad]


class MTANModel(TaskRoutedModel):
    """Shared trunk + per-task soft attention masks at every stage (see module docstring)."""

    mtl = "mtan"

    def __init__(self, tasks, backbone: Backbone, in_channels: int, config: dict, image_size: int) -> None:
        super().__init__(tasks, in_channels, config)
        self.backbone = backbone
        self.low_stage = backbone.low_stage
        self._stages = backbone.stages()
        shapes = _stage_shapes(self._stages, in_channels, max(int(image_size), 32))
        ch = [s[0] for s in shapes]
        self.attention = nn.ModuleDict({t.name: nn.ModuleList([self._mask(ch[j] if j == 0 else 2 * ch[j], ch[j])
                                                               for j in range(4)]) for t in self.tasks})
        self.carry = nn.ModuleDict({t.name: nn.ModuleList([
            nn.Sequential(nn.Conv2d(ch[j - 1], ch[j], 3, padding=1, bias=False), nn.BatchNorm2d(ch[j]), nn.ReLU())
            for j in range(1, 4)]) for t in self.tasks})
        self._build_heads(ch[3], ch[self.low_stage], ch[3])

    @staticmethod
    def _mask(cin: int, c: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                             nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.Sigmoid())

    def shared_stages(self, xn: torch.Tensor) -> list[torch.Tensor]:
        """The trunk's stage outputs ``h_1 .. h_4``."""
        hs, h = [], xn
        for s in self._stages:
            h = s(h)
            hs.append(h)
        return hs

    def masks(self, x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """The attention masks ``a_j^t`` (values in (0, 1)) for images ``x`` in [0, 1]."""
        self._check(x)
        return self._attend(self.shared_stages((x - self.mean) / self.std))[1]

    def _attend(self, hs):
        feats, masks = {}, {}
        for t in self.tasks:
            att, carry = self.attention[t.name], self.carry[t.name]
            ps, ms, p = [], [], None
            for j, h in enumerate(hs):
                if j == 0:
                    a = att[0](h)
                else:
                    prev = carry[j - 1](p)
                    if prev.shape[-2:] != h.shape[-2:]:
                        prev = F.adaptive_max_pool2d(prev, h.shape[-2:])
                    a = att[j](torch.cat([h, prev], 1))
                p = a * h
                ps.append(p)
                ms.append(a)
            feats[t.name], masks[t.name] = ps, ms
        return feats, masks

    def encode_tasks(self, xn):
        feats, _ = self._attend(self.shared_stages(xn))
        return {n: BackboneOutput(ps[3].mean((2, 3)), [ps[self.low_stage], ps[3]]) for n, ps in feats.items()}

    def module_users(self):
        every = frozenset(t.name for t in self.tasks)
        mods = [(self.backbone, every)]
        for t in self.tasks:
            mods += [(self.attention[t.name], frozenset([t.name])), (self.carry[t.name], frozenset([t.name]))]
        return mods


class CrossStitchModel(TaskRoutedModel):
    """One backbone column per task, columns mixed by learned cross-stitch units after every stage."""

    mtl = "cross_stitch"

    def __init__(self, tasks, columns: Sequence[Backbone], in_channels: int, config: dict, image_size: int,
                 self_weight: float = CROSS_STITCH_SELF) -> None:
        super().__init__(tasks, in_channels, config)
        if len(columns) != len(self.tasks):
            raise ValueError(f"cross-stitch needs one column per task: {len(columns)} columns, {len(self.tasks)} tasks")
        self.columns = nn.ModuleList(columns)
        self.low_stage = columns[0].low_stage
        self._stages = [c.stages() for c in columns]
        shapes = _stage_shapes(self._stages[0], in_channels, max(int(image_size), 32))
        n = len(self.tasks)
        off = (1.0 - self_weight) / (n - 1) if n > 1 else 0.0
        init = torch.full((n, n), off) + torch.eye(n) * ((self_weight if n > 1 else 1.0) - off)
        self.units = nn.ParameterList([nn.Parameter(init[:, :, None].repeat(1, 1, c).clone())
                                       for c, _, _ in shapes])
        ch = [s[0] for s in shapes]
        self._build_heads(ch[3], ch[self.low_stage], ch[3])

    def encode_tasks(self, xn):
        n = len(self.tasks)
        hs = [xn] * n
        outs = []
        for j in range(4):
            hs = [self._stages[t][j](hs[t]) for t in range(n)]
            alpha = self.units[j]
            hs = [sum(alpha[t, s].view(1, -1, 1, 1) * hs[s] for s in range(n)) for t in range(n)]
            outs.append(hs)
        return {task.name: BackboneOutput(outs[3][t].mean((2, 3)), [outs[self.low_stage][t], outs[3][t]])
                for t, task in enumerate(self.tasks)}

    def module_users(self):
        every = frozenset(t.name for t in self.tasks)
        return [(self.columns, every), (self.units, every)]


class BranchedModel(TaskRoutedModel):
    """Tree of backbone blocks: a trunk for the groups still sharing, a branch per group after its ``k``."""

    mtl = "branched"

    def __init__(self, tasks, groups: Sequence[tuple[tuple[str, ...], int]],
                 make_backbone: Callable[[], Backbone], in_channels: int, config: dict, image_size: int) -> None:
        super().__init__(tasks, in_channels, config)
        self.groups = [(tuple(g), int(k)) for g, k in groups]
        depth = max(k for _, k in self.groups)
        trunk = make_backbone()
        self.low_stage = trunk.low_stage
        stages = trunk.stages()
        shapes = _stage_shapes(stages, in_channels, max(int(image_size), 32))
        self.trunk = nn.ModuleList(stages[:depth])
        self.branches = nn.ModuleDict()
        for i, (_, k) in enumerate(self.groups):
            if k < 4:
                self.branches[f"g{i}"] = nn.ModuleList(make_backbone().stages()[k:])
        ch = [s[0] for s in shapes]
        self._build_heads(ch[3], ch[self.low_stage], ch[3])

    def block_users(self) -> dict[str, frozenset]:
        """``{"trunk.<j>" | "g<i>.<j>": tasks}`` for every block (``j`` = 1-4), the tree as built."""
        users = {}
        for j in range(1, len(self.trunk) + 1):
            users[f"trunk.{j}"] = frozenset(n for g, k in self.groups if k >= j for n in g)
        for i, (g, k) in enumerate(self.groups):
            for j in range(k + 1, 5):
                users[f"g{i}.{j}"] = frozenset(g)
        return users

    def encode_tasks(self, xn):
        trunk = [xn]
        for blk in self.trunk:
            trunk.append(blk(trunk[-1]))
        out, full = {}, None
        for i, (g, k) in enumerate(self.groups):
            if k == 4:  # groups sharing every block read one trunk output (HPS when all do)
                if full is None:
                    full = BackboneOutput(trunk[4].mean((2, 3)), [trunk[1 + self.low_stage], trunk[4]])
                enc = full
            else:
                maps, h = trunk[1:k + 1], trunk[k]
                for blk in self.branches[f"g{i}"]:
                    h = blk(h)
                    maps.append(h)
                enc = BackboneOutput(maps[3].mean((2, 3)), [maps[self.low_stage], maps[3]])
            for n in g:
                out[n] = enc
        return out

    def module_users(self):
        users = self.block_users()
        mods = [(blk, users[f"trunk.{j + 1}"]) for j, blk in enumerate(self.trunk)]
        for i, (g, k) in enumerate(self.groups):
            if k < 4:
                mods.append((self.branches[f"g{i}"], frozenset(g)))
        return mods
