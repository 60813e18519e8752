"""``--executor local``: decode, inference and encode overlapped with threads in this process.

Decode runs in ``workers`` threads, ``window`` images ahead; decoded images are batched at the
generator's resolution and run through the backend in the driver thread (onnxruntime / torch release
the GIL); each batch is split into encode jobs of a few images (``workers`` threads) whose same-size
images get their deltas in one vectorized step.  A :class:`~mtlguard.engine.work.PixelBudget` bounds the
decoded pixels held at once (``pixel_budget``): decode jobs wait, in order, until their image fits, and a
batch is flushed early when the next image is waiting or the batch holds half the budget, so phone-size
photos keep the memory bounded whatever their count.  onnxruntime, torch, simplejpeg, numpy and Pillow's
resize release the GIL in their heavy parts; Pillow's in-memory PNG encoder does not, so the encode
threads take turns on the GIL while still overlapping decode and inference.
"""
from __future__ import annotations

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures

from .executor import Executor, Sink, StageTimes

from .work import Item, PixelBudget, WorkSpec, decode_job, decode_job_budgeted, infer_deltas, process_chunk


def chunks(n: int, workers: int) -> list[slice]:
    """Split a batch of ``n`` into encode jobs: about two per worker (load balance), >= 1 image each."""
    size = max(1, -(-n // (2 * workers)))
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class LocalExecutor(Executor):
    """Threads in this process; ``backend`` None = passthrough (decode + encode only)."""

    name = "local"

    def __init__(self, spec: WorkSpec, backend, batch_size: int, workers: int, progress: bool = True,
                 device: str = "cpu", pixel_budget: int | None = None):
        self.spec, self.backend = spec, backend
        self.batch_size, self.workers, self.progress, self.device = batch_size, workers, progress, device
        self.pixel_budget = pixel_budget

    def describe(self) -> dict:
        return self.backend.describe() if self.backend is not None else {"backend": None, "device": self.device}

    def run(self, todo: list[Item], sink: Sink) -> StageTimes:
        return _LocalRun(self, todo, sink).run()


def _timed_chunk(items, decs, deltas, spec, budget=None, pixels=0):
    t, c = time.perf_counter(), time.thread_time()
    try:
        return process_chunk(items, decs, deltas, spec), time.perf_counter() - t, time.thread_time() - c
    finally:
        if budget is not None:
            budget.release(pixels)


class _LocalRun:
    """One run of :class:`LocalExecutor`: bounded decode-ahead window -> batches -> encode jobs."""

    def __init__(self, ex: LocalExecutor, todo: list[Item], sink: Sink):
        from tqdm.auto import tqdm

        self.ex, self.sink, self.times = ex, sink, StageTimes()
        self.window = max(2 * ex.batch_size, 4 * ex.workers)
        self.todo, self.exhausted = iter(todo), False
        self.pending: deque = deque()  # decode futures
        self.encoding: deque = deque()  # (future, items)
        self.in_encode = 0
        self.bar = tqdm(total=len(todo), desc="protect" if ex.backend is not None else "passthrough", unit="img",
                        disable=not ex.progress, dynamic_ncols=True)
        self.budget = PixelBudget(ex.pixel_budget) if ex.pixel_budget else None
        self.dpool = ThreadPoolExecutor(ex.workers, thread_name_prefix="mtlg-decode")
        self.epool = ThreadPoolExecutor(ex.workers, thread_name_prefix="mtlg-encode")

    def run(self) -> StageTimes:
        try:
            self._fill()
            batch = []
            while self.pending:
                batch = self._await_head(batch)
                (item, dec, x, err, dt, dc), px = self._result(self.pending.popleft())
                self.times.decode_s += dt
                self.times.decode_cpu += dc
                self._fill()
                if err is not None:
                    self._fail(item.rel, err)
                else:
                    batch.append((item, dec, x, px))
                if len(batch) >= self.ex.batch_size or (not self.pending and batch) or self._batch_full(batch):
                    self._flush(batch)
                    batch = []
                self._drain(self.window)
            self._drain(0)
        finally:
            if self.budget is not None:
                self.budget.close()
            self.dpool.shutdown(wait=True, cancel_futures=True)
            self.epool.shutdown(wait=True)
            self.bar.close()
        return self.times

    def _fill(self) -> None:
        while not self.exhausted and len(self.pending) < self.window:
            nxt = next(self.todo, None)
            if nxt is None:
                self.exhausted = True
                return
            if self.budget is None:
                self.pending.append(self.dpool.submit(decode_job, nxt, self.ex.spec))
            else:
                self.pending.append(self.dpool.submit(decode_job_budgeted, nxt, self.ex.spec, self.budget,
                                                      self.budget.ticket()))

    def _result(self, fut):
        """``(decode_job tuple, pixels held)``."""
        return fut.result() if self.budget is not None else (fut.result(), 0)

    def _batch_full(self, batch) -> bool:
        return self.budget is not None and 2 * sum(b[3] for b in batch) >= self.budget.limit

    def _await_head(self, batch):
        """Wait for the next decode; while it waits for pixels held by this partial batch, flush the batch
        (and finish encodes) so they are released.  Returns the (possibly flushed) batch."""
        head = self.pending[0]
        while self.budget is not None and not head.done():
            if self.budget.blocked and batch:
                self._flush(batch)
                batch = []
            self._drain(self.window)
            wait_futures([head], timeout=0.02)
        return batch

    def _fail(self, rel: str, reason: str) -> None:
        self.sink.failed(rel, reason)
        self.bar.update(1)

    def _infer(self, batch):
        """The batch's deltas (None: passthrough); on an inference error every file of the batch fails."""
        be = self.ex.backend
        if be is None:
            return None
        t = time.perf_counter()
        try:
            return infer_deltas(be, [b[0] for b in batch], [b[2] for b in batch])
        except Exception as e:  # noqa: BLE001 - fail this batch's files, keep going
            for item, *_ in batch:
                self._fail(item.rel, f"inference failed: {type(e).__name__}: {e}")
            if self.budget is not None:
                self.budget.release(sum(b[3] for b in batch))
            return False
        finally:
            self.times.infer_s += time.perf_counter() - t

    def _flush(self, batch) -> None:
        deltas = self._infer(batch)
        if deltas is False:
            return
        self.sink.starting([b[0] for b in batch])
        for sl in chunks(len(batch), self.ex.workers):
            items = [b[0] for b in batch[sl]]
            fut = self.epool.submit(_timed_chunk, items, [b[1] for b in batch[sl]],
                                    None if deltas is None else deltas[sl], self.ex.spec, self.budget,
                                    sum(b[3] for b in batch[sl]))
            self.encoding.append((fut, items))
            self.in_encode += len(items)
        self._drain(self.window)

    def _drain(self, block_until: int) -> None:
        while self.encoding and (self.encoding[0][0].done() or self.in_encode > block_until):
            fut, items = self.encoding.popleft()
            self.in_encode -= len(items)
            self._finish(fut, items)

    def _finish(self, fut, items) -> None:
        try:
            out, dt, dc = fut.result()
        except Exception as e:  # noqa: BLE001 - process_chunk catches per file; this is a last resort
            out, dt, dc = [(item, None, f"encode/write failed: {type(e).__name__}: {e}") for item in items], 0.0, 0.0
        self.times.encode_s += dt
        self.times.encode_cpu += dc
        for item, r, err in out:
            if err is not None:
                self.sink.failed(item.rel, err)
            else:
                self.sink.done(r)
        self.bar.update(len(out))
