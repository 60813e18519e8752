"""The engine's structure (issue 13): one options object, validated once and recorded in the report;
executors behind one interface with imports flowing one way (pipeline -> executors -> work); small
functions; the ``protect_directory`` front door keeps its old keyword arguments; one CLI vocabulary
(``--data`` / ``--out`` aliases) with every default shown in ``--help``."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from test_engine_standin import copy_utk, exported_onnx, tree_digest

from mtlguard.engine import EngineOptions, protect_directory
from mtlguard.engine.cli import build_parser
from mtlguard.engine.cli import main as engine_main

ENGINE = Path(__file__).resolve().parents[1] / "engine"
OLD_KEYWORDS = ("model", "labels", "dataset", "no_labels", "backend", "device", "batch_size", "workers", "format",
                "quality", "png_compression", "png_strategy", "executor", "passthrough", "max_pixels", "threads",
                "decoder", "progress", "ray_address")


def _engine_imports(path: Path) -> set[str]:
    """Engine modules ``path`` imports (relative imports anywhere in the file, functions included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                out.add(node.module.split(".")[0])
            elif node.level == 1:
                out.update(a.name for a in node.names)
            elif (node.module or "").startswith("mtlguard.engine."):
                out.add(node.module.split(".")[2])
    return out


def test_imports_flow_one_way():
    graph = {p.stem: _engine_imports(p) for p in ENGINE.glob("*.py")}
    for mod in ("executor", "local_executor", "ray_executor", "work"):
        assert "pipeline" not in graph[mod] and "cli" not in graph[mod], (mod, graph[mod])
    assert {"local_executor", "ray_executor", "executor"} <= graph["pipeline"]
    # no cycles at all among the engine's modules (the package __init__ re-exports, it is nobody's dependency)
    state: dict[str, int] = {}

    def visit(m, stack):
        if state.get(m) == 1:
            raise AssertionError(f"import cycle: {' -> '.join(stack + [m])}")
        if state.get(m) == 2 or m not in graph:
            return
        state[m] = 1
        for d in sorted(graph[m] - {"__init__"}):
            visit(d, stack + [m])
        state[m] = 2

    for m in sorted(graph):
        visit(m, [])


def test_functions_are_small():
    for path in ENGINE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                params = len(node.args.args) + len(node.args.kwonlyargs)
                assert lines <= 45 and params <= 10, (path.name, node.name, lines, params)


def test_every_old_keyword_is_an_option_and_unknown_ones_are_refused(tmp_path):
    assert set(OLD_KEYWORDS) <= set(EngineOptions.names())
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['formt'\]"):
        protect_directory(tmp_path, tmp_path / "o", formt="png")


@pytest.mark.parametrize("bad,match", [
    (dict(format="gif"), "format must be one of"), (dict(batch_size=0), "batch_size must be >= 1"),
    (dict(workers=0), "workers must be >= 1"), (dict(quality=0), "quality must be an integer JPEG quality 1-100"),
    (dict(device="tpu"), "device must be one of"), (dict(include=[""]), "include must be non-empty strings"),
    (dict(no_labels=True, dataset="utkface"), "--no-labels excludes"), (dict(backend="tvm"), "backend must be one of"),
])
def test_bad_options_are_refused_before_anything_is_written(utkface_root, tmp_path, bad, match):
    src = tmp_path / "in"
    copy_utk(utkface_root, src, 1)
    with pytest.raises(ValueError, match=match):
        protect_directory(src, tmp_path / "out", model=exported_onnx(), progress=False, **bad)
    assert not (tmp_path / "out").exists()


def test_options_object_is_validated_once_and_recorded(utkface_root, tmp_path):
    src = tmp_path / "in"
    copy_utk(utkface_root, src, 2)
    opts = EngineOptions(dataset="utkface", batch_size=3, include=("*.jpg",), progress=False)
    rep = protect_directory(src, tmp_path / "out", model=exported_onnx(), options=opts, workers=2)
    want = EngineOptions(model=str(exported_onnx()), dataset="utkface", batch_size=3, include=("*.jpg",),
                         progress=False, workers=2).validated().to_dict()
    assert rep["options"] == want and rep["done"] == 2
    assert json.loads((tmp_path / "out" / ".mtlguard-engine" / "report.json").read_text())["options"] == want


def test_cli_aliases_data_and_out_give_the_same_outputs(utkface_root, tmp_path, capsys):
    src = tmp_path / "in"
    copy_utk(utkface_root, src, 2)
    common = ["protect", "--model", str(exported_onnx()), "--input", str(src), "--no-progress"]
    assert engine_main(common + ["--dataset", "utkface", "--output", str(tmp_path / "a")]) == 0
    assert engine_main(common + ["--data", "utkface", "--out", str(tmp_path / "b")]) == 0
    capsys.readouterr()
    a = {k: v for k, v in tree_digest(tmp_path / "a").items() if not k.startswith(".mtlguard-engine")}
    b = {k: v for k, v in tree_digest(tmp_path / "b").items() if not k.startswith(".mtlguard-engine")}
    assert a == b and len(a) == 4  # 2 images + labels.csv + tasks.json


@pytest.mark.parametrize("command", ["protect", "passthrough"])
def test_help_shows_a_default_for_every_option(command):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices[command]
    fmt = sub._get_formatter()
    for action in sub._actions:
        if not action.option_strings or action.dest == "help":
            continue
        text = fmt._get_help_string(action) % {"default": action.default}
        assert "(default" in text or action.required, (command, action.option_strings, text)
    assert "--out OUTPUT" in sub.format_help()
