"""One rule for "an options object plus keyword overrides" (``TrainConfig``, ``TaskSelectionConfig``, ...)."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

T = TypeVar("T")


def with_overrides(config_type: type[T], base: T | None = None, **options) -> T:
    """``base`` (default: ``config_type()``) with ``options`` replaced.

    An unknown option is a ``TypeError`` naming it and every known one (``dataclasses.replace`` alone says only
    "unexpected keyword argument")."""
    known = {f.name for f in dataclasses.fields(config_type)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"unknown {config_type.__name__} option(s) {unknown}; known: {sorted(known)}")
    if base is not None and not isinstance(base, config_type):
        raise TypeError(f"config must be a {config_type.__name__}, got {type(base).__name__}")
    return dataclasses.replace(base, **options) if base is not None else config_type(**options)
