"""The full model: two proposal density nets + RGB field + feature field, sampled and rendered.

Rays are in the normalised field frame (see ``f3rm_ros.core.dataset.normalise_poses``).
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from f3rm_ros.core.config import param
from f3rm_ros.core.fields.density_field import ProposalDensityField, ProposalNetConfig
from f3rm_ros.core.hashgrid import HashGridConfig
from f3rm_ros.core.fields.feature_field import FeatureField, FeatureFieldConfig
from f3rm_ros.core.fields.moved_colour import MovedColour
from f3rm_ros.core.fields.rendering import (render_accumulation, render_depth, render_rgb,
                                            render_weights, sample_midpoints)
from f3rm_ros.core.fields.rgb_field import RGBField, RGBFieldConfig
from f3rm_ros.core.fields.sampler import ProposalSampler, ProposalSamplerConfig

__all__ = ["FieldModelConfig", "FieldModel"]


@dataclass
class FieldModelConfig:
    """All networks and the sampler (reference defaults: nerfacto + F3RM's feature field)."""

    rgb: RGBFieldConfig = param(RGBFieldConfig(), "RGB field")
    proposal_1: ProposalNetConfig = param(ProposalNetConfig(), "first proposal net (max_res 128)")
    proposal_2: ProposalNetConfig = param(
        ProposalNetConfig(grid=HashGridConfig(num_levels=5, features_per_level=2, log2_hashmap_size=17,
                                              base_res=16, max_res=256)), "second proposal net (max_res 256)")
    feature: FeatureFieldConfig = param(FeatureFieldConfig(), "feature field")
    sampler: ProposalSamplerConfig = param(ProposalSamplerConfig(), "proposal sampler")
    background: Literal["last_sample", "black", "white"] = param(
        "last_sample", "colour behind the last sample", choices=("last_sample", "black", "white"))


class FieldModel(nn.Module):
    """Proposal nets, RGB field and (when ``feature_dim > 0``) the feature field.

    Args:
        config: the model settings.
        num_images: number of training images (appearance embeddings).
        feature_dim: D of the distilled features, 0 for no feature field.
        device: where to build it.
    """

    def __init__(self, config: FieldModelConfig, num_images: int, feature_dim: int = 0,
                 device: torch.device | str | None = None):
        super().__init__()
        self.config = config
        self.rgb_field = RGBField(config.rgb, num_images, device)
        self.proposal_nets = nn.ModuleList([ProposalDensityField(config.proposal_1, device),
                                            ProposalDensityField(config.proposal_2, device)])
        if len(config.sampler.num_proposal_samples) != len(self.proposal_nets):
            raise ValueError(f"sampler.num_proposal_samples needs {len(self.proposal_nets)} entries")
        self.feature_field = FeatureField(config.feature, feature_dim, device) if feature_dim > 0 else None
        self.feature_dim = int(feature_dim)
        self.sampler = ProposalSampler(config.sampler)
        # a refresh through edits: the moved things' own colour (fields.moved_colour), read through a warp only
        self.moved_colour: MovedColour | None = None

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # noqa: ANN001, ANN201
        """``nn.Module.load_state_dict``; the moved things' colour grids (``moved_colour.*``, a refresh through edits)
        are made to the state's shapes first, and dropped when the state has none."""
        dev = next(self.parameters()).device
        self.moved_colour = MovedColour.from_state(state_dict, device=dev)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def hashgrid_backends(self) -> dict[str, str]:
        """Which backend each hash grid runs on."""
        out = {"rgb": self.rgb_field.grid.backend,
               **{f"proposal_{i + 1}": p.grid.backend for i, p in enumerate(self.proposal_nets)}}
        if self.feature_field is not None:
            out["feature"] = self.feature_field.grid.backend
        return out

    def render_rays(self, origins: Tensor, directions: Tensor, camera_idx: Tensor | None = None, *,
                    training: bool = False, step: int = 0, update_proposals: bool = True,
                    with_features: bool = True, generator: torch.Generator | None = None,
                    warp: Callable[[Tensor, Tensor, Tensor | None], tuple[Tensor, Tensor, Tensor]] | None = None
                    ) -> dict[str, Tensor]:
        """Sample and render rays.

        Args:
            origins, directions (unit), field frame  # [R, 3]
            camera_idx: training image per ray (appearance), None or -1 = mean appearance  # [R]
            training: jitter + annealing; proposals returned for the interlevel loss
            step: training step (annealing)
            update_proposals: whether proposal nets get gradients
            with_features: also render features (if there is a feature field)
            warp: the scene seen through edits (``f3rm_ros.core.edits.FieldWarp``): ``warp(positions [R, S, 3],
                directions, camera_idx) -> (positions, directions [R, S, 3], empty [R, S])``; every net (proposals
                included) is read at the warped samples, with the warped view directions, and the empty samples
                have no density; with :attr:`moved_colour`, the samples an edit moved get their colour residual
                (``warp(..., mover=True)`` gives the oldest edit that moved each sample). None: the field as it is.
        Returns:
            dict with rgb [R,3], depth [R] (ray distance, field units), accumulation [R],
            weights [R,N], s_edges / t_edges [R,N+1], proposals (list), and features [R,D] if rendered.
        """
        nets: list = list(self.proposal_nets)
        if warp is not None:
            nets = [_warped_density(net, warp, directions, camera_idx) for net in nets]
        s, t, proposals = self.sampler(origins, directions, nets, training=training, step=step,
                                       update_proposals=update_proposals, generator=generator)
        positions = sample_midpoints(origins, directions, t)
        if warp is None:
            density, rgb = self.rgb_field(positions, directions, camera_idx)
        else:
            mover = None
            if self.moved_colour is not None and len(self.moved_colour):
                positions, dirs, empty, mover = warp(positions, directions, camera_idx, mover=True)
            else:
                positions, dirs, empty = warp(positions, directions, camera_idx)
            density, rgb = self.rgb_field(positions, dirs, camera_idx)
            if mover is not None:
                rgb = self.moved_colour.apply(rgb, positions, mover)
            density = torch.where(empty, torch.zeros_like(density), density)
        weights = render_weights(density, t)
        out: dict = {
            "rgb": render_rgb(weights, rgb, self.config.background),
            "depth": render_depth(weights, t),
            "accumulation": render_accumulation(weights),
            "weights": weights, "s_edges": s, "t_edges": t, "proposals": proposals,
        }
        if with_features and self.feature_field is not None:
            out["features"] = self.feature_field.render(positions.detach(), weights)
        return out


def _warped_density(net: nn.Module, warp: Callable, directions: Tensor, camera_idx: Tensor | None
                    ) -> Callable[[Tensor], Tensor]:
    """A proposal net read through ``warp`` (render_rays): zero density where the warp says empty."""

    def fn(positions: Tensor) -> Tensor:
        p, _, empty = warp(positions, directions, camera_idx)
        sigma = net(p)
        return torch.where(empty, torch.zeros_like(sigma), sigma)

    return fn
