"""``mtlguard fit`` -> ``mtlguard poison`` on a few real UTKFace images: the protected copy keeps the
file names and labels, stays within eps after uint8 quantization, reads back as a folder dataset,
and is never written into the input tree.  Plus the ISS defenses."""
import json

import numpy as np
import pytest
import torch

from mtlguard.cli.main import main
from mtlguard.data import FolderDataset, UTKFace
from mtlguard.unlearnable.protect import ProtectedDataset, iss_bit_depth, iss_grayscale, iss_jpeg


def _args(root, cache):
    return ["--data", "utkface", "--root", str(root), "--image-size", "16", "--subset", "12",
            "--cache-dir", str(cache), "--no-progress"]


def test_fit_then_poison_cli(utkface_root, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main(["fit", *_args(utkface_root, cache), "--base", "em", "--epochs", "1", "--batch-size", "12",
                 "--train-steps", "1", "--emb-tile", "4", "--out", str(tmp_path / "gen")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rounds"] == 1 and (tmp_path / "gen" / "generator.json").is_file()
    assert json.loads((tmp_path / "gen" / "generator.json").read_text())["emb_tile"] == 4  # periodic class codes
    assert main(["poison", *_args(utkface_root, cache), "--generator", info["generator"],
                 "--out", str(tmp_path / "prot")]) == 0
    src = UTKFace(utkface_root, image_size=16, subset=12, cache_dir=cache, progress=False)
    prot = FolderDataset(tmp_path / "prot")
    assert len(prot) == 12
    assert sorted(f.rsplit(".", 1)[0] for f in prot.files) == sorted(f.rsplit(".", 1)[0] for f in src.files)
    by_name = {f.rsplit(".", 1)[0]: i for i, f in enumerate(prot.files)}
    diffs = []
    for i, f in enumerate(src.files):
        j = by_name[f.rsplit(".", 1)[0]]
        a, b = src.load_uint8(i).astype(int), prot.load_uint8(j).astype(int)
        diffs.append(np.abs(a - b).max())
        for t in src.tasks:
            assert int(src.targets(i)[t.name]) == int(prot.targets(j)[t.name])
    assert max(diffs) <= 8 and max(diffs) > 0
    # never into the input tree (the --root folder, parent of images/)
    with pytest.raises(SystemExit, match="input tree"):
        main(["poison", *_args(utkface_root, cache), "--method", "ar-patch", "--out", str(utkface_root / "prot_x")])
    assert not (utkface_root / "prot_x").exists()


def test_iss_defenses_and_protected_dataset():
    g = np.random.default_rng(0)
    imgs = g.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    gray = iss_grayscale(imgs)
    assert gray.shape == imgs.shape and (gray[..., 0] == gray[..., 2]).all()
    bdr = iss_bit_depth(imgs, 2)
    assert set(np.unique(bdr).tolist()) <= {0, 85, 170, 255}
    jp = iss_jpeg(imgs, 10)
    assert jp.shape == imgs.shape and not np.array_equal(jp, imgs)

    class Src(torch.utils.data.Dataset):
        tasks = ()

        def __len__(self):
            return 3

        def __getitem__(self, i):
            return torch.zeros(3, 16, 16), {"y": torch.tensor(i)}

    ds = ProtectedDataset(Src(), bdr)
    x, y = ds[2]
    assert torch.allclose(x, torch.from_numpy(bdr[2]).permute(2, 0, 1).float() / 255) and int(y["y"]) == 2


def test_fit_and_the_deploy_protocol_build_one_recipe_from_equivalent_options(tmp_path):
    """``mtlguard fit`` and ``evaluate-protection --protocol deploy``'s fitted rows read the robust-fitting options
    through one builder: the same choices, each command spelling its own, give equal recipes, and the deploy work
    folder's fingerprint names every robust option (so a new one cannot be left out of it)."""
    from mtlguard.cli.deploy_protocol import fit_options, generator_recipe
    from mtlguard.cli.fit import recipe_from_args
    from mtlguard.cli.main import build_parser
    from mtlguard.cli.options import robust_fit_dests

    robust = ["--eot", "victim", "--eot-sizes", "32,48", "--eot-defenses", "gray=0.5", "--adv-eps", "4",
              "--adv-steps", "2", "--task-balance", "lagging", "--delta-channels", "split", "--amp", "bf16",
              "--channels-last", "--surrogate-adv-eps", "2", "--surrogate-adv-mix", "--seed", "3",
              "--surrogate-epochs", "7", "--eps", "6"]
    fit_argv = ["fit", "--data", "synthetic", "--out", str(tmp_path / "f"), "--base", "tap", "--epochs", "5",
                "--batch-size", "16", "--train-steps", "4", "--surrogate-arch", "resnet18,resnet18:gray", *robust]
    deploy_argv = ["evaluate-protection", "--protocol", "deploy", "--data", "synthetic", "--out", str(tmp_path / "d"),
                   "--gen-epochs", "5", "--gen-batch-size", "16", "--gen-train-steps", "4",
                   "--surrogate-archs", "resnet18,resnet18:gray", *robust]
    fit_args = build_parser(fit_argv).parse_args(fit_argv)
    deploy_args = build_parser(deploy_argv).parse_args(deploy_argv)
    from_fit = recipe_from_args(fit_args, fit_args.eps / 255).to_dict()
    from_deploy = generator_recipe(deploy_args, "mtl-ue-tap").to_dict()
    assert from_fit == from_deploy
    assert from_fit["fit"]["task_balance"] == "lagging" and from_fit["fit"]["adv_steps"] == 2
    assert set(robust_fit_dests()) <= set(fit_options()) and "eot_crop_scale" in robust_fit_dests()


@pytest.mark.parametrize("command", ["fit", "evaluate-protection"])
def test_robust_fit_options_default_to_the_values_older_fits_were_made_with(command, tmp_path):
    """The command line spells each later-added fit option's default once more (it must parse without torch);
    unset, every one must equal the :class:`FitConfig` default that resumed fit states and deploy work folders
    recorded before the option existed are matched against (``fitting._LATER_OPTIONS``, ``deploy_protocol._off``)."""
    from mtlguard.cli.deploy_protocol import _off
    from mtlguard.cli.fit import recipe_from_args
    from mtlguard.cli.main import build_parser
    from mtlguard.unlearnable.fitting import _LATER_OPTIONS

    argv = [command, "--data", "synthetic", "--out", str(tmp_path)]
    args = build_parser(argv).parse_args(argv)
    if command == "fit":
        cfg = recipe_from_args(args, 8 / 255).fit.to_dict()
        assert {k: cfg[k] for k in _LATER_OPTIONS} == _LATER_OPTIONS
    for k in _LATER_OPTIONS:
        if hasattr(args, k):
            assert _off(f"fit.{k}", getattr(args, k)), (k, getattr(args, k))
    assert not _off("fit.task_balance", "log")
