"""TorchScript and AOTInductor (.pt2) artifacts equal PyTorch and load without mtlguard; TensorRT
builds when available and fails with one clear sentence when not."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from test_engine_standin import exported_onnx, make_generator, shared_generator, utk_batch

from mtlguard.export import export_pt2, export_torchscript, load_torchscript

try:
    import tensorrt  # noqa: F401
    HAVE_TRT = True
except ImportError:
    HAVE_TRT = False


def _no_mtlguard_run(code: str) -> str:
    """Run ``code`` in a fresh interpreter and check it never imported mtlguard."""
    code += "\nimport sys\nassert not any(m.startswith('mtlguard') for m in sys.modules), 'mtlguard was imported'\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def test_torchscript_equals_pytorch(utkface_root, tmp_path):
    g = shared_generator()
    path = export_torchscript(g, tmp_path / "gen.ts")
    images, labels, _ = utk_batch(utkface_root, 6)
    labels[::3, 1] = -1
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    with torch.no_grad():
        ref_p, ref_d = g(x, y)
    module, facts = load_torchscript(path)
    assert facts.task_names == ["age", "gender", "race"] and facts.image_size == (32, 32)
    with torch.no_grad():
        p, d = module(x, y)
        p1, _ = module(x[:1], y[:1])  # another batch size
    torch.testing.assert_close(p, ref_p, rtol=0, atol=1e-6)
    torch.testing.assert_close(d, ref_d, rtol=0, atol=1e-6)
    torch.testing.assert_close(p1, ref_p[:1], rtol=0, atol=1e-6)
    plain = torch.jit.load(str(path))  # plain torch, no mtlguard classes needed to deserialize
    torch.testing.assert_close(plain(x, y)[0], ref_p, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_pt2_aoti_package_equals_pytorch_without_mtlguard(utkface_root, tmp_path):
    """One small AOTInductor compile (a C++ build: the slowest test here), on the small stand-in
    generator with the wrapper compiled at -O0."""
    g = make_generator((32, 32), stand_in=True)
    path = export_pt2(g, tmp_path / "gen.pt2", inductor_configs={"aot_inductor.compile_wrapper_opt_level": "O0"})
    images, labels, _ = utk_batch(utkface_root, 5)
    labels[1] = -1
    with torch.no_grad():
        ref_p, ref_d = g(torch.from_numpy(images), torch.from_numpy(labels))
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "y.npy", labels)
    out = _no_mtlguard_run(textwrap.dedent(f"""
        import json, numpy as np, torch
        runner = torch._inductor.aoti_load_package({str(path)!r})
        meta = json.loads(runner.get_metadata()["mtlguard.json"])
        x, y = torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r})), torch.from_numpy(np.load({str(tmp_path / 'y.npy')!r}))
        p, d = runner(x, y)
        p2, _ = runner(x[:2], y[:2])
        np.save({str(tmp_path / 'p.npy')!r}, p.numpy()); np.save({str(tmp_path / 'd.npy')!r}, d.numpy())
        np.save({str(tmp_path / 'p2.npy')!r}, p2.numpy())
        print(json.dumps(meta))
    """))
    meta = json.loads(out.strip().splitlines()[-1])
    assert json.loads(meta["tasks"])[0]["name"] == "age"
    assert np.abs(np.load(tmp_path / "p.npy") - ref_p.numpy()).max() <= 1e-5
    assert np.abs(np.load(tmp_path / "d.npy") - ref_d.numpy()).max() <= 1e-5
    assert np.abs(np.load(tmp_path / "p2.npy") - ref_p.numpy()[:2]).max() <= 1e-5


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed: the missing-TensorRT message cannot be tested")
def test_tensorrt_missing_gives_one_clear_sentence(tmp_path, capsys):
    from mtlguard.cli.main import main
    from mtlguard.export import build_tensorrt_engine

    onnx_file = tmp_path / "gen.onnx"  # never read: the TensorRT import is checked first
    onnx_file.write_bytes(b"")
    with pytest.raises(RuntimeError, match=r"^TensorRT is not installed: .*mtlguard\[tensorrt\]"):
        build_tensorrt_engine(onnx_file, tmp_path / "gen.engine")
    assert main(["export", "--onnx", str(onnx_file), "--output", str(tmp_path / "gen.engine")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mtlguard export: error: TensorRT is not installed") and err.count("\n") == 0
    assert not (tmp_path / "gen.engine").exists()


@pytest.mark.tensorrt
@pytest.mark.skipif(not HAVE_TRT, reason="TensorRT not installed (optional extra: pip install 'mtlguard[tensorrt]')")
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA GPU not available on this machine")
def test_tensorrt_engine_matches_onnx(utkface_root, tmp_path):
    from mtlguard.engine.backends import OnnxRuntimeBackend, TensorRTBackend
    from mtlguard.export import build_tensorrt_engine

    eng = build_tensorrt_engine(exported_onnx(), tmp_path / "gen.engine", 1, 4, 8)
    images, labels, _ = utk_batch(utkface_root, 6)
    d_trt = TensorRTBackend(eng).run(images, labels)
    d_ort = OnnxRuntimeBackend(exported_onnx()).run(images, labels)
    assert np.abs(d_trt - d_ort).max() <= 1e-3
