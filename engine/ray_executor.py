"""``--executor ray``: the same pipeline as a Ray Data job.

``ray.data.from_items(files)`` (read) -> ``map_batches(ProtectWorker, compute=ActorPoolStrategy(size=n))``
where each actor holds ONE inference session (onnxruntime / torch / TensorRT, one GPU each with
``device="cuda"``) and decodes, perturbs, encodes and atomically writes its batch (write) -> per-file
results collected by the driver, which reports them to the pipeline's :class:`~mtlguard.engine.executor.Sink`
(journal + report), as the local executor does.  The workers run the same
:mod:`~mtlguard.engine.work` functions as the local executor.

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

from .executor import Executor, Sink, StageTimes
from .work import Item, WorkSpec, decode_item, failure_reason, infer_deltas, process_chunk

_COLUMNS = ("file", "out", "ok", "reason", "max_abs", "extra", "decode_s", "infer_s", "encode_s")


class ProtectWorker:
    """Ray Data actor: one inference session, protects a batch of files end to end."""

    def __init__(self, spec: WorkSpec, model, backend, device, threads):
        from .backends import load_backend

        self.spec = spec
        self.be = None if spec.size is None else load_backend(model, backend, device, threads)

    def __call__(self, batch: dict) -> dict:
        out = {k: [] for k in _COLUMNS}
        good = self._decode(batch, out)
        deltas, infer_s = None, 0.0
        if good and self.be is not None:
            t = time.perf_counter()
            deltas = infer_deltas(self.be, [g[0] for g in good], [g[2] for g in good])
            infer_s = time.perf_counter() - t
        t = time.perf_counter()
        done = process_chunk([g[0] for g in good], [g[1] for g in good], deltas, self.spec)
        enc_each = (time.perf_counter() - t) / max(1, len(good))
        for (item, _, _, dt), (_, r, err) in zip(good, done):
            if err is None:
                self._emit(out, item, True, "", r["max_abs"], r, dt, infer_s / len(good), enc_each)
            else:
                self._emit(out, item, False, err, 0, {}, dt, 0.0, 0.0)
        return {k: np.asarray(v) for k, v in out.items()}

    def _decode(self, batch: dict, out: dict) -> list:
        good = []
        for i in range(len(batch["rel"])):
            item = Item(Path(str(batch["src"][i])), str(batch["rel"][i]), str(batch["out_rel"][i]),
                        str(batch["fmt"][i]), np.asarray(batch["labels"][i], dtype=np.int64),
                        protect=bool(batch["protect"][i]))
            t = time.perf_counter()
            try:
                dec, x = decode_item(item, self.spec)
                good.append((item, dec, x, time.perf_counter() - t))
            except Exception as e:  # noqa: BLE001 - reported per file
                self._emit(out, item, False, failure_reason(e), 0, {}, time.perf_counter() - t, 0.0, 0.0)
        return good

    @staticmethod
    def _emit(out, item, ok, reason, max_abs, extra, dec_s, inf_s, enc_s):
        for key, value in zip(_COLUMNS, (item.rel, item.out_rel, ok, reason, int(max_abs), json.dumps(extra),
                                         dec_s, inf_s, enc_s)):
            out[key].append(value)


def _init_ray(address, workers: int):
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
    ray.data.DataContext.get_current().enable_progress_bars = False
    return ray


class RayExecutor(Executor):
    """A Ray Data job (see the module docstring); ``model`` None = passthrough."""

    name = "ray"

    def __init__(self, spec: WorkSpec, model, backend: str | None, device: str, threads: int | None,
                 batch_size: int, workers: int, address: str | None = None):
        self.spec, self.model, self.backend, self.device, self.threads = spec, model, backend, device, threads
        self.batch_size, self.workers, self.address = batch_size, workers, address

    def describe(self) -> dict:
        return {"backend": self.backend, "device": self.device}

    def _dataset(self, ray, todo: list[Item]):
        rows = [{"src": str(i.src), "rel": i.rel, "out_rel": i.out_rel, "fmt": i.fmt,
                 "labels": (i.labels if i.labels is not None else np.zeros(0, np.int64)).tolist(),
                 "protect": bool(i.protect)} for i in todo]
        return ray.data.from_items(rows).map_batches(
            ProtectWorker,
            fn_constructor_kwargs=dict(spec=self.spec, model=str(self.model) if self.model else None,
                                       backend=self.backend, device=self.device, threads=self.threads or 1),
            batch_size=self.batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=max(1, self.workers)),
            num_cpus=1, num_gpus=1 if self.device == "cuda" else 0,
        )

    def run(self, todo: list[Item], sink: Sink) -> StageTimes:
        """Run ``todo`` on Ray; every output is journaled as started first (the actors write them)."""
        times = StageTimes()
        if not todo:
            return times
        ray = _init_ray(self.address, self.workers)
        sink.starting(todo)
        results = []
        for row in self._dataset(ray, todo).iter_rows():
            times.decode_s += float(row["decode_s"])
            times.infer_s += float(row["infer_s"])
            times.encode_s += float(row["encode_s"])
            if bool(row["ok"]):
                results.append(json.loads(str(row["extra"])))
            else:
                sink.failed(str(row["file"]), str(row["reason"]))
        for r in sorted(results, key=lambda r: r["file"]):
            sink.done(r)
        return times
