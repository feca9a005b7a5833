"""Collision check of gripper poses against the field's density (f3rm-method.md s. 4).

The gripper is a set of points (its voxelised volume, fingers left out by default); a pose collides
when at least ``min_points`` of its transformed points are occupied: ``alpha(density, voxel) >=
alpha_thr``, or (ours) below the floor ``floor_z`` (world z, metres) when one is given. A trained
field is empty under the table top (cameras never see inside the table, so only a thin dense skin is
learnt), so without the floor a palm pushed through the table top reads as free space.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from f3rm_ros.core.fields.protocol import GraspField
from f3rm_ros.core.grasp.field_utils import alpha_from_density

__all__ = ["in_collision", "in_collision_reference", "spread_order", "transform_points_batched", "gripper_shell_points",
           "gripper_corner_points", "lowest_point_z"]


def gripper_shell_points(gripper: Any, voxel: float, include_fingers: bool = False,
                         only_fingers: bool = False, margin: float = 0.0) -> np.ndarray:  # [M, 3]
    """The outer layer of the gripper's volume points (``Gripper.collision_points`` grid), gripper frame.

    The reference voxelises the gripper mesh's *surface*; the filled grid of ``collision_points``
    (4032 points for the Panda at 0.0075 m) would double the density queries for nothing, since the
    field cannot be inside the gripper without crossing its shell. Keeping grid points within one
    voxel of their box's faces leaves about half of them. ``only_fingers``: just the two fingers
    (at the maximum opening). ``margin``: every box grown by this much on each side (same centre), metres:
    the points then lie ``margin`` outside the gripper, so an occupied one means less clearance than that.
    """
    from f3rm_ros.core.gripper import box_grid_points

    out = []
    for _name, T, size in gripper.boxes(None, include_fingers=include_fingers):
        if only_fingers and not _name.startswith("finger"):
            continue
        size = np.asarray(size, dtype=np.float64) + 2.0 * float(margin)
        p = box_grid_points(size, voxel)
        shell = np.any(np.abs(p) >= size / 2 - voxel, axis=1)
        out.append(p[shell] + T[:3, 3])
    return np.concatenate(out, axis=0)



def gripper_corner_points(gripper: Any, include_fingers: bool = True) -> np.ndarray:  # [8 * boxes, 3]
    """Corners of the gripper's boxes (fingers at the maximum opening), gripper frame: the lowest point of
    a rigidly moved gripper is one of them."""
    out = []
    for _name, T, size in gripper.boxes(None, include_fingers=include_fingers):
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
        out.append((signs * np.asarray(size) / 2) @ T[:3, :3].T + T[:3, 3])
    return np.concatenate(out, axis=0)


def lowest_point_z(R: torch.Tensor,  # [N, 3, 3]
                   t: torch.Tensor,  # [N, 3]
                   corners: torch.Tensor) -> torch.Tensor:  # [M, 3] -> [N]
    """World z of the lowest of ``corners`` (gripper frame) for each pose (differentiable)."""
    return (corners @ R[:, 2, :].transpose(0, 1)).amin(dim=0) + t[:, 2] if R.shape[0] else t[:, 2]


def transform_points_batched(R: torch.Tensor,  # [N, 3, 3]
                             t: torch.Tensor,  # [N, 3]
                             p: torch.Tensor) -> torch.Tensor:  # [M, 3] -> [N, M, 3]
    """``R_i @ p_j + t_i`` for every pose i and point j."""
    return torch.einsum("nij,mj->nmi", R, p) + t[:, None, :]


def _occupied_counts(field: GraspField, R: torch.Tensor, t: torch.Tensor, points: torch.Tensor, voxel: float,
                     alpha_thr: float, chunk_points: int, floor_z: float | None) -> torch.Tensor:  # [N] long
    """Occupied ``points`` (gripper frame) per pose, ``chunk_points`` field queries at a time."""
    n, m = R.shape[0], points.shape[0]
    out = torch.zeros(n, dtype=torch.long, device=t.device)
    per = max(1, chunk_points // max(1, m))
    for i in range(0, n, per):
        pts = transform_points_batched(R[i:i + per], t[i:i + per], points)
        dens = field.query_density(pts.reshape(-1, 3)).reshape(pts.shape[:2]).float()
        occ = alpha_from_density(dens, voxel) >= alpha_thr
        if floor_z is not None:
            occ |= pts[..., 2] < floor_z
        out[i:i + per] = occ.sum(dim=1)
    return out


def spread_order(m: int, device: torch.device | str = "cpu") -> torch.Tensor:  # [m] a permutation
    """A fixed permutation of ``m`` gripper points (seeded), so that any run of it samples the whole gripper."""
    return torch.randperm(m, generator=torch.Generator().manual_seed(0)).to(device)


def in_collision(field: GraspField, R: torch.Tensor,  # [N, 3, 3] world_from_gripper rotations
                 t: torch.Tensor,  # [N, 3] translations, metres
                 gripper_points: torch.Tensor,  # [M, 3] gripper frame
                 voxel: float, alpha_thr: float, min_points: int,
                 chunk_points: int, floor_z: float | None = None, point_block: int = 0,
                 min_call: int = 0) -> torch.Tensor:  # [N] bool
    """Density-based collision test of N gripper poses, ``chunk_points`` field queries at a time.

    ``floor_z``: world z below which every point counts as occupied (None: density only).
    ``point_block`` > 0 (ours; the CPU preset): the gripper points are visited in blocks, the first of this
    many and each next one twice the last, each block spread over the whole gripper (:func:`spread_order`),
    and a pose whose count already reached ``min_points`` skips the remaining blocks. The answer is the same
    (the count only grows); the field queries drop to about ``point_block`` per colliding pose, which is most
    proposals (F3RM's random rotations around surface voxels mostly cut through the object), and a free pose
    takes a few passes instead of ``M / point_block``. 0: every point of every pose at once. ``min_call`` (with
    ``point_block``): a block is widened so that it queries at least this many points in all (few poses left: fewer
    passes, each a field query with its fixed cost); the answer is the same.
    """
    n, m = R.shape[0], gripper_points.shape[0]
    if n == 0 or m == 0:
        return torch.zeros(n, dtype=torch.bool, device=t.device)
    with torch.no_grad():
        if point_block <= 0 or point_block >= m:
            return _occupied_counts(field, R, t, gripper_points, voxel, alpha_thr, chunk_points, floor_z) \
                >= min_points
        pts = gripper_points[spread_order(m, gripper_points.device)]
        counts = torch.zeros(n, dtype=torch.long, device=t.device)
        live = torch.arange(n, device=t.device)
        j, block = 0, point_block
        while j < m and live.numel():
            # a field query costs ~1.6 ms on one CPU thread before its first point (as much as ~1500 points): with
            # few poses left, a block takes at least min_call points in all (EARLY_EXIT_MIN_CALL)
            block = max(block, -(-min_call // live.numel()))
            counts[live] += _occupied_counts(field, R[live], t[live], pts[j:j + block], voxel, alpha_thr,
                                             chunk_points, floor_z)
            live = live[counts[live] < min_points]
            j, block = j + block, 2 * block
        return counts >= min_points


def in_collision_reference(field: GraspField, R: torch.Tensor, t: torch.Tensor, gripper_points: torch.Tensor,
                           voxel: float, alpha_thr: float, min_points: int,
                           floor_z: float | None = None) -> torch.Tensor:
    """One pose at a time twin of :func:`in_collision` (no chunking, no batching)."""
    res = []
    with torch.no_grad():
        for i in range(R.shape[0]):
            pts = gripper_points @ R[i].T + t[i]
            alpha = 1.0 - torch.exp(-field.query_density(pts).reshape(-1).float().clamp_min(0) * voxel)
            occ = alpha >= alpha_thr
            if floor_z is not None:
                occ = occ | (pts[:, 2] < floor_z)
            res.append(bool(occ.sum() >= min_points))
    return torch.tensor(res, dtype=torch.bool, device=t.device)
