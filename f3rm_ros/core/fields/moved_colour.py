"""A colour correction of the things edits moved (issue 18): one small dense grid per moving edit.

Through an edit stack (``f3rm_ros.core.edits.EditWarp``) a moved thing is read from its old place in the field. A
side of it the first capture never saw (it touched a box, say) sits there a few millimetres from what it touched, in
the same hash-grid cells: when new views show both (the thing's side orange at its new place, the box face now white
at the old one), one set of weights is asked for two colours and both come out mottled. This module gives the
samples a moving edit reads elsewhere a colour of their own: the field's colour, in logit space, plus a residual
trilinearly sampled from the grid of the **oldest edit that moved the sample** (the edit whose region holds the
thing's content in the field; later edits of the same thing reach it through the earlier ones, so one grid serves a
thing moved several times). The floor patch a fill reads in place of an old place's floor (``edits.FloorFill``, a
patch of the table beside) gets a grid of its own the same way (key ``-(k + 2)`` for edit k's fill, the warp's
``mover`` of those samples): the patch's grain does not line up with the floor the new views see there, and the
patch's own cells also serve the floor beside. Every other sample keeps the field's colour bit for bit, and a grid
starts at zero: a field with fresh grids renders exactly as without them.

A grid covers its edit's read positions (the field frame) at ``voxel`` spacing: ``box`` [2, 3] (first and last
node), ``value`` [1, 3, D, H, W] (z, y, x), the residual ``gain * value`` (the trainer's one learning rate, scaled
for the grid by ``gain``: a refresh's CUDA graphs give every parameter group the same rate). Plain PyTorch
(``grid_sample``), graph-safe, any device.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = ["MovedColour", "ColourGrid", "trilinear_reference"]


class ColourGrid(nn.Module):
    """One edit's grid (module docstring). ``lo``, ``hi``: the field-frame box [3] its nodes span."""

    def __init__(self, lo: Tensor, hi: Tensor, shape_zyx: tuple[int, int, int], gain: float = 1.0,
                 device: torch.device | str | None = None):
        super().__init__()
        self.value = nn.Parameter(torch.zeros(1, 3, *shape_zyx, device=device))
        self.register_buffer("box", torch.stack([torch.as_tensor(lo, dtype=torch.float32),
                                                 torch.as_tensor(hi, dtype=torch.float32)]).to(device))
        self.register_buffer("gain", torch.tensor(float(gain), device=device))

    def forward(self, positions: Tensor) -> Tensor:
        """Residual logits [M, 3] at field-frame points ``positions`` [M, 3]; 0 outside the box."""
        lo, hi = self.box[0], self.box[1]
        u = (positions.float() - lo) / (hi - lo).clamp(min=1e-12) * 2 - 1  # [-1, 1] at the first / last node
        g = u.reshape(1, 1, 1, -1, 3)  # grid_sample's (x, y, z) = (W, H, D)
        out = nn.functional.grid_sample(self.value, g, mode="bilinear", padding_mode="zeros", align_corners=True)
        return (self.gain * out).reshape(3, -1).T


def trilinear_reference(value: Tensor, box: Tensor, positions: Tensor) -> Tensor:
    """The plain trilinear interpolation :class:`ColourGrid` computes with ``grid_sample`` (without its gain), for
    tests: ``value`` [1, 3, D, H, W], ``box`` [2, 3], ``positions`` [M, 3] -> [M, 3]; 0 where a corner falls
    outside."""
    v = value[0]
    D, H, W = v.shape[1:]
    size = torch.tensor([W - 1, H - 1, D - 1], dtype=torch.float32, device=positions.device)
    f = (positions.float() - box[0]) / (box[1] - box[0]) * size  # (x, y, z) in node units
    i0 = torch.floor(f).long()
    w = f - i0
    out = torch.zeros(len(positions), 3, device=positions.device)
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                ix, iy, iz = i0[:, 0] + dx, i0[:, 1] + dy, i0[:, 2] + dz
                ok = (ix >= 0) & (ix < W) & (iy >= 0) & (iy < H) & (iz >= 0) & (iz < D)
                wt = ((w[:, 0] if dx else 1 - w[:, 0]) * (w[:, 1] if dy else 1 - w[:, 1])
                      * (w[:, 2] if dz else 1 - w[:, 2]))
                val = v[:, iz.clamp(0, D - 1), iy.clamp(0, H - 1), ix.clamp(0, W - 1)].T  # [M, 3]
                out += torch.where(ok[:, None], wt[:, None] * val, torch.zeros_like(val))
    return out


class MovedColour(nn.Module):
    """The grids of an edit stack, keyed by edit index (module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.grids = nn.ModuleDict()

    def __len__(self) -> int:
        return len(self.grids)

    def add(self, k: int, lo: Tensor, hi: Tensor, voxel: float, gain: float, max_cells: int = 96,
            device: torch.device | str | None = None) -> ColourGrid:
        """A zero grid for edit ``k`` over the field-frame box ``lo``..``hi`` at about ``voxel`` (field units; at most
        ``max_cells`` nodes a side, at least 2)."""
        lo_t, hi_t = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)
        if not (torch.isfinite(lo_t).all() and torch.isfinite(hi_t).all() and (hi_t > lo_t).all()) or not voxel > 0:
            raise ValueError(f"a colour grid needs a box with hi > lo and voxel > 0, got {lo_t}, {hi_t}, {voxel}")
        n = [min(max_cells, max(2, math.ceil(float(e) / voxel - 1e-6) + 1)) for e in (hi_t - lo_t).tolist()]
        grid = ColourGrid(lo_t, hi_t, (n[2], n[1], n[0]), gain, device)
        self.grids[str(int(k))] = grid
        return grid

    def set_gain(self, gain: float) -> None:
        """A new ``gain`` for every grid, their residuals unchanged (the value rescaled)."""
        with torch.no_grad():
            for g in self.grids.values():
                g.value.mul_(g.gain / gain)
                g.gain.fill_(gain)

    def _hit(self, mover: Tensor) -> Tensor:
        """Where ``mover`` names an edit that has a grid (a sample moved or filled by an edit without one keeps the
        field's colour)."""
        hit = torch.zeros_like(mover, dtype=torch.bool)
        for key in self.grids:
            hit = hit | (mover == int(key))
        return hit

    def residual(self, positions: Tensor, mover: Tensor) -> Tensor:
        """Residual logits [..., 3] at field-frame ``positions`` [..., 3] of samples whose oldest moving edit is
        ``mover`` [...] (-1: none, 0 there). On the CPU only the samples of an edit with a grid are sampled (a few
        per cent of a batch); elsewhere :meth:`residual_all` (graph-safe: no shapes that depend on the data)."""
        if positions.device.type != "cpu":
            return self.residual_all(positions, mover)
        p = positions.reshape(-1, 3)
        m = mover.reshape(-1)
        idx = self._hit(m).nonzero().squeeze(1)
        sub = self.residual_all(p[idx], m[idx])
        out = torch.zeros(len(p), 3, device=p.device, dtype=sub.dtype).index_put((idx,), sub)
        return out.reshape(*positions.shape[:-1], 3)

    def residual_all(self, positions: Tensor, mover: Tensor) -> Tensor:
        """:meth:`residual` with every grid sampled at every point (the plain path)."""
        p = positions.reshape(-1, 3)
        m = mover.reshape(-1)
        out = torch.zeros(len(p), 3, device=p.device)
        for key, g in self.grids.items():
            out = torch.where((m == int(key))[:, None], g(p), out)
        return out.reshape(*positions.shape[:-1], 3)

    def apply(self, rgb: Tensor, positions: Tensor, mover: Tensor) -> Tensor:
        """``rgb`` [..., 3] in (0, 1) with the residual added in logit space where ``mover`` names an edit with a
        grid; elsewhere ``rgb`` as it is, bit for bit."""
        if rgb.device.type == "cpu":  # only the samples of an edit with a grid (as :meth:`residual`)
            flat, p, m = rgb.reshape(-1, 3), positions.reshape(-1, 3), mover.reshape(-1)
            idx = self._hit(m).nonzero().squeeze(1)
            c = torch.sigmoid(torch.logit(flat[idx].float().clamp(1e-5, 1 - 1e-5)) + self.residual_all(p[idx], m[idx]))
            return flat.index_put((idx,), c.to(rgb.dtype)).reshape(rgb.shape)
        return self.apply_all(rgb, positions, mover)

    def apply_all(self, rgb: Tensor, positions: Tensor, mover: Tensor) -> Tensor:
        """:meth:`apply` with every grid sampled at every point (the plain path, graph-safe; the one used off the
        CPU)."""
        res = self.residual_all(positions, mover)
        c = torch.sigmoid(torch.logit(rgb.float().clamp(1e-5, 1 - 1e-5)) + res).to(rgb.dtype)
        return torch.where(self._hit(mover)[..., None], c, rgb)

    @staticmethod
    def from_state(state: Mapping[str, Tensor], prefix: str = "moved_colour.",
                   device: torch.device | str | None = None) -> MovedColour | None:
        """The grids a state dict holds under ``prefix`` (their shapes from it; values not loaded), None if none."""
        # in the order they were saved (made), as the model's parameters were when an optimiser state was saved
        keys = list(dict.fromkeys(k[len(prefix):].split(".")[1] for k in state if k.startswith(prefix + "grids.")))
        if not keys:
            return None
        mc = MovedColour()
        for k in keys:
            box = state[f"{prefix}grids.{k}.box"]
            shape = tuple(state[f"{prefix}grids.{k}.value"].shape[2:])
            mc.grids[k] = ColourGrid(box[0], box[1], shape, float(state[f"{prefix}grids.{k}.gain"]), device)
        return mc
