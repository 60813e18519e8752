"""The per-file work every executor runs: decode one file, then apply the delta to a chunk of decoded
images, encode them and write each one atomically.

Executors (:mod:`mtlguard.engine.local_executor`, :mod:`mtlguard.engine.ray_executor`) call
:func:`decode_job` and :func:`process_chunk` with a :class:`WorkSpec` (picklable: it travels to Ray
actors); they never import :mod:`mtlguard.engine.pipeline`.
"""
from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .imageio import (DEFAULT_MAX_PIXELS, DEFAULT_PNG_COMPRESSION, DEFAULT_PNG_STRATEGY, DecodeError, atomic_write,
                      decode_bytes, decode_file, encode, psnr)
from .perturb import apply_delta_batch, model_input
from .quality import measure


@dataclass
class Item:
    """One input file: ``src`` path, ``rel`` path under the input root, ``out_rel`` under the output root,
    output ``fmt``, the generator ``labels`` int64 [K], the labels.csv ``split`` value and ``protect``
    (False: left clean by partial data protection -- written through the same path with a zero delta)."""

    src: Path
    rel: str
    out_rel: str
    fmt: str
    labels: np.ndarray | None = None
    split: str | None = None
    protect: bool = True


@dataclass(frozen=True)
class WorkSpec:
    """What a worker needs to protect files: roots, the generator's ``eps`` / input ``size`` (None:
    passthrough) / ``channels``, the encoder settings, decode limits and whether to measure PSNR/SSIM."""

    in_root: Path
    out_root: Path
    eps: float = 0.0
    size: tuple[int, int] | None = None
    channels: int = 3
    quality: int = 95
    png_compression: int = DEFAULT_PNG_COMPRESSION
    png_strategy: str = DEFAULT_PNG_STRATEGY
    keep_metadata: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    decoder: str = "auto"
    metrics: bool = True
    apply_device: str = "cpu"  # where the fused apply_delta_u8 runs (cuda: the torch backend on a GPU)


#: Default pixel budget (``EngineOptions.pixel_budget``): decoded megapixels held at once (decode-ahead, batch,
#: encode).  Measured (bench/engine.py --photos, 2 cores, PNG): peak RSS <= 1.5 GB with 12 MP and 50 MP photos.
DEFAULT_PIXEL_BUDGET_MP = 48.0


class PixelBudget:
    """Bounds the pixels of the decoded images a run holds at once.

    Decode jobs take a ticket in submission order (:meth:`ticket`, driver thread) and, once they know their
    image's size from its header, :meth:`acquire` it IN TICKET ORDER: a job waits until every earlier ticket has
    acquired and the pixels fit (an image larger than the whole budget is admitted alone).  In-order admission
    means every holder is either consumed by the driver before the waiting job's result or already being
    encoded, so the run cannot deadlock as long as the driver flushes its partial batch when :attr:`blocked`
    (the next job in order is waiting for pixels).  :meth:`release` returns pixels (an image's encode finished
    or failed)."""

    def __init__(self, limit_pixels: int):
        self.limit = max(1, int(limit_pixels))
        self.used = 0
        self.peak = 0
        self._next = 0
        self._serving = 0
        self._closed = False
        self.blocked = False
        self._cond = threading.Condition()

    def ticket(self) -> int:
        t = self._next
        self._next += 1
        return t

    def acquire(self, ticket: int, pixels: int) -> None:
        with self._cond:
            while not self._closed:
                if self._serving == ticket:
                    if self.used == 0 or self.used + pixels <= self.limit:
                        break
                    self.blocked = True
                self._cond.wait(0.5)
            self.blocked = False
            self.used += pixels
            self.peak = max(self.peak, self.used)
            self._serving = max(self._serving, ticket + 1)
            self._cond.notify_all()

    def release(self, pixels: int) -> None:
        if pixels:
            with self._cond:
                self.used -= pixels
                self._cond.notify_all()

    def close(self) -> None:
        """Wake every waiting job (shutdown: cancelled tickets never acquire)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def header_pixels(data: bytes) -> int:
    """``width * height`` from an encoded image's header (0 when unreadable: the decode reports why)."""
    try:
        if data[:2] == b"\xff\xd8":
            from .imageio import simplejpeg

            if simplejpeg is not None:
                h, w, _, _ = simplejpeg.decode_jpeg_header(data)
                return int(h) * int(w)
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            return int(img.width) * int(img.height)
    except Exception:  # noqa: BLE001 - corrupt / unknown: decode_item raises the reported error
        return 0


def decode_item(item: Item, spec: WorkSpec, data: bytes | None = None):
    """``(decoded, model input float32 [C, h, w] or None)``; raises on a bad file.  ``data``: the file's bytes
    when already read."""
    if data is None:
        dec = decode_file(item.src, spec.channels, spec.max_pixels, spec.decoder, keep_color=spec.channels == 1,
                          metadata=spec.keep_metadata)
    else:
        dec = decode_bytes(data, spec.channels, spec.max_pixels, spec.decoder, keep_color=spec.channels == 1,
                           metadata=spec.keep_metadata)
    x = model_input(dec.rgb, spec.size, spec.channels) if spec.size is not None else None
    return dec, x


def infer_deltas(backend, items: list[Item], xs: list[np.ndarray]) -> np.ndarray:
    """The batch's deltas, float32 [n, C, h, w]: ``backend`` runs on the items to protect only; items left
    clean (``Item.protect`` False, partial data protection) get an exact zero delta, so they are written
    unchanged through the same apply / encode path.  Raises what the backend raises."""
    keep = [i for i, it in enumerate(items) if it.protect]
    if len(keep) == len(items):
        return backend.run(np.stack(xs), np.stack([it.labels for it in items]).astype(np.int64))
    deltas = np.zeros((len(items), *xs[0].shape), dtype=np.float32)
    if keep:
        deltas[keep] = backend.run(np.stack([xs[i] for i in keep]),
                                   np.stack([items[i].labels for i in keep]).astype(np.int64))
    return deltas


def failure_reason(e: Exception) -> str:
    """The reported reason of a file's failure."""
    return str(e) if isinstance(e, DecodeError) else f"{type(e).__name__}: {e}"


def decode_job(item: Item, spec: WorkSpec):
    """``(item, decoded, model input, error, wall s, thread CPU s)`` for one file (never raises)."""
    t, c = time.perf_counter(), time.thread_time()
    try:
        dec, x = decode_item(item, spec)
        return item, dec, x, None, time.perf_counter() - t, time.thread_time() - c
    except Exception as e:  # noqa: BLE001 - one bad file must not stop the run
        return item, None, None, failure_reason(e), time.perf_counter() - t, time.thread_time() - c


def decode_job_budgeted(item: Item, spec: WorkSpec, budget: PixelBudget, ticket: int):
    """:func:`decode_job` under a :class:`PixelBudget`: read the file, acquire its header's pixel count (in
    ticket order), decode.  Returns ``(decode_job's tuple, pixels held)``; a failed decode holds none."""
    t, c = time.perf_counter(), time.thread_time()
    px = 0
    try:
        with open(item.src, "rb") as f:
            data = f.read()
        px = header_pixels(data)
    except OSError:
        data = None
    budget.acquire(ticket, px)
    try:
        dec, x = decode_item(item, spec, data)
        return (item, dec, x, None, time.perf_counter() - t, time.thread_time() - c), px
    except Exception as e:  # noqa: BLE001 - one bad file must not stop the run
        budget.release(px)
        return (item, None, None, failure_reason(e), time.perf_counter() - t, time.thread_time() - c), 0


def _notes(item: Item, dec, out: np.ndarray) -> list[str]:
    notes = list(dec.notes)
    if dec.alpha is not None and item.fmt == "jpeg":
        notes.append("alpha channel dropped (JPEG output)")
    if item.fmt == "webp" and out.shape[2] == 1:
        notes.append("grayscale image written as RGB (WebP has no gray mode)")
    return notes


def _jpeg_check(data: bytes, out: np.ndarray, dec, res: dict) -> np.ndarray:
    """Decode a written JPEG back: its error versus the intended pixels goes into ``res``; returns it."""
    back = decode_bytes(data, out.shape[2]).rgb
    res["jpeg_linf"] = int(np.abs(back.astype(np.int16) - out.astype(np.int16)).max())
    res["jpeg_psnr"] = psnr(back, out)
    res["max_abs_written"] = int(np.abs(back.astype(np.int16) - dec.rgb.astype(np.int16)).max())
    return back


def _finish_one(item: Item, dec, out: np.ndarray, max_abs: int, spec: WorkSpec) -> dict:
    """Encode ``out`` (the protected pixels of ``item``), write it atomically; returns its result record."""
    alpha = dec.alpha if item.fmt != "jpeg" else None
    meta = {"exif": dec.exif, "icc": dec.icc} if spec.keep_metadata else {}
    data = encode(out, item.fmt, alpha, quality=spec.quality, png_compression=spec.png_compression,
                  png_strategy=spec.png_strategy, **meta)
    res = {"file": item.rel, "out": item.out_rel, "max_abs": int(max_abs), "notes": _notes(item, dec, out)}
    written = _jpeg_check(data, out, dec, res) if item.fmt == "jpeg" else out
    if spec.size is not None and spec.channels == 1 and out.shape[2] == 3:
        res["luma_delta"] = True
    if spec.metrics and spec.size is not None:
        res.update(measure(dec.rgb, written))
    target = spec.out_root / item.out_rel
    if spec.in_root == target.resolve() or spec.in_root in target.resolve().parents:  # defence in depth
        raise RuntimeError(f"refusing to write {target} inside the input tree")
    atomic_write(target, data)
    return res


#: Same-size images up to this many pixels are stacked and protected in one call; larger ones one by one.
_STACK_MAX_PIXELS = 1 << 20


def _apply(decs: list, deltas, eps: float, device: str = "cpu") -> tuple[list, list[int], list[str | None]]:
    """Protected pixels, max |delta| and error per image; same-size images in one vectorized step."""
    n = len(decs)
    if deltas is None:
        return [d.rgb for d in decs], [0] * n, [None] * n
    outs: list = [None] * n
    max_abs, errors = [0] * n, [None] * n
    groups: dict[tuple, list[int]] = {}
    for i, d in enumerate(decs):
        groups.setdefault(d.rgb.shape, []).append(i)
    for shape, idx in groups.items():
        # photo-size images one at a time: stacking them would copy every image once more
        runs = [idx] if shape[0] * shape[1] <= _STACK_MAX_PIXELS else [[i] for i in idx]
        for run in runs:
            try:
                rgb = decs[run[0]].rgb[None] if len(run) == 1 else np.stack([decs[i].rgb for i in run])
                prot, mx = apply_delta_batch(rgb, np.asarray(deltas)[run], eps, device)
                for j, i in enumerate(run):
                    outs[i], max_abs[i] = prot[j], int(mx[j])
            except Exception as e:  # noqa: BLE001 - fail these files, keep going
                for i in run:
                    errors[i] = f"applying the perturbation failed: {type(e).__name__}: {e}"
    return outs, max_abs, errors


def process_chunk(items: list[Item], decs: list, deltas, spec: WorkSpec) -> list[tuple[Item, dict | None, str | None]]:
    """Apply (or pass through), encode and atomically write a chunk of images.

    Images of the same native size get their deltas applied in one vectorized
    :func:`~mtlguard.engine.perturb.apply_delta_batch`; each image is then encoded and written on its own.
    ``deltas``: float32 [n, C, h, w] (or None: passthrough).  Returns ``(item, result, None)`` or
    ``(item, None, reason)`` per image, in order; one image's failure never fails the others."""
    outs, max_abs, errors = _apply(decs, deltas, spec.eps, spec.apply_device)
    results = []
    for i, item in enumerate(items):
        if errors[i] is not None:
            results.append((item, None, errors[i]))
            continue
        try:
            results.append((item, _finish_one(item, decs[i], outs[i], max_abs[i], spec), None))
        except Exception as e:  # noqa: BLE001
            results.append((item, None, f"encode/write failed: {type(e).__name__}: {e}"))
    return results


def process_one(item: Item, dec, delta, spec: WorkSpec) -> dict:
    """Apply (or pass through), encode and atomically write one image; returns its result dict
    (raises on failure).  :func:`process_chunk` for one image."""
    t = time.perf_counter()
    [(_, res, err)] = process_chunk([item], [dec], None if delta is None else np.asarray(delta)[None], spec)
    if err is not None:
        raise RuntimeError(err)
    res["encode_s"] = time.perf_counter() - t
    return res
