"""Multiresolution hash-grid encoding (Mueller et al. 2022): the plain-PyTorch reference.

Every backend of :mod:`f3rm_ros.core.hashgrid` is tested against :func:`hash_grid_encode_torch`. The exact
math (shared with :mod:`~f3rm_ros.core.hashgrid.levels` and the Triton kernels of
:mod:`~f3rm_ros.core.hashgrid.triton_op`), for level ``l`` with resolution
``R = resolutions[l]``:

* ``x`` clamped to [0, 1] (:func:`clamp_unit`: the gradient passes strictly inside (0, 1), 0 at and beyond
  the bounds, on every torch); ``pos = x * R``; ``cell = min(floor(pos), R - 1)``; ``frac = pos - cell``;
* the 8 corners ``c = cell + {0,1}^3`` (integers in [0, R]);
* index: dense ``cx + cy*(R+1) + cz*(R+1)**2`` if ``(R+1)**3 <= T``, else the spatial hash
  ``((cx*1) ^ (cy*2654435761) ^ (cz*805459861)) mod T`` on uint32 (wrap-around, mask 0xFFFFFFFF);
* trilinear weights ``prod_axes(frac if bit else 1 - frac)``;
* output level-major ``[level0 feats, level1 feats, ...]``, dtype of the table, math in fp32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["HASH_PRIMES", "clamp_unit", "grid_resolutions", "hash_grid_encode_torch", "hash_grid_encode_loop"]

HASH_PRIMES = (1, 2654435761, 805459861)
MASK32 = 0xFFFFFFFF


def grid_resolutions(num_levels: int, base_res: int, max_res: int) -> list[int]:
    """Per-level grid resolutions ``R_l = floor(base_res * b**l)``, ``b = exp((ln max - ln base)/(L-1))``.

    A relative tolerance of 1e-9 is added before the floor so that the last level is exactly
    ``max_res`` despite rounding of ``b**(L-1)`` (e.g. 16 * b**15 = 2047.9999999 -> 2048).

    Args:
        num_levels: L >= 1 (with L == 1 the single level has ``base_res``).
        base_res: coarsest resolution (>= 1).
        max_res: finest resolution (>= base_res).
    Returns:
        list of L ints.
    """
    if num_levels < 1 or base_res < 1 or max_res < base_res:
        raise ValueError(f"bad hash grid levels: num_levels={num_levels}, base_res={base_res}, max_res={max_res}")
    if num_levels == 1:
        return [int(base_res)]
    b = math.exp((math.log(max_res) - math.log(base_res)) / (num_levels - 1))
    return [int(math.floor(base_res * b**lvl * (1.0 + 1e-9))) for lvl in range(num_levels)]


def clamp_unit(x: Tensor) -> Tensor:
    """``x.clamp(0, 1)`` whose gradient is 1 strictly inside (0, 1) and 0 elsewhere, the bounds included.

    ``torch.clamp``'s own backward at a bound changed between releases: torch 2.13 (checked; the GPU
    machine's 2.11 alike) passes the gradient at ``x == 0`` and ``x == 1`` (subgradient 1), 2.14 gives 0. The
    encoding's points gradient must not depend on the torch release (the Triton kernel gives 0 at the bounds),
    so the convention is written out here; values are exactly ``x.clamp(0, 1)`` (NaN stays NaN).
    """
    inside = (x > 0.0) & (x < 1.0)
    return torch.where(inside, x, x.detach().clamp(0.0, 1.0))


def check_inputs(x: Tensor, table: Tensor, resolutions: Sequence[int]) -> None:
    if x.dim() != 2 or x.shape[-1] != 3:
        raise ValueError(f"x must be [N, 3], got {tuple(x.shape)}")
    if table.dim() != 3:
        raise ValueError(f"table must be [L, T, F], got {tuple(table.shape)}")
    if len(resolutions) != table.shape[0]:
        raise ValueError(f"{len(resolutions)} resolutions for a table of {table.shape[0]} levels")
    if any(int(r) < 1 for r in resolutions):
        raise ValueError(f"resolutions must be >= 1, got {list(resolutions)}")


_CONSTANTS: dict = {}


def _level_constants(resolutions: Sequence[int], T: int, dev: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-level resolutions (float and int), dense flags and the hash primes on ``dev``, made once per
    (resolutions, T, device): a fresh host-to-device copy per call would also make the encoding impossible
    to capture in a CUDA graph (the planner's pose optimiser captures field queries)."""
    key = (tuple(int(r) for r in resolutions), int(T), str(dev))
    c = _CONSTANTS.get(key)
    if c is None:
        res = list(key[0])
        with torch.inference_mode(False):  # normal tensors even when first made under inference mode
            c = (torch.tensor(res, dtype=torch.float32, device=dev), torch.tensor(res, dtype=torch.int64, device=dev),
                 torch.tensor([(r + 1) ** 3 <= T for r in res], device=dev),
                 torch.tensor(HASH_PRIMES, dtype=torch.int64, device=dev))
        _CONSTANTS[key] = c
    return c


def hash_grid_encode_torch(x: Tensor,  # [N, 3] in [0, 1]
                           table: Tensor,  # [L, T, F]
                           resolutions: Sequence[int]) -> Tensor:  # [N, L*F]
    """Hash-grid encoding in plain PyTorch (the reference every backend is tested against).

    Differentiable with respect to ``table`` (and ``x`` inside the cells). All levels are evaluated
    at once: memory is about N * L * 8 * (F + 2) floats.

    Args:
        x: points in the unit cube (clamped), shape [N, 3].
        table: feature tables, shape [L, T, F].
        resolutions: L grid resolutions.
    Returns:
        [N, L*F] features, level-major, dtype of ``table``.
    """
    check_inputs(x, table, resolutions)
    L, T, F = table.shape
    n = x.shape[0]
    dev = x.device
    res_f, res_i, dense, hash_primes = _level_constants(resolutions, T, dev)  # [L], [L], [L], [3]

    xc = clamp_unit(x.float())
    pos = xc[:, None, :] * res_f[None, :, None]  # [N, L, 3]
    cell = torch.minimum(pos.detach().floor().long(), (res_i - 1)[None, :, None])  # [N, L, 3]
    frac = pos - cell.float()  # [N, L, 3]

    # Separable per-axis terms for the two corner offsets (0, 1), combined over the 2x2x2 corners by
    # broadcasting (6 multiplies per point and level instead of 24). Dense levels: cx + cy*s + cz*s^2
    # (a sum); hashed levels: XOR of the per-axis products masked to uint32 (XOR commutes with the mask).
    c2 = torch.stack([cell, cell + 1], dim=-1)  # [N, L, 3, 2]
    stride = (res_i + 1)
    dense_mul = torch.stack([torch.ones_like(stride), stride, stride * stride], dim=-1)  # [L, 3]
    hash_mul = hash_primes.expand(L, 3)
    mul = torch.where(dense[:, None], dense_mul, hash_mul)  # [L, 3]
    terms = (c2 * mul[None, :, :, None]) & MASK32  # [N, L, 3, 2]
    tx = terms[:, :, 0, None, None, :]  # corner bit 0 = x (fastest), matching k -> (k>>0, k>>1, k>>2)
    ty = terms[:, :, 1, None, :, None]
    tz = terms[:, :, 2, :, None, None]
    idx_dense = (tx + ty + tz).reshape(n, L, 8)
    idx_hash = (tx ^ ty ^ tz).reshape(n, L, 8)
    idx_hash = idx_hash & (T - 1) if T & (T - 1) == 0 else idx_hash % T
    idx = torch.where(dense[None, :, None], idx_dense, idx_hash)  # [N, L, 8]
    idx = idx + (torch.arange(L, device=dev, dtype=torch.int64) * T)[None, :, None]

    w2 = torch.stack([1.0 - frac, frac], dim=-1)  # [N, L, 3, 2]
    w = (w2[:, :, 2, :, None, None] * w2[:, :, 1, None, :, None] * w2[:, :, 0, None, None, :]).reshape(n, L, 8)

    feats = table.reshape(L * T, F).float().index_select(0, idx.reshape(-1)).reshape(n, L, 8, F)
    out = (w[..., None] * feats).sum(2)  # [N, L, F]
    return out.reshape(n, L * F).to(table.dtype)


def hash_grid_encode_loop(x: Tensor, table: Tensor, resolutions: Sequence[int]) -> Tensor:
    """Per-point, per-corner Python loop of the same math (slow; for tests only). Shapes as
    :func:`hash_grid_encode_torch`; no autograd through indices (values only)."""
    check_inputs(x, table, resolutions)
    L, T, F = table.shape
    xs = x.detach().double().cpu().tolist()
    tab = table.detach().double().cpu()
    out = torch.zeros(len(xs), L * F, dtype=torch.float64)
    for i, p in enumerate(xs):
        p = [min(max(v, 0.0), 1.0) for v in p]
        for lvl, r in enumerate(resolutions):
            r = int(r)
            pos = [v * r for v in p]
            cell = [min(int(math.floor(v)), r - 1) for v in pos]
            frac = [pos[a] - cell[a] for a in range(3)]
            acc = torch.zeros(F, dtype=torch.float64)
            for k in range(8):
                c = [cell[a] + ((k >> a) & 1) for a in range(3)]
                if (r + 1) ** 3 <= T:
                    index = c[0] + c[1] * (r + 1) + c[2] * (r + 1) ** 2
                else:
                    h = ((c[0] * HASH_PRIMES[0]) & MASK32) ^ ((c[1] * HASH_PRIMES[1]) & MASK32) \
                        ^ ((c[2] * HASH_PRIMES[2]) & MASK32)
                    index = h % T
                wgt = 1.0
                for a in range(3):
                    wgt *= frac[a] if (k >> a) & 1 else 1.0 - frac[a]
                acc += wgt * tab[lvl, index]
            out[i, lvl * F:(lvl + 1) * F] = acc
    return out.to(table.dtype)
