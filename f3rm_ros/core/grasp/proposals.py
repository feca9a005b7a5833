"""Coarse grasp proposals: alpha grid, surface voxels, downsampling, outlier removal, rotations.

All points are in the world frame, metres. Each fast (vectorised torch) function has a plain
reference beside it (``*_reference``, numpy loops) that the tests compare it with.

Surface extraction differs from the reference on purpose: F3RM runs marching cubes on the alpha grid
at level 0.1 and keeps the mesh vertices. We keep the grid points with alpha >= 0.1 that have at
least one 6-neighbour below 0.1 ("occupied voxels next to free space"). Both give points within
about half a voxel of the same iso-surface, and after the 1 cm voxel downsampling both leave about
one point per surface voxel; ours needs no marching-cubes package (none is on the GPU machine), is a
few tensor ops on either device, and cannot produce vertices on faces that only exist because the
workspace box cuts an object (grid neighbours outside the box count as occupied, not free).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from f3rm_ros.core.fields.protocol import GraspField
from f3rm_ros.core.grasp.field_utils import alpha_from_density, query_density_chunked

__all__ = [
    "dense_grid", "alpha_grid", "surface_voxels", "surface_voxels_reference", "voxel_downsample",
    "voxel_downsample_reference", "remove_statistical_outliers", "remove_statistical_outliers_reference",
    "random_quaternions", "quat_to_matrix_torch",
]


def dense_grid(lo: Sequence[float], hi: Sequence[float], voxel: float,
               device: torch.device | str = "cpu") -> torch.Tensor:  # [nx, ny, nz, 3]
    """Grid points ``lo + i * voxel`` for every i with ``lo + i * voxel <= hi`` on each axis."""
    lo_t, hi_t = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    if lo_t.shape != (3,) or hi_t.shape != (3,) or np.any(hi_t < lo_t) or not voxel > 0:
        raise ValueError(f"workspace box must have lo <= hi (3 values each) and voxel > 0, got {lo}, {hi}, {voxel}")
    axes = [torch.arange(int(np.floor((hi_i - lo_i) / voxel + 1e-6)) + 1, device=device, dtype=torch.float32) * voxel
            + lo_i for lo_i, hi_i in zip(lo_t, hi_t, strict=True)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def alpha_grid(field: GraspField, grid: torch.Tensor,  # [nx, ny, nz, 3]
               delta: float, chunk: int) -> torch.Tensor:  # [nx, ny, nz]
    """alpha(density, delta) of the field at every grid point (chunked, no gradient)."""
    dens = query_density_chunked(field, grid.reshape(-1, 3), chunk)
    return alpha_from_density(dens, delta).reshape(grid.shape[:-1])


def surface_voxels(alpha: torch.Tensor,  # [nx, ny, nz]
                   level: float) -> torch.Tensor:  # [nx, ny, nz] bool
    """Mask of occupied grid points (alpha >= level) with a free 6-neighbour (outside counts as occupied)."""
    occ = alpha >= level
    free = torch.nn.functional.pad((~occ).float()[None, None], (1, 1, 1, 1, 1, 1), value=0.0)[0, 0] > 0
    nb = torch.zeros_like(occ)
    nb |= free[:-2, 1:-1, 1:-1] | free[2:, 1:-1, 1:-1]
    nb |= free[1:-1, :-2, 1:-1] | free[1:-1, 2:, 1:-1]
    nb |= free[1:-1, 1:-1, :-2] | free[1:-1, 1:-1, 2:]
    return occ & nb


def surface_voxels_reference(alpha: np.ndarray, level: float) -> np.ndarray:
    """Plain-loop twin of :func:`surface_voxels` (numpy bool array)."""
    a = np.asarray(alpha)
    out = np.zeros(a.shape, dtype=bool)
    for i, j, k in zip(*np.nonzero(a >= level), strict=True):
        for d in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
            n = (i + d[0], j + d[1], k + d[2])
            if all(0 <= n[ax] < a.shape[ax] for ax in range(3)) and a[n] < level:
                out[i, j, k] = True
                break
    return out


def voxel_downsample(points: torch.Tensor,  # [N, 3]
                     voxel: float) -> torch.Tensor:  # [M, 3]
    """Mean of the points in each occupied voxel of size ``voxel`` (grid anchored at min - voxel/2).

    Output order: voxels sorted by (ix, iy, iz).
    """
    if points.shape[0] == 0:
        return points
    origin = points.amin(dim=0) - voxel * 0.5
    idx = torch.floor((points - origin) / voxel).long()
    uniq, inv = torch.unique(idx, dim=0, return_inverse=True)
    sums = torch.zeros(uniq.shape[0], 3, dtype=points.dtype, device=points.device).index_add_(0, inv, points)
    counts = torch.zeros(uniq.shape[0], dtype=points.dtype, device=points.device).index_add_(
        0, inv, torch.ones_like(points[:, 0]))
    return sums / counts[:, None]


def voxel_downsample_reference(points: np.ndarray, voxel: float) -> np.ndarray:
    """Dictionary-based twin of :func:`voxel_downsample` (same voxel anchoring and output order)."""
    p = np.asarray(points, dtype=np.float64)
    if len(p) == 0:
        return p.reshape(0, 3)
    origin = p.min(axis=0) - voxel * 0.5
    groups: dict[tuple[int, int, int], list[np.ndarray]] = {}
    for x in p:
        key = tuple(int(v) for v in np.floor((x - origin) / voxel))
        groups.setdefault(key, []).append(x)
    return np.array([np.mean(groups[k], axis=0) for k in sorted(groups)])


def remove_statistical_outliers(points: torch.Tensor,  # [N, 3]
                                k: int, std_ratio: float) -> torch.Tensor:  # [N] bool keep
    """Keep points whose mean distance to their ``k`` nearest neighbours (itself included, as Open3D and
    the reference count it) is below ``mean + std_ratio * std`` of that statistic over all points.

    Uses scipy's cKDTree on the CPU (no open3d, so it also runs on the GPU machine); the mask is
    returned on ``points.device``.
    """
    n = points.shape[0]
    if n < 3:
        return torch.ones(n, dtype=torch.bool, device=points.device)
    from scipy.spatial import cKDTree

    p = points.detach().cpu().double().numpy()
    kk = min(int(k), n)
    d, _ = cKDTree(p).query(p, k=kk)
    avg = d.reshape(n, kk).mean(axis=1)
    thr = avg.mean() + std_ratio * avg.std(ddof=1)
    return torch.as_tensor(avg < thr, device=points.device) if np.isfinite(thr) else \
        torch.ones(n, dtype=torch.bool, device=points.device)


def remove_statistical_outliers_reference(points: np.ndarray, k: int, std_ratio: float) -> np.ndarray:
    """Brute-force twin of :func:`remove_statistical_outliers` (numpy bool keep-mask)."""
    p = np.asarray(points, dtype=np.float64)
    n = len(p)
    if n < 3:
        return np.ones(n, dtype=bool)
    kk = min(int(k), n)
    avg = np.empty(n)
    for i in range(n):
        avg[i] = np.sort(np.linalg.norm(p - p[i], axis=1))[:kk].mean()
    return avg < avg.mean() + std_ratio * avg.std(ddof=1)


def random_quaternions(n: int, generator: torch.Generator | None = None,
                       device: torch.device | str = "cpu") -> torch.Tensor:  # [n, 4] (x, y, z, w)
    """Uniformly distributed unit quaternions (normalised 4D Gaussians), w >= 0."""
    q = torch.randn(n, 4, generator=generator, dtype=torch.float32)
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    q = torch.where(q[:, 3:4] < 0, -q, q)
    return q.to(device)


def quat_to_matrix_torch(q: torch.Tensor) -> torch.Tensor:  # [..., 4] (x, y, z, w) -> [..., 3, 3]
    """Rotation matrices from (not necessarily unit) quaternions in (x, y, z, w) order (differentiable)."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    x, y, z, w = q.unbind(-1)
    return torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)
