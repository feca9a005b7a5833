"""Which part of an edit's region moved (issue 18): one small dense grid per moving edit, learnt by a refresh.

An edit's region is voxels (``edits.VoxelRegion``, 10 mm by default) found from a query; where the moved thing
touched another (a can against a box), the region takes a few millimetres of the neighbour along (``edits`` keeps
the cut in the middle of the gap). Through the edits those millimetres are then wrong twice: the box face shows a
recess at the old place (the region is empty there) and the moved thing carries a sliver of box to its new place.
Neither can be mended by training through the edits, since the field holds the content of both places at one set of
coordinates.

A membership grid gives each moving edit ``k`` a soft share ``m_k(p)`` in [0, 1] of the content at field position
``p`` (the position it is read from in the field): the sample at the thing's new place that reads ``p`` gets
``m_k(p)`` of the density there, the sample at its old place that reads ``p`` gets ``1 - m_k(p)`` (the rest stays
behind). ``m = clamp(1 + r)`` with ``r`` a trilinearly sampled residual (:class:`~f3rm_ros.core.fields.moved_colour.
ColourGrid`, one channel) that starts at 0: a field with fresh grids renders exactly as the hard region did, and a
refresh through the edits, whose new views see the box face whole at the old place and the thing alone at the new
one, moves ``m`` where the pixels ask. The clamp passes its gradient straight through (``clamp``'s own gradient at
the bound is 0, which would keep ``m`` at 1 for ever).

A sample's weight is the product of ``m_k`` over the edits that moved it and ``1 - m_j`` for the edit whose old
place it lies in (:meth:`Membership.weight`; the warp gives both, ``EditWarp(..., parts=True)``); a sample emptied by
two edits, by a removal or by an edit without a grid stays empty. Plain PyTorch, graph-safe, any device.
"""

from __future__ import annotations

from torch import Tensor
import torch

from f3rm_ros.core.fields.moved_colour import EditGrids

__all__ = ["Membership", "MAX_BITS", "straight_clamp"]

MAX_BITS = 62  # edits 0..61 can have a grid (bits of an int64 mask)


def straight_clamp(x: Tensor) -> Tensor:
    """``x.clamp(0, 1)`` whose gradient is 1 everywhere (straight through)."""
    return x + (x.detach().clamp(0.0, 1.0) - x.detach())


class Membership(EditGrids):
    """The membership grids of an edit stack (module docstring), keyed by edit index; state keys
    ``membership.grids.<k>.value / box / gain``."""

    channels = 1

    def share(self, k: int, positions: Tensor) -> Tensor:
        """``m_k`` [M] at field positions [M, 3] (1 where edit ``k`` has no grid)."""
        g = self.grids[str(int(k))] if str(int(k)) in self.grids else None
        if g is None:
            return torch.ones(positions.shape[0], device=positions.device)
        return straight_clamp(1.0 + g(positions)[:, 0])

    def weight(self, positions: Tensor, moved_bits: Tensor, vacated: Tensor) -> Tensor:
        """The density weight [...] of samples read at field ``positions`` [..., 3]: ``moved_bits`` [...] int64 (bit
        ``k``: edit ``k`` moved the sample), ``vacated`` [...] long (the edit whose old place emptied it; -1 none,
        -2 emptied otherwise: weight 0)."""
        p = positions.reshape(-1, 3)
        bits, vac = moved_bits.reshape(-1), vacated.reshape(-1)
        one = torch.ones(p.shape[0], device=p.device)
        moved, left = one, torch.where(vac == -1, one, torch.zeros_like(one))
        for key in self.grids:
            k = int(key)
            m = self.share(k, p)
            if k < MAX_BITS:
                moved = torch.where(((bits >> k) & 1) > 0, moved * m, moved)
            left = torch.where(vac == k, 1.0 - m, left)
        w = moved * left
        return w.reshape(positions.shape[:-1])
