"""Keyframe selection: keep a frame only if it moved or turned enough from every frame kept so far."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["KeyframeSelector"]


class KeyframeSelector:
    """Keeps a frame only if it moved enough from every frame kept so far.

    A candidate is "too close" when some kept frame is within ``min_translation_m`` AND within
    ``min_rotation_deg`` of it (so either moving far enough or turning far enough makes a keyframe).
    Both thresholds 0 = keep every frame.
    """

    def __init__(self, min_translation_m: float = 0.05, min_rotation_deg: float = 10.0) -> None:
        self.min_translation_m = float(min_translation_m)
        self.min_rotation_deg = float(min_rotation_deg)
        self._t = np.zeros((0, 3))
        self._R = np.zeros((0, 3, 3))

    def __len__(self) -> int:
        return len(self._t)

    def reset(self, poses: np.ndarray | None = None) -> None:
        """Forget every kept frame (or start from ``poses`` [N, 4, 4], e.g. a continued dataset)."""
        P = np.zeros((0, 4, 4)) if poses is None else np.asarray(poses, dtype=np.float64).reshape(-1, 4, 4)
        self._t = P[:, :3, 3].copy()
        self._R = P[:, :3, :3].copy()

    def nearest(self, T: np.ndarray) -> tuple[float, float]:
        """(distance m, rotation deg) to the kept frame that is closest in the "too close" sense."""
        if not len(self._t):
            return math.inf, math.inf
        d = np.linalg.norm(self._t - T[:3, 3], axis=1)
        cos = (np.einsum("nij,ij->n", self._R, T[:3, :3]) - 1.0) / 2.0  # trace(R_k^T R) = sum R_k * R
        ang = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
        # the kept frame that is "most" too close: largest max(d/dmin, ang/amin)
        score = np.maximum(d / max(self.min_translation_m, 1e-12), ang / max(self.min_rotation_deg, 1e-12))
        k = int(np.argmin(score))
        return float(d[k]), float(ang[k])

    def check(self, T: np.ndarray) -> tuple[bool, str]:
        """(keep?, reason if not)."""
        if self.min_translation_m <= 0 and self.min_rotation_deg <= 0:
            return True, ""
        d, a = self.nearest(T)
        if d < self.min_translation_m and a < self.min_rotation_deg:
            return False, (f"too close to a kept frame ({d * 100:.1f} cm < {self.min_translation_m * 100:.1f} cm and "
                           f"{a:.1f} deg < {self.min_rotation_deg:.1f} deg)")
        return True, ""

    def add(self, T: np.ndarray) -> None:
        self._t = np.vstack([self._t, T[None, :3, 3]])
        self._R = np.concatenate([self._R, T[None, :3, :3]])

    def remove(self, T: np.ndarray) -> bool:
        """Forget the most recently added kept frame equal to ``T`` [4, 4] (e.g. its write failed).

        Returns:
            True if one was found and removed.
        """
        hit = np.nonzero(np.all(self._t == T[:3, 3], axis=1) & np.all(self._R == T[:3, :3], axis=(1, 2)))[0]
        if not len(hit):
            return False
        k = int(hit[-1])
        self._t = np.delete(self._t, k, axis=0)
        self._R = np.delete(self._R, k, axis=0)
        return True
