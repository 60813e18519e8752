"""Alg. 1 end to end on a few REAL UTKFace images (16x16): EM lowers the surrogate's loss on the
protected images, TAP lowers the targeted loss, and a fit interrupted after one round resumes to
exactly the uninterrupted result."""
import json

import pytest
import torch

from mtlguard.data.utkface import UTKFace
from mtlguard.models import build_model
from mtlguard.unlearnable import (FitConfig, MTLUEGenerator, fit_generator, tap_loss, train_clean_surrogate)

SIZE = 16


@pytest.fixture(scope="module")
def tiny_utk(utkface_root, tmp_path_factory):
    return UTKFace(utkface_root, split="train", image_size=SIZE, subset=24, seed=0,
                   cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


def _batch(ds):
    xs, ys = zip(*[ds[i] for i in range(len(ds))])
    return torch.stack(xs), {k: torch.stack([y[k] for y in ys]) for k in ys[0]}


def _em_run(ds, out, stop_after=None, delta_units="eps"):
    torch.manual_seed(0)
    gen = MTLUEGenerator(ds.tasks, image_size=SIZE, delta_units=delta_units)
    sur = build_model(ds.tasks, arch="resnet18", image_size=SIZE)
    cfg = FitConfig(base="em", epochs=2, batch_size=24, train_steps=3, stop_acc=1.01, seed=0)
    res = fit_generator(gen, ds, sur, cfg, out_dir=out, progress=False, stop_after=stop_after)
    return gen, res


def test_em_fit_lowers_surrogate_loss_and_resumes_exactly(tiny_utk, tmp_path):
    _, part = _em_run(tiny_utk, tmp_path / "a", stop_after=1)
    assert part.rounds == 1
    resumed, res = _em_run(tiny_utk, tmp_path / "a")  # fresh objects: the state comes from fit_state.pt
    assert res.rounds == 2 and len(res.history) == 2
    losses = [h["base"] for h in res.history]
    assert losses[-1] < losses[0], losses
    assert all(0.0 <= h["train_acc"] <= 1.0 for h in res.history)
    assert (tmp_path / "a" / "fit_state.pt").is_file() and (tmp_path / "a" / "fit_history.json").is_file()
    full, res_b = _em_run(tiny_utk, tmp_path / "b")  # uninterrupted run: identical result
    for (k, va), vb in zip(resumed.state_dict().items(), full.state_dict().values()):
        assert torch.allclose(va, vb, atol=1e-6), k
    # a state saved before MTLUEGenerator.delta_units existed (no key in its fingerprint) resumes as "raw"
    _em_run(tiny_utk, tmp_path / "c", stop_after=1, delta_units="raw")
    st = torch.load(tmp_path / "c" / "fit_state.pt", weights_only=True)
    fp = json.loads(st["fingerprint"])
    assert fp["generator"].pop("delta_units") == "raw"
    st["fingerprint"] = json.dumps(fp, sort_keys=True)
    torch.save(st, tmp_path / "c" / "fit_state.pt")
    with pytest.raises(ValueError, match="different fit configuration"):  # not as today's default "eps"
        _em_run(tiny_utk, tmp_path / "c")
    _, res_l = _em_run(tiny_utk, tmp_path / "c", delta_units="raw")
    assert res_l.rounds == 2 and res_l.history[0] == json.loads(st["history"])[0]  # resumed after round 1
    with pytest.raises(ValueError, match="different fit configuration"):
        gen = MTLUEGenerator(tiny_utk.tasks, image_size=SIZE, eps=4 / 255)
        fit_generator(gen, tiny_utk, build_model(tiny_utk.tasks, image_size=SIZE),
                      FitConfig(base="em", epochs=2, batch_size=24, seed=0), out_dir=tmp_path / "a", progress=False)


def test_tap_fit_lowers_targeted_loss(tiny_utk):
    torch.manual_seed(0)
    tasks = tiny_utk.tasks
    sur = build_model(tasks, arch="resnet18", image_size=SIZE)
    snaps = train_clean_surrogate(sur, tasks, tiny_utk, epochs=1, batch_size=12, n_snapshots=2, progress=False)
    assert len(snaps) == 2
    gen = MTLUEGenerator(tasks, image_size=SIZE)
    x, y = _batch(tiny_utk)
    labels = gen.labels_from_targets(y)

    def targeted():
        gen.eval()
        with torch.no_grad():
            return float(tap_loss(tasks, sur(gen(x, labels)[0]), y))

    before = targeted()
    cfg = FitConfig(base="tap", epochs=2, batch_size=12, lr=1e-3, augment=False, seed=0)
    fit_generator(gen, tiny_utk, sur, cfg, progress=False)
    after = targeted()
    assert after < before, (before, after)
    assert not any(p.requires_grad for p in sur.parameters())  # TAP keeps the surrogate frozen


# --- robust fitting (native resolution, EOT, ensembles, joint EM, speed options, extending a fit) -------------
@pytest.fixture(scope="module")
def native_utk(utkface_root, tmp_path_factory):
    return UTKFace(utkface_root, split="train", image_size=48, subset=16, seed=0,
                   cache_dir=tmp_path_factory.mktemp("cache48"), progress=False)


def _robust_cfg(**kw):
    from mtlguard.unlearnable.eot import EOTConfig

    base = dict(epochs=2, batch_size=8, seed=0, eot=EOTConfig(sizes=(16, 24)), stop_acc=2.0)
    base.update(kw)
    return FitConfig(**base)


def test_tap_ensemble_at_native_size_lowers_the_mean_targeted_loss(native_utk):
    from mtlguard.models.losses import task_loss
    from mtlguard.unlearnable.eot import VictimView, fixed_view
    from mtlguard.unlearnable.fitting import protect_batch

    torch.manual_seed(0)
    tasks = native_utk.tasks
    surs = [build_model(tasks, arch=a, image_size=24) for a in ("resnet18", "small_cnn")]
    x, y = _batch(native_utk)
    for s in surs:  # clean-trained (to fit) at the victims' size: TAP needs a surrogate with features
        opt = torch.optim.Adam(s.parameters(), 3e-3)
        for _ in range(30):
            loss = sum(task_loss(t, s(fixed_view(x, 24))[t.name], y[t.name]) for t in tasks)
            opt.zero_grad()
            loss.backward()
            opt.step()
        s.eval()
    gen = MTLUEGenerator(tasks, image_size=16, delta_channels="luma")

    cfg = _robust_cfg(base="tap", epochs=6, lr=1e-2)
    view = VictimView(cfg.eot)

    def mean_targeted():  # E_T[L_tap] over 8 seeded victim pipelines, per surrogate
        gen.eval()
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            xp = protect_batch(gen, x, y)
            return [sum(float(tap_loss(tasks, s(view(xp, g)), y)) for _ in range(8)) / 8 for s in surs]

    before = mean_targeted()
    fit_generator(gen, native_utk, surs, cfg, progress=False)
    after = mean_targeted()
    assert sum(after) < sum(before), (before, after)
    assert all(not p.requires_grad for s in surs for p in s.parameters())


def test_joint_em_bf16_channels_last_trains_the_surrogate_every_batch(native_utk, tmp_path):
    torch.manual_seed(0)
    tasks = native_utk.tasks
    sur = build_model(tasks, arch="small_cnn", image_size=24)
    w0 = [p.detach().clone() for p in sur.parameters()]
    gen = MTLUEGenerator(tasks, image_size=16, delta_channels="luma")
    cfg = _robust_cfg(base="em", train_steps=0, joint=True, reinit_every=1, amp="bf16", channels_last=True)
    res = fit_generator(gen, native_utk, sur, cfg, out_dir=tmp_path, progress=False)
    assert res.rounds == 2 and all(0 <= h["train_acc"] <= 1 for h in res.history)
    assert any(not torch.equal(a, b) for a, b in zip(w0, sur.parameters()))  # no surrogate_steps phase: joint
    st = torch.load(tmp_path / "fit_state.pt", weights_only=True)
    assert len(st["surrogates"]) == 1 and "sur_opts" in st  # EM's trained surrogate is part of the state
    with pytest.raises(ValueError, match="joint / reinit_every"):
        FitConfig(base="tap", joint=True)
    with pytest.raises(ValueError, match="amp"):
        FitConfig(amp="fp8")


def test_tap_state_excludes_the_frozen_surrogate_and_a_fit_can_be_extended(native_utk, tmp_path):
    torch.manual_seed(0)
    tasks = native_utk.tasks
    sur = build_model(tasks, arch="small_cnn", image_size=24).eval()
    gen = MTLUEGenerator(tasks, image_size=16)
    fit_generator(gen, native_utk, sur, _robust_cfg(base="tap", epochs=1), out_dir=tmp_path, progress=False)
    st = torch.load(tmp_path / "fit_state.pt", weights_only=True)
    assert "surrogates" not in st and "surrogate" not in st and st["done"]
    size_tap = (tmp_path / "fit_state.pt").stat().st_size
    gen_bytes = sum(v.numel() * v.element_size() for v in gen.state_dict().values())
    assert size_tap < 4 * gen_bytes  # generator + Adam moments, no surrogate
    # the same fit with more rounds continues from round 1 (not a "different fit configuration")
    res = fit_generator(gen, native_utk, sur, _robust_cfg(base="tap", epochs=3), out_dir=tmp_path, progress=False)
    assert [h["round"] for h in res.history] == [1, 2, 3]
    again = fit_generator(gen, native_utk, sur, _robust_cfg(base="tap", epochs=3), out_dir=tmp_path, progress=False)
    assert len(again.history) == 3  # finished: nothing re-run


def test_adversarial_surrogate_recipe(native_utk, tmp_path):
    """pgd_view stays in the eps ball and raises the loss; the recipe fine-tunes the clean surrogate with PGD-AT
    and fits TAP through the robust one."""
    from mtlguard.unlearnable.base_losses import em_loss
    from mtlguard.unlearnable.recipes import GeneratorRecipe, fit_recipe
    from mtlguard.unlearnable.surrogate import pgd_view

    torch.manual_seed(0)
    x, y = _batch(native_utk)
    model = build_model(native_utk.tasks, arch="small_cnn", image_size=48).eval()
    adv = pgd_view(model, native_utk.tasks, x, y, 4 / 255, 3)
    assert (adv - x).abs().max() <= 4 / 255 + 1e-6
    with torch.no_grad():
        assert em_loss(native_utk.tasks, model(adv), y) > em_loss(native_utk.tasks, model(x), y)
    recipe = GeneratorRecipe(fit=_robust_cfg(base="tap", epochs=1), gen_size=16, delta_channels="luma",
                             surrogate_archs=("small_cnn",), surrogate_epochs=1, sep_checkpoints=5,
                             surrogate_adv_eps=4 / 255, surrogate_adv_epochs=1)
    gen, res = fit_recipe(recipe, native_utk, tmp_path, progress=False)
    assert res.rounds == 1
    clean_snaps = torch.load(tmp_path / "clean_surrogate.pt", weights_only=True)["snapshots"]
    assert len(clean_snaps) == 1  # TAP keeps only the final clean model (SEP's checkpoint ensemble is not stored)
    clean = clean_snaps[-1]
    robust = torch.load(tmp_path / "robust_clean_surrogate.pt", weights_only=True)["snapshots"][-1]
    assert any(not torch.equal(clean[k], robust[k]) for k in clean)  # fine-tuned
    cfg = json.loads((tmp_path / "generator.json").read_text())
    assert cfg["extra"]["recipe"]["surrogate_adv_eps"] == pytest.approx(4 / 255)


def test_a_saved_surrogate_trained_with_other_settings_is_refused_not_reused(native_utk, tmp_path):
    """A surrogate snapshot records what it was trained with; fitting another seed (or subset, member, epochs)
    into the same folder refuses it with one line naming the differences instead of fitting through a stale
    model, and the same recipe reuses it untouched."""
    import dataclasses

    from mtlguard.unlearnable.recipes import GeneratorRecipe, fit_recipe

    recipe = GeneratorRecipe(fit=_robust_cfg(base="tap", epochs=1), gen_size=16, surrogate_archs=("small_cnn",),
                             surrogate_epochs=1)
    fit_recipe(recipe, native_utk, tmp_path, progress=False)
    saved = torch.load(tmp_path / "clean_surrogate.pt", weights_only=True)
    record = json.loads(saved["trained_with"])
    assert record["surrogate"] == "small_cnn" and record["seed"] == 0 and record["images"] == len(native_utk)
    other_seed = dataclasses.replace(recipe, fit=dataclasses.replace(recipe.fit, seed=1))
    with pytest.raises(ValueError, match=r"clean_surrogate.pt: this surrogate was trained with other settings "
                                         r"\(seed: 0 -> 1\)"):
        fit_recipe(other_seed, native_utk, tmp_path, progress=False)
    longer = dataclasses.replace(recipe, surrogate_epochs=2)
    with pytest.raises(ValueError, match=r"epochs: 1 -> 2"):
        fit_recipe(longer, native_utk, tmp_path, progress=False)
    mtime = (tmp_path / "clean_surrogate.pt").stat().st_mtime_ns
    fit_recipe(recipe, native_utk, tmp_path, progress=False)  # the same recipe: reused, not retrained
    assert (tmp_path / "clean_surrogate.pt").stat().st_mtime_ns == mtime


def _assert_fit_equals_fit_through(gen, ds, surrogate_files, out):
    """``gen`` (a 1-round TAP recipe fit) equals fit_generator through the (arch, snapshot file) surrogates."""
    from mtlguard.unlearnable.surrogate import build_surrogate

    surs = []
    for arch, f in surrogate_files:
        s = build_surrogate(ds.tasks, 3, 24, arch)
        s.load_state_dict(torch.load(f, weights_only=True)["snapshots"][-1])
        surs.append(s)
    torch.manual_seed(0)
    ref = MTLUEGenerator(ds.tasks, image_size=(16, 16))
    fit_generator(ref, ds, surs, _robust_cfg(base="tap", epochs=1), out_dir=out, progress=False)
    for k, v in ref.state_dict().items():
        assert torch.equal(v, gen.state_dict()[k]), k


def test_adversarial_surrogate_mix_fits_through_clean_and_robust_together(native_utk, tmp_path):
    """``surrogate_adv_mix``: L_b is the mean over the clean surrogate and its PGD-AT fine-tune, i.e. the fit
    equals fit_generator over [clean, robust] (same seeds, bit for bit); the surrogates are named in the config."""
    from mtlguard.unlearnable.recipes import GeneratorRecipe, fit_recipe

    def recipe(**kw):
        return GeneratorRecipe(fit=_robust_cfg(base="tap", epochs=1), gen_size=16, surrogate_archs=("small_cnn",),
                               surrogate_epochs=1, surrogate_adv_eps=4 / 255, surrogate_adv_epochs=1, **kw)

    gen, _ = fit_recipe(recipe(surrogate_adv_mix=True), native_utk, tmp_path / "mix", progress=False)
    cfg = json.loads((tmp_path / "mix" / "generator.json").read_text())
    assert cfg["extra"]["surrogates"] == ["small_cnn", "small_cnn (PGD-AT 4/255)"]
    assert cfg["extra"]["recipe"]["surrogate_adv_mix"] is True

    files = [tmp_path / "mix" / name for name in ("clean_surrogate.pt", "robust_clean_surrogate.pt")]
    _assert_fit_equals_fit_through(gen, native_utk, [("small_cnn", f) for f in files], tmp_path / "ref")

    robust_only, _ = fit_recipe(recipe(), native_utk, tmp_path / "robust", progress=False)
    assert any(not torch.equal(v, robust_only.state_dict()[k]) for k, v in gen.state_dict().items())
    with pytest.raises(ValueError, match="surrogate_adv_mix"):
        GeneratorRecipe(fit=_robust_cfg(base="tap"), surrogate_adv_mix=True)  # no PGD-AT fine-tune to mix in


def test_tap_recipe_over_architectures_fits_through_each_clean_surrogate(native_utk, tmp_path):
    """``surrogate_archs`` with TAP: one clean surrogate per architecture, each saved in its own file (reused,
    not retrained, when the fit resumes) and named in the config; the fit equals fit_generator over those
    models (L_b averaged), bit for bit."""
    from mtlguard.unlearnable.recipes import GeneratorRecipe, fit_recipe

    archs = ("small_cnn", "mobilenet_v3_small")
    recipe = GeneratorRecipe(fit=_robust_cfg(base="tap", epochs=1), gen_size=16, surrogate_archs=archs,
                             surrogate_epochs=1)
    gen, _ = fit_recipe(recipe, native_utk, tmp_path / "ens", progress=False)
    files = [tmp_path / "ens" / "clean_surrogate.pt", tmp_path / "ens" / "clean_surrogate_mobilenet_v3_small.pt"]
    cfg = json.loads((tmp_path / "ens" / "generator.json").read_text())
    assert cfg["extra"]["surrogates"] == list(archs)
    assert cfg["extra"]["recipe"]["surrogate_archs"] == list(archs)

    _assert_fit_equals_fit_through(gen, native_utk, list(zip(archs, files)), tmp_path / "ref")

    stamps = [f.stat().st_mtime_ns for f in files]
    longer = GeneratorRecipe(fit=_robust_cfg(base="tap", epochs=2), gen_size=16, surrogate_archs=archs,
                             surrogate_epochs=1)
    _, res = fit_recipe(longer, native_utk, tmp_path / "ens", progress=False)
    assert res.rounds == 2 and [f.stat().st_mtime_ns for f in files] == stamps  # extended; surrogates reused


def test_surrogate_file_names_give_each_repeated_member_its_own_file():
    from mtlguard.unlearnable.recipes import surrogate_file_names

    assert surrogate_file_names(["resnet18", "resnet18", "resnet18", "resnet18:gray", "resnet18:gray"]) == [
        "clean_surrogate.pt", "clean_surrogate_resnet18.pt", "clean_surrogate_resnet18_2.pt",
        "clean_surrogate_resnet18_gray.pt", "clean_surrogate_resnet18_gray_2.pt"]
    # the names folders fitted before repeats were numbered keep (their saved surrogates are reused)
    assert surrogate_file_names(["resnet18", "resnet18", "resnet18:gray"]) == [
        "clean_surrogate.pt", "clean_surrogate_resnet18.pt", "clean_surrogate_resnet18_gray.pt"]


def test_three_identical_members_are_three_differently_initialised_surrogates(native_utk, tmp_path):
    """Three ``small_cnn`` members: three files, three different trained models (each its own initialisation),
    so a repeated member adds a model to L_b's average instead of reusing another's file."""
    from mtlguard.unlearnable.recipes import GeneratorRecipe, fit_recipe

    recipe = GeneratorRecipe(fit=_robust_cfg(base="tap", epochs=1), gen_size=16,
                             surrogate_archs=("small_cnn",) * 3, surrogate_epochs=1)
    fit_recipe(recipe, native_utk, tmp_path / "rep", progress=False)
    files = [tmp_path / "rep" / n for n in ("clean_surrogate.pt", "clean_surrogate_small_cnn.pt",
                                            "clean_surrogate_small_cnn_2.pt")]
    weights = [torch.load(f, weights_only=True)["snapshots"][-1] for f in files]
    first = next(iter(weights[0]))
    for a in range(3):
        for b in range(a + 1, 3):
            assert not torch.equal(weights[a][first], weights[b][first]), (files[a].name, files[b].name)


def test_surrogate_at_its_own_resolution_sees_every_input_resized(native_utk, tmp_path):
    """``ARCH@SIZE``: that surrogate gets every input resized to SIZE (antialiased, as a victim's loader does) in
    its clean training and in the fit, with the plain architecture's weight names; a bad size is refused before
    anything is trained."""
    from mtlguard.unlearnable.eot import resize
    from mtlguard.unlearnable.recipes import GeneratorRecipe, _build_surrogates, fit_recipe, surrogate_spec
    from mtlguard.unlearnable.surrogate import build_surrogate

    assert surrogate_spec("resnet18@64") == ("resnet18", 64, False)
    assert surrogate_spec("resnet18") == ("resnet18", None, False)
    for bad in ("resnet18@x", "resnet18@4", "@32"):
        with pytest.raises(ValueError, match=r"ARCH\[@SIZE\]"):
            GeneratorRecipe(fit=_robust_cfg(base="tap"), surrogate_archs=("small_cnn", bad))

    recipe = GeneratorRecipe(fit=_robust_cfg(base="tap", epochs=1), gen_size=16,
                             surrogate_archs=("small_cnn@16", "small_cnn"), surrogate_epochs=1)
    sized, plain = _build_surrogates(recipe, native_utk.tasks, 3, 24)
    assert not plain._forward_pre_hooks and len(sized._forward_pre_hooks) == 1  # only ARCH@SIZE is resized
    seen = []
    sized.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape[-2:])))
    torch.manual_seed(0)
    x = torch.rand(2, 3, 24, 24)
    ref = build_surrogate(native_utk.tasks, 3, 16, "small_cnn")
    ref.load_state_dict(sized.state_dict())
    with torch.no_grad():
        out, want = sized.eval()(x), ref.eval()(resize(x, (16, 16)))
    assert seen == [(16, 16)]
    for t in native_utk.tasks:
        assert torch.equal(out[t.name], want[t.name])

    fit_recipe(recipe, native_utk, tmp_path, progress=False)
    cfg = json.loads((tmp_path / "generator.json").read_text())
    assert cfg["extra"]["surrogates"] == ["small_cnn@16", "small_cnn"]
    for f in ("clean_surrogate.pt", "clean_surrogate_small_cnn.pt"):
        ref.load_state_dict(torch.load(tmp_path / f, weights_only=True)["snapshots"][-1])  # plain names


def test_gray_surrogate_member_sees_every_input_in_grayscale(native_utk, tmp_path):
    """``ARCH[@SIZE]:gray``: that member gets every input as BT.601 grayscale (then resized), in its clean training
    and in the fit, so a colour change of equal luma does not move it; its snapshot file is named by the spec;
    other suffixes and grayscale members on 1-channel data are refused with the spec named."""
    from mtlguard.unlearnable.eot import LUMA, grayscale, resize
    from mtlguard.unlearnable.recipes import GeneratorRecipe, _build_surrogates, fit_recipe, surrogate_spec
    from mtlguard.unlearnable.surrogate import build_surrogate

    assert surrogate_spec("resnet18:gray") == ("resnet18", None, True)
    assert surrogate_spec("resnet18@64:gray") == ("resnet18", 64, True)
    assert surrogate_spec("resnet18@64:gray").file_tag == "resnet18_64_gray"
    for bad in ("resnet18:grey", "resnet18:uw", "resnet18@x:gray"):
        with pytest.raises(ValueError, match=bad):
            GeneratorRecipe(fit=_robust_cfg(base="tap"), surrogate_archs=("small_cnn", bad))

    recipe = GeneratorRecipe(fit=_robust_cfg(base="tap", epochs=1), gen_size=16,
                             surrogate_archs=("small_cnn", "small_cnn@16:gray"), surrogate_epochs=1)
    plain, gray = _build_surrogates(recipe, native_utk.tasks, 3, 24)
    assert not plain._forward_pre_hooks and len(gray._forward_pre_hooks) == 1
    torch.manual_seed(0)
    x = torch.rand(2, 3, 24, 24) * 0.8 + 0.1
    ref = build_surrogate(native_utk.tasks, 3, 16, "small_cnn")
    ref.load_state_dict(gray.state_dict())
    chroma = torch.tensor([LUMA[1], -LUMA[0], 0.0]).view(1, 3, 1, 1) * 0.1  # BT.601 luma of this shift is 0
    with torch.no_grad():
        out, want = gray.eval()(x), ref.eval()(resize(grayscale(x), (16, 16)))
        shifted = gray(x + chroma)
        colour, colour_shifted = ref(resize(x, (16, 16))), ref(resize(x + chroma, (16, 16)))
    for t in native_utk.tasks:
        assert torch.equal(out[t.name], want[t.name])
        assert torch.allclose(shifted[t.name], out[t.name], atol=1e-5)   # the gray member is blind to chroma
        assert not torch.allclose(colour_shifted[t.name], colour[t.name], atol=1e-5)  # the same model on colour is not
    with pytest.raises(ValueError, match="'small_cnn@16:gray' needs colour images"):
        _build_surrogates(recipe, native_utk.tasks, 1, 24)

    fit_recipe(recipe, native_utk, tmp_path, progress=False)
    cfg = json.loads((tmp_path / "generator.json").read_text())
    assert cfg["extra"]["surrogates"] == ["small_cnn", "small_cnn@16:gray"]
    ref.load_state_dict(torch.load(tmp_path / "clean_surrogate_small_cnn_16_gray.pt",
                                   weights_only=True)["snapshots"][-1])


def test_task_balances_weight_each_task_gradient_by_its_loss(tiny_utk):
    """``balance="log"``: L_b = sum_k log L_k with L_k the ensemble's mean task loss, so its gradient is
    sum_k grad L_k / L_k (GB-MTA Eq. 8-9); ``"lagging"``: sum_k (L_k / mean L) grad L_k; ``"sum"`` is TAP's loss
    as before; unknown names are refused."""
    from mtlguard.unlearnable.base_losses import base_loss, task_terms

    torch.manual_seed(0)
    tasks = tiny_utk.tasks
    models = [build_model(tasks, arch="small_cnn", image_size=SIZE).eval() for _ in range(2)]
    x, y = _batch(tiny_utk)
    x = x.clone().requires_grad_(True)
    (g_log,) = torch.autograd.grad(base_loss("tap", models, tasks, x, y, balance="log"), x)
    per_model = [task_terms("tap", tasks, m(x), y) for m in models]
    want = 0
    for k in range(len(tasks)):
        lk = (per_model[0][k][0] + per_model[1][k][0]) / 2
        (gk,) = torch.autograd.grad(lk, x, retain_graph=True)
        want = want + gk / lk.detach()
    assert torch.allclose(g_log, want, rtol=1e-4, atol=1e-7)
    (g_sum,) = torch.autograd.grad(base_loss("tap", models, tasks, x, y), x)
    assert not torch.allclose(g_sum, g_log)
    # "lagging": weights L_k / mean_j L_j (detached): the task furthest from its target leads
    (g_lag,) = torch.autograd.grad(base_loss("tap", models, tasks, x, y, balance="lagging"), x)
    losses = [(per_model[0][k][0] + per_model[1][k][0]) / 2 for k in range(len(tasks))]
    mean = sum(float(lk.detach()) for lk in losses) / len(losses)
    want = sum(torch.autograd.grad(lk, x, retain_graph=True)[0] * (float(lk.detach()) / mean) for lk in losses)
    assert torch.allclose(g_lag, want, rtol=1e-4, atol=1e-7)
    ref = sum(tap_loss(tasks, m(x), y) for m in models) / 2
    assert torch.allclose(base_loss("tap", models, tasks, x, y, balance="sum"), ref)
    with pytest.raises(ValueError, match="task balance"):
        base_loss("tap", models, tasks, x, y, balance="max")
    with pytest.raises(ValueError, match="task_balance"):
        FitConfig(base="tap", task_balance="max")


def test_adversarial_views_maximize_the_loss_the_generator_minimizes(tiny_utk):
    """REM-style views (``adv_eps``): PGD moves each view, within the ball, to raise the loss it is asked
    for -- TAP's targeted loss for a TAP fit's generator step, the EM loss for an EM surrogate -- and a
    TAP fit through such views still lowers the worst-case targeted loss it optimizes."""
    from mtlguard.unlearnable.base_losses import em_loss
    from mtlguard.unlearnable.fitting import _Views

    torch.manual_seed(0)
    tasks = tiny_utk.tasks
    sur = build_model(tasks, arch="resnet18", image_size=SIZE)
    train_clean_surrogate(sur, tasks, tiny_utk, epochs=2, batch_size=12, progress=False)
    sur.eval().requires_grad_(False)
    x, y = _batch(tiny_utk)
    eps = 4 / 255
    cfg = FitConfig(base="tap", epochs=1, batch_size=12, augment=False, adv_eps=eps, adv_steps=3, seed=0)
    gen = MTLUEGenerator(tasks, image_size=SIZE)
    views = _Views(cfg, gen)
    with torch.no_grad():
        tap0, em0 = float(tap_loss(tasks, sur(x), y)), float(em_loss(tasks, sur(x), y))
    xt = views.adversarial([sur], x, y, "tap")
    xe = views.adversarial([sur], x, y, "em")
    for xa in (xt, xe):
        assert (xa - x).abs().max() <= eps + 1e-6 and (xa - x).abs().max() > eps / 2
    with torch.no_grad():
        assert float(tap_loss(tasks, sur(xt), y)) > tap0
        assert float(em_loss(tasks, sur(xe), y)) > em0
    assert torch.equal(_Views(FitConfig(base="tap"), gen).adversarial([sur], x, y, "tap"), x)  # off: unchanged

    labels = gen.labels_from_targets(y)

    def worst_targeted():
        gen.eval()
        with torch.no_grad():
            xp = gen(x, labels)[0]
        torch.manual_seed(1)
        xa = views.adversarial([sur], xp, y, "tap")
        with torch.no_grad():
            return float(tap_loss(tasks, sur(xa), y))

    before = worst_targeted()
    fit_generator(gen, tiny_utk, sur, FitConfig(**{**cfg.to_dict(), "epochs": 3, "lr": 1e-2}), progress=False)
    assert worst_targeted() < before
