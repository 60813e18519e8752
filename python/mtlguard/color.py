"""Colour constants shared by the fit, the defenses and the engine (no torch import: the engine uses it too).

``BT601_LUMA``: ITU-R BT.601 luma weights, ``Y = 0.299 R + 0.587 G + 0.114 B`` -- what Pillow's
``convert("L")`` and the ISS grayscale defense (Liu et al., 2023) compute (torchvision's ``Grayscale`` uses
0.2989 for R).
"""
from __future__ import annotations

BT601_LUMA: tuple[float, float, float] = (0.299, 0.587, 0.114)
