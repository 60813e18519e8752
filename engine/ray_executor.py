"""``--executor ray``: the same pipeline as a Ray Data job.

``ray.data.from_items(files)`` (read) -> ``map_batches(ProtectWorker, compute=ActorPoolStrategy(size=n))``
where each actor holds ONE inference session (onnxruntime / torch / TensorRT, one GPU each with
``device="cuda"``) and decodes, perturbs, encodes and atomically writes its batch (write) -> per-file
results collected by the driver, which appends the journal and builds the same report as the local
executor.

Running on a cluster
--------------------
1. Install mtlguard (same version) on every node, and put the input and output directories on a
   filesystem every node mounts at the same path (NFS, Lustre, a FUSE-mounted bucket).
2. Start Ray: ``ray start --head`` on one node, ``ray start --address=<head>:6379`` on the others
   (or use KubeRay / the Ray cluster launcher).
3. From any node::

       mtlguard-engine protect --executor ray --ray-address auto --workers 16 --device cuda \\
           --model gen.onnx --input /mnt/photos --output /mnt/protected --labels labels.csv

   ``--workers`` is the number of inference actors (each reserves 1 GPU with ``--device cuda``,
   1 CPU otherwise).  A killed job is resumed by rerunning the same command.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


class ProtectWorker:
    """Ray Data actor: one inference session, protects a batch of files end to end."""

    def __init__(self, in_root, out_root, model, backend, device, quality, png, max_pixels, decoder,
                 passthrough, threads):
        from .backends import load_backend

        self.in_root, self.out_root = Path(in_root), Path(out_root)
        self.be = None if passthrough else load_backend(model, backend, device, threads)
        self.quality, self.png, self.max_pixels, self.decoder = quality, tuple(png), max_pixels, decoder

    def __call__(self, batch: dict) -> dict:
        from .imageio import DecodeError, decode_file
        from .perturb import model_input
        from .pipeline import Item, process_chunk

        facts = self.be.facts if self.be is not None else None
        size = tuple(facts.image_size) if facts else None
        channels = facts.in_channels if facts else 3
        n = len(batch["rel"])
        out = {k: [] for k in ("file", "out", "ok", "reason", "max_abs", "extra", "decode_s", "infer_s", "encode_s")}
        good = []
        for i in range(n):
            item = Item(Path(str(batch["src"][i])), str(batch["rel"][i]), str(batch["out_rel"][i]), str(batch["fmt"][i]),
                        np.asarray(batch["labels"][i], dtype=np.int64))
            t = time.perf_counter()
            try:
                dec = decode_file(item.src, channels, self.max_pixels, self.decoder)
                x = model_input(dec.rgb, size) if size else None
                good.append((item, dec, x, time.perf_counter() - t))
            except Exception as e:  # noqa: BLE001 - reported per file
                reason = str(e) if isinstance(e, DecodeError) else f"{type(e).__name__}: {e}"
                self._emit(out, item, False, reason, 0, {}, time.perf_counter() - t, 0.0, 0.0)
        deltas, infer_s = [None] * len(good), 0.0
        if good and self.be is not None:
            t = time.perf_counter()
            deltas = self.be.run(np.stack([g[2] for g in good]), np.stack([g[0].labels for g in good]))
            infer_s = time.perf_counter() - t
        eps = facts.eps if facts else 0.0
        t = time.perf_counter()
        done = process_chunk([g[0] for g in good], [g[1] for g in good], None if self.be is None else deltas, eps,
                             self.out_root, self.in_root, self.quality, *self.png)
        enc_each = (time.perf_counter() - t) / max(1, len(good))
        for (item, _, _, dt), (_, r, err) in zip(good, done):
            if err is None:
                self._emit(out, item, True, "", r["max_abs"], r, dt, infer_s / len(good), enc_each)
            else:
                self._emit(out, item, False, err, 0, {}, dt, 0.0, 0.0)
        return {k: np.asarray(v) for k, v in out.items()}

    @staticmethod
    def _emit(out, item, ok, reason, max_abs, extra, dec_s, inf_s, enc_s):
        out["file"].append(item.rel)
        out["out"].append(item.out_rel)
        out["ok"].append(ok)
        out["reason"].append(reason)
        out["max_abs"].append(int(max_abs))
        out["extra"].append(json.dumps(extra))
        out["decode_s"].append(dec_s)
        out["infer_s"].append(inf_s)
        out["encode_s"].append(enc_s)


def run_ray(todo, in_root, out_root, model_path, backend, device, batch_size, workers, quality, png,
            max_pixels, decoder, passthrough, address=None, threads=None):
    """Run ``todo`` (pipeline Items) on Ray; returns ``(results, failures, (decode_s, infer_s, encode_s))``."""
    try:
        import ray
        import ray.data
    except ImportError as e:  # pragma: no cover
        raise RuntimeError("--executor ray needs Ray Data: pip install \"mtlguard[ray]\"") from e
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=max(workers, 1), include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    rows = [{"src": str(i.src), "rel": i.rel, "out_rel": i.out_rel, "fmt": i.fmt,
             "labels": (i.labels if i.labels is not None else np.zeros(0, np.int64)).tolist()} for i in todo]
    ds = ray.data.from_items(rows)
    ds = ds.map_batches(
        ProtectWorker,
        fn_constructor_kwargs=dict(in_root=str(in_root), out_root=str(out_root),
                                   model=str(model_path) if model_path else None, backend=backend, device=device,
                                   quality=quality, png=tuple(png), max_pixels=max_pixels, decoder=decoder,
                                   passthrough=passthrough, threads=threads or 1),
        batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=max(1, workers)),
        num_cpus=1, num_gpus=1 if device == "cuda" else 0,
    )
    results, failures = [], []
    dec = inf = enc = 0.0
    for row in ds.iter_rows():
        dec += float(row["decode_s"])
        inf += float(row["infer_s"])
        enc += float(row["encode_s"])
        if bool(row["ok"]):
            r = json.loads(str(row["extra"]))
            results.append(r)
        else:
            failures.append({"file": str(row["file"]), "reason": str(row["reason"])})
    results.sort(key=lambda r: r["file"])
    return results, failures, (dec, inf, enc)
