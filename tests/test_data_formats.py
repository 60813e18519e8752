"""CelebA, ChestX-ray14, NYUv2 (MTAN .npy) and Office-31 on tiny files written in their exact on-disk formats."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mtlguard.data import (CELEBA_ATTRIBUTES, CHESTX_FINDINGS, DATASETS, OFFICE31_CLASSES, CelebA, ChestXray14,
                           NYUv2, Office31, build_dataset, dataset_num_channels, dataset_tasks)


def _img(seed, w=20, h=24, mode="RGB"):
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(arr).convert(mode)


# ------------------------------------------------------------------ CelebA ------------------------
def _celeba(root: Path, n=6, partitions=(0, 0, 0, 1, 2, 2)) -> np.ndarray:
    (root / "img_align_celeba").mkdir(parents=True)
    vals = np.where(np.random.default_rng(0).random((n, 40)) < 0.4, 1, -1)
    lines = [str(n), " ".join(CELEBA_ATTRIBUTES)]
    for i in range(n):
        name = f"{i + 1:06d}.jpg"
        _img(i, 178 // 4, 218 // 4).save(root / "img_align_celeba" / name)
        lines.append(name + " " + " ".join(f"{v:2d}" for v in vals[i]))  # the release pads with spaces
    (root / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (root / "list_eval_partition.txt").write_text("".join(f"{i + 1:06d}.jpg {p}\n" for i, p in enumerate(partitions)))
    return vals


def test_celeba(tmp_path):
    vals = _celeba(tmp_path / "celeba")
    tr = CelebA(tmp_path, "train", image_size=16)  # root may be the parent of celeba/
    te = CelebA(tmp_path / "celeba", "test", image_size=16)
    assert len(tr) == 3 and len(te) == 2 and len(CelebA(tmp_path, "all", image_size=16)) == 6
    assert tr.files == ("000001.jpg", "000002.jpg", "000003.jpg")
    assert [t.name for t in tr.tasks] == list(CELEBA_ATTRIBUTES) and all(t.kind == "binary" for t in tr.tasks)
    assert torch.equal(tr.labels_tensor(), torch.from_numpy((vals[:3] == 1).astype(np.int64)))
    x, y = te[1]
    assert x.shape == (3, 16, 16) and y["Smiling"].item() == int(vals[5, CELEBA_ATTRIBUTES.index("Smiling")] == 1)
    sub = CelebA(tmp_path, "all", image_size=16, attributes=["Male", "Young"], subset=4, seed=1)
    assert len(sub) == 4 and sub.labels_tensor().shape == (4, 2)
    assert [t.name for t in dataset_tasks("celeba")] == list(CELEBA_ATTRIBUTES)


def test_celeba_malformed(tmp_path):
    root = tmp_path / "c"
    _celeba(root)
    attr = (root / "list_attr_celeba.txt").read_text().splitlines()
    parts = attr[4].split()
    parts[3] = "2"  # third attribute of the image on line 5
    bad = attr[:4] + [" ".join(parts)] + attr[5:]
    (root / "list_attr_celeba.txt").write_text("\n".join(bad) + "\n")
    with pytest.raises(ValueError, match=r"line 5, attribute 'Attractive': value '2' is not -1 or 1"):
        CelebA(root)
    (root / "list_attr_celeba.txt").write_text("\n".join(["7"] + attr[1:]) + "\n")
    with pytest.raises(ValueError, match="announces 7 images but 6 are listed"):
        CelebA(root)
    (root / "list_attr_celeba.txt").write_text("\n".join(attr[:3] + [attr[3].rsplit(" ", 1)[0]] + attr[4:]) + "\n")
    with pytest.raises(ValueError, match=r"line 4: 39 values for 40 attributes"):
        CelebA(root)
    (root / "list_attr_celeba.txt").write_text("\n".join(attr) + "\n")
    os.remove(root / "img_align_celeba" / "000002.jpg")
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) of split 'train' missing.*000002.jpg"):
        CelebA(root)
    (root / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 3\n")
    with pytest.raises(ValueError, match=r"list_eval_partition.txt.*line 2"):
        CelebA(root)
    _celeba(tmp_path / "c2")
    with pytest.raises(KeyError, match="Moustache"):
        CelebA(tmp_path / "c2", attributes=["Moustache"])


# ------------------------------------------------------------------ ChestX-ray14 ------------------
def _chestx(root: Path, archive_layout=False):
    entries = [
        ("00000001_000.png", "Cardiomegaly"), ("00000001_001.png", "Cardiomegaly|Emphysema"),
        ("00000002_000.png", "No Finding"), ("00000003_000.png", "Hernia|Pleural_Thickening|Effusion"),
        ("00000004_000.png", "Mass"),
    ]
    img_dir = root / ("images_001/images" if archive_layout else "images")
    img_dir.mkdir(parents=True)
    modes = ["L", "L", "RGBA", "L", "L"]  # a few NIH images are RGBA
    for (name, _), mode in zip(entries, modes):
        _img(len(name) + ord(name[7]), 32, 32, mode).save(img_dir / name)
    header = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
              "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")
    rows = [f"{n},{lab},0,{i},58,M,PA,2682,2749,0.143,0.143," for i, (n, lab) in enumerate(entries)]
    (root / "Data_Entry_2017.csv").write_text("\n".join([header] + rows) + "\n")
    (root / "train_val_list.txt").write_text("00000001_000.png\n00000001_001.png\n00000002_000.png\n")
    (root / "test_list.txt").write_text("00000003_000.png\n00000004_000.png\n")
    return entries


@pytest.mark.parametrize("archive_layout", [False, True])
def test_chestxray14(tmp_path, archive_layout):
    _chestx(tmp_path, archive_layout)
    tr = ChestXray14(tmp_path, "train", image_size=16)
    te = ChestXray14(tmp_path, "test", image_size=16)
    assert len(tr) == 3 and len(te) == 2 and tr.num_channels == 1 and dataset_num_channels("chestx-ray14") == 1
    assert [t.name for t in tr.tasks] == list(CHESTX_FINDINGS) and all(t.kind == "binary" for t in tr.tasks)
    lab = tr.labels_tensor()
    c = CHESTX_FINDINGS.index
    assert lab[0].nonzero().flatten().tolist() == [c("Cardiomegaly")]
    assert lab[1].nonzero().flatten().tolist() == sorted([c("Cardiomegaly"), c("Emphysema")])
    assert lab[2].sum() == 0  # No Finding
    assert sorted(te.labels_tensor()[0].nonzero().flatten().tolist()) == sorted(
        [c("Hernia"), c("Pleural_Thickening"), c("Effusion")])
    x, _ = tr[2]  # the RGBA one
    assert x.shape == (1, 16, 16)
    assert tr.files[0].endswith("images/00000001_000.png")


def test_chestxray14_malformed(tmp_path):
    _chestx(tmp_path)
    csv_path = tmp_path / "Data_Entry_2017.csv"
    text = csv_path.read_text()
    csv_path.write_text(text.replace("Hernia|Pleural_Thickening", "Hernia|Pleural Thickening"))
    with pytest.raises(ValueError, match=r"line 5, column 'Finding Labels': unknown finding 'Pleural Thickening'"):
        ChestXray14(tmp_path)
    csv_path.write_text(text.replace("Finding Labels", "Findings"))
    with pytest.raises(ValueError, match=r"missing column 'Finding Labels'"):
        ChestXray14(tmp_path)
    csv_path.write_text(text)
    (tmp_path / "test_list.txt").write_text("00000003_000.png\n00000009_000.png\n")
    with pytest.raises(ValueError, match=r"test_list.txt.*line 2: image '00000009_000.png' is not in Data_Entry"):
        ChestXray14(tmp_path, "test")
    os.remove(tmp_path / "images" / "00000002_000.png")
    with pytest.raises(FileNotFoundError, match=r"1 image\(s\) of split 'train' not found.*00000002_000.png"):
        ChestXray14(tmp_path, "train")


# ------------------------------------------------------------------ NYUv2 (MTAN) ------------------
def _nyu(root: Path, n=(3, 2), hw=(12, 16)):
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "val"), n):
        for k in ("image", "label", "depth", "normal"):
            (root / split / k).mkdir(parents=True)
        for i in range(count):
            h, w = hw
            np.save(root / split / "image" / f"{i}.npy", rng.random((h, w, 3)).astype(np.float32))
            lab = rng.integers(-1, 13, (h, w)).astype(np.float32)
            np.save(root / split / "label" / f"{i}.npy", lab)
            depth = rng.uniform(0.5, 9.0, (h, w, 1)).astype(np.float32)
            depth[lab == -1] = 0
            np.save(root / split / "depth" / f"{i}.npy", depth)
            nrm = rng.normal(size=(h, w, 3))
            nrm /= np.linalg.norm(nrm, axis=-1, keepdims=True)
            nrm[lab == -1] = 0
            np.save(root / split / "normal" / f"{i}.npy", nrm.astype(np.float32))


def test_nyuv2_mtan_layout(tmp_path):
    _nyu(tmp_path)
    tr, te = NYUv2(tmp_path, "train"), NYUv2(tmp_path, "test")
    assert len(tr) == 3 and len(te) == 2 and tr.image_size == (12, 16)
    assert [t.name for t in tr.tasks] == ["segmentation", "depth", "normal"] and tr.tasks[0].num_classes == 13
    x, y = tr[1]
    img = np.load(tmp_path / "train" / "image" / "1.npy")
    assert x.shape == (3, 12, 16) and torch.allclose(x, torch.from_numpy(img).permute(2, 0, 1), atol=0.5 / 255 + 1e-6)
    lab = np.load(tmp_path / "train" / "label" / "1.npy")
    assert y["segmentation"].dtype == torch.int64 and torch.equal(y["segmentation"], torch.from_numpy(lab).long())
    assert y["depth"].shape == (1, 12, 16) and torch.equal(y["depth"][0], torch.from_numpy(np.load(tmp_path / "train/depth/1.npy")[..., 0]))
    nrm = np.load(tmp_path / "train" / "normal" / "1.npy")
    assert y["normal"].shape == (3, 12, 16) and torch.equal(y["normal"], torch.from_numpy(nrm).permute(2, 0, 1))
    assert tr.labels_tensor().shape == (3, 0)
    small = NYUv2(tmp_path, "train", image_size=(6, 8))
    xs, ys = small[0]
    assert xs.shape == (3, 6, 8) and ys["segmentation"].shape == (6, 8) and ys["normal"].shape == (3, 6, 8)
    valid = ys["segmentation"] != -1  # nearest resampling keeps invalid pixels consistent across targets
    assert ((ys["depth"][0] > 0) == valid).all() and ((ys["normal"].abs().sum(0) > 0) == valid).all()
    xb, yb = next(iter(DataLoader(small, batch_size=3)))
    assert xb.shape == (3, 3, 6, 8) and yb["depth"].shape == (3, 1, 6, 8)


def test_nyuv2_malformed(tmp_path):
    _nyu(tmp_path)
    os.remove(tmp_path / "train" / "depth" / "2.npy")
    with pytest.raises(FileNotFoundError, match=r"1 file\(s\) missing in .*train/depth.*2.npy"):
        NYUv2(tmp_path, "train")
    os.rename(tmp_path / "val" / "image" / "1.npy", tmp_path / "val" / "image" / "5.npy")
    with pytest.raises(ValueError, match=r"val/image must hold 0.npy..1.npy"):
        NYUv2(tmp_path, "test")
    np.save(tmp_path / "val" / "image" / "1.npy", np.zeros((12, 16), np.float32))
    os.remove(tmp_path / "val" / "image" / "5.npy")
    with pytest.raises(ValueError, match=r"val/image/1.npy.* has shape \(12, 16\); expected \[H, W, 3\]"):
        NYUv2(tmp_path, "test")[1]
    with pytest.raises(FileNotFoundError, match="MTAN layout"):
        NYUv2(tmp_path / "nothing", "train")


# ------------------------------------------------------------------ Office-31 ---------------------
def _office(root: Path, per_class=5, classes=("back_pack", "mug", "trash_can")):
    k = 0
    for d in ("amazon", "dslr", "webcam"):
        for c in classes:
            cdir = root / d / "images" / c
            cdir.mkdir(parents=True)
            for j in range(per_class):
                _img(k, 10, 10).save(cdir / f"frame_{j:04d}.jpg")
                k += 1


def test_office31_domains_as_tasks(tmp_path):
    _office(tmp_path)
    tr = Office31(tmp_path, "train", image_size=8)
    te = Office31(tmp_path, "test", image_size=8)
    al = Office31(tmp_path, "all", image_size=8)
    assert len(al) == 45 and len(te) == 9 and len(tr) == 36  # 3 of 15 per domain in test
    assert set(tr.files).isdisjoint(te.files) and set(tr.files) | set(te.files) == set(al.files)
    assert [t.name for t in tr.tasks] == ["amazon", "dslr", "webcam"] and all(t.num_classes == 31 for t in tr.tasks)
    lab = al.labels_tensor()
    for i, f in enumerate(al.files):
        dom, _, cls, _ = f.split("/")
        k = ["amazon", "dslr", "webcam"].index(dom)
        assert al.domain[i] == k and lab[i, k] == OFFICE31_CLASSES.index(cls)
        assert (lab[i, [j for j in range(3) if j != k]] == -1).all()  # other domains: ignore_index
    x, y = al[0]
    assert x.shape == (3, 8, 8) and y["dslr"].item() == -1
    cat = Office31(tmp_path, "all", image_size=8, tasks_as="category", domains=["webcam"])
    assert len(cat) == 15 and cat.labels_tensor()[:, 0].unique().tolist() == [0, 17, 30]
    assert Office31(tmp_path, "test", image_size=8).files == te.files  # deterministic


def test_office31_malformed(tmp_path):
    _office(tmp_path)
    (tmp_path / "dslr" / "images" / "coffee_cup").mkdir()
    with pytest.raises(ValueError, match=r"unknown class folder .*coffee_cup"):
        Office31(tmp_path)
    with pytest.raises(ValueError, match=r"unknown Office-31 domain"):
        Office31(tmp_path, domains=["clipart"])
    with pytest.raises(FileNotFoundError, match=r"domain folder"):
        Office31(tmp_path / "none")


# ------------------------------------------------------------------ registry ----------------------
def test_registry(tmp_path):
    assert set(DATASETS) == {"utkface", "celeba", "chestxray14", "nyuv2", "office31", "synthetic", "folder"}
    _office(tmp_path / "office")
    ds = build_dataset("Office-31", tmp_path / "office", split="test", image_size=8)
    assert isinstance(ds, Office31) and ds.tasks == dataset_tasks("office31")
    _nyu(tmp_path / "nyu")
    assert build_dataset("nyuv2", tmp_path / "nyu", split="test").tasks == dataset_tasks("nyu")
    syn = build_dataset("synthetic", split="test", image_size=16, n=3)
    assert len(syn) == 3 and syn.tasks == dataset_tasks("synthetic")
    assert [t.name for t in dataset_tasks("utkface")] == ["age", "gender", "race"]
    assert len(dataset_tasks("chestxray14")) == 14 and len(dataset_tasks("celeba")) == 40
    with pytest.raises(KeyError, match="unknown dataset 'imagenet'"):
        build_dataset("imagenet", tmp_path)
    with pytest.raises(ValueError, match="needs a root"):
        build_dataset("celeba")
