"""Collision check of gripper poses against the field's density (f3rm-method.md s. 4).

The gripper is a set of points (its voxelised volume, fingers left out by default); a pose collides
when at least ``min_points`` of its transformed points have ``alpha(density, voxel) >= alpha_thr``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from f3rm_ros.core.grasp.field_utils import alpha_from_density

__all__ = ["in_collision", "in_collision_reference", "transform_points_batched", "gripper_shell_points"]


def gripper_shell_points(gripper: Any, voxel: float, include_fingers: bool = False,
                         only_fingers: bool = False) -> np.ndarray:  # [M, 3]
    """The outer layer of the gripper's volume points (``Gripper.collision_points`` grid), gripper frame.

    The reference voxelises the gripper mesh's *surface*; the filled grid of ``collision_points``
    (4032 points for the Panda at 0.0075 m) would double the density queries for nothing, since the
    field cannot be inside the gripper without crossing its shell. Keeping grid points within one
    voxel of their box's faces leaves about half of them. ``only_fingers``: just the two fingers
    (at the maximum opening).
    """
    from f3rm_ros.core.gripper import box_grid_points

    out = []
    for _name, T, size in gripper.boxes(None, include_fingers=include_fingers):
        if only_fingers and not _name.startswith("finger"):
            continue
        p = box_grid_points(size, voxel)
        shell = np.any(np.abs(p) >= np.asarray(size) / 2 - voxel, axis=1)
        out.append(p[shell] + T[:3, 3])
    return np.concatenate(out, axis=0)



def transform_points_batched(R: torch.Tensor,  # [N, 3, 3]
                             t: torch.Tensor,  # [N, 3]
                             p: torch.Tensor) -> torch.Tensor:  # [M, 3] -> [N, M, 3]
    """``R_i @ p_j + t_i`` for every pose i and point j."""
    return torch.einsum("nij,mj->nmi", R, p) + t[:, None, :]


def in_collision(field: Any, R: torch.Tensor,  # [N, 3, 3] world_from_gripper rotations
                 t: torch.Tensor,  # [N, 3] translations, metres
                 gripper_points: torch.Tensor,  # [M, 3] gripper frame
                 voxel: float, alpha_thr: float, min_points: int,
                 chunk_points: int) -> torch.Tensor:  # [N] bool
    """Density-based collision test of N gripper poses, ``chunk_points`` field queries at a time."""
    n, m = R.shape[0], gripper_points.shape[0]
    out = torch.zeros(n, dtype=torch.bool, device=t.device)
    if n == 0 or m == 0:
        return out
    per = max(1, chunk_points // m)
    with torch.no_grad():
        for i in range(0, n, per):
            pts = transform_points_batched(R[i:i + per], t[i:i + per], gripper_points)
            dens = field.query_density(pts.reshape(-1, 3)).reshape(pts.shape[:2]).float()
            hits = (alpha_from_density(dens, voxel) >= alpha_thr).sum(dim=1)
            out[i:i + per] = hits >= min_points
    return out


def in_collision_reference(field: Any, R: torch.Tensor, t: torch.Tensor, gripper_points: torch.Tensor,
                           voxel: float, alpha_thr: float, min_points: int) -> torch.Tensor:
    """One pose at a time twin of :func:`in_collision` (no chunking, no batching)."""
    res = []
    with torch.no_grad():
        for i in range(R.shape[0]):
            pts = gripper_points @ R[i].T + t[i]
            alpha = 1.0 - torch.exp(-field.query_density(pts).reshape(-1).float().clamp_min(0) * voxel)
            res.append(bool((alpha >= alpha_thr).sum() >= min_points))
    return torch.tensor(res, dtype=torch.bool, device=t.device)
