"""LSP / AR class-wise patterns with patch and averaging fusion (A.1 geometry, l2 bound) and the
sample-wise EM / TAP / SEP PGD baselines (L-inf bound, loss decreases)."""

import pytest
import torch

from mtlguard.data.tasks import TaskSpec
from mtlguard.models import build_model
from mtlguard.unlearnable import tap_loss
from mtlguard.unlearnable.patterns import ClasswisePatterns, l2_bound, num_patches
from mtlguard.unlearnable.samplewise import samplewise_em, samplewise_tap

TASKS = (TaskSpec("age", "multiclass", 9), TaskSpec("gender", "multiclass", 2), TaskSpec("race", "multiclass", 5))


def test_num_patches_formula():
    # N = 2^ceil(log2(ceil(sqrt K)))
    assert [num_patches(k) for k in (1, 2, 3, 4, 5, 9, 10, 16, 17, 40)] == [1, 2, 2, 2, 4, 4, 4, 4, 8, 8]
    assert l2_bound((64, 96)) == pytest.approx(2 * 3)


@pytest.mark.parametrize("kind", ["lsp", "ar"])
def test_patch_fusion_geometry(kind):
    p = ClasswisePatterns(TASKS, kind=kind, fusion="patch", image_size=32, seed=1)
    assert p.n_side == 2 and p.patch_size == (16, 16)
    assert [p.patch_box(k) for k in range(3)] == [(0, 0, 16, 16), (0, 16, 16, 16), (16, 0, 16, 16)]
    labels = torch.tensor([[3, 1, 4], [3, 0, 4]])
    d = p(labels)
    assert d.shape == (2, 3, 32, 32)
    assert torch.count_nonzero(d[:, :, 16:, 16:]) == 0           # 4th patch: no task
    diff = (d[0] - d[1]).abs().sum(0)                             # only gender (patch 1) differs
    assert diff[:16, 16:].sum() > 0 and diff[:16, :16].sum() == 0 and diff[16:, :].sum() == 0
    assert torch.allclose(d[:, :, :16, :16], p.task_patterns(0)[3].expand(2, -1, -1, -1))
    norms = d.reshape(2, -1).norm(dim=1)
    assert torch.allclose(norms, torch.full((2,), l2_bound((32, 32))), rtol=1e-4)
    # unprotected task (label -1) leaves its patch empty
    assert torch.count_nonzero(p(torch.tensor([[3, -1, 4]]))[:, :, :16, 16:]) == 0


def test_patch_fusion_resizes_canvas_and_average_fusion():
    p = ClasswisePatterns(TASKS, kind="lsp", fusion="patch", image_size=(34, 33))
    assert p.patch_size == (17, 16)
    d = p(torch.tensor([[0, 1, 2]]))
    assert d.shape == (1, 3, 34, 33) and float(d.norm()) <= l2_bound((34, 33)) * (1 + 1e-5)
    a = ClasswisePatterns(TASKS, kind="ar", fusion="average", image_size=32, linf=8 / 255)
    lab = torch.tensor([[2, 1, 0], [2, -1, 0]])
    raw = ClasswisePatterns(TASKS, kind="ar", fusion="average", image_size=32)
    expect0 = (raw.task_patterns(0)[2] + raw.task_patterns(1)[1] + raw.task_patterns(2)[0]) / 3
    expect1 = (raw.task_patterns(0)[2] + raw.task_patterns(2)[0]) / 2
    got = raw(lab)
    for g, e in ((got[0], expect0), (got[1], expect1)):
        e = e * min(1.0, l2_bound((32, 32)) / float(e.norm()))
        assert torch.allclose(g, e, atol=1e-6)
    da = a(lab)
    assert float(da.abs().max()) <= 8 / 255 + 1e-7
    x = torch.rand(2, 3, 32, 32)
    xp, eff = a.protect(x, lab)
    assert float(xp.min()) >= 0 and float(xp.max()) <= 1 and float(eff.abs().max()) <= 8 / 255 + 1e-6
    assert torch.equal(a(lab[:1]), a(lab[:1]))  # class-wise: deterministic per label combination


class _Tiny(torch.utils.data.Dataset):
    tasks = TASKS

    def __init__(self, n=6, size=16):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 3, size, size, generator=g)
        self.y = torch.stack([torch.randint(0, t.num_classes, (n,), generator=g) for t in TASKS], 1)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], {t.name: self.y[i, k] for k, t in enumerate(TASKS)}


def test_samplewise_tap_sep_and_em_bound_and_progress():
    ds = _Tiny()
    m1 = build_model(TASKS, arch="resnet18", image_size=16).eval()
    m2 = build_model(TASKS, arch="resnet18", image_size=16).eval()
    x, y = ds.x, {t.name: ds.y[:, k] for k, t in enumerate(TASKS)}
    with torch.no_grad():
        before = float(tap_loss(TASKS, m1(x), y))
    d = samplewise_tap([m1], TASKS, ds, steps=3, step_size=1 / 255, eps=4 / 255, batch_size=6, progress=False)
    assert d.shape == x.shape and float(d.abs().max()) <= 4 / 255 + 1e-6
    with torch.no_grad():
        after = float(tap_loss(TASKS, m1((x + d).clamp(0, 1)), y))
    assert after < before
    ds_sep = samplewise_tap([m1, m2], TASKS, ds, steps=1, step_size=1 / 255, batch_size=6, progress=False)
    assert float(ds_sep.abs().max()) <= 8 / 255 + 1e-6 and not torch.equal(ds_sep[:, :, :, :], d)
    sur = build_model(TASKS, arch="resnet18", image_size=16)
    de, hist = samplewise_em(sur, TASKS, ds, steps=1, train_steps=1, max_rounds=1, batch_size=6, progress=False)
    assert de.shape == x.shape and float(de.abs().max()) <= 8 / 255 + 1e-6 and float(de.abs().max()) > 0
    assert len(hist) == 1 and 0 <= hist[0]["train_acc"] <= 1
