"""Stand-in generator with the MTLUEGenerator interface, used by the export/engine tests until
``mtlguard.unlearnable.MTLUEGenerator`` exists (not shipped; holds no tests).

:func:`make_generator` returns the real generator when it is importable, else the stand-in.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from mtlguard import ops
from mtlguard.data.tasks import TaskSpec

UTK_TASKS = (
    TaskSpec("age", "multiclass", 9, class_names=("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+")),
    TaskSpec("gender", "multiclass", 2, class_names=("male", "female")),
    TaskSpec("race", "multiclass", 5, class_names=("White", "Black", "Asian", "Indian", "Others")),
)


class StandInGenerator(nn.Module):
    """Encoder (x0.5) -> concat class embeddings (ops.embed_concat) -> decoder (x2) -> eps*tanh."""

    def __init__(self, tasks=UTK_TASKS, in_channels: int = 3, image_size=(32, 32), eps: float = 8 / 255, width: int = 8, emb: int = 4):
        super().__init__()
        self.tasks = tuple(tasks)
        self.in_channels = in_channels
        self.image_size = tuple(image_size)
        self.eps = float(eps)
        self.width, self.emb = width, emb
        h, w = self.image_size[0] // 2, self.image_size[1] // 2
        self.emb_shape = (emb, h, w)
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.InstanceNorm2d(width, affine=True), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.InstanceNorm2d(width, affine=True), nn.ReLU(),
        )
        sizes = [t.num_classes for t in self.tasks]
        self.register_buffer("offsets", torch.tensor([0] + list(torch.tensor(sizes).cumsum(0).tolist()), dtype=torch.int64))
        self.table = nn.Parameter(torch.randn(sum(sizes), emb * h * w) * 0.5)
        cin = width + emb * len(self.tasks)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(cin, width, 3, padding=1), nn.InstanceNorm2d(width, affine=True), nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(width, in_channels, 3, padding=1),
        )

    def forward(self, image: torch.Tensor, labels: torch.Tensor):
        z = self.encoder(image)
        h = ops.embed_concat(z, self.table, labels, self.offsets, self.emb_shape)
        delta = self.eps * torch.tanh(self.decoder(h) * 4.0)
        protected, delta = ops.project_linf(image, delta, self.eps)
        return protected, delta

    def config(self) -> dict:
        return {"kind": "stand-in", "tasks": [t.to_dict() for t in self.tasks], "in_channels": self.in_channels,
                "image_size": list(self.image_size), "eps": self.eps, "width": self.width, "emb": self.emb}

    def save(self, path) -> None:
        from safetensors.torch import save_file
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(path / "weights.safetensors"))
        (path / "config.json").write_text(json.dumps(self.config()))

    @classmethod
    def load(cls, path) -> "StandInGenerator":
        from safetensors.torch import load_file
        path = Path(path)
        cfg = json.loads((path / "config.json").read_text())
        g = cls([TaskSpec.from_dict(t) for t in cfg["tasks"]], cfg["in_channels"], cfg["image_size"], cfg["eps"], cfg["width"], cfg["emb"])
        g.load_state_dict(load_file(str(path / "weights.safetensors")))
        return g.eval()


def real_generator_class():
    """``mtlguard.unlearnable.MTLUEGenerator`` when it exists, else None."""
    try:
        from mtlguard.unlearnable.generator import MTLUEGenerator
    except ImportError:
        return None
    return MTLUEGenerator


def make_generator(image_size=(32, 32), seed: int = 0, stand_in: bool = False):
    """A small generator in eval mode: the real MTLUEGenerator when available, else the stand-in.

    Random weights with non-trivial norm statistics, scaled so ``delta`` is not saturated at +-eps
    everywhere (parity then tests real numbers, not the clip)."""
    torch.manual_seed(seed)
    cls = None if stand_in else real_generator_class()
    g = (cls(UTK_TASKS, in_channels=3, image_size=image_size, delta_units="raw") if cls is not None
         else StandInGenerator(image_size=image_size))
    for m in g.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.running_mean, 0.0, 0.1)
            nn.init.uniform_(m.running_var, 0.5, 1.5)
            nn.init.normal_(m.weight, 1.0, 0.1)
            nn.init.normal_(m.bias, 0.0, 0.1)
    if cls is not None:  # the real decoder ends in a ConvT; shrink it so few pixels clip
        last = [m for m in g.decoder if isinstance(m, nn.ConvTranspose2d)][-1]
        with torch.no_grad():
            last.weight.mul_(0.02)
            last.bias.zero_()
    else:
        for p in g.parameters():
            if p.dim() == 1:
                nn.init.normal_(p, 0.0, 0.2)
    return g.eval()


# --- shared, cached artifacts (one export per pytest process, reused by every export/engine test) ---
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

_CACHE: dict = {}


def cache_dir() -> Path:
    if "dir" not in _CACHE:
        d = Path(tempfile.mkdtemp(prefix="mtlguard-export-tests-"))
        atexit.register(shutil.rmtree, d, True)
        _CACHE["dir"] = d
    return _CACHE["dir"]


def shared_generator():
    """The one generator all tests export (32x32, UTKFace tasks)."""
    if "gen" not in _CACHE:
        _CACHE["gen"] = make_generator((32, 32))
    return _CACHE["gen"]


def exported_onnx(fp16: bool = False, uint8_io: bool = False) -> Path:
    """The shared generator exported to ONNX once per variant."""
    key = ("onnx", fp16, uint8_io)
    if key not in _CACHE:
        from mtlguard.cli.main import main

        path = cache_dir() / f"gen{'_fp16' if fp16 else ''}{'_u8' if uint8_io else ''}.onnx"
        # through the `mtlguard export` CLI (the path users take): the float32 export from the saved
        # checkpoint, the fp16 / uint8 variants derived from that file
        if fp16 or uint8_io:
            flags = (["--fp16"] if fp16 else []) + (["--uint8-io"] if uint8_io else [])
            argv = ["export", "--onnx", str(exported_onnx()), "--output", str(path), *flags]
        else:
            argv = ["export", "--model", str(saved_checkpoint()), "--output", str(path)]
        if main(argv) != 0:
            raise RuntimeError(f"mtlguard export failed for {path}")
        _CACHE[key] = path
    return _CACHE[key]


def saved_checkpoint() -> Path:
    """The shared generator saved with its own ``save`` (torch backend / export CLI input)."""
    if "ckpt" not in _CACHE:
        g = shared_generator()
        target = cache_dir() / "gen.safetensors"
        g.save(target)
        _CACHE["ckpt"] = target if target.exists() else cache_dir() / "gen"
    return _CACHE["ckpt"]


def utk_names(root: Path, n: int, offset: int = 0) -> list[str]:
    """``n`` real UTKFace file names with valid labels (deterministic)."""
    from mtlguard.data.utkface import parse_utkface_name

    names = sorted(p.name for p in (root / "images").iterdir())
    good = [x for x in names if parse_utkface_name(x) is not None]
    step = max(1, len(good) // (n + offset + 1))
    return good[offset * step::step][:n]


def utk_labels(names) -> np.ndarray:
    from mtlguard.data.utkface import age_to_bin, parse_utkface_name

    out = []
    for n in names:
        a, g, r = parse_utkface_name(n)
        out.append([age_to_bin(a), g, r])
    return np.asarray(out, dtype=np.int64)


def utk_batch(root: Path, n: int = 6, size=(32, 32)):
    """``(images float32 [n, 3, h, w] in [0, 1], labels int64 [n, 3], names)`` from real UTKFace files
    (Pillow bilinear resize, as the engine does)."""
    names = utk_names(root, n)
    arrs = []
    for name in names:
        with Image.open(root / "images" / name) as im:
            small = im.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
        arrs.append(np.asarray(small, dtype=np.float32).transpose(2, 0, 1) / 255.0)
    return np.stack(arrs), utk_labels(names), names


def copy_utk(root: Path, dest: Path, n: int, offset: int = 0) -> list[str]:
    """Copy ``n`` real UTKFace images to ``dest`` (a test's tmp dir); returns their names."""
    dest.mkdir(parents=True, exist_ok=True)
    names = utk_names(root, n, offset)
    for name in names:
        shutil.copyfile(root / "images" / name, dest / name)
    return names


def one_channel_onnx() -> Path:
    """A 1-channel (grayscale) generator with the UTKFace tasks, exported to ONNX once per process."""
    if "onnx1" not in _CACHE:
        from mtlguard.export import export_onnx

        cls = real_generator_class()
        torch.manual_seed(1)
        g1 = (cls(UTK_TASKS, in_channels=1, image_size=(32, 32)) if cls is not None
              else StandInGenerator(in_channels=1)).eval()
        path = cache_dir() / "gen_gray.onnx"
        export_onnx(g1, path)
        _CACHE["onnx1"] = path
    return _CACHE["onnx1"]


def tree_digest(root: Path) -> dict:
    """``{relative path: sha256}`` of every file under ``root`` (empty if it does not exist)."""
    import hashlib

    root = Path(root)
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def write_labels_csv(path: Path, names, header: str = "path,age,gender,race", extra=None) -> Path:
    """A labels.csv with the real UTKFace labels of ``names`` (``extra``: more raw lines)."""
    lab = utk_labels([Path(n).name for n in names])
    rows = [header] + [f"{n},{a},{g},{r}" for n, (a, g, r) in zip(names, lab.tolist())] + list(extra or [])
    path.write_text("\n".join(rows) + "\n")
    return path


def engine_cli(capsys, *args) -> tuple[int, str, str]:
    """``mtlguard-engine protect --no-progress ARGS`` in process: ``(exit code, stdout, stderr)``."""
    from mtlguard.engine.cli import main as engine_main

    capsys.readouterr()  # drop what preparing the arguments printed (e.g. the first `mtlguard export`)
    rc = engine_main(["protect", "--no-progress", *map(str, args)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_error_line(rc: int, err: str, *needles: str) -> str:
    """Exit 2 with exactly one stderr line 'mtlguard-engine: error: ...' containing every needle."""
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("mtlguard-engine: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]
