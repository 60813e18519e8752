"""One generator recipe (architecture options + Alg. 1 settings + surrogates), fitted the same way by
``mtlguard fit`` and by ``evaluate-protection --protocol deploy``.

:func:`fit_recipe` builds the generator and its surrogate(s), clean-trains the TAP / SEP surrogate (through
the same victim views as the fit, when EOT is on), optionally fine-tunes it with PGD-AT (``surrogate_adv_eps``:
TAP then targets the robust model, or with ``surrogate_adv_mix`` the clean and the robust model together, L_b
averaged), runs :func:`fit_generator` (resumable in ``out_dir``) and saves ``out_dir/generator.safetensors``
with the recipe and the surrogates' names in its config's ``extra``.  A surrogate named ``ARCH@SIZE`` works at
that input side (multi-resolution ensembles, e.g. ``resnet18@32,resnet18@64`` on 64 px training images): every
input it gets, in its clean training and in the fit, is first resized to ``SIZE`` (antialiased, as a victim's
loader does), so each member sees the views the way a victim of its resolution would.  ``ARCH:gray`` (or
``ARCH@SIZE:gray``) converts every input to BT.601 grayscale first, as an ISS-grayscale victim's files are:
its clean training learns grayscale features, and L_b through it rewards a perturbation whose luma alone is
a shortcut.

Measured on the deployment protocol (reports/protection_deploy_defenses.md), neither adversarial option beat the
plain clean surrogate; how long that surrogate is trained mattered most: 20 clean epochs instead of 6 (the bundled
default's one change) took standard-training PR from 0.80 to 1.15 (worst task, seed 0) but PGD-AT race from 0.20
to 0.00.  Ensembles over architectures and resolutions are measured in fitting's module notes.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

import torch

from ..atomic import atomic_write
from .eot import VictimView, grayscale, resize
from .fitting import FitConfig, FitResult, fit_generator
from .generator import MTLUEGenerator
from .surrogate import build_surrogate, train_clean_surrogate


@dataclass
class GeneratorRecipe:
    """How to make one generator.  ``gen_size=None``: the training images' own size."""

    fit: FitConfig = field(default_factory=FitConfig)
    gen_size: int | None = None
    eps: float = 8 / 255
    delta_units: str = "eps"
    delta_channels: str = "all"
    emb_tile: int | None = None       # class embeddings as periodic tiles of this side (None: the latent grid)
    large_stem: bool = False
    surrogate_archs: Sequence[str] = ("resnet18",)
    surrogate_epochs: int = 60
    sep_checkpoints: int = 15
    surrogate_adv_eps: float = 0.0    # TAP/SEP: fine-tune the clean surrogates with PGD-AT at this L-inf radius
    surrogate_adv_epochs: int = 5
    surrogate_adv_steps: int = 5
    surrogate_adv_mix: bool = False   # keep the clean surrogates next to their PGD-AT fine-tunes (a 2x ensemble)

    def __post_init__(self):
        self.surrogate_archs = tuple(self.surrogate_archs)
        if not self.surrogate_archs:
            raise ValueError("GeneratorRecipe: at least one surrogate architecture is needed")
        if len(self.surrogate_archs) > 1 and self.fit.base == "sep":
            raise ValueError("GeneratorRecipe: SEP's checkpoint ensemble uses one surrogate architecture")
        for spec in self.surrogate_archs:
            surrogate_spec(spec)  # a malformed ARCH@SIZE:gray fails here, before anything is trained
        if self.surrogate_adv_mix and not (self.surrogate_adv_eps > 0 and self.fit.base == "tap"):
            raise ValueError("GeneratorRecipe: surrogate_adv_mix needs base 'tap' and surrogate_adv_eps > 0")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fit"] = self.fit.to_dict()
        d["surrogate_archs"] = list(self.surrogate_archs)
        return d


class SurrogateSpec(NamedTuple):
    """One ``--surrogate-arch`` member: ``ARCH[@SIZE][:gray]``."""

    arch: str
    size: int | None = None   # every input resized to size x size first (None: the views' own size)
    gray: bool = False        # every input converted to BT.601 grayscale first (an ISS-grayscale victim's view)

    @property
    def file_tag(self) -> str:
        """The spec as a file-name part (``resnet18@64:gray`` -> ``resnet18_64_gray``)."""
        return "_".join([self.arch.replace("/", "_")] + ([str(self.size)] if self.size else [])
                        + (["gray"] if self.gray else []))


def surrogate_spec(spec: str) -> SurrogateSpec:
    """``"resnet18@64"`` -> ``SurrogateSpec("resnet18", 64)``; ``"resnet18:gray"`` -> ``("resnet18", None,
    True)``; ``"resnet18"`` (or an ``ARCH/MTL`` spec) -> ``(spec, None, False)``."""
    base, colon, view = spec.partition(":")
    if colon and view != "gray":
        raise ValueError(f"surrogate {spec!r}: expected ARCH[@SIZE][:gray] (the only view suffix is ':gray')")
    arch, at, size = base.rpartition("@")
    if not at or "/" in base:
        return SurrogateSpec(base, None, bool(colon))
    if not size.isdigit() or int(size) < 8 or not arch:
        raise ValueError(f"surrogate {spec!r}: expected ARCH[@SIZE][:gray] with SIZE a side >= 8 pixels")
    return SurrogateSpec(arch, int(size), bool(colon))


def _input_view(model: torch.nn.Module, spec: SurrogateSpec) -> torch.nn.Module:
    """``model`` with every input converted to grayscale (``spec.gray``) and then resized to ``spec.size``
    (a forward pre-hook, in the order of an ISS-grayscale victim: the file is gray, its loader resizes; the
    weights' names, and so the saved snapshots, stay those of ``model``)."""
    def view(_m, args):
        x = grayscale(args[0]) if spec.gray else args[0]
        return (resize(x, (spec.size, spec.size)) if spec.size else x, *args[1:])

    if spec.size or spec.gray:
        model.register_forward_pre_hook(view)
    return model


def _build_surrogates(recipe: GeneratorRecipe, tasks, channels: int, view_size: int) -> list[torch.nn.Module]:
    out = []
    for spec in recipe.surrogate_archs:
        member = surrogate_spec(spec)
        if member.gray and channels != 3:
            raise ValueError(f"surrogate {spec!r} needs colour images (3 channels), got {channels}")
        out.append(_input_view(build_surrogate(tasks, channels, member.size or view_size, member.arch), member))
    return out


def surrogate_file_names(specs) -> list[str]:
    """Each member's snapshot file: ``clean_surrogate.pt`` for the first, ``clean_surrogate_<tag>.pt`` for the
    others, and ``clean_surrogate_<tag>_<k>.pt`` for the k-th repeat of a tag already used (three ``resnet18``
    members -> ``clean_surrogate.pt``, ``clean_surrogate_resnet18.pt``, ``clean_surrogate_resnet18_2.pt``), so
    two members never share one file."""
    names: list[str] = []
    for i, spec in enumerate(specs):
        tag = surrogate_spec(spec).file_tag
        name, k = ("clean_surrogate.pt" if i == 0 else f"clean_surrogate_{tag}.pt"), 1
        while name in names:
            k += 1
            name = f"clean_surrogate_{tag}_{k}.pt"
        names.append(name)
    return names


def _trained_with(recipe: GeneratorRecipe, member: str, train_set, **training) -> dict:
    """What a surrogate snapshot file is trained with: the member spec, its training settings and the training
    images (their number and a digest of their names), recorded in the file and compared on reuse."""
    files = getattr(train_set, "files", None)
    digest = hashlib.sha256("\n".join(map(str, files)).encode()).hexdigest()[:16] if files is not None else None
    eot = recipe.fit.eot
    return {"surrogate": member, "images": len(train_set), "image_names_sha256": digest,
            "batch_size": recipe.fit.batch_size, "victim_views": asdict(eot) if eot is not None else None,
            **training}


def _cached_snapshots(path: Path, trained_with: dict, train) -> list[dict]:
    """The snapshots saved in ``path``, else ``train()``'s (saved there atomically with ``trained_with``).

    A saved file made with other settings is refused (one line naming them), so a folder reused for another
    seed, subset or member never fits through a stale surrogate; files written before the record existed are
    used as they are."""
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if "trained_with" in saved:
            old = json.loads(saved["trained_with"])
            new = json.loads(json.dumps(trained_with))
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if diff:
                detail = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff)
                raise ValueError(f"{path}: this surrogate was trained with other settings ({detail}); delete it to "
                                 "retrain, or fit into another folder")
        return saved["snapshots"]
    snaps = [{k: v.cpu() for k, v in s.items()} for s in train()]
    record = json.dumps(trained_with, sort_keys=True)
    atomic_write(path, lambda tmp: torch.save({"snapshots": snaps, "trained_with": record}, tmp))
    return snaps


def _clean_snapshots(recipe: GeneratorRecipe, member: str, surrogate, train_set, out_dir: Path, device, progress,
                     name: str = "clean_surrogate.pt") -> list[dict]:
    """The clean surrogate's weight snapshots (SEP: ``sep_checkpoints`` of them; TAP keeps the final model:
    1 file of ~45 MB, not 15), trained once per folder."""
    eot = recipe.fit.eot
    n_snapshots = recipe.sep_checkpoints if recipe.fit.base == "sep" else 1
    trained_with = _trained_with(recipe, member, train_set, epochs=recipe.surrogate_epochs, seed=recipe.fit.seed,
                                 snapshots=n_snapshots)
    return _cached_snapshots(out_dir / name, trained_with, lambda: train_clean_surrogate(
        surrogate, train_set.tasks, train_set, epochs=recipe.surrogate_epochs, batch_size=recipe.fit.batch_size,
        seed=recipe.fit.seed, device=device, n_snapshots=n_snapshots,
        augment=VictimView(eot) if eot is not None else True, progress=progress))


def _robust_snapshots(recipe: GeneratorRecipe, member: str, surrogate, train_set, out_dir: Path, device,
                      progress, name: str) -> list[dict]:
    """The clean surrogate fine-tuned with PGD-AT (``surrogate_adv_*``): TAP through a robust model puts
    robust target-class features into the perturbation (what an adversarially trained victim learns)."""
    eot = recipe.fit.eot
    trained_with = _trained_with(recipe, member, train_set, epochs=recipe.surrogate_adv_epochs,
                                 seed=recipe.fit.seed + 1, from_clean_epochs=recipe.surrogate_epochs,
                                 pgd=[recipe.surrogate_adv_eps, recipe.surrogate_adv_steps])
    return _cached_snapshots(out_dir / name, trained_with, lambda: train_clean_surrogate(
        surrogate, train_set.tasks, train_set, epochs=recipe.surrogate_adv_epochs, batch_size=recipe.fit.batch_size,
        seed=recipe.fit.seed + 1, device=device, n_snapshots=1, augment=VictimView(eot) if eot is not None else True,
        progress=progress, adversarial=(recipe.surrogate_adv_eps, recipe.surrogate_adv_steps)))


def fit_recipe(recipe: GeneratorRecipe, train_set, out_dir: str | os.PathLike, device: str = "cpu",
               progress: bool = True, extra: dict | None = None) -> tuple[MTLUEGenerator, FitResult]:
    """Fit ``recipe`` on ``train_set`` (resuming ``out_dir``) and save ``out_dir/generator.safetensors``."""
    out = Path(out_dir)
    x0, _ = train_set[0]
    channels, size = int(x0.shape[0]), (int(x0.shape[1]), int(x0.shape[2]))
    gen_size = (recipe.gen_size, recipe.gen_size) if recipe.gen_size else size
    torch.manual_seed(recipe.fit.seed)
    gen = MTLUEGenerator(train_set.tasks, in_channels=channels, image_size=gen_size, eps=recipe.eps,
                         large_stem=recipe.large_stem, delta_units=recipe.delta_units,
                         delta_channels=recipe.delta_channels, emb_tile=recipe.emb_tile)
    out.mkdir(parents=True, exist_ok=True)  # after the generator's options are checked: a refused fit leaves nothing
    view_size = max(recipe.fit.eot.sizes) if recipe.fit.eot is not None else size[0]
    surs = _build_surrogates(recipe, train_set.tasks, channels, view_size)
    names, snaps, robust, robust_names = list(recipe.surrogate_archs), None, [], []
    if recipe.fit.base != "em":  # clean-trained, frozen surrogates (TAP: one per architecture)
        for i, (arch, sur, name) in enumerate(zip(recipe.surrogate_archs, surs,
                                                  surrogate_file_names(recipe.surrogate_archs))):
            arch_snaps = _clean_snapshots(recipe, arch, sur, train_set, out, device, progress, name)
            if recipe.surrogate_adv_eps > 0:
                sur.load_state_dict(arch_snaps[-1])  # the PGD-AT fine-tune starts from the clean model
                adv_snaps = _robust_snapshots(recipe, arch, sur, train_set, out, device, progress,
                                              f"robust_{name}")
                adv_name = f"{arch} (PGD-AT {recipe.surrogate_adv_eps * 255:g}/255)"
                if recipe.surrogate_adv_mix:  # L_b = mean over {clean, robust}: both kinds of victim
                    robust.append(copy.deepcopy(sur))
                    robust[-1].load_state_dict(adv_snaps[-1])
                    robust_names.append(adv_name)
                else:
                    arch_snaps, names[i] = adv_snaps, adv_name
            sur.load_state_dict(arch_snaps[-1])
            snaps = snaps or arch_snaps
    surs, names = surs + robust, names + robust_names
    res = fit_generator(gen, train_set, surs, recipe.fit, snapshots=snaps if recipe.fit.base == "sep" else None,
                        out_dir=out, device=device, progress=progress)
    gen.save(out / "generator.safetensors", extra={**(extra or {}), "recipe": recipe.to_dict(), "rounds": res.rounds,
                                                   "stopped_early": res.stopped_early, "surrogates": names})
    return gen.cpu(), res
