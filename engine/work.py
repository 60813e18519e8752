"""The per-file work every executor runs: decode one file, then apply the delta to a chunk of decoded
images, encode them and write each one atomically.

Executors (:mod:`mtlguard.engine.local_executor`, :mod:`mtlguard.engine.ray_executor`) call
:func:`decode_job` and :func:`process_chunk` with a :class:`WorkSpec` (picklable: it travels to Ray
actors); they never import :mod:`mtlguard.engine.pipeline`.
"""
from __future__ import annotations

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
    output ``fmt``, the generator ``labels`` int64 [K] and the labels.csv ``split`` value."""

    src: Path
    rel: str
    out_rel: str
    fmt: str
    labels: np.ndarray | None = None
    split: str | None = None


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


def decode_item(item: Item, spec: WorkSpec):
    """``(decoded, model input float32 [C, h, w] or None)``; raises on a bad file."""
    dec = decode_file(item.src, spec.channels, spec.max_pixels, spec.decoder, keep_color=spec.channels == 1,
                      metadata=spec.keep_metadata)
    x = model_input(dec.rgb, spec.size, spec.channels) if spec.size is not None else None
    return dec, x


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


def _apply(decs: list, deltas, eps: float) -> tuple[list, list[int], list[str | None]]:
    """Protected pixels, max |delta| and error per image; same-size images in one vectorized step."""
    n = len(decs)
    if deltas is None:
        return [d.rgb for d in decs], [0] * n, [None] * n
    outs: list = [None] * n
    max_abs, errors = [0] * n, [None] * n
    groups: dict[tuple, list[int]] = {}
    for i, d in enumerate(decs):
        groups.setdefault(d.rgb.shape, []).append(i)
    for idx in groups.values():
        try:
            rgb = decs[idx[0]].rgb[None] if len(idx) == 1 else np.stack([decs[i].rgb for i in idx])
            prot, mx = apply_delta_batch(rgb, np.asarray(deltas)[idx], eps)
            for j, i in enumerate(idx):
                outs[i], max_abs[i] = prot[j], int(mx[j])
        except Exception as e:  # noqa: BLE001 - fail these files, keep going
            for i in idx:
                errors[i] = f"applying the perturbation failed: {type(e).__name__}: {e}"
    return outs, max_abs, errors


def process_chunk(items: list[Item], decs: list, deltas, spec: WorkSpec) -> list[tuple[Item, dict | None, str | None]]:
    """Apply (or pass through), encode and atomically write a chunk of images.

    Images of the same native size get their deltas applied in one vectorized
    :func:`~mtlguard.engine.perturb.apply_delta_batch`; each image is then encoded and written on its own.
    ``deltas``: float32 [n, C, h, w] (or None: passthrough).  Returns ``(item, result, None)`` or
    ``(item, None, reason)`` per image, in order; one image's failure never fails the others."""
    outs, max_abs, errors = _apply(decs, deltas, spec.eps)
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
