"""The one option vocabulary of the ``mtlguard`` subcommands, and help that shows every default.

Kept free of heavy imports (``mtlguard --help`` must not import torch):

* ``--data NAME`` (dataset), ``--root DIR`` (its folder), ``--out PATH`` (what the command writes);
  the older spellings (``--dataset``, ``--data-root``, ``--output``) stay accepted as hidden aliases.
* :class:`DefaultsFormatter` / :func:`show_defaults`: every option's help ends with its default.
"""
from __future__ import annotations

import argparse


class _OldSpelling(argparse.Action):
    """Stores the value like the current option, with a one-line FutureWarning naming the new spelling."""

    def __init__(self, option_strings, dest, current: str = "", **kw):
        self.current = current
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        import warnings

        warnings.warn(f"{option_string} is an old spelling of {self.current}; use {self.current}", FutureWarning,
                      stacklevel=2)
        setattr(namespace, self.dest, values)


def add_hidden_alias(p: argparse.ArgumentParser, flag: str, dest: str, current: str | None = None, **kw) -> None:
    """Accept ``flag`` as an undocumented old spelling of the option stored in ``dest`` (``current``)."""
    p.add_argument(flag, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, action=_OldSpelling,
                   current=current or "--" + dest.replace("_", "-"), **kw)


def add_out_arg(p: argparse.ArgumentParser, what: str, required: bool = True, default=None,
                aliases: tuple[str, ...] = ()) -> None:
    """``--out PATH`` (``what`` it is), with hidden ``aliases`` such as ``--output``."""
    if required and aliases:  # argparse cannot require "--out or an alias": checked by check_required
        p.add_argument("--out", default=argparse.SUPPRESS, help=f"{what} (required)")
        _require(p, "--out")
    else:
        p.add_argument("--out", required=required, default=default, help=what)
    for a in aliases:
        add_hidden_alias(p, a, "out")


def add_data_arg(p: argparse.ArgumentParser, required: bool = True, choices_help: str | None = None) -> None:
    """``--data NAME`` (``--dataset`` hidden) and ``--root DIR`` (``--data-root`` hidden)."""
    names = choices_help or "utkface, folder, synthetic, celeba, chestxray14, nyuv2, office31"
    if required:
        p.add_argument("--data", default=argparse.SUPPRESS, help=f"dataset: {names} (required)")
        _require(p, "--data")
    else:
        p.add_argument("--data", default=None, help=f"dataset: {names}")
    add_hidden_alias(p, "--dataset", "data")
    p.add_argument("--root", default=None,
                   help="dataset folder (utkface: the folder holding images/; folder: the one holding labels.csv and "
                        "tasks.json; unused for synthetic)")
    add_hidden_alias(p, "--data-root", "root")


def add_dataset_args(p: argparse.ArgumentParser, split_default: str = "train", size_default: int = 32) -> None:
    """The dataset options of ``fit`` / ``poison`` / ``evaluate-protection`` (the names
    :func:`mtlguard.unlearnable.cli_common.load_split` reads), without importing torch."""
    add_data_arg(p)
    p.add_argument("--split", default=split_default, help="split to use")
    p.add_argument("--image-size", type=int, default=size_default, help="image side in pixels")
    p.add_argument("--subset", type=int, default=None,
                   help="use N images of the split, drawn with --seed (stratified by the class labels where the "
                        "loader supports it, folder datasets included); default: all")
    p.add_argument("--tasks", default=None, help="comma list of task names; default: all")
    p.add_argument("--cache-dir", default=None, help="decoded-image cache folder; default: the loader's")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def check_data(name: str, option: str = "--data") -> str:
    """The canonical dataset name for ``name``, or ``SystemExit`` with one line naming ``option``
    (called first thing by a subcommand's ``run``: it imports the data package)."""
    from ..data.registry import canonical_name

    try:
        return canonical_name(name)
    except KeyError as e:
        raise SystemExit(f"{option}: {e.args[0]}") from None


def check_arch(name: str, option: str = "--arch") -> str:
    """``name`` if it is a known backbone, else ``SystemExit`` with one line listing them."""
    from ..models.backbones import ARCHS

    if name not in ARCHS:
        raise SystemExit(f"{option}: unknown architecture {name!r}; expected one of {', '.join(ARCHS)}")
    return name


def _require(p: argparse.ArgumentParser, flag: str) -> None:
    p.set_defaults(_required_aliased=tuple(p.get_default("_required_aliased") or ()) + (flag,))


def check_required(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Options that are required but may come through an old spelling (argparse cannot say so itself)."""
    missing = [f for f in getattr(args, "_required_aliased", ()) if not hasattr(args, f[2:].replace("-", "_"))]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")


class DefaultsFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to every optional argument's help that does not mention its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.required or action.nargs == 0 or action.default is argparse.SUPPRESS
                or "default" in text.lower()):
            return text
        return f"{text} (default: %(default)s)".strip()

    def _format_action(self, action: argparse.Action) -> str:
        if action.help is None and action.option_strings:
            action.help = ""  # options without help still get their default shown
        if action.help == "" and action.option_strings and action.nargs != 0 and not action.required:
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


def show_defaults(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Make ``parser`` (a subcommand's, built elsewhere) print every default in ``--help``."""
    parser.formatter_class = DefaultsFormatter
    return parser


#: the deployment protocol's default victim zoo (= mtlguard.unlearnable.deploy.DEFAULT_VICTIMS; a test keeps them equal)
DEPLOY_VICTIMS = ("resnet18@32x3", "resnet18@64x3", "vgg11@32", "vgg11@64", "densenet121@32",
                  "densenet121@64", "resnet18@32:uw", "resnet18@32:stl")


def add_delta_units_arg(p: argparse.ArgumentParser, flag: str) -> None:
    """``flag`` (``--delta-units`` / ``--gen-delta-units``): :class:`MTLUEGenerator`'s ``delta_units``."""
    p.add_argument(flag, choices=["raw", "eps"], default="eps",
                   help="generator output read in units of eps (eps) or as delta (raw, Alg. 1 as written); "
                        "raw clips ~98%% of pixels at init and its MTL-UE-EM did not protect (default: %(default)s)")


def eot_defenses_arg(text: str) -> float | str:
    """``--eot-defenses``: a float scale, or ``name=p`` pairs kept as text (checked where they are read,
    :func:`mtlguard.unlearnable.cli_common.eot_config`)."""
    try:
        return float(text)
    except ValueError:
        return text


def add_robust_fit_args(p: argparse.ArgumentParser) -> None:
    """Robust-fitting options (see :mod:`mtlguard.unlearnable.fitting`'s module notes)."""
    p.add_argument("--gen-size", type=int, default=None,
                   help="generator input side; smaller than --image-size = fit at the images' own size through the "
                        "engine's recipe (default: --image-size)")
    p.add_argument("--delta-channels", choices=["all", "luma", "split"], default="all",
                   help="one perturbation plane per channel, one luma plane for all, or half the budget each "
                        "(default: %(default)s)")
    p.add_argument("--emb-tile", type=int, default=None, metavar="T",
                   help="class embeddings as T x T tiles repeated over the generator's latent grid (a periodic class "
                        "code: a random crop shows it at another phase); T divides --gen-size / 2 (default: off)")
    p.add_argument("--eot", choices=["none", "victim"], default="none",
                   help="victim: L_b over random victim pipelines (uint8, grayscale/JPEG/blur/BDR, random-resized-crop "
                        "to --eot-sizes, flip) (default: %(default)s)")
    p.add_argument("--eot-sizes", default="32,40,48,56,64",
                   help="victim input sides drawn by --eot victim (default: %(default)s)")
    p.add_argument("--eot-defenses", type=eot_defenses_arg, default=1.0, metavar="SCALE|gray=P,jpeg=P,blur=P,bdr=P",
                   help="a scale of the default grayscale/JPEG/blur/BDR probabilities (0 = crops only), or each "
                        "probability by name (unnamed ones 0) (default: %(default)s)")
    p.add_argument("--eot-crop-scale", default=None, metavar="LO,HI",
                   help="RandomResizedCrop area range of the victim views (1,1 = no crop) (default: 0.35,1.0)")
    p.add_argument("--adv-eps", type=float, default=0.0,
                   help="REM-style adversarial views: L-inf radius in 1/255 units (0 = off) (default: %(default)s)")
    p.add_argument("--adv-steps", type=int, default=0,
                   help="PGD steps of the adversarial views (default: %(default)s)")
    p.add_argument("--task-balance", choices=["sum", "log", "lagging"], default="sum",
                   help="how L_b combines the tasks: sum (Alg. 1); log (sum of log L_k, GB-MTA Eq. 8-9 as written: "
                        "favours the task closest to its target); lagging (each L_k weighted by its detached value: "
                        "the task furthest from its target leads) (default: %(default)s)")
    p.add_argument("--joint", action="store_true",
                   help="EM: surrogates step on every generator batch (joint EM; see mtlguard.unlearnable.fitting)")
    p.add_argument("--amp", choices=["none", "bf16"], default="none",
                   help="bf16: autocast the fit's convolutions to bfloat16 (faster on CPUs with AVX512-BF16 and on "
                        "GPUs) (default: %(default)s)")
    p.add_argument("--channels-last", action="store_true", help="NHWC tensors in the fit (faster on CPU)")
    p.add_argument("--surrogate-adv-eps", type=float, default=0.0,
                   help="TAP/SEP: fine-tune the clean surrogates with PGD-AT at this L-inf radius (1/255 units; 0 = "
                        "off), for perturbations that target adversarially trained victims (default: %(default)s)")
    p.add_argument("--surrogate-adv-epochs", type=int, default=5, help="PGD-AT fine-tuning epochs (default: %(default)s)")
    p.add_argument("--surrogate-adv-mix", action="store_true",
                   help="TAP: fit through the clean surrogates and their PGD-AT fine-tunes together (L_b averaged "
                        "over both), for victims that may or may not train adversarially")
    p.add_argument("--reinit-every", type=int, default=0,
                   help="EM: re-initialize the surrogates every N rounds (0 = never) (default: %(default)s)")


def robust_fit_dests() -> tuple[str, ...]:
    """The argparse names :func:`add_robust_fit_args` defines (fingerprints of fitted generators list them all, so
    an option added there cannot be left out of one)."""
    p = argparse.ArgumentParser(add_help=False)
    add_robust_fit_args(p)
    return tuple(vars(p.parse_args([])))


def recipe_from_robust_args(args: argparse.Namespace, *, fit: dict, recipe: dict):
    """The :class:`~mtlguard.unlearnable.recipes.GeneratorRecipe` that :func:`add_robust_fit_args`' options plus
    the command's own spellings describe: ``fit`` = its :class:`~mtlguard.unlearnable.fitting.FitConfig` fields
    (``base``, ``epochs``, ...), ``recipe`` = its recipe fields (``eps`` as a fraction, ``surrogate_archs``, ...).

    The one builder behind ``mtlguard fit`` and ``evaluate-protection --protocol deploy``'s fitted rows, so both
    read each robust option the same way.  A bad combination raises ``ValueError`` (one line)."""
    from ..unlearnable.cli_common import eot_config
    from ..unlearnable.fitting import FitConfig
    from ..unlearnable.recipes import GeneratorRecipe

    cfg = FitConfig(seed=args.seed, eot=eot_config(args), adv_eps=args.adv_eps / 255, adv_steps=args.adv_steps,
                    task_balance=args.task_balance, joint=args.joint, reinit_every=args.reinit_every, amp=args.amp,
                    channels_last=args.channels_last, **fit)
    return GeneratorRecipe(fit=cfg, gen_size=args.gen_size, delta_channels=args.delta_channels,
                           emb_tile=args.emb_tile, surrogate_epochs=args.surrogate_epochs,
                           sep_checkpoints=args.sep_checkpoints, surrogate_adv_eps=args.surrogate_adv_eps / 255,
                           surrogate_adv_epochs=args.surrogate_adv_epochs,
                           surrogate_adv_mix=args.surrogate_adv_mix, **recipe)
