"""``mtlguard evaluate-protection`` end to end on a few real UTKFace images: every row of the report
(clean, a surrogate-free baseline, MTL-UE-TAP, partial protection, an ISS defense, adversarially
trained victims) is produced, bounded, cached and resumed, and bad options fail with a clear error."""
import json

import pytest

from mtlguard.cli.main import main

METHODS = "clean,mtl-ue-tap,mtl-ue-tap:age+race"


def _cmd(root, tmp_path, *extra):
    return ["evaluate-protection", "--data", "utkface", "--root", str(root), "--image-size", "16",
            "--subset", "16", "--test-subset", "12", "--cache-dir", str(tmp_path / "cache"), "--no-progress",
            "--methods", METHODS, "--defenses", "none,at", "--at-eps", "2", "--at-steps", "1",
            "--victim-epochs", "1", "--victim-batch-size", "16", "--gen-epochs", "1", "--gen-batch-size", "16",
            "--surrogate-epochs", "1", "--sep-checkpoints", "1", "--stl-methods", "mtl-ue-tap:age+race",
            "--out", str(tmp_path / "rep"), "--prefix", "p", "--work", str(tmp_path / "work"), *extra]


def test_evaluate_protection_rows_bounds_and_resume(utkface_root, tmp_path, capsys):
    assert main(_cmd(utkface_root, tmp_path)) == 0
    paths = json.loads(capsys.readouterr().out)
    res = json.loads(open(paths["json"]).read())
    rows = res["rows"]
    expected = {m if d == "none" else f"{m} + {d}" for m in METHODS.split(",")
                for d in ("none", "AT-2")}
    assert set(rows) == expected
    for key, row in rows.items():
        assert set(row["mtl"]) >= {"age", "gender", "race"}, key
        assert all(0.0 <= row["mtl"][t] <= 1.0 for t in ("age", "gender", "race")), key
    # STL victims only for the selected row (without defense)
    assert [k for k, r in rows.items() if "stl" in r] == ["mtl-ue-tap:age+race"]
    assert set(rows["mtl-ue-tap:age+race"]["stl"]) == {"age", "gender", "race"}
    # the generator rows respect the L-inf bound on the stored uint8 images; the clean row is unchanged
    assert rows["clean"]["linf_uint8"] == 0
    for m in ("mtl-ue-tap", "mtl-ue-tap:age+race"):
        assert 0 < rows[m]["linf_uint8"] <= 8, m
    assert set(res["majority"]) == {"age", "gender", "race"} and all(0 < v <= 1 for v in res["majority"].values())
    # adversarially trained victims really used the PGD-AT hook
    at_cfg = json.loads((tmp_path / "work" / "victims" / "clean_AT-2" / "mtl" / "train_config.json").read_text())
    assert at_cfg["perturb"] == "FATPerturb"
    md = open(paths["md"]).read()
    assert "Command: `mtlguard evaluate-protection --data utkface" in md and "| mtl-ue-tap + AT-2 |" in md and "majority class (test)" in md
    assert (tmp_path / "rep" / "p.png").stat().st_size > 0

    # resume: a second identical call reuses every cached generator / victim and reports the same numbers
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "work").rglob("result.json")}
    assert len(mtimes) == len(expected) + 3
    assert main(_cmd(utkface_root, tmp_path)) == 0
    again = json.loads(open(json.loads(capsys.readouterr().out)["json"]).read())
    assert {k: r["mtl"] for k, r in again["rows"].items()} == {k: r["mtl"] for k, r in rows.items()}
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())

    # the same work folder under other settings is refused (its cached generator would be stale), untouched
    changed = _cmd(utkface_root, tmp_path)
    changed[changed.index("--gen-epochs") + 1] = "2"
    with pytest.raises(SystemExit, match=r"other settings \(gen_epochs: 1 -> 2\)"):
        main(changed)
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    assert json.loads((tmp_path / "work" / "work_config.json").read_text())["gen_epochs"] == 1

    # a folder recorded before --gen-delta-units existed was made with "raw": today's default ("eps") is
    # refused, so its raw generators are never reused as eps ones
    wc = tmp_path / "work" / "work_config.json"
    old = json.loads(wc.read_text())
    assert old.pop("gen_delta_units") == "eps"
    wc.write_text(json.dumps(old))
    with pytest.raises(SystemExit, match=r"other settings \(gen_delta_units: 'raw' -> 'eps'\)"):
        main(_cmd(utkface_root, tmp_path))
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())


@pytest.mark.parametrize("bad, match", [
    (["--defenses", "none,blur"], "unknown defense 'blur'"),
    (["--methods", "clean,ar-patch:age"], "only for MTL-UE"),
    (["--defenses", "at", "--at-steps", "0"], "at_steps"),
    (["--stl-methods", "clean,lsp-patch"], "'lsp-patch'.* not among the methods"),
    (["--generator", "no/such/gen.onnx"], "--generator no/such/gen.onnx: file not found"),
    (["--protocol", "deploy", "--generator", "no/such/gen.onnx"], "--generator no/such/gen.onnx: file not found"),
])
def test_evaluate_protection_rejects_bad_options(utkface_root, tmp_path, bad, match):
    args = _cmd(utkface_root, tmp_path)
    for i in range(0, len(bad), 2):
        j = args.index(bad[i]) if bad[i] in args else None
        if j is None:
            args += bad[i:i + 2]
        else:
            args[j + 1] = bad[i + 1]
    with pytest.raises(SystemExit, match=match):
        main(args)
    assert not (tmp_path / "work").exists()


def test_majority_rates_hand_computed():
    import torch

    from mtlguard.data.tasks import TaskSpec
    from mtlguard.unlearnable.evaluation import majority_rates

    tasks = (TaskSpec("a", "multiclass", 3), TaskSpec("b", "binary"), TaskSpec("d", "depth"))
    a, b = [0, 2, 2, 1, 2], [1, 0, 0, 0, 1]
    items = [(torch.zeros(3, 4, 4), {"a": torch.tensor(x), "b": torch.tensor(float(y)), "d": torch.zeros(1, 4, 4)})
             for x, y in zip(a, b)]
    assert majority_rates(items, tasks) == {"a": 3 / 5, "b": 3 / 5}


def test_generator_file_rows_store_the_engines_bytes(utkface_root, tmp_path):
    """A ``bundled`` / ``gen:<file>`` row protects in memory exactly as ``mtlguard-engine`` protects files:
    the same 32x32 UTKFace images written as PNG and run through the engine come back byte-identical."""
    import csv

    import numpy as np
    from PIL import Image

    from mtlguard.data import UTKFace
    from mtlguard.engine import protect_directory
    from mtlguard.engine.pipeline import default_model
    from mtlguard.unlearnable.protect import generator_file_protector, protect_images

    ds = UTKFace(utkface_root, split="train", image_size=32, subset=12, seed=0, cache_dir=tmp_path / "cache",
                 progress=False)
    memory = protect_images(ds, generator_file_protector(default_model(), ds.tasks), 8 / 255, progress=False)
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    with open(tmp_path / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path"] + [t.name for t in ds.tasks])
        for i in range(len(ds)):
            Image.fromarray(np.asarray(ds.load_uint8(i))).save(src / f"{i:03d}.png")
            w.writerow([f"{i:03d}.png"] + [int(ds.label_arrays[t.name][i]) for t in ds.tasks])
    report = protect_directory(src, out, labels=tmp_path / "labels.csv", format="png", progress=False)
    assert not report.get("failed")
    engine = np.stack([np.asarray(Image.open(out / f"{i:03d}.png").convert("RGB")) for i in range(len(ds))])
    assert np.array_equal(memory, engine)
    clean = np.stack([np.asarray(ds.load_uint8(i)) for i in range(len(ds))])
    diff = np.abs(memory.astype(int) - clean.astype(int))
    assert 0 < diff.max() <= 8


def test_generator_file_rows_are_accepted_and_checked(utkface_root, tmp_path):
    from mtlguard.data import UTKFace
    from mtlguard.engine.pipeline import default_model
    from mtlguard.unlearnable.evaluation import ProtectionConfig, method_file_label
    from mtlguard.unlearnable.protect import generator_file_protector

    ProtectionConfig(methods=("clean", "bundled", "gen:runs/x/my_gen.onnx"))  # no error
    assert method_file_label("gen:runs/x/my_gen.onnx") == "gen_my_gen"
    assert method_file_label("mtl-ue-tap:age+race") == "mtl-ue-tap_age-race"
    ds = UTKFace(utkface_root, split="train", image_size=32, subset=4, seed=0, cache_dir=tmp_path / "cache",
                 progress=False)
    with pytest.raises(ValueError, match="default_generator.onnx: generator tasks"):
        generator_file_protector(default_model(), ds.tasks[:2])


def test_markdown_table_partial_rows_compare_with_the_clean_row_behind_the_same_defense():
    """``bundled [P_0.5 + T_0.5]`` is a partial-protection row without a defense (its PR is against ``clean``);
    ``... + ISS-jpeg`` rows compare with ``clean + ISS-jpeg``."""
    from mtlguard.unlearnable.evaluation import markdown_table

    row = lambda a: {"mtl": {"t": a}}  # noqa: E731
    results = {"tasks": ["t"], "majority": {"t": 0.5},
               "rows": {"clean": row(0.9), "clean + ISS-jpeg": row(0.7),
                        "bundled [P_0.5 + T_0.5]": row(0.8), "bundled [P_0.5 + T_0.5] + ISS-jpeg": row(0.6)}}
    lines = {ln.split(" | ")[0].lstrip("| "): ln for ln in markdown_table(results).splitlines()}
    assert lines["bundled [P_0.5 + T_0.5]"].endswith("| 0.25 (t) |")  # (0.9 - 0.8) / (0.9 - 0.5)
    assert lines["bundled [P_0.5 + T_0.5] + ISS-jpeg"].endswith("| 0.50 (t) |")  # (0.7 - 0.6) / (0.7 - 0.5)


def test_report_command_leaves_out_the_note():
    import argparse

    from mtlguard.unlearnable.cli_common import command_line

    args = argparse.Namespace(argv=["evaluate-protection", "--seed", "0", "--note", "a long note", "--note=x",
                                    "--out", "r p"])
    assert command_line(args) == "mtlguard evaluate-protection --seed 0 --out 'r p'"
