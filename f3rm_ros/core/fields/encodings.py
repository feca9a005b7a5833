"""Input encodings: spherical harmonics and frequency (sin/cos); the hash grid lives in :mod:`f3rm_ros.core.hashgrid`.

:class:`HashGrid`, :class:`HashGridConfig` and the backend checks are re-exported here for code that imported
them from this module before the hash grid got its package.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from f3rm_ros.core.hashgrid.module import HashGrid, HashGridConfig, resolve_hashgrid_backend, tcnn_usable, triton_usable

__all__ = [
    "HashGridConfig",
    "HashGrid",
    "triton_usable",
    "tcnn_usable",
    "resolve_hashgrid_backend",
    "SHEncoding",
    "spherical_harmonics",
    "FrequencyEncoding",
]


# ----------------------------------------------------------------------------- spherical harmonics
def spherical_harmonics(d: Tensor, degree: int = 4) -> Tensor:  # [..., 3] unit -> [..., (degree+1)^2]
    """Real spherical harmonics of unit directions, bands 0..degree (at most 4), in the order
    Y_0^0, Y_1^-1, Y_1^0, Y_1^1, Y_2^-2, ... with the sign convention of tiny-cuda-nn's SH encoding.

    Args:
        d: unit directions  # [..., 3]
        degree: highest band l (0..4); output dim (degree+1)^2 (25 for 4).
    """
    if not 0 <= degree <= 4:
        raise ValueError(f"SH degree must be in 0..4, got {degree}")
    if d.shape[-1] != 3:
        raise ValueError(f"directions must be [..., 3], got {tuple(d.shape)}")
    x, y, z = d[..., 0], d[..., 1], d[..., 2]
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree >= 1:
        out += [-0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x]
    if degree >= 2:
        x2, y2, z2 = x * x, y * y, z * z
        out += [1.0925484305920792 * x * y, -1.0925484305920792 * y * z,
                0.94617469575755997 * z2 - 0.31539156525251999, -1.0925484305920792 * x * z,
                0.54627421529603959 * (x2 - y2)]
    if degree >= 3:
        out += [0.59004358992664352 * y * (-3.0 * x2 + y2), 2.8906114426405538 * x * y * z,
                0.45704579946446572 * y * (1.0 - 5.0 * z2), 0.3731763325901154 * z * (5.0 * z2 - 3.0),
                0.45704579946446572 * x * (1.0 - 5.0 * z2), 1.4453057213202769 * z * (x2 - y2),
                0.59004358992664352 * x * (-x2 + 3.0 * y2)]
    if degree >= 4:
        out += [2.5033429417967046 * x * y * (x2 - y2), 1.7701307697799304 * y * z * (-3.0 * x2 + y2),
                0.94617469575756008 * x * y * (7.0 * z2 - 1.0), 0.66904654355728921 * y * z * (3.0 - 7.0 * z2),
                -3.1735664074561294 * z2 + 3.7024941420321507 * z2 * z2 + 0.31735664074561293,
                0.66904654355728921 * x * z * (3.0 - 7.0 * z2), 0.47308734787878004 * (x2 - y2) * (7.0 * z2 - 1.0),
                1.7701307697799304 * x * z * (-x2 + 3.0 * y2),
                0.62583573544917614 * (x2 * x2 - 6.0 * x2 * y2 + y2 * y2)]
    return torch.stack(out, dim=-1)


class SHEncoding(nn.Module):
    """Spherical-harmonics direction encoding; ``degree`` 4 gives 25 outputs (nerfacto's ``levels=4``)."""

    def __init__(self, degree: int = 4):
        super().__init__()
        if not 0 <= degree <= 4:
            raise ValueError(f"SH degree must be in 0..4, got {degree}")
        self.degree = degree
        self.out_dim = (degree + 1) ** 2

    def forward(self, d: Tensor) -> Tensor:  # [..., 3] unit -> [..., out_dim]
        return spherical_harmonics(d, self.degree)


# --------------------------------------------------------------------------------------- frequency
class FrequencyEncoding(nn.Module):
    """sin/cos positional encoding: for k in 0..n-1, ``sin(2^e_k * pi * x)``, ``cos(2^e_k * pi * x)`` with
    exponents e_k evenly spaced in [min_exp, max_exp] (F3RM: 6 frequencies 2^0..2^5, inputs in [0, 1];
    output 3 * 2 * 6 = 36). Layout: [sin(all dims x all freqs), cos(...)], optionally the input first.
    """

    def __init__(self, in_dim: int = 3, num_frequencies: int = 6, min_exp: float = 0.0, max_exp: float = 5.0,
                 include_input: bool = False):
        super().__init__()
        if num_frequencies < 1:
            raise ValueError(f"num_frequencies must be >= 1, got {num_frequencies}")
        exps = torch.linspace(min_exp, max_exp, num_frequencies)
        self.register_buffer("freqs", math.pi * 2.0 ** exps, persistent=False)
        self.in_dim = in_dim
        self.include_input = include_input
        self.out_dim = in_dim * 2 * num_frequencies + (in_dim if include_input else 0)

    def forward(self, x: Tensor) -> Tensor:  # [..., in_dim] -> [..., out_dim]
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"expected [..., {self.in_dim}] inputs, got {tuple(x.shape)}")
        scaled = (x[..., :, None] * self.freqs).reshape(*x.shape[:-1], -1)
        parts = [x] if self.include_input else []
        return torch.cat(parts + [torch.sin(scaled), torch.cos(scaled)], dim=-1)
