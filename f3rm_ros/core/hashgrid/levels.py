"""The hash-grid encoding one level and one corner at a time: the CPU path (backend ``levels``).

Same math, table layout and gradients (table and points) as the reference
:func:`f3rm_ros.core.hashgrid.reference.hash_grid_encode_torch`, equal to it up to float summation order
(``test/test_fields_hashgrid.py`` compares them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from f3rm_ros.core.hashgrid.reference import HASH_PRIMES, MASK32, check_inputs, clamp_unit

__all__ = ["hash_grid_encode_levels"]


def hash_grid_encode_levels(x: Tensor,  # [N, 3] in [0, 1]
                            table: Tensor,  # [L, T, F]
                            resolutions: Sequence[int]) -> Tensor:  # [N, L*F]
    """The same encoding one level and one corner at a time (the CPU path, backend ``levels``).

    The reference :func:`~f3rm_ros.core.hashgrid.reference.hash_grid_encode_torch` evaluates all levels and
    corners at once, which is few kernels on a GPU but on a CPU streams [N, L, 8]-sized int64 and float tensors
    through memory several times; here each level's working set is a few [N] vectors and the gathered [N, F]
    rows, so it stays in cache: about 5x faster forward and 1.4-2.4x forward + backward on a 2-core CPU (261k /
    65k points). Same math, same gradients (table and x), equal to the reference up to float summation order
    (tests compare them).
    """
    check_inputs(x, table, resolutions)
    L, T, F = table.shape
    n = x.shape[0]
    xc = clamp_unit(x.float())  # the reference's clamp (gradient 0 at the bounds on every torch)
    pow2 = T & (T - 1) == 0
    p1, p2 = HASH_PRIMES[1], HASH_PRIMES[2]
    levels = []
    for lvl, r in enumerate(resolutions):
        r = int(r)
        pos = xc * float(r)
        cell = torch.clamp_max(pos.detach().floor(), r - 1)
        frac = pos - cell
        c = cell.to(torch.int64)
        cx, cy, cz = c[:, 0], c[:, 1], c[:, 2]
        dense = (r + 1) ** 3 <= T
        if dense:
            s1 = r + 1
            ax, ay, az = (cx, cx + 1), (cy * s1, (cy + 1) * s1), (cz * (s1 * s1), (cz + 1) * (s1 * s1))
        else:
            ax = (cx, cx + 1)
            ay = ((cy * p1) & MASK32, ((cy + 1) * p1) & MASK32)
            az = ((cz * p2) & MASK32, ((cz + 1) * p2) & MASK32)
        fx, fy, fz = frac[:, 0], frac[:, 1], frac[:, 2]
        wx, wy, wz = (1.0 - fx, fx), (1.0 - fy, fy), (1.0 - fz, fz)
        tab = table[lvl].float()
        acc = None
        for k in range(8):  # corner bit 0 = x, as the reference
            i, j, m = k & 1, (k >> 1) & 1, (k >> 2) & 1
            if dense:
                idx = ax[i] + ay[j] + az[m]
            else:
                idx = ax[i] ^ ay[j] ^ az[m]
                idx = idx & (T - 1) if pow2 else idx % T
            w = wz[m] * wy[j] * wx[i]  # the reference's product order
            v = tab.index_select(0, idx) * w[:, None]
            acc = v if acc is None else acc + v
        levels.append(acc)
    if not levels:
        return torch.zeros(n, 0, dtype=table.dtype, device=x.device)
    return torch.stack(levels, dim=1).reshape(n, L * F).to(table.dtype)
