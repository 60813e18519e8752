"""``mtlguard inspect`` on every generator format: checkpoint (.safetensors + .json, its run folder, the
.json), ONNX (float32 and any-size), TorchScript and .pt2 (sidecar JSON and the package's own metadata)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from test_engine_standin import make_generator

from mtlguard.cli.main import main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run = tmp_path_factory.mktemp("inspect") / "run"
    gen = make_generator((28, 24), seed=2)
    gen.save(run / "generator.safetensors", extra={"command": "mtlguard fit --epochs 3", "fit": {"base": "tap"}})
    return run, gen


def _inspect(capsys, *argv) -> str:
    assert main(["inspect", *map(str, argv)]) == 0
    return capsys.readouterr().out


def _check_text(text: str, size="[28, 24]") -> None:
    assert "eps:          0.0313725 (= 8/255; pixels move at most 8 uint8 steps)" in text
    assert f"input size:   {size} (H, W)" in text and "channels:     3" in text
    assert "[0] age (multiclass, 9 classes): 0=0-2, 1=3-9" in text
    assert "[1] gender (multiclass, 2 classes): 0=male, 1=female" in text
    assert "[2] race (multiclass, 5 classes): 0=White" in text
    assert "version:      mtlguard " in text


def test_checkpoint_file_folder_and_json(checkpoint, capsys):
    run, gen = checkpoint
    for target in (run / "generator.safetensors", run, run / "generator.json"):
        text = _inspect(capsys, target)
        _check_text(text)
        assert "format:       checkpoint (safetensors + json)" in text
        assert f"delta:        delta_units={gen.delta_units}, delta_channels=all" in text
        assert '"command": "mtlguard fit --epochs 3"' in text and '"base": "tap"' in text
    info = json.loads(_inspect(capsys, run, "--json"))
    assert info["image_size"] == [28, 24] and info["in_channels"] == 3
    assert [t["name"] for t in info["tasks"]] == ["age", "gender", "race"]
    assert info["delta"]["delta_units"] == gen.delta_units and info["fit"]["fit"] == {"base": "tap"}


def test_onnx_float_and_any_size(checkpoint, tmp_path, capsys):
    run, _ = checkpoint
    assert main(["export", "--model", str(run), "--out", str(tmp_path / "g.onnx")]) == 0
    assert main(["export", "--onnx", str(tmp_path / "g.onnx"), "--out", str(tmp_path / "g_any.onnx"), "--any-size"]) == 0
    capsys.readouterr()
    text = _inspect(capsys, tmp_path / "g.onnx")
    _check_text(text)
    assert "io:           float32_nchw" in text and "graph:        image float ['batch', 3, 28, 24]" in text
    assert "delta:        delta_units=raw" in text and '"base": "tap"' in text  # the fit config travels along
    text = _inspect(capsys, tmp_path / "g_any.onnx")
    _check_text(text)
    assert "any size" in text and "image uint8 ['H', 'W', 3]; labels int64 [3]; protected uint8" in text


def test_torchscript_in_file_metadata(checkpoint, tmp_path, capsys):
    from mtlguard.export import export_torchscript

    _, gen = checkpoint
    export_torchscript(gen, tmp_path / "g.ts")
    text = _inspect(capsys, tmp_path / "g.ts")
    _check_text(text)
    assert "format:       torchscript" in text


@pytest.mark.slow
def test_pt2_sidecar_and_package_metadata(tmp_path, capsys):
    """One small AOTInductor compile (-O0 wrapper, the stand-in generator)."""
    from mtlguard.export import export_pt2

    path = export_pt2(make_generator((32, 32), stand_in=True), tmp_path / "g.pt2",
                      inductor_configs={"aot_inductor.compile_wrapper_opt_level": "O0"})
    _check_text(_inspect(capsys, path), size="[32, 32]")
    (tmp_path / "g.pt2.json").unlink()  # without the sidecar: the facts stored inside the package
    text = _inspect(capsys, path)
    _check_text(text, size="[32, 32]")
    assert "format:       pt2 (AOTInductor)" in text


def test_inspect_command_is_fast_and_imports_no_torch(checkpoint):
    run, _ = checkpoint
    code = ("import sys; from mtlguard.cli.main import main; rc = main(['inspect', sys.argv[1]]); "
            "assert 'torch' not in sys.modules, 'inspect imported torch'; sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "tasks:        3" in r.stdout


@pytest.mark.parametrize("content,match", [
    (b"", "not a readable ONNX model"), (b"\x08\x07garbage" * 50, "not a readable ONNX model")])
def test_bad_onnx_is_one_line(tmp_path, content, match):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    r = subprocess.run(["mtlguard", "inspect", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.startswith(f"mtlguard inspect: error: {bad}: {match}") and r.stderr.count("\n") == 1
    assert bad.read_bytes() == content
