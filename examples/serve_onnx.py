"""A minimal protection service around an any-size mtlguard ONNX generator.

Needs only the Python standard library, numpy, onnxruntime and Pillow (mtlguard itself is not needed):

    mtlguard export --model runs/gen --out gen_any.onnx --any-size      # once, where mtlguard is installed
    python serve_onnx.py --model gen_any.onnx --port 8080

Protocol:

* ``POST /protect?<task>=<label>&...`` with the image file as the request body (any format Pillow reads;
  EXIF orientation is applied) -> ``200``, ``image/png``: the protected image, same size.  A label is a class
  name or index of that task, or ``-1`` to leave the task unprotected; every task must be given (see
  ``GET /info``).  ``?labels=20-29,female,-1`` (all tasks in order) is accepted too.  Alpha is kept as is;
  colour stays colour (a 1-channel generator perturbs the luma, every channel alike).
* ``GET /info`` -> JSON: tasks with their class names, eps, the generator's input size.
* Bad requests get ``400`` (``413`` for a body over ``--max-bytes``) with a one-line ``text/plain`` reason:
  unknown task or class name, index out of range, missing labels, empty / corrupt / unsupported image.

Example: ``curl --data-binary @face.jpg "http://127.0.0.1:8080/protect?age=20-29&gender=female&race=-1" -o out.png``
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps


class BadRequest(Exception):
    """A client error: ``status`` and a one-line message."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class Protector:
    """The ONNX session and the generator's label contract (from the file's metadata)."""

    def __init__(self, path: str):
        self.session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("mtlguard.io") != "uint8_hwc_anysize":
            raise SystemExit(f"{path}: not an any-size export (export it with `mtlguard export --any-size`)")
        self.tasks = json.loads(meta["mtlguard.tasks"])
        self.channels = int(meta["mtlguard.in_channels"])
        self.info = {"tasks": [{"name": t["name"], "classes": t.get("class_names") or list(range(t["num_classes"]))}
                               for t in self.tasks],
                     "eps": float(meta["mtlguard.eps"]), "input_size": json.loads(meta["mtlguard.image_size"])}

    def label(self, task: dict, value: str) -> int:
        names = list(task.get("class_names") or [])
        v = value.strip()
        if v in names:
            return names.index(v)
        try:
            k = int(v)
        except ValueError:
            k = None
        if k is not None and (k == -1 or 0 <= k < task["num_classes"]):
            return k
        shown = f"a class name of {names} or " if names else ""
        raise BadRequest(f"task {task['name']!r}: invalid label {value!r}; expected {shown}"
                         f"an index in [0, {task['num_classes']}) or -1 (unprotected)")

    def labels(self, query: dict[str, list[str]]) -> np.ndarray:
        names = [t["name"] for t in self.tasks]
        if "labels" in query:
            values = query.pop("labels")[-1].split(",")
            if len(values) != len(names):
                raise BadRequest(f"labels= needs {len(names)} comma-separated values ({', '.join(names)}), "
                                 f"got {len(values)}")
            query.update({n: [v] for n, v in zip(names, values)})
        unknown = sorted(set(query) - set(names))
        if unknown:
            raise BadRequest(f"unknown task(s) {unknown}; this generator's tasks are {names}")
        missing = [n for n in names if n not in query]
        if missing:
            raise BadRequest(f"missing labels for task(s) {missing}: pass ?<task>=<class name or index> "
                             "(-1 = unprotected) for every task")
        return np.array([self.label(t, query[t["name"]][-1]) for t in self.tasks], dtype=np.int64)

    def protect(self, body: bytes, labels: np.ndarray) -> bytes:
        if not body:
            raise BadRequest("empty request body: send the image file as the body")
        try:
            with Image.open(io.BytesIO(body)) as im:
                im = ImageOps.exif_transpose(im)
                alpha = im.getchannel("A") if im.mode in ("RGBA", "LA") else None
                gray = im.mode in ("1", "L", "LA", "I", "I;16", "F")  # a 1-channel generator keeps colour images
                pixels = np.asarray(im.convert("L" if gray and self.channels == 1 else "RGB"))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise BadRequest(f"cannot decode the image: {' '.join(str(e).split())}") from None
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]
        (out,) = self.session.run(None, {"image": np.ascontiguousarray(pixels), "labels": labels})
        img = Image.fromarray(out[:, :, 0] if out.shape[2] == 1 else out)
        if alpha is not None:
            img.putalpha(alpha)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()


def make_handler(protector: Protector, max_bytes: int):
    class Handler(BaseHTTPRequestHandler):
        server_version = "mtlguard-serve/1"

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, message: str) -> None:
            self._send(status, f"error: {message}\n".encode(), "text/plain; charset=utf-8")

        def do_GET(self):  # noqa: N802 - http.server's naming
            if urlsplit(self.path).path == "/info":
                self._send(200, json.dumps(protector.info).encode(), "application/json")
            else:
                self._error(404, f"no such endpoint {self.path!r}; use POST /protect or GET /info")

        def do_POST(self):  # noqa: N802
            url = urlsplit(self.path)
            if url.path != "/protect":
                return self._error(404, f"no such endpoint {url.path!r}; use POST /protect or GET /info")
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length > max_bytes:
                    raise BadRequest(f"image of {length} bytes is over the limit of {max_bytes}", 413)
                body = self.rfile.read(length)
                labels = protector.labels(parse_qs(url.query, keep_blank_values=True))
                self._send(200, protector.protect(body, labels), "image/png")
            except BadRequest as e:
                self._error(e.status, str(e))

        def log_message(self, fmt, *args):  # one line per request on stderr
            sys.stderr.write(f"{self.address_string()} {fmt % args}\n")

    return Handler


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Serve an any-size mtlguard ONNX generator over HTTP.")
    p.add_argument("--model", required=True, help="the any-size ONNX file (mtlguard export --any-size)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8080, help="port; 0 = any free port (default: %(default)s)")
    p.add_argument("--max-bytes", type=int, default=32 << 20, help="largest accepted upload (default: %(default)s)")
    args = p.parse_args(argv)
    server = ThreadingHTTPServer((args.host, args.port), make_handler(Protector(args.model), args.max_bytes))
    print(f"listening on http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
