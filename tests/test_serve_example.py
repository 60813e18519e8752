"""examples/serve_onnx.py as a real HTTP service: started on a free localhost port in a process where
mtlguard cannot be imported, real requests with real UTKFace images (the answer equals the engine's
recipe bit for bit), and bad requests answered with 400 and a one-line reason."""
from __future__ import annotations

import io
import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from isolated_python import isolated_command
from test_engine_standin import utk_names

from mtlguard.engine.perturb import apply_delta_batch, model_input
from mtlguard.export import read_onnx_facts

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "python" / "mtlguard" / "assets" / "default_generator.onnx"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from mtlguard.export import onnx_variant

    tmp = tmp_path_factory.mktemp("serve")
    model = onnx_variant(BUNDLED, tmp / "gen_any.onnx", any_size=True)
    proc = subprocess.Popen(isolated_command(REPO / "examples" / "serve_onnx.py", "--model", model, "--port", "0"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp)
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), (line, proc.stderr.read() if proc.poll() else "")
        yield line.split()[-1]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def request(url: str, body: bytes | None = None) -> tuple[int, str, bytes]:
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def _engine(rgb: np.ndarray, labels) -> np.ndarray:
    import onnxruntime as ort

    facts = read_onnx_facts(BUNDLED)
    sess = ort.InferenceSession(str(BUNDLED), providers=["CPUExecutionProvider"])
    _, delta = sess.run(None, {"image": model_input(rgb, facts.image_size)[None],
                               "labels": np.asarray([labels], np.int64)})
    return apply_delta_batch(rgb[None], delta, facts.eps)[0][0]


def test_info(server):
    status, ctype, body = request(server + "/info")
    info = json.loads(body)
    assert status == 200 and ctype == "application/json"
    assert [t["name"] for t in info["tasks"]] == ["age", "gender", "race"]
    assert info["tasks"][1]["classes"] == ["male", "female"] and info["input_size"] == [32, 32]


@pytest.mark.parametrize("query,labels", [("age=20-29&gender=female&race=Asian", [3, 1, 2]),
                                          ("labels=8,0,-1", [8, 0, -1]), ("race=4&age=0&gender=-1", [0, -1, 4])])
def test_protect_real_images(server, utkface_root, query, labels):
    name = utk_names(utkface_root, 3)[labels[0] % 3]
    jpeg = (utkface_root / "images" / name).read_bytes()
    status, ctype, body = request(f"{server}/protect?{query}", jpeg)
    assert status == 200 and ctype == "image/png", body[:200]
    out = np.asarray(Image.open(io.BytesIO(body)))
    with Image.open(io.BytesIO(jpeg)) as im:
        rgb = np.asarray(im.convert("RGB"))
    assert out.shape == rgb.shape
    assert np.array_equal(out, _engine(rgb, labels))  # the engine's recipe, bit for bit


def test_odd_size_png_with_alpha(server, utkface_root):
    with Image.open(utkface_root / "images" / utk_names(utkface_root, 1)[0]) as im:
        rgba = im.convert("RGB").crop((3, 9, 154, 106)).convert("RGBA")
    alpha = np.linspace(0, 255, rgba.size[0] * rgba.size[1]).astype(np.uint8).reshape(rgba.size[1], rgba.size[0])
    rgba.putalpha(Image.fromarray(alpha))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    status, _, body = request(f"{server}/protect?age=1&gender=1&race=1", buf.getvalue())
    assert status == 200
    out = Image.open(io.BytesIO(body))
    assert out.mode == "RGBA" and out.size == (151, 97)
    assert np.array_equal(np.asarray(out.getchannel("A")), alpha)
    rgb = np.asarray(rgba.convert("RGB"))
    assert np.array_equal(np.asarray(out.convert("RGB")), _engine(rgb, [1, 1, 1]))


@pytest.mark.parametrize("path,body,message", [
    ("/protect?age=robot&gender=male&race=0", "jpeg", "task 'age': invalid label 'robot'; expected a class name of"),
    ("/protect?age=9&gender=male&race=0", "jpeg", "task 'age': invalid label '9'"),
    ("/protect?age=1&gender=male&race=-5", "jpeg", "task 'race': invalid label '-5'"),
    ("/protect?age=1&gender=male", "jpeg", "missing labels for task(s) ['race']"),
    ("/protect", "jpeg", "missing labels for task(s) ['age', 'gender', 'race']"),
    ("/protect?age=1&gender=male&race=0&mood=happy", "jpeg", "unknown task(s) ['mood']"),
    ("/protect?labels=1,2", "jpeg", "labels= needs 3 comma-separated values"),
    ("/protect?age=1&gender=male&race=0", b"this is not an image", "cannot decode the image"),
    ("/protect?age=1&gender=male&race=0", "truncated", "cannot decode the image"),
    ("/protect?age=1&gender=male&race=0", b"", "empty request body"),
    ("/nowhere", b"x", "no such endpoint '/nowhere'"),
])
def test_bad_requests_get_one_line_reasons(server, utkface_root, path, body, message):
    jpeg = (utkface_root / "images" / utk_names(utkface_root, 1)[0]).read_bytes()
    body = {"jpeg": jpeg, "truncated": jpeg[: len(jpeg) // 2]}.get(body, body)
    status, ctype, text = request(server + path, body)
    assert status == (404 if path == "/nowhere" else 400)
    assert ctype.startswith("text/plain")
    line = text.decode()
    assert line.startswith("error: ") and line.endswith("\n") and line.count("\n") == 1, line
    assert message in line, line
