"""Volume rendering along rays (nerfacc style: takes tensors, never a model).

Samples along a ray are intervals ``[t_i, t_{i+1}]`` (ray distance, unit directions), given as the
``S + 1`` edges ``t  # [R, S+1]``. With densities ``sigma  # [R, S]``:

    delta_i = t_{i+1} - t_i,  alpha_i = 1 - exp(-sigma_i delta_i),
    T_i = exp(-sum_{j<i} sigma_j delta_j),  w_i = T_i alpha_i   (w_i >= 0, sum_i w_i <= 1).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["render_weights", "render_weights_reference", "composite", "render_rgb", "render_depth",
           "render_accumulation", "render_features", "sample_midpoints"]


def sample_midpoints(origins: Tensor, directions: Tensor, t_edges: Tensor) -> Tensor:
    """Interval midpoints ``o + d * (t_i + t_{i+1}) / 2``.

    Args:
        origins  # [R, 3]
        directions (unit)  # [R, 3]
        t_edges  # [R, S+1]
    Returns:
        positions  # [R, S, 3]
    """
    mid = 0.5 * (t_edges[:, 1:] + t_edges[:, :-1])
    return origins[:, None, :] + directions[:, None, :] * mid[..., None]


def render_weights(sigma: Tensor, t_edges: Tensor) -> Tensor:
    """Rendering weights ``w_i = T_i alpha_i`` (see module docstring).

    Args:
        sigma: densities >= 0  # [R, S]
        t_edges: interval edges along each ray, increasing  # [R, S+1]
    Returns:
        weights  # [R, S]
    """
    if t_edges.shape[-1] != sigma.shape[-1] + 1 or t_edges.shape[:-1] != sigma.shape[:-1]:
        raise ValueError(f"t_edges {tuple(t_edges.shape)} must be sigma {tuple(sigma.shape)} plus one edge")
    sd = sigma.float() * (t_edges[..., 1:] - t_edges[..., :-1]).float()
    alpha = 1.0 - torch.exp(-sd)
    trans = torch.exp(-torch.cumsum(torch.cat([torch.zeros_like(sd[..., :1]), sd[..., :-1]], dim=-1), dim=-1))
    return trans * alpha


def render_weights_reference(sigma: Tensor, t_edges: Tensor) -> Tensor:
    """Loop reference of :func:`render_weights` (product of (1 - alpha_j) over j < i), for tests."""
    sd = (sigma * (t_edges[..., 1:] - t_edges[..., :-1])).double()
    alpha = 1.0 - torch.exp(-sd)
    out = torch.zeros_like(alpha)
    trans = torch.ones_like(alpha[..., 0])
    for i in range(alpha.shape[-1]):
        out[..., i] = trans * alpha[..., i]
        trans = trans * (1.0 - alpha[..., i])
    return out


def composite(weights: Tensor, values: Tensor) -> Tensor:
    """``sum_i w_i v_i``: weights ``[R, S]``, values ``[R, S, C]`` -> ``[R, C]``."""
    return (weights[..., None] * values.to(weights.dtype)).sum(dim=-2)


def render_accumulation(weights: Tensor) -> Tensor:  # [R, S] -> [R]
    """Opacity ``sum_i w_i`` per ray."""
    return weights.sum(dim=-1)


def render_rgb(weights: Tensor, rgb: Tensor,
               background: Literal["last_sample", "black", "white"] | Tensor = "last_sample") -> Tensor:
    """Composited colour, with the remaining transmittance filled by the background.

    Args:
        weights  # [R, S]
        rgb: per-sample colours in [0, 1]  # [R, S, 3]
        background: "last_sample" (the last sample's colour, nerfacto's default with far = 1000),
            "black", "white", or a colour tensor  # [3] or [R, 3]
    Returns:
        rgb  # [R, 3]
    """
    comp = composite(weights, rgb)
    if isinstance(background, str):
        if background == "last_sample":
            bg = rgb[:, -1, :].to(comp.dtype)
        elif background == "black":
            bg = torch.zeros_like(comp)
        elif background == "white":
            bg = torch.ones_like(comp)
        else:
            raise ValueError(f"unknown background {background!r}; use last_sample, black, white or a colour")
    else:
        bg = background.to(comp)
    return comp + bg * (1.0 - render_accumulation(weights))[:, None]


def render_depth(weights: Tensor, t_edges: Tensor, eps: float = 1e-10) -> Tensor:
    """Expected ray distance ``sum w_i t_mid_i / sum w_i``, clipped to ``[t_0, t_S]``  # [R]."""
    mid = 0.5 * (t_edges[..., 1:] + t_edges[..., :-1])
    depth = (weights * mid).sum(-1) / (weights.sum(-1) + eps)
    return torch.minimum(torch.maximum(depth, t_edges[..., 0]), t_edges[..., -1])


def render_features(weights: Tensor, features: Tensor) -> Tensor:
    """Rendered features ``sum_i w_i f_i`` (F3RM: not divided by the accumulation)  # [R, D]."""
    return composite(weights, features)
