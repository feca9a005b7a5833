"""Training losses: RGB MSE, interlevel (proposal) loss, distortion loss, feature MSE, depth (optional)."""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence

import torch
from torch import Tensor

from f3rm_ros.core.config import param

__all__ = ["LossConfig", "rgb_mse", "feature_mse", "outer_weights", "interlevel_loss", "distortion_loss",
           "distortion_loss_reference", "depth_loss", "psnr"]

_EPS = 1e-7


@dataclass
class LossConfig:
    """Loss weights (F3RM / nerfacto defaults)."""

    interlevel_mult: float = param(1.0, "interlevel (proposal) loss weight", range=(0.0, 1e6))
    distortion_mult: float = param(0.002, "distortion loss weight", range=(0.0, 1e6))
    feature_mult: float = param(1e-3, "feature MSE weight", range=(0.0, 1e6))
    depth_mult: float = param(0.0, "depth supervision weight where the dataset has depth images (F3RM has none: "
                                   "0 = off); see depth_loss", range=(0.0, 1e6))
    depth_margin_m: float = param(0.01, "depth supervision: rendering weight on samples that end more than this "
                                        "many metres in front of the measured surface is penalised (free space)",
                                  range=(0.0, 10.0))


def rgb_mse(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean squared error over rays and channels; ``pred, target  # [R, 3]``. ``weight`` [R] (e.g. 0 for a pixel
    whose colour is not to be trusted, 1 otherwise) weights each ray: the mean over the weighted rays (0 when every
    weight is 0)."""
    err = (pred.float() - target.float()) ** 2
    if weight is None:
        return torch.mean(err)
    w = weight.float()
    return (err.mean(-1) * w).sum() / w.sum().clamp(min=1e-6)


def feature_mse(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean squared error over rays and feature channels; ``pred, target  # [R, D]``; ``weight`` [R] as in
    :func:`rgb_mse` (0 for a pixel whose feature is not to be trusted)."""
    err = (pred.float() - target.float()) ** 2
    if weight is None:
        return torch.mean(err)
    w = weight.float()
    return (err.mean(-1) * w).sum() / w.sum().clamp(min=1e-6)


def depth_loss(weights: Tensor, t_edges: Tensor, target: Tensor, valid: Tensor, margin: float) -> Tensor:
    """Depth supervision from a depth camera (or the simulator): expected-depth L1 plus free space.

    Per ray with a measurement: ``|sum_i w_i t_i - d| + sum_{i: t_{i+1} < d - margin} w_i``, the second
    term being the opacity the ray meets in front of the measured surface (it removes "lids" over
    hollows and floaters, which the colour loss alone cannot see when the surface behind them is
    uniform: a mean depth could still be right with weight split in front of and behind it).
    Averaged over rays with ``valid`` (rays without a measurement contribute nothing; no boolean
    indexing, so the step stays capturable in a CUDA graph).

    Args:
        weights: final rendering weights  # [R, N]
        t_edges: sample interval edges along the ray, field units  # [R, N+1]
        target: measured distance along the (unit) ray direction, field units  # [R]
        valid: 1 where the ray has a measurement, 0 elsewhere (float or bool)  # [R]
        margin: free-space margin, field units.
    Returns:
        scalar loss.
    """
    w = weights.float()
    t = t_edges.float()
    mid = 0.5 * (t[:, 1:] + t[:, :-1])
    d = target.float()
    expected = (w * mid).sum(-1)
    free = (w * (t[:, 1:] < (d - margin)[:, None]).float()).sum(-1)
    v = valid.float()
    return ((expected - d).abs() + free).mul(v).sum() / v.sum().clamp(min=1.0)


def psnr(mse: Tensor | float) -> float:
    """PSNR in dB for images in [0, 1]."""
    m = float(mse)
    return float("inf") if m <= 0 else -10.0 * float(torch.log10(torch.tensor(m)))


def outer_weights(s: Tensor, s_env: Tensor, w_env: Tensor) -> Tensor:
    """For each interval of ``s  # [R, N+1]``, the summed envelope weights of the intervals of
    ``s_env  # [R, M+1]`` (weights ``w_env  # [R, M]``) that overlap it  # [R, N]."""
    cw = torch.cat([torch.zeros_like(w_env[:, :1]), torch.cumsum(w_env, dim=-1)], dim=-1)
    M = w_env.shape[-1]
    lo = (torch.searchsorted(s_env.contiguous(), s[:, :-1].contiguous(), side="right") - 1).clamp(0, M)
    hi = torch.searchsorted(s_env.contiguous(), s[:, 1:].contiguous(), side="right").clamp(0, M)
    return cw.gather(1, hi) - cw.gather(1, lo)


def interlevel_loss(s: Tensor, weights: Tensor, proposals: Sequence[tuple[Tensor, Tensor]]) -> Tensor:
    """mip-NeRF 360 proposal loss: each proposal's weights must bound the final weights from above.

    ``sum_levels mean_{rays, intervals} max(0, w - outer)^2 / (w + eps)`` with the final weights
    detached (only the proposal nets learn from it); mean over intervals as nerfstudio (its weight 1.0).

    Args:
        s: final normalised edges  # [R, N+1]
        weights: final weights  # [R, N]
        proposals: (s_edges [R, M+1], weights [R, M]) per proposal level
    """
    w = weights.detach().float()
    s = s.detach()
    total = torch.zeros((), device=w.device)
    for s_p, w_p in proposals:
        outer = outer_weights(s, s_p.detach(), w_p.float())
        total = total + torch.mean(torch.clamp(w - outer, min=0) ** 2 / (w + _EPS))
    return total


def distortion_loss(s: Tensor, weights: Tensor) -> Tensor:
    """mip-NeRF 360 distortion loss, mean over rays, in normalised spacing ``s``:
    ``sum_ij w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 (s_{i+1} - s_i)``, computed in O(N) with prefix sums.

    Args:
        s: edges  # [R, N+1]
        weights  # [R, N]
    """
    w = weights.float()
    mid = 0.5 * (s[:, 1:] + s[:, :-1]).float()
    width = (s[:, 1:] - s[:, :-1]).float()
    wm = w * mid
    w_before = torch.cumsum(w, -1) - w  # exclusive prefix sums (mid is increasing)
    wm_before = torch.cumsum(wm, -1) - wm
    pair = 2.0 * (w * (mid * w_before - wm_before)).sum(-1)
    self_term = (w * w * width).sum(-1) / 3.0
    return (pair + self_term).mean()


def distortion_loss_reference(s: Tensor, weights: Tensor) -> Tensor:
    """O(N^2) reference of :func:`distortion_loss` (tests)."""
    w = weights.double()
    mid = 0.5 * (s[:, 1:] + s[:, :-1]).double()
    width = (s[:, 1:] - s[:, :-1]).double()
    pair = (w[:, :, None] * w[:, None, :] * (mid[:, :, None] - mid[:, None, :]).abs()).sum((-1, -2))
    return (pair + (w * w * width).sum(-1) / 3.0).mean()
