"""The deployment protocol end to end on a few REAL UTKFace files: a generator exported to ONNX and run by
the engine over copies of the native files, victims trained on the PNGs it wrote behind defenses, the
protection ratio, the report, and resuming from the work folder."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from mtlguard.data.utkface import UTKFACE_TASKS
from mtlguard.unlearnable import MTLUEGenerator
from mtlguard.unlearnable.deploy import DeployConfig, plan_jobs
from mtlguard.unlearnable.deploy_report import protection_ratio, summarize
from mtlguard.unlearnable.victims import VictimRecipe, VictimSpec, defend_files, train_victim

pytestmark = pytest.mark.usefixtures("one_thread")


def test_protection_ratio_hand_computed():
    assert protection_ratio(0.8, 0.5, 0.5) == pytest.approx(1.0)
    assert protection_ratio(0.8, 0.8, 0.5) == pytest.approx(0.0)
    assert protection_ratio(0.8, 0.35, 0.5) == pytest.approx(1.5)
    assert protection_ratio(0.6, 0.5, 0.4) == pytest.approx(0.5)
    assert math.isnan(protection_ratio(0.4, 0.3, 0.45))  # clean victim below majority: nothing to protect


def test_victim_spec_parse_and_errors():
    assert VictimSpec.parse("resnet18@32") == VictimSpec("resnet18", 32, "ls", 1)
    assert VictimSpec.parse("vgg11@64:uw x3") == VictimSpec("vgg11", 64, "uw", 3)
    assert VictimSpec.parse("mobilenet_v3_small@32:stl").key == "mobilenet_v3_small@32:stl"
    for bad, match in (("resnet18", "ARCH@SIZE"), ("resnet99@32", "unknown architecture"),
                       ("resnet18@32:zz", "unknown weighting"), ("resnet18@4", "8-512")):
        with pytest.raises(ValueError, match=match):
            VictimSpec.parse(bad)


def test_plan_has_a_clean_reference_for_every_run():
    cfg = DeployConfig(methods=("clean", "bundled", "lsp-patch"), victims=("resnet18@32x2", "vgg11@64"),
                       defenses=("standard", "grayscale", "at"), defense_victim="resnet18@32",
                       jpeg_victims=("resnet18@32",))
    jobs = plan_jobs(cfg)
    keys = {j.key for j in jobs}
    assert len(keys) == len(jobs)
    for j in jobs:
        if j.method != "clean":
            assert f"clean|files|{j.defense}|{j.victim.key}|s{j.seed}" in keys
    assert {j.output for j in jobs if j.method == "bundled"} == {"png", "jpeg90"}
    assert not any(j.output.startswith("jpeg") for j in jobs if j.method == "lsp-patch")  # not a generator
    assert sum(1 for j in jobs if j.method == "bundled" and j.victim.key == "resnet18@32" and j.defense == "standard"
               and j.output == "png") == 2  # two seeds
    assert jobs[0].victim.key == "resnet18@32" and jobs[0].seed == 0  # the defense victim first
    assert not any(j.method == "lsp-patch" and j.victim.key == "vgg11@64" for j in jobs)  # zoo: headline only
    assert any(j.method == "lsp-patch" and j.defense == "at" for j in jobs)  # every method behind every defense
    zoo = plan_jobs(DeployConfig(methods=("clean", "bundled", "lsp-patch"), headline="lsp-patch", victims=("vgg11@64",),
                                 defenses=("standard",)))
    assert {j.method for j in zoo if j.victim.key == "vgg11@64"} == {"lsp-patch", "clean"}
    # defense victim x3: the headline's defense columns over 3 seeds (with clean references), the others seed 0
    seeded = plan_jobs(DeployConfig(methods=("clean", "bundled", "lsp-patch"), victims=("resnet18@32",),
                                    defenses=("standard", "grayscale", "at"), defense_victim="resnet18@32x3",
                                    jpeg_victims=()))
    cells = {(j.method, j.defense): sorted(k.seed for k in seeded if (k.method, k.defense) == (j.method, j.defense))
             for j in seeded}
    assert all(cells[(m, d)] == [0, 1, 2] for m in ("bundled", "clean") for d in ("standard", "grayscale", "at"))
    assert all(cells[("lsp-patch", d)] == [0] for d in ("standard", "grayscale", "at"))
    assert [j.seed for j in seeded][-1] == 2  # extra seeds last
    # a victim listed with seeds (zoo, defense victim) and without (JPEG victims) is one run per key
    both = plan_jobs(DeployConfig(methods=("clean", "bundled"), victims=("resnet18@32x3",), defenses=("standard",),
                                  defense_victim="resnet18@32x3", jpeg_victims=("resnet18@32",)))
    assert len({j.key for j in both}) == len(both) == 3 * 2 + 1  # bundled + clean x 3 seeds, JPEG-90 output
    with pytest.raises(ValueError, match="unknown method"):
        DeployConfig(methods=("clean", "nope"))
    with pytest.raises(ValueError, match="headline"):
        DeployConfig(methods=("clean", "bundled"), headline="lsp-patch")
    with pytest.raises(ValueError, match="unknown defense"):
        DeployConfig(defenses=("standard", "jpeg"))


def test_summarize_pr_and_worst_task():
    def run(method, output, defense, seed, acc):
        return {"method": method, "output": output, "defense": defense, "victim": "v@32", "seed": seed,
                "test": dict(zip(("a", "b"), acc))}
    res = {str(i): r for i, r in enumerate([
        run("clean", "files", "standard", 0, (0.8, 0.6)), run("clean", "files", "standard", 1, (0.8, 0.6)),
        run("g", "png", "standard", 0, (0.5, 0.55)), run("g", "png", "standard", 1, (0.6, 0.45)),
        run("g", "png", "blur", 0, (0.5, 0.5))])}  # no clean reference behind blur: no row
    rows = summarize(res, ["a", "b"], {"a": 0.5, "b": 0.4})
    assert len(rows) == 1
    r = rows[0]
    assert r["acc"]["a"] == pytest.approx(0.55) and r["pr"]["a"] == pytest.approx(0.25 / 0.3)
    assert r["pr"]["b"] == pytest.approx(0.1 / 0.2) and r["worst_task"] == "b" and r["worst_pr"] == pytest.approx(0.5)
    assert r["pr_std"]["a"] == pytest.approx(np.std([1.0, 2 / 3]))
    from mtlguard.unlearnable.deploy_report import defense_table

    table = defense_table(rows, "v@32", ["standard"], ["a", "b"])  # mean PR ± per-seed spread (b: 0.25, 0.75)
    assert f"| g | {0.25 / 0.3:.2f}±{np.std([1.0, 2 / 3]):.2f} / **0.50±0.25** | 0.50 (standard) |" in table


def test_tradeoff_points_and_plot(tmp_path):
    """One point per generator: its worst victim under standard training, its worst defense; generators with
    either missing are left out, and under 2 points no figure is written."""
    from mtlguard.unlearnable.deploy_report import tradeoff_plot, tradeoff_points

    def row(method, defense, victim, worst, output="png"):
        return {"method": method, "defense": defense, "victim": victim, "output": output, "worst_pr": worst}
    rows = [row("g1", "standard", "v@32", 0.95), row("g1", "standard", "v@64", 0.8),
            row("g1", "grayscale", "v@32", 0.4),
            row("g1", "at", "v@32", 0.1), row("g1", "standard", "v@32", -1.0, output="jpeg90"),
            row("g2", "standard", "v@32", 1.2), row("g2", "grayscale", "v@32", 0.7),
            row("g3", "standard", "v@32", 1.0)]  # g3: no defense column
    points = tradeoff_points(rows, "v@32", ["standard", "grayscale", "at"])
    assert points == {"g1": (0.8, 0.1), "g2": (1.2, 0.7)}
    assert tradeoff_points(rows, "v@32", ["standard", "grayscale"])["g1"] == (0.8, 0.4)  # only the listed defenses
    assert tradeoff_plot(rows[:5], "v@32", ["standard", "grayscale", "at"], tmp_path / "one.png") is None
    assert not (tmp_path / "one.png").exists()
    path = tradeoff_plot(rows, "v@32", ["standard", "grayscale", "at"], tmp_path / "two.png")
    assert path == tmp_path / "two.png" and Image.open(path).size[0] > 300
    # more generators than max_named: numbered points and a key below the panels (a taller figure)
    numbered = tradeoff_plot(rows, "v@32", ["standard", "grayscale", "at"], tmp_path / "num.png", max_named=1)
    assert Image.open(numbered).size[1] > Image.open(path).size[1]


def test_number_key_runs_down_columns():
    from mtlguard.unlearnable.deploy_report import _number_key

    key = _number_key({f"g{i}": i for i in range(1, 6)}, str, columns=2)
    lines = key.splitlines()
    assert len(lines) == 3 and lines[0].split() == ["1", "g1", "4", "g4"] and lines[2].split() == ["3", "g3"]


def test_label_stacks_raise_labels_of_coinciding_points():
    """Generators at (nearly) the same place get their labels on separate lines; distant ones stay on line 0."""
    from mtlguard.unlearnable.deploy_report import label_stacks

    points = {"a": (1.18, 0.06), "b": (1.18, 0.06), "c": (1.19, 0.061), "far": (0.8, 0.3)}
    stacks = label_stacks(points, x_span=0.5, y_span=0.3)
    assert stacks["far"] == 0 and sorted(stacks[m] for m in "abc") == [0, 1, 2]
    assert label_stacks({"a": (0.0, 0.0), "b": (1.0, 1.0)}, 1.0, 1.0) == {"a": 0, "b": 0}


def test_defenses_and_training_time_options_run(utkface_root, tmp_path):
    from mtlguard.data.utkface import UTKFace

    ds = UTKFace(utkface_root, split="train", image_size=48, subset=24, seed=0, cache_dir=tmp_path, progress=False)
    imgs = np.stack([ds.load_uint8(i) for i in range(len(ds))])
    recipe = VictimRecipe(epochs=2, batch_size=8, average_last=1)
    for d in ("grayscale", "jpeg10", "bdr2", "blur"):
        out = defend_files(imgs, d, recipe)
        assert out.shape == imgs.shape and out.dtype == np.uint8 and not np.array_equal(out, imgs), d
    assert len(np.unique(defend_files(imgs, "bdr2", recipe))) <= 4
    spec = VictimSpec.parse("small_cnn@16:stl")
    for d in ("standard", "mixup", "at"):
        res = train_victim(spec, recipe, ds.tasks, imgs, ds.label_arrays, imgs, ds.label_arrays, d, seed=0)
        assert set(res["test"]) == {"age", "gender", "race"} and all(0 <= v <= 1 for v in res["test"].values())
        assert len(res["history"]) == 2 and set(res["history"][0]["train"]) == {"age", "gender", "race"}
    a = train_victim(VictimSpec.parse("small_cnn@16"), recipe, ds.tasks, imgs, ds.label_arrays, imgs, ds.label_arrays)
    b = train_victim(VictimSpec.parse("small_cnn@16"), recipe, ds.tasks, imgs, ds.label_arrays, imgs, ds.label_arrays)
    assert a["history"] == b["history"]  # seeded


def test_deploy_cli_end_to_end_and_resume(utkface_root, tmp_path, capsys):
    from mtlguard.cli.main import main
    from mtlguard.export import export_onnx

    torch.manual_seed(0)
    gen = MTLUEGenerator(UTKFACE_TASKS, image_size=16, delta_channels="luma").eval()
    export_onnx(gen, tmp_path / "gen.onnx")
    argv = ["evaluate-protection", "--protocol", "deploy", "--data", "utkface", "--root", str(utkface_root),
            "--image-size", "200", "--subset", "24", "--test-subset", "12", "--cache-dir", str(tmp_path / "cache"),
            "--methods", "clean", "--generator", str(tmp_path / "gen.onnx"),
            "--victims", "small_cnn@16x2,small_cnn@24:stl", "--defense-victim", "small_cnn@16x2",
            "--defenses", "standard,grayscale,at", "--jpeg-victims", "small_cnn@16", "--victim-epochs", "2",
            "--victim-batch-size", "8", "--average-last", "1", "--out", str(tmp_path / "rep"), "--prefix", "dep",
            "--work", str(tmp_path / "work"), "--no-progress"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    # gen and clean: seeds 0, 1 x (standard, grayscale, at) + stl (14), gen as JPEG output (its clean reference
    # is shared)
    assert out["finished"] == out["planned"] == 15
    rep = json.loads((tmp_path / "rep" / "dep.json").read_text())
    rows = {(r["output"], r["defense"], r["victim"]): r for r in rep["summary"]}
    assert set(rows) == {("png", "standard", "small_cnn@16"), ("png", "standard", "small_cnn@24:stl"),
                         ("png", "grayscale", "small_cnn@16"), ("png", "at", "small_cnn@16"),
                         ("jpeg90", "standard", "small_cnn@16")}
    assert rows[("png", "standard", "small_cnn@16")]["seeds"] == [0, 1]
    assert rows[("png", "at", "small_cnn@16")]["seeds"] == [0, 1]  # --defense-victim ...x2: defenses over 2 seeds
    md = (tmp_path / "rep" / "dep.md").read_text()
    assert "PR age" in md and "worst defense" in md and "evaluate-protection --protocol deploy" in md
    assert "victims trained with 1 CPU threads" in md  # what the runs recorded (the one_thread fixture)
    defense_rows = md.split("## Defenses (small_cnn@16)")[1].split("##")[0]
    assert "| gen:gen | n/a" in defense_rows  # the seeded defense victim's table has its row (tiny victims: n/a)
    assert (tmp_path / "rep" / "dep.png").stat().st_size > 1000
    assert not (tmp_path / "rep" / "dep_tradeoff.png").exists()  # one generator: no trade-off to plot
    # the engine wrote PNGs within the bound, next to copies of the inputs (the dataset folder untouched)
    pngs = sorted((tmp_path / "work" / "engine" / "gen_gen_png").rglob("*.png"))
    assert len(pngs) == 24
    src = tmp_path / "work" / "input" / pngs[0].relative_to(tmp_path / "work" / "engine" / "gen_gen_png")
    a = np.asarray(Image.open(pngs[0])).astype(int)
    b = np.asarray(Image.open(src.with_suffix(".jpg"))).astype(int)
    assert 0 < np.abs(a - b).max() <= 8
    assert (tmp_path / "work" / "engine" / "gen_gen_jpeg90").is_dir()
    # rerun: everything comes from the cache; other settings are refused
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "work" / "victims").rglob("result.json")}
    assert main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "work" / "victims").rglob("result.json")} == before
    with pytest.raises(SystemExit, match="other settings"):
        main([a if a != "2" else "3" for a in argv])


def test_cli_default_victims_equal_the_protocol_default():
    from mtlguard.cli.options import DEPLOY_VICTIMS
    from mtlguard.unlearnable.deploy import DEFAULT_VICTIMS

    assert DEPLOY_VICTIMS == DEFAULT_VICTIMS


def test_deploy_fits_a_robust_row_then_reuses_it(utkface_root, tmp_path, capsys):
    """``mtl-ue-tap`` rows are fitted by the command itself (robust options: native size, luma, EOT), exported and
    run through the engine; the generator folder records its fit options and refuses others."""
    from mtlguard.cli.main import main

    argv = ["evaluate-protection", "--protocol", "deploy", "--data", "utkface", "--root", str(utkface_root),
            "--image-size", "200", "--subset", "16", "--test-subset", "8", "--cache-dir", str(tmp_path / "cache"),
            "--methods", "clean,mtl-ue-tap", "--gen-size", "16", "--delta-channels", "luma", "--eot", "victim",
            "--eot-sizes", "16,24", "--arch", "small_cnn", "--surrogate-epochs", "1", "--gen-epochs", "1",
            "--gen-batch-size", "8", "--victims", "small_cnn@16", "--defense-victim", "small_cnn@16",
            "--defenses", "standard", "--jpeg-victims=", "--victim-epochs", "1", "--victim-batch-size", "8",
            "--average-last", "1", "--out", str(tmp_path / "rep"), "--prefix", "fit", "--work",
            str(tmp_path / "work"), "--no-progress"]
    # a malformed surrogate spec is refused before the work folder records it (which would refuse the fixed command)
    with pytest.raises(ValueError, match="'small_cnn:grey'"):
        main(argv + ["--surrogate-archs", "small_cnn:grey"])
    assert not (tmp_path / "work").exists()
    assert main(argv) == 0
    gdir = tmp_path / "work" / "generators" / "mtl-ue-tap"
    cfg = json.loads((gdir / "generator.json").read_text())
    assert cfg["delta_channels"] == "luma" and cfg["image_size"] == [16, 16]
    assert cfg["extra"]["recipe"]["fit"]["eot"]["sizes"] == [16, 24]
    assert (gdir / "generator.onnx").is_file() and (gdir / "fit_options.json").is_file()
    assert json.loads(capsys.readouterr().out)["finished"] == 2
    changed = [a if a != "luma" else "all" for a in argv]
    with pytest.raises(SystemExit, match="other settings"):
        main(changed)
    # a folder recorded before an option existed still resumes while that option is off, not once it is on
    recorded = json.loads((gdir / "fit_options.json").read_text())
    del recorded["fit"]["surrogate_adv_mix"], recorded["fit"]["task_balance"]  # "sum": off, but not falsy
    (gdir / "fit_options.json").write_text(json.dumps(recorded))
    assert main(argv) == 0
    with pytest.raises(SystemExit, match="surrogate_adv_mix"):
        main(argv + ["--surrogate-adv-mix", "--surrogate-adv-eps", "4"])
    with pytest.raises(SystemExit, match="task_balance"):
        main(argv + ["--task-balance", "log"])


def test_pattern_rows_are_made_at_the_native_size_with_its_l2_budget(utkface_root, tmp_path):
    """LSP / AR rows: the class-wise patterns of A.1 made for the native 200x200 images (l2 budget 200/32 *
    200/32), not 32 px patterns stretched with the 32 px budget; every unclipped pixel carries exactly them."""
    from mtlguard.data.utkface import UTKFace
    from mtlguard.unlearnable.deploy import DeployProtocol
    from mtlguard.unlearnable.patterns import ClasswisePatterns, l2_bound

    data = [UTKFace(utkface_root, split=s, image_size=200, subset=n, seed=0, cache_dir=tmp_path / "cache",
                    progress=False) for s, n in (("train", 8), ("test", 4))]
    proto = DeployProtocol(*data, DeployConfig(methods=("clean", "lsp-patch", "ar-patch")), tmp_path / "work")
    clean = proto.training_set("clean", "png").astype(np.float64)
    labels = torch.stack([torch.as_tensor(proto.labels(data[0])[t.name]) for t in UTKFACE_TASKS], 1)
    for kind in ("lsp", "ar"):
        prot = proto.training_set(f"{kind}-patch", "png").astype(np.float64)
        want = ClasswisePatterns(UTKFACE_TASKS, kind=kind, fusion="patch", image_size=(200, 200), seed=0)(labels)
        want = want.permute(0, 2, 3, 1).numpy() * 255
        inside = (prot > 0) & (prot < 255)
        assert np.abs((prot - clean) - want)[inside].max() <= 0.5 + 1e-3  # uint8 rounding only
        assert np.linalg.norm(want.reshape(8, -1) / 255, axis=1) == pytest.approx(l2_bound((200, 200)), rel=1e-4)
        assert np.sqrt(((prot - clean) ** 2).mean()) > 20  # RMS ~29/255, vs 4.6/255 for the 32 px budget
