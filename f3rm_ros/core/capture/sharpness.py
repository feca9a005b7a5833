"""Image sharpness for the capture's blur rule: variance of the Laplacian (and a plain-loop reference)."""

from __future__ import annotations

import numpy as np

__all__ = ["laplacian_variance", "laplacian_variance_reference"]


def _gray(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 3:
        img = img[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return img.astype(np.float64)


def laplacian_variance(image: np.ndarray) -> float:
    """Sharpness: variance of the 4-neighbour Laplacian of the grey image (0-255 levels), interior pixels.

    Higher is sharper; a blurred or featureless image scores low. Args: image [H, W, 3] or [H, W].
    """
    g = _gray(image)
    if g.shape[0] < 3 or g.shape[1] < 3:
        return 0.0
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def laplacian_variance_reference(image: np.ndarray) -> float:
    """Plain per-pixel loop version of :func:`laplacian_variance` (for tests)."""
    g = _gray(image)
    vals = []
    for y in range(1, g.shape[0] - 1):
        for x in range(1, g.shape[1] - 1):
            vals.append(g[y - 1, x] + g[y + 1, x] + g[y, x - 1] + g[y, x + 1] - 4.0 * g[y, x])
    if not vals:
        return 0.0
    m = sum(vals) / len(vals)
    return float(sum((v - m) ** 2 for v in vals) / len(vals))
