"""The README's "Fit, save, load and export a generator in Python" and any-size consumer snippets run as
written (scaled down: 16 real UTKFace faces in the folder format, one EM round with a small surrogate)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.usefixtures("one_thread")


def test_python_fit_save_load_export(utkface_root, tmp_path, monkeypatch):
    from mtlguard.data.folder import write_folder_dataset
    from mtlguard.data.utkface import UTKFace

    ds = UTKFace(utkface_root, split="train", image_size=32, subset=16, seed=0, cache_dir=tmp_path / "c", progress=False)
    write_folder_dataset(tmp_path / "my_data", [f"img/{i:02d}.png" for i in range(16)],
                         np.stack([ds.load_uint8(i) for i in range(16)]), ds.label_arrays, ds.tasks,
                         split=["train"] * 16, progress=False)
    monkeypatch.chdir(tmp_path)

    # --- README, as written (scaled down where marked) ---
    from mtlguard.data import FolderDataset
    from mtlguard.export import export_onnx, read_onnx_facts
    from mtlguard.unlearnable import FitConfig, MTLUEGenerator
    from mtlguard.unlearnable.recipes import GeneratorRecipe, fit_recipe

    train_set = FolderDataset("my_data", split="train", image_size=32)
    recipe = GeneratorRecipe(fit=FitConfig(base="em", epochs=1, batch_size=8, train_steps=1),  # scaled down
                             surrogate_archs=("small_cnn",))
    gen, result = fit_recipe(recipe, train_set, "runs/gen", progress=False)
    gen.save("runs/gen_copy.safetensors", extra={"note": "any JSON"})
    gen = MTLUEGenerator.load("runs/gen/generator.safetensors").eval()
    images_float32_nchw = torch.stack([train_set[i][0] for i in range(4)])
    labels_int64 = train_set.labels_tensor()[:4]
    protected, delta = gen(images_float32_nchw, labels_int64)
    export_onnx(gen, "gen.onnx")
    export_onnx(gen, "gen_any.onnx", any_size=True)
    labels = read_onnx_facts("gen_any.onnx").check_labels(["20-29", "female", -1])
    # --- end ---

    assert labels.tolist() == [3, 1, -1] and result.rounds == 1
    assert json.loads((tmp_path / "runs" / "gen_copy.json").read_text())["extra"] == {"note": "any JSON"}
    assert protected.shape == images_float32_nchw.shape and delta.abs().max() <= gen.eps + 1e-6

    # --- README any-size consumer snippet ---
    import onnxruntime as ort

    Image.open(utkface_root / "images" / ds.files[0]).save(tmp_path / "face.jpg")
    s = ort.InferenceSession("gen_any.onnx")
    meta = s.get_modelmeta().custom_metadata_map
    rgb = np.asarray(Image.open("face.jpg").convert("RGB"))
    (protected,) = s.run(None, {"image": rgb, "labels": np.array([3, 1, -1])})
    Image.fromarray(protected).save("face_protected.png")
    # --- end ---
    assert meta["mtlguard.io"] == "uint8_hwc_anysize" and protected.shape == rgb.shape
    assert np.abs(protected.astype(int) - rgb).max() <= 8
