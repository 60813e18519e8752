"""Atomic file writes, used by every module that writes a file.

:func:`atomic_write` lets a writer fill a temp file in the destination folder, gives it the usual file mode,
then renames it over the destination (``os.replace``).  A reader, or a resumed run, sees either the old
file, no file, or the complete new file, never a half-written one.  On any error, KeyboardInterrupt
included, the temp file is removed and the destination is left untouched.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_bytes", "default_file_mode"]


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once at import: os.umask is process-global and not thread-safe to probe


def default_file_mode() -> int:
    """The mode ``open()`` would give a new file (``0o666 & ~umask``); mkstemp alone gives ``0o600``."""
    return 0o666 & ~_UMASK


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[str], object],
    *,
    prefix: str | None = None,
    suffix: str = ".tmp",
    mode: int | None = None,
    overwrite: bool = True,
) -> Path:
    """Write ``path`` atomically: ``write(tmp)`` fills a temp file beside it, which is then renamed over it.

    Args:
        path: destination; its folder is created if needed.
        write: called with the temp file's path (a str); writes the content there.
        prefix, suffix: temp-file name parts (default ``.{name}.`` / ``.tmp``); keep a suffix when the writer
            infers the format from the extension.
        mode: file mode of the result (default: :func:`default_file_mode`).
        overwrite: if False, raise FileExistsError instead of replacing an existing ``path`` (checked
            race-free with a hard link where the file system has them).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}." if prefix is None else prefix, suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, default_file_mode() if mode is None else mode)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if path exists, even if it appeared meanwhile
            except FileExistsError:
                raise FileExistsError(f"{str(path)!r} already exists (pass overwrite=True to replace it)") from None
            except OSError:  # no hard links on this file system
                if path.exists():
                    raise FileExistsError(f"{str(path)!r} already exists (pass overwrite=True to replace it)") from None
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, **kwargs) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data), **kwargs)


def atomic_write_text(path: str | os.PathLike, text: str, **kwargs) -> Path:
    """:func:`atomic_write` of ``text`` (UTF-8)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), **kwargs)
