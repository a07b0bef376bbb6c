"""sRGB <-> linear light (IEC 61966-2-1), written once for every writer and renderer of the assets.

TripoSR's colours and the baked PNGs are display (sRGB) values; glTF's COLOR_0, USD's colours and
lighting maths are linear. Left unconverted, viewers show the model too dark (SPEC §12). The poster's
GLSL shader (`poster.gl`) restates both curves because they run on the GPU side.
"""

from __future__ import annotations

import numpy as np


def srgb_to_linear(colors: np.ndarray) -> np.ndarray:
    """uint8 sRGB (..., 3) -> float32 linear [0, 1]."""
    c = colors.astype(np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return np.clip(linear, 0.0, 1.0).astype(np.float32)


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """float linear [0, 1] -> float sRGB-encoded [0, 1], the inverse of `srgb_to_linear` (clipped first)."""
    c = np.clip(linear, 0.0, 1.0)
    encoded: np.ndarray = np.where(c <= 0.0031308, c * 12.92, 1.055 * np.power(c, 1 / 2.4) - 0.055)
    return encoded
