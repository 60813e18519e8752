"""The ``mtlguard`` command line on bad input, run as the real command (a subprocess): each error is one
line naming the file or option, exit status 2, no traceback, and the inputs are left unchanged.  Also:
``--subset`` on folder datasets, ``poison`` keeping every label column (its output trains with
``mtlguard train --data folder``), the subcommand's usage on unknown options, one-line warnings, and
``--help`` that shows every default without importing torch."""
from __future__ import annotations

import argparse
import csv
import hashlib
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from test_engine_standin import make_generator

pytestmark = pytest.mark.usefixtures("one_thread")

CLI = [sys.executable, "-c", "import sys; from mtlguard.cli.main import main; sys.exit(main())"]


def cli(*args, cwd=None, timeout=600) -> subprocess.CompletedProcess:
    """``mtlguard ARGS`` as a user runs it (console mode: one-line errors)."""
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_one_line_error(r, command: str, *needles: str) -> str:
    """Exit 2, stderr = one ``mtlguard COMMAND: error: ...`` line containing every needle, no traceback."""
    err = r.stderr.strip()
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and "\n" not in err, r.stderr
    assert err.startswith(f"mtlguard {command}: error: "), err
    for n in needles:
        assert n in err, (n, err)
    return err


@pytest.fixture(scope="module")
def folders(utkface_root, tmp_path_factory):
    """A folder dataset of 24 real UTKFace faces (32x32, split column 16 train / 8 test, plus a
    'photographer' column), a copy whose labels.csv lacks the split column, and a saved generator."""
    from mtlguard.data.folder import write_folder_dataset
    from mtlguard.data.utkface import UTKFace

    tmp = tmp_path_factory.mktemp("clierr")
    ds = UTKFace(utkface_root, split="train", image_size=32, subset=24, seed=0, cache_dir=tmp / "cache", progress=False)
    imgs = np.stack([ds.load_uint8(i) for i in range(len(ds))])
    files = [f"img/{i:03d}.png" for i in range(24)]
    clean = write_folder_dataset(tmp / "clean", files, imgs, ds.label_arrays, ds.tasks,
                                 split=["train"] * 16 + ["test"] * 8,
                                 extra_columns={"photographer": [f"p{i % 3}" for i in range(24)]}, progress=False)
    nosplit = write_folder_dataset(tmp / "nosplit", files, imgs, ds.label_arrays, ds.tasks, progress=False)
    make_generator((32, 32)).save(tmp / "gen" / "generator.safetensors")
    return tmp, clean, nosplit


# ------------------------------------------------------------------------------------------ bad files
@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_corrupt_onnx_is_one_line_for_export_and_inspect(tmp_path, kind):
    from importlib.resources import files

    good = (files("mtlguard") / "assets" / "default_generator.onnx").read_bytes()
    bad = tmp_path / "gen.onnx"
    bad.write_bytes(good[: len(good) // 3] if kind == "truncated" else b"not an onnx file\x00" * 64)
    before = snapshot(tmp_path)
    for argv, command in ([("export", "--onnx", bad, "--out", tmp_path / "out.onnx", "--fp16"), "export"],
                          [("export", "--onnx", bad, "--out", tmp_path / "out.onnx", "--any-size"), "export"],
                          [("inspect", bad), "inspect"]):
        assert_one_line_error(cli(*argv), command, str(bad), "not a readable ONNX model")
    assert snapshot(tmp_path) == before  # nothing written, the bad file untouched


def test_model_that_is_not_a_checkpoint(tmp_path):
    txt = tmp_path / "model.txt"
    txt.write_text("weights?")
    assert_one_line_error(cli("export", "--model", txt, "--out", tmp_path / "g.onnx"), "export",
                          f"{txt}: not a generator checkpoint", ".safetensors")
    assert_one_line_error(cli("export", "--model", tmp_path / "nope", "--out", tmp_path / "g.onnx"), "export",
                          f"{tmp_path / 'nope'}: generator checkpoint not found")
    assert_one_line_error(cli("export", "--model", tmp_path, "--out", tmp_path / "g.onnx"), "export",
                          f"{tmp_path}: no generator checkpoint in this folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.txt"] and txt.read_text() == "weights?"


# ------------------------------------------------------------------------------------- unknown names
def test_unknown_data_is_one_line_for_every_subcommand(folders):
    tmp, clean, _ = folders
    before = snapshot(clean)
    gen = tmp / "gen"
    runs = {
        "train": ("train", "--data", "imagenet", "--root", clean, "--out", tmp / "t"),
        "fit": ("fit", "--data", "imagenet", "--root", clean, "--out", tmp / "f"),
        "poison": ("poison", "--data", "imagenet", "--root", clean, "--generator", gen, "--out", tmp / "p"),
        "evaluate-protection": ("evaluate-protection", "--data", "imagenet", "--root", clean, "--out", tmp / "e"),
        "attack-eval": ("attack-eval", "--model", tmp / "m", "--data", "imagenet", "--root", clean, "--out", tmp / "a"),
    }
    for command, argv in runs.items():
        assert_one_line_error(cli(*argv), command, "--data", "unknown dataset 'imagenet'", "folder")
    assert snapshot(clean) == before
    assert not any((tmp / d).exists() for d in ("t", "f", "p", "e", "a"))


def test_unknown_arch_is_one_line(folders):
    tmp, clean, _ = folders
    r = cli("train", "--data", "folder", "--root", clean, "--arch", "resnet99", "--out", tmp / "t")
    assert_one_line_error(r, "train", "--arch", "unknown architecture 'resnet99'", "small_cnn")
    assert not (tmp / "t").exists()


@pytest.fixture(scope="module")
def attack_model(folders):
    """A small saved victim for attack-eval (untrained: near chance on purpose)."""
    import torch

    from mtlguard.data.utkface import UTKFACE_TASKS
    from mtlguard.models import build_model, save_model

    tmp, _, _ = folders
    torch.manual_seed(0)
    save_model(build_model(UTKFACE_TASKS, arch="small_cnn", image_size=32), tmp / "victim")
    return tmp / "victim"


def test_attack_eval_unknown_data_after_a_valid_model(folders, attack_model):
    tmp, clean, _ = folders
    r = cli("attack-eval", "--model", attack_model, "--data", "imagenet", "--root", clean, "--out", tmp / "a")
    assert_one_line_error(r, "attack-eval", "--data", "unknown dataset 'imagenet'")


# ----------------------------------------------------------------------------------- folder datasets
def test_folder_without_split_column(folders):
    tmp, _, nosplit = folders
    before = snapshot(nosplit)
    r = cli("train", "--data", "folder", "--root", nosplit, "--arch", "small_cnn", "--epochs", "1", "--out", tmp / "t2")
    assert_one_line_error(r, "train", str(nosplit / "labels.csv"), "'split'", "--test-root")
    r = cli("fit", "--data", "folder", "--root", nosplit, "--split", "test", "--out", tmp / "f2")
    assert_one_line_error(r, "fit", str(nosplit / "labels.csv"), "no 'split' column")
    assert snapshot(nosplit) == before and not (tmp / "t2").exists() and not (tmp / "f2").exists()


def test_subset_works_on_folder_datasets(folders):
    """--subset with --data folder: load_split (fit / poison / evaluate-protection) and the poison command."""
    from mtlguard.cli.main import build_parser
    from mtlguard.unlearnable.cli_common import load_split

    tmp, clean, _ = folders
    for command in ("fit", "poison", "evaluate-protection"):
        extra = {"fit": ["--out", "x"], "poison": ["--method", "ar-patch", "--out", "x"],
                 "evaluate-protection": ["--out", "x"]}[command]
        args = build_parser([command]).parse_args([command, "--data", "folder", "--root", str(clean), "--subset", "6",
                                                   "--image-size", "32", *extra])
        ds = load_split(args, "train", args.subset)
        assert len(ds) == 6 and set(ds.files) <= {f"img/{i:03d}.png" for i in range(16)}  # train rows only
        again = load_split(args, "train", args.subset)
        assert list(again.files) == list(ds.files)  # seeded
    r = cli("poison", "--data", "folder", "--root", clean, "--subset", "5", "--method", "ar-patch",
            "--out", tmp / "p5", "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    with open(tmp / "p5" / "labels.csv") as f:
        assert len(list(csv.DictReader(f))) == 5


def test_fit_with_subset_on_a_folder(folders):
    tmp, clean, _ = folders
    r = cli("fit", "--data", "folder", "--root", clean, "--subset", "8", "--image-size", "32", "--base", "em",
            "--epochs", "1", "--train-steps", "1", "--batch-size", "8", "--surrogate-arch", "small_cnn",
            "--out", tmp / "fit8", "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp / "fit8" / "generator.safetensors").is_file()


def test_fit_refuses_a_tile_that_does_not_divide_the_latent_grid(folders):
    tmp, clean, _ = folders
    r = cli("fit", "--data", "folder", "--root", clean, "--subset", "8", "--image-size", "32", "--emb-tile", "3",
            "--out", tmp / "fit_tile3", "--no-progress")
    assert_one_line_error(r, "fit", "emb_tile 3", "latent size (16, 16)")
    assert not (tmp / "fit_tile3").exists()  # refused before anything is written


def test_poison_keeps_every_column_and_its_output_trains(folders):
    tmp, clean, _ = folders
    before = snapshot(clean)
    out = tmp / "poisoned"
    r = cli("poison", "--data", "folder", "--root", clean, "--generator", tmp / "gen", "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    with open(out / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["file", "age", "gender", "race", "split", "photographer"]
    assert len(rows) == 16 and {r["split"] for r in rows} == {"train"}
    assert [r["photographer"] for r in rows] == [f"p{i % 3}" for i in range(16)]
    assert snapshot(clean) == before
    # the protected copy trains, tested on the clean test rows
    r = cli("train", "--data", "folder", "--root", out, "--test-root", clean, "--arch", "small_cnn", "--image-size", "32",
            "--epochs", "1", "--batch-size", "8", "--out", tmp / "victim_p", "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp / "victim_p" / "result.json").is_file()
    # without a test split: one line that says what to do
    r = cli("train", "--data", "folder", "--root", out, "--arch", "small_cnn", "--epochs", "1", "--out", tmp / "v2")
    assert_one_line_error(r, "train", "split='test'", "--test-root")


# -------------------------------------------------------------------------------------- ergonomics
def test_unknown_option_prints_the_subcommands_usage(tmp_path):
    r = cli("train", "--data", "synthetic", "--out", tmp_path / "x", "--bogus", "1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("usage: mtlguard train ")
    assert r.stderr.strip().endswith("mtlguard train: error: unrecognized arguments: --bogus 1")
    r = cli("export", "--onnx", "x.onnx")
    assert r.stderr.startswith("usage: mtlguard export ") and "required: --out" in r.stderr and r.returncode == 2
    assert not (tmp_path / "x").exists()


def test_warnings_print_one_line_without_source(tmp_path):
    """The old spelling --output warns (FutureWarning) as one 'mtlguard: warning:' line."""
    from importlib.resources import files

    src = files("mtlguard") / "assets" / "default_generator.onnx"
    r = cli("export", "--onnx", src, "--output", tmp_path / "any.onnx", "--any-size")
    assert r.returncode == 0, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert lines == ["mtlguard: warning: --output is an old spelling of --out; use --out"]
    assert (tmp_path / "any.onnx").is_file()


def _help_actions():
    from mtlguard.cli.main import build_parser
    from mtlguard.cli.options import DefaultsFormatter

    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices  # noqa: SLF001
    for name, p in sub.items():
        fmt = DefaultsFormatter(prog=name)
        for a in p._actions:  # noqa: SLF001
            required = a.required or a.default is argparse.SUPPRESS  # SUPPRESS: required, old spellings allowed
            if a.option_strings and a.help is not argparse.SUPPRESS and a.nargs != 0 and not required:
                yield name, a, fmt._get_help_string(a) if a.help else "(default: %(default)s)"  # noqa: SLF001


def test_every_option_shows_its_default():
    missing = [(name, a.option_strings[0]) for name, a, text in _help_actions() if "default" not in text.lower()]
    assert not missing


def test_subcommand_table_matches_the_modules():
    from mtlguard.cli.main import SUBCOMMANDS, build_parser

    sub = build_parser()._subparsers._group_actions[0]  # noqa: SLF001
    helps = {a.dest: a.help for a in sub._choices_actions}  # noqa: SLF001
    assert {name: text for name, (_, text) in SUBCOMMANDS.items()} == {n: helps[n] for n in SUBCOMMANDS}


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["export", "--help"], ["inspect", "--help"],
                                  ["poison", "--help"], ["attack-eval", "--help"], ["verify", "--help"]])
def test_help_is_fast_and_does_not_import_torch(argv):
    code = ("import sys; from mtlguard.cli.main import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    wall = time.perf_counter() - t
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: mtlguard") and wall < 1.0, wall
