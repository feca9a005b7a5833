"""Procedural 3D textures evaluated at object-frame points (no UV maps needed).

Each returns a blend factor in [0, 1] per point: 0 = the material's ``color``, 1 = ``color2``.
``scale`` is the feature size in metres (checker cell, stripe period / 2, noise cell, wood ring gap).
"""

from __future__ import annotations

import numpy as np

__all__ = ["texture_factor", "value_noise"]


def _hash3(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray) -> np.ndarray:
    """Deterministic pseudo-random values in [0, 1) per integer lattice point (uint32 hashing)."""
    h = (ix.astype(np.int64) * 73856093) ^ (iy.astype(np.int64) * 19349663) ^ (iz.astype(np.int64) * 83492791)
    h = h.astype(np.uint64) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(1274126177)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(16)
    return (h & np.uint64(0xFFFFFF)).astype(np.float64) / float(0x1000000)


def value_noise(p: np.ndarray) -> np.ndarray:
    """Smooth value noise in [0, 1) at points ``p`` [N, 3] (lattice spacing 1), trilinear + smoothstep."""
    f = np.floor(p)
    t = p - f
    t = t * t * (3 - 2 * t)
    i = f.astype(np.int64)
    out = np.zeros(len(p))
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                w = ((t[:, 0] if dx else 1 - t[:, 0]) * (t[:, 1] if dy else 1 - t[:, 1])
                     * (t[:, 2] if dz else 1 - t[:, 2]))
                out += w * _hash3(i[:, 0] + dx, i[:, 1] + dy, i[:, 2] + dz)
    return out


def texture_factor(kind: str, points_obj: np.ndarray, scale: float) -> np.ndarray:
    """Blend factor [N] in [0, 1] of texture ``kind`` at object-frame points [N, 3] (metres)."""
    p = np.asarray(points_obj, dtype=np.float64) / scale
    if kind == "none":
        return np.zeros(len(p))
    if kind == "checker":
        return (np.floor(p).astype(np.int64).sum(1) % 2).astype(np.float64)
    if kind == "stripes":  # horizontal bands (along the object's z)
        return (np.floor(p[:, 2]).astype(np.int64) % 2).astype(np.float64)
    if kind == "noise":
        n = 0.65 * value_noise(p) + 0.35 * value_noise(p * 2.7 + 17.0)
        return np.clip((n - 0.25) * 2.0, 0.0, 1.0)
    if kind == "wood":  # grain along x: bands in y warped by noise
        warp = value_noise(p * np.array([0.15, 0.6, 0.6]))
        bands = np.sin((p[:, 1] + 2.5 * warp) * np.pi) * 0.5 + 0.5
        fine = value_noise(p * np.array([0.3, 6.0, 6.0]))
        return np.clip(0.75 * bands ** 3 + 0.35 * fine, 0.0, 1.0)
    raise ValueError(f"unknown texture {kind!r}")
