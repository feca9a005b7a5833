"""Pose normalisation: world camera poses into the field's frame (cameras inside [-1, 1]^3), and back
(``nerf_to_world``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["focus_point", "normalise_poses"]


def focus_point(c2w_opencv: np.ndarray) -> np.ndarray:
    """Least-squares point nearest to every camera's optical axis (OpenCV +z)  # [3].

    Args:
        c2w_opencv: camera-to-world, OpenCV convention  # [N, 4, 4]

    Falls back to the mean camera centre when the axes are (nearly) parallel.
    """
    c2w = np.asarray(c2w_opencv, dtype=np.float64)
    d = c2w[:, :3, 2]
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    o = c2w[:, :3, 3]
    P = np.eye(3)[None] - d[:, :, None] * d[:, None, :]  # projectors orthogonal to each axis
    A = P.sum(0)
    b = (P @ o[:, :, None]).sum(0)[:, 0]
    if np.linalg.cond(A) > 1e8:
        return o.mean(0)
    return np.linalg.solve(A, b)


def normalise_poses(c2w_world: np.ndarray, center: str = "focus", scale_factor: float = 1.0,
                    fixed_center: Sequence[float] | None = None, fixed_scale: float | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Map camera poses into the field's frame (cameras within [-1, 1]^3) without rotating them.

    ``p_nerf = scale * (p_world - centre)``, with ``scale = scale_factor / max |camera coordinate|``
    after centring (so the largest |coordinate| of a camera centre equals ``scale_factor``).

    Args:
        c2w_world: camera-to-world in the world frame (OpenCV or OpenGL: the rotation is kept as is)  # [N, 4, 4]
        center: "focus" (default: :func:`focus_point` of the optical axes, needs OpenCV poses; right
            for captures looking at a scene, where the mean camera centre can lie far off it),
            "poses" (mean camera centre) or "none" (world origin).
        scale_factor: extra multiplier on the automatic scale.
        fixed_center: use this world point as the centre instead  # [3]
        fixed_scale: use this scale (field units per metre) instead of the automatic one.

    Returns:
        c2w_nerf: the poses in the field's frame (rotation unchanged, translation scaled)  # [N, 4, 4]
        nerf_to_world: similarity ``[[I / scale, centre], [0, 1]]`` mapping field points to metres
            in the world frame  # [4, 4]; its scale is ``1 / scale`` (``np.cbrt(det(M[:3,:3]))``).
    """
    c2w = np.asarray(c2w_world, dtype=np.float64)
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4) or len(c2w) == 0:
        raise ValueError(f"c2w_world must have shape [N, 4, 4] with N >= 1, got {c2w.shape}")
    if not np.all(np.isfinite(c2w)):
        raise ValueError("c2w_world contains non-finite values")
    t = c2w[:, :3, 3]
    if fixed_center is not None:
        centre = np.asarray(fixed_center, dtype=np.float64).reshape(3)
    elif center == "poses":
        centre = t.mean(0)
    elif center == "focus":
        centre = focus_point(c2w)
    elif center == "none":
        centre = np.zeros(3)
    else:
        raise ValueError(f"center must be 'poses', 'focus' or 'none', got {center!r}")
    if fixed_scale is not None:
        scale = float(fixed_scale)
    else:
        extent = float(np.abs(t - centre).max())
        scale = scale_factor / extent if extent > 1e-12 else scale_factor
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"pose normalisation scale must be finite and > 0, got {scale}")
    out = c2w.copy()
    out[:, :3, 3] = scale * (t - centre)
    nerf_to_world = np.eye(4)
    nerf_to_world[:3, :3] *= 1.0 / scale
    nerf_to_world[:3, 3] = centre
    return out, nerf_to_world
