"""Generic folder format: reading (labels, image modes, EXIF), every malformed input, and the writer."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtlguard.data import (FolderDataset, SyntheticScenes, TaskSpec, build_dataset, dataset_tasks,
                           decode_image, tasks_to_json, write_folder_dataset)

TASKS = (
    TaskSpec("age", "multiclass", 3, ("young", "adult", "old")),
    TaskSpec("smiling", "binary"),
    TaskSpec("tags", "multilabel", 3, ("hat", "glasses", "beard")),
    TaskSpec("score", "regression"),
)


def _rgb(seed: int, size=(12, 10)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def _write_csv(root: Path, rows: list[list[str]], header=("file", "age", "smiling", "tags", "score")) -> None:
    lines = [",".join(header)] + [",".join(r) for r in rows]
    (root / "labels.csv").write_text("\n".join(lines) + "\n")


def _make(root: Path, rows=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir(exist_ok=True)
    Image.fromarray(_rgb(0)).save(root / "a.png")
    Image.fromarray(_rgb(1)).save(root / "sub" / "b.png")
    Image.fromarray(_rgb(2)).save(root / "c.png")
    (root / "tasks.json").write_text(tasks_to_json(TASKS))
    _write_csv(root, rows or [
        ["a.png", "young", "1", "hat|beard", "0.5"],
        ["sub/b.png", "2", "false", "", "-1.25"],
        ["c.png", "Adult", "no", "1", "3"],
    ])
    return root


def test_reads_labels_names_and_indices(tmp_path):
    ds = FolderDataset(_make(tmp_path / "d"))
    assert len(ds) == 3 and ds.image_size == (10, 12) and ds.num_channels == 3
    assert ds.files == ("a.png", "sub/b.png", "c.png")
    assert ds.labels_tensor().tolist() == [[0, 1], [2, 0], [1, 0]]  # age, smiling (classification tasks)
    x, y = ds[0]
    assert x.shape == (3, 10, 12) and torch.allclose(x, torch.from_numpy(_rgb(0)).permute(2, 0, 1).float() / 255)
    assert y["tags"].tolist() == [1.0, 0.0, 1.0] and y["tags"].dtype == torch.float32
    assert ds[1][1]["tags"].tolist() == [0.0, 0.0, 0.0]
    assert ds[1][1]["score"].item() == -1.25 and ds[1][1]["score"].dtype == torch.float32
    assert ds[2][1]["age"].item() == 1 and ds[2][1]["age"].dtype == torch.int64
    assert ds[2][1]["tags"].tolist() == [0.0, 1.0, 0.0]
    small = FolderDataset(tmp_path / "d", image_size=(6, 5), task_names=["smiling"])
    assert small[1][0].shape == (3, 6, 5) and list(small[1][1]) == ["smiling"]
    # the same through the registry (no split column -> every row)
    assert len(build_dataset("folder", tmp_path / "d")) == 3
    assert [t.name for t in dataset_tasks("folder", tmp_path / "d")] == ["age", "smiling", "tags", "score"]


def test_split_column(tmp_path):
    root = _make(tmp_path / "d")
    lines = (root / "labels.csv").read_text().splitlines()
    out = [lines[0] + ",split"] + [l + s for l, s in zip(lines[1:], [",train", ",test", ",train"])]
    (root / "labels.csv").write_text("\n".join(out) + "\n")
    assert FolderDataset(root, split="train").files == ("a.png", "c.png")
    assert build_dataset("folder", root, split="test").files == ("sub/b.png",)
    with pytest.raises(ValueError, match="no rows with split='val'"):
        FolderDataset(root, split="val")


def test_image_modes_are_converted(tmp_path):
    base = np.arange(6 * 8, dtype=np.uint8).reshape(6, 8) * 5
    Image.fromarray(base).save(tmp_path / "gray.png")
    rgba = np.dstack([_rgb(3, (8, 6)), np.full((6, 8), 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    Image.fromarray(_rgb(4, (8, 6))).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    Image.fromarray(base.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    Image.fromarray(_rgb(5, (8, 6))).convert("P").save(tmp_path / "pal.png")
    g = decode_image(tmp_path / "gray.png", None, 3)
    assert g.shape == (6, 8, 3) and (g[..., 0] == base).all() and (g[..., 1] == g[..., 2]).all()
    assert np.array_equal(decode_image(tmp_path / "rgba.png", None, 3), _rgb(3, (8, 6)))  # alpha dropped
    c = decode_image(tmp_path / "cmyk.jpg", None, 3)
    assert c.shape == (6, 8, 3) and np.abs(c.astype(int) - _rgb(4, (8, 6))).mean() < 40
    d16 = decode_image(tmp_path / "deep.png", None, 1)
    assert d16.shape == (6, 8, 1) and np.array_equal(d16[..., 0], base)  # v*257 -> v
    assert decode_image(tmp_path / "pal.png", None, 3).shape == (6, 8, 3)
    lum = decode_image(tmp_path / "rgba.png", None, 1)
    assert lum.shape == (6, 8, 1)
    # a mixed-mode folder loads with the channel count of the task file
    (tmp_path / "tasks.json").write_text(json.dumps({"tasks": [TASKS[1].to_dict()], "num_channels": 1}))
    (tmp_path / "labels.csv").write_text("file,smiling\n" + "".join(
        f"{n},1\n" for n in ["gray.png", "rgba.png", "cmyk.jpg", "deep.png", "pal.png"]))
    ds = FolderDataset(tmp_path)
    assert ds.num_channels == 1 and ds[3][0].shape == (1, 6, 8)
    assert torch.allclose(ds[3][0][0], torch.from_numpy(base).float() / 255)


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:5] = 255  # stored: top half white
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    Image.fromarray(arr).save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=100)
    out = decode_image(tmp_path / "rot.jpg", None, 3)
    assert out.shape == (20, 10, 3)  # width and height swapped
    assert out[:, 7:].mean() > 200 and out[:, :3].mean() < 50  # top went to the right
    assert decode_image(tmp_path / "rot.jpg", (8, 4), 3).shape == (8, 4, 3)


# ------------------------------------------------------------------ malformed inputs -----------
def _expect(root: Path, match: str, exc=ValueError, **kw):
    with pytest.raises(exc, match=match):
        FolderDataset(root, **kw)


def test_missing_file_names_row_and_column(tmp_path):
    root = _make(tmp_path / "d")
    os.remove(root / "sub" / "b.png")
    _expect(root, r"labels.csv: line 3, column 'file': image 'sub/b.png' not found")


def test_unknown_and_empty_labels(tmp_path):
    bad = [
        (["a.png", "ancient", "1", "", "0"], r"line 2, column 'age': unknown label 'ancient'.*young"),
        (["a.png", "3", "1", "", "0"], r"line 2, column 'age': unknown label '3'"),
        (["a.png", "-1", "1", "", "0"], None),  # multiclass ignore_index is allowed
        (["a.png", "young", "2", "", "0"], r"line 2, column 'smiling': unknown label '2'"),
        (["a.png", "young", "-1", "", "0"], r"line 2, column 'smiling': unknown label '-1'"),
        (["a.png", "young", "", "", "0"], r"line 2, column 'smiling': empty value"),
        (["a.png", "young", "1", "hat|scarf", "0"], r"line 2, column 'tags': unknown label 'scarf'"),
        (["a.png", "young", "1", "", "nan"], r"line 2, column 'score': invalid number 'nan'"),
        (["a.png", "young", "1", "", "abc"], r"line 2, column 'score': invalid number"),
        (["", "young", "1", "", "0"], r"line 2, column 'file': empty file name"),
        (["a.png", "young", "1", ""], r"line 2: 4 fields, the header has 5"),
    ]
    for row, match in bad:
        root = _make(tmp_path / f"d{len(list(tmp_path.iterdir()))}", rows=[row])
        if match is None:
            assert FolderDataset(root).labels_tensor().tolist() == [[-1, 1]]
        else:
            _expect(root, match)


def test_missing_empty_and_duplicate_columns(tmp_path):
    root = _make(tmp_path / "d")
    _write_csv(root, [["a.png", "young", "1", "0"]], header=("file", "age", "smiling", "score"))
    _expect(root, r"line 1: missing column 'tags' for task 'tags'")
    _write_csv(root, [["young", "1", "", "0"]], header=("path", "age", "smiling", "tags", "score"))
    _expect(root, r"missing column 'file'")
    _write_csv(root, [["a.png", "young", "1", "", "0", "x"]], header=("file", "age", "smiling", "tags", "score", ""))
    _expect(root, r"line 1: empty column name in column 6")
    _write_csv(root, [["a.png", "young", "1", "", "0", "1"]], header=("file", "age", "smiling", "tags", "score", "age"))
    _expect(root, r"duplicate column\(s\) \['age'\]")
    (root / "labels.csv").write_text("")
    _expect(root, r"empty file")
    (root / "labels.csv").write_text("file,age,smiling,tags,score\n")
    _expect(root, r"no rows")
    os.remove(root / "labels.csv")
    _expect(root, r"label table .*labels.csv.* not found", FileNotFoundError)


def test_duplicate_files(tmp_path):
    root = _make(tmp_path / "d", rows=[["a.png", "0", "1", "", "0"], ["c.png", "0", "1", "", "0"],
                                       ["./a.png", "1", "0", "", "0"]])
    _expect(root, r"line 4, column 'file': duplicate file './a.png' \(also on line 2\)")


def test_paths_escaping_the_root(tmp_path):
    outside = tmp_path / "outside.png"
    Image.fromarray(_rgb(9)).save(outside)
    root = _make(tmp_path / "d")
    os.symlink(outside, root / "link.png")
    os.symlink(tmp_path, root / "linkdir")
    cases = [
        (str(outside), r"line 2, column 'file': image path '.*outside.png' is absolute"),
        ("../outside.png", r"line 2, column 'file': image path '../outside.png' escapes the root"),
        ("sub/../../outside.png", r"escapes the root"),
        ("link.png", r"line 2, column 'file': image path 'link.png' resolves outside the root"),
        ("linkdir/outside.png", r"resolves outside the root"),
    ]
    for path, match in cases:
        _write_csv(root, [[path, "0", "1", "", "0"]])
        _expect(root, match)
    # a symlink that stays inside the root is fine
    os.symlink(root / "a.png", root / "inner.png")
    _write_csv(root, [["inner.png", "0", "1", "", "0"]])
    assert FolderDataset(root).files == ("inner.png",)


def test_bad_task_file_and_images(tmp_path):
    root = _make(tmp_path / "d")
    (root / "tasks.json").write_text(json.dumps([{"name": "age", "kind": "ordinal", "num_classes": 3}]))
    _expect(root, r"tasks.json.*unknown kind 'ordinal'")
    (root / "tasks.json").write_text("{not json")
    _expect(root, r"tasks.json.*invalid task-spec file")
    os.remove(root / "tasks.json")
    _expect(root, r"task-spec file .*tasks.json.* not found", FileNotFoundError)
    root = _make(tmp_path / "e")
    (root / "c.png").write_bytes(b"this is not an image")
    ds = FolderDataset(root, image_size=8)
    with pytest.raises(ValueError, match=r"cannot decode image .*c.png"):
        ds[2]
    root = _make(tmp_path / "f")
    Image.fromarray(_rgb(1, (7, 7))).save(root / "sub" / "b.png")
    ds = FolderDataset(root)
    with pytest.raises(ValueError, match=r"sub/b.png.* has size \(7, 7\).*pass image_size"):
        ds[1]
    with pytest.raises(ValueError, match=r"sub/b.png.* has size \(7, 7\).*pass image_size"):
        ds.images_uint8()
    assert FolderDataset(root, image_size=7)[1][0].shape == (3, 7, 7)


# ------------------------------------------------------------------ cache --------------------
def test_no_default_cache_without_preload(tmp_path, monkeypatch):
    monkeypatch.setenv("MTLGUARD_CACHE", str(tmp_path / "default_cache"))
    ds = FolderDataset(_make(tmp_path / "d"))
    assert ds.images_uint8().shape == (3, 10, 12, 3) and ds.cache_hit is False
    assert not (tmp_path / "default_cache").exists()
    FolderDataset(tmp_path / "d", preload=True, progress=False)  # preload: the default cache folder
    assert len(list((tmp_path / "default_cache").glob("*.npy"))) == 1


def test_preload_cache_is_invalidated_by_changed_files(tmp_path):
    root = _make(tmp_path / "d")
    cache = tmp_path / "cache"
    a = FolderDataset(root, preload=True, cache_dir=cache, progress=False)
    assert a.cache_hit is False
    b = FolderDataset(root, preload=True, cache_dir=cache, progress=False)
    assert b.cache_hit is True and np.array_equal(a.images_uint8(), b.images_uint8())
    Image.fromarray(_rgb(42)).save(root / "c.png")  # same name, new content
    c = FolderDataset(root, preload=True, cache_dir=cache, progress=False)
    assert c.cache_hit is False and np.array_equal(c.images_uint8()[2], _rgb(42))


# ------------------------------------------------------------------ writer -------------------
def test_writer_round_trip_is_lossless(tmp_path):
    src = FolderDataset(_make(tmp_path / "src"))
    imgs = src.images_uint8()
    imgs = imgs.copy()
    imgs[:, 0, 0] ^= 1  # a "perturbation"
    labels = {t.name: src.label_arrays[t.name] for t in src.tasks}
    out = write_folder_dataset(tmp_path / "out", src.files, imgs, labels, src.tasks, source_root=src.root,
                               progress=False)
    back = FolderDataset(out)
    assert back.files == src.files and back.tasks == src.tasks
    np.testing.assert_array_equal(back.images_uint8(), imgs)
    assert torch.equal(back.labels_tensor(), src.labels_tensor())
    for i in range(len(src)):
        for t in src.tasks:
            assert torch.equal(back[i][1][t.name], src[i][1][t.name])
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    umask = os.umask(0o022)
    os.umask(umask)
    assert (out / "a.png").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    # label-matrix form for classification-only task lists, and JPEG names become .png
    cls_tasks = [TASKS[0], TASKS[1]]
    out2 = write_folder_dataset(tmp_path / "out2", ["x/p.jpg", "q.jpeg"], imgs[:2], src.labels_tensor()[:2],
                                cls_tasks, progress=False)
    back2 = FolderDataset(out2)
    assert back2.files == ("x/p.png", "q.png") and back2.labels_tensor().tolist() == [[0, 1], [2, 0]]


def test_writer_refuses_source_root_and_overwrites(tmp_path):
    src = FolderDataset(_make(tmp_path / "src"))
    imgs = src.images_uint8()
    labels = {t.name: src.label_arrays[t.name] for t in src.tasks}
    for dest in (tmp_path / "src", tmp_path / "src" / "protected"):
        with pytest.raises(ValueError, match="refusing to write into the source dataset"):
            write_folder_dataset(dest, src.files, imgs, labels, src.tasks, source_root=src.root)
    assert sorted(p.name for p in (tmp_path / "src").iterdir()) == ["a.png", "c.png", "labels.csv", "sub", "tasks.json"]
    out = write_folder_dataset(tmp_path / "out", src.files, imgs, labels, src.tasks, progress=False)
    before = (out / "a.png").read_bytes()
    with pytest.raises(FileExistsError, match=r"already exist.*overwrite=True"):
        write_folder_dataset(out, src.files, imgs[::-1].copy(), labels, src.tasks, progress=False)
    assert (out / "a.png").read_bytes() == before  # nothing was written
    write_folder_dataset(out, src.files, imgs[::-1].copy(), labels, src.tasks, overwrite=True, progress=False)
    assert np.array_equal(FolderDataset(out).images_uint8()[0], imgs[2])
    with pytest.raises(ValueError, match=r"files\[0\].*escapes the root"):
        write_folder_dataset(tmp_path / "o3", ["../x.png"], imgs[:1], {k: v[:1] for k, v in labels.items()},
                             src.tasks, progress=False)
    with pytest.raises(ValueError, match=r"files\[1\] 'a.jpg' and files\[0\] map to the same output 'a.png'"):
        write_folder_dataset(tmp_path / "o4", ["a.png", "a.jpg"], imgs[:2], {k: v[:2] for k, v in labels.items()},
                             src.tasks, progress=False)
    with pytest.raises(ValueError, match=r"no labels given for task 'score'"):
        write_folder_dataset(tmp_path / "o5", src.files, imgs, {k: labels[k] for k in ("age", "smiling", "tags")},
                             src.tasks, progress=False)


def test_writer_dense_and_grayscale(tmp_path):
    scenes = SyntheticScenes(3, image_size=(16, 20), seed=1)
    dense = scenes.dense_targets()
    labels = {"segmentation": dense["segmentation"].numpy(), "depth": dense["depth"].numpy()[:, 0],
              "normal": dense["normal"].numpy().transpose(0, 2, 3, 1)}
    out = write_folder_dataset(tmp_path / "scenes", [f"s{i}.png" for i in range(3)], scenes.images_uint8(),
                               labels, scenes.tasks, progress=False)
    back = FolderDataset(out)
    for i in range(3):
        x, y = back[i]
        x0, y0 = scenes[i]
        assert torch.equal(x, x0)
        for k in y0:
            assert torch.equal(y[k], y0[k]), k
    half = FolderDataset(out, image_size=(8, 10))[0][1]
    assert half["segmentation"].shape == (8, 10) and half["depth"].shape == (1, 8, 10)
    gray = np.random.default_rng(0).integers(0, 256, (2, 9, 9, 1), dtype=np.uint8)
    out = write_folder_dataset(tmp_path / "gray", ["g0.png", "g1.png"], gray, {"smiling": [0, 1]}, [TASKS[1]],
                               progress=False)
    g = FolderDataset(out)
    assert g.num_channels == 1 and np.array_equal(g.images_uint8(), gray)


def test_write_protected_copy_of_utkface_and_scenes(utkface_root, tmp_path):
    from mtlguard.data import UTKFace, write_protected_copy

    src = UTKFace(utkface_root, "test", image_size=16, subset=12, cache_dir=False, progress=False)
    prot = src.images_uint8().copy()
    prot[:, ::2] = 255 - prot[:, ::2]
    out = write_protected_copy(src, tmp_path / "prot", prot, progress=False)
    back = FolderDataset(out)
    assert back.files == tuple(f[: -len(".jpg")] + ".png" for f in src.files)
    assert back.tasks == src.tasks and torch.equal(back.labels_tensor(), src.labels_tensor())
    np.testing.assert_array_equal(back.images_uint8(), prot)
    with pytest.raises(ValueError, match="refusing to write into the source dataset"):
        write_protected_copy(src, src.root / "protected", prot)
    scenes = SyntheticScenes(2, image_size=12, seed=5)
    out = write_protected_copy(scenes, tmp_path / "scenes", scenes.images_uint8(), progress=False)
    back = FolderDataset(out)
    assert back.files == ("000000.png", "000001.png")
    assert torch.equal(back[1][1]["normal"], scenes[1][1]["normal"])
