"""Proposal sampling (mip-NeRF 360 / nerfacto): uniform samples in a piecewise linear/disparity
spacing, then two proposal density nets resample by inverse-CDF (256 -> 96 -> 48 samples).

Spacing: ``g(t) = t/2`` for ``t < 1`` and ``1 - 1/(2t)`` beyond (linear near the cameras,
disparity far away); ``s = (g(t) - g(near)) / (g(far) - g(near))`` is in [0, 1] and the samplers
work on ``s``. The density functions are passed in (``fn(positions [R, S, 3]) -> density [R, S]``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from f3rm_ros.core.config import param
from f3rm_ros.core.fields.rendering import render_weights, sample_midpoints

__all__ = ["ProposalSamplerConfig", "ProposalSampler", "spacing_fn", "spacing_inv", "s_to_t",
           "uniform_s_edges", "pdf_s_edges"]


def spacing_fn(t: Tensor) -> Tensor:
    """``g(t)``: t/2 for t < 1, 1 - 1/(2t) beyond."""
    return torch.where(t < 1, t / 2, 1 - 1 / (2 * t.clamp_min(1e-6)))


def spacing_inv(g: Tensor) -> Tensor:
    """Inverse of :func:`spacing_fn` (g in [0, 1))."""
    return torch.where(g < 0.5, 2 * g, 1 / (2 * (1 - g).clamp_min(1e-12)))


def s_to_t(s: Tensor, near: float, far: float) -> Tensor:
    """Normalised spacing ``s`` in [0, 1] -> ray distance in [near, far]."""
    g0 = spacing_fn(torch.tensor(float(near)))
    g1 = spacing_fn(torch.tensor(float(far)))
    t = spacing_inv(g0 + s * (g1 - g0))
    return t.clamp(near, far)


def uniform_s_edges(num_rays: int, num_samples: int, jitter: bool, device: torch.device,
                    generator: torch.Generator | None = None) -> Tensor:
    """``num_samples`` intervals uniform in s (one random shift per ray when ``jitter``)  # [R, S+1]."""
    e = torch.linspace(0.0, 1.0, num_samples + 1, device=device).expand(num_rays, -1)
    if not jitter:
        return e.contiguous()
    mid = 0.5 * (e[:, 1:] + e[:, :-1])
    upper = torch.cat([mid, e[:, -1:]], dim=-1)
    lower = torch.cat([e[:, :1], mid], dim=-1)
    u = torch.rand(num_rays, 1, device=device, generator=generator)
    return lower + (upper - lower) * u


def pdf_s_edges(s_edges: Tensor, weights: Tensor, num_samples: int, jitter: bool, padding: float = 0.01,
                generator: torch.Generator | None = None, eps: float = 1e-5) -> Tensor:
    """Inverse-CDF resampling of the piecewise-constant pdf given by ``weights`` over ``s_edges``.

    Args:
        s_edges: increasing edges  # [R, S+1]
        weights: non-negative weights per interval  # [R, S]
        num_samples: number of new intervals (``num_samples + 1`` edges are drawn)
        jitter: one random offset per ray (training) instead of fixed quantiles (eval)
        padding: added to every weight before normalising (keeps all intervals reachable)
    Returns:
        new sorted edges, detached  # [R, num_samples+1]
    """
    s_edges = s_edges.detach()
    w = weights.detach().float() + padding
    pdf = w / w.sum(-1, keepdim=True).clamp_min(eps)
    cdf = torch.cumsum(pdf, dim=-1).clamp(max=1.0)
    cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf], dim=-1)  # [R, S+1]
    n = num_samples + 1
    R = s_edges.shape[0]
    if jitter:
        u = torch.linspace(0.0, 1.0 - 1.0 / n, n, device=s_edges.device).expand(R, -1)
        u = u + torch.rand(R, 1, device=s_edges.device, generator=generator) / n
    else:
        u = torch.linspace(0.0, 1.0, n, device=s_edges.device).expand(R, -1)
    u = u.contiguous().clamp(0.0, 1.0)
    idx = torch.searchsorted(cdf.contiguous(), u, side="right")
    lo = (idx - 1).clamp(0, cdf.shape[-1] - 1)
    hi = idx.clamp(0, cdf.shape[-1] - 1)
    c_lo, c_hi = cdf.gather(1, lo), cdf.gather(1, hi)
    s_lo, s_hi = s_edges.gather(1, lo), s_edges.gather(1, hi)
    frac = torch.where(c_hi - c_lo > 0, (u - c_lo) / (c_hi - c_lo).clamp_min(1e-12), torch.zeros_like(u))
    out = s_lo + frac.clamp(0, 1) * (s_hi - s_lo)
    return torch.sort(out, dim=-1).values.detach()


@dataclass
class ProposalSamplerConfig:
    """Defaults: nerfacto (proposal (256, 96) -> 48, near 0.05, far 1000, update every 5 after warm-up)."""

    num_proposal_samples: tuple[int, int] = param((256, 96), "samples per ray for proposal nets 1 and 2")
    num_samples: int = param(48, "samples per ray for the RGB and feature fields", range=(1, 4096))
    near: float = param(0.05, "near plane (field units)", range=(0.0, 1e6))
    far: float = param(1000.0, "far plane (field units)", range=(1e-6, 1e9))
    single_jitter: bool = param(True, "one random offset per ray in training")
    histogram_padding: float = param(0.01, "pdf padding", range=(0.0, 1.0))
    proposal_update_every: int = param(5, "train proposal nets every k steps (after the warm-up)", range=(1, 1000))
    proposal_warmup: int = param(5000, "steps over which the update interval grows from 1 to k",
                                 range=(0, 10_000_000))
    anneal_slope: float = param(10.0, "proposal weight annealing slope", range=(0.0, 1e6))
    anneal_max_steps: int = param(1000, "steps until proposal weight annealing ends", range=(1, 10_000_000))


class ProposalSampler:
    """Hierarchical proposal sampling; stateless except for the proposal-update counter.

    ``anneal_tensor`` (default None): when set to a 0-dim float tensor on the rays' device, training
    uses its value as the annealing exponent instead of the Python float ``anneal(step)``. Its owner
    fills it before each step; a CUDA graph that captured the sampler then reads the current value
    on every replay instead of the number baked in at capture (the trainer's ``cuda_graphs`` path).
    """

    def __init__(self, config: ProposalSamplerConfig):
        if len(config.num_proposal_samples) < 1:
            raise ValueError("need at least one proposal level")
        if config.far <= config.near:
            raise ValueError(f"far ({config.far}) must be > near ({config.near})")
        self.config = config
        self.steps_since_update = 0
        self.anneal_tensor: Tensor | None = None

    def anneal(self, step: int) -> float:
        """Exponent applied to proposal weights before resampling (0 -> 1 over the first steps)."""
        c = self.config
        x = float(np.clip(step / c.anneal_max_steps, 0.0, 1.0))
        b = c.anneal_slope
        return (b * x) / ((b - 1) * x + 1) if b != 1 else x

    def should_update(self, step: int) -> bool:
        """Whether proposal nets get gradients this step (advances the counter: call once per step)."""
        c = self.config
        every = float(np.clip(np.interp(step, [0, max(1, c.proposal_warmup)], [0, c.proposal_update_every]),
                              1, c.proposal_update_every))
        update = self.steps_since_update > every or step < 10
        self.steps_since_update = 0 if update else self.steps_since_update + 1
        return update

    def __call__(self, origins: Tensor, directions: Tensor,
                 density_fns: Sequence[Callable[[Tensor], Tensor]], *, training: bool, step: int = 0,
                 update_proposals: bool = True, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, Tensor, list[tuple[Tensor, Tensor]]]:
        """Sample rays.

        Args:
            origins, directions (unit)  # [R, 3]
            density_fns: one per proposal level, ``fn(positions [R, S, 3]) -> density [R, S]``
            training: jitter and annealing on
            step: training step (annealing)
            update_proposals: False runs the proposal nets without autograd
        Returns:
            s_edges  # [R, N+1] normalised spacing edges of the final samples
            t_edges  # [R, N+1] ray distances of the final samples
            proposals: per level (s_edges [R, S_k+1], weights [R, S_k]) for the interlevel loss
        """
        c = self.config
        if len(density_fns) != len(c.num_proposal_samples):
            raise ValueError(f"{len(density_fns)} density functions for {len(c.num_proposal_samples)} proposal levels")
        R = origins.shape[0]
        jitter = training and c.single_jitter
        if not training:
            anneal: float | Tensor = 1.0
        else:
            anneal = self.anneal_tensor if self.anneal_tensor is not None else self.anneal(step)
        proposals: list[tuple[Tensor, Tensor]] = []
        s = uniform_s_edges(R, c.num_proposal_samples[0], jitter, origins.device, generator)
        for k, fn in enumerate(density_fns):
            if k > 0:
                s = pdf_s_edges(s, proposals[-1][1].detach() ** anneal, c.num_proposal_samples[k], jitter,
                                c.histogram_padding, generator)
            t = s_to_t(s, c.near, c.far)
            ctx = contextlib.nullcontext() if update_proposals else torch.no_grad()
            with ctx:
                sigma = fn(sample_midpoints(origins, directions, t))
                w = render_weights(sigma, t)
            proposals.append((s, w))
        s = pdf_s_edges(s, proposals[-1][1].detach() ** anneal, c.num_samples, jitter, c.histogram_padding,
                        generator)
        return s, s_to_t(s, c.near, c.far), proposals
