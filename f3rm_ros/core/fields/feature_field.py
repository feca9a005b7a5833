"""The feature field (F3RM): hash grid (12 levels x 8 features, 16..128) + 6-frequency sin/cos PE
-> MLP (2 hidden layers of 64, ReLU, linear output) -> D raw (not normalised) features."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from f3rm_ros.core.config import param
from f3rm_ros.core.fields.common import contract_to_unit, make_mlp
from f3rm_ros.core.fields.encodings import FrequencyEncoding
from f3rm_ros.core.hashgrid import HashGrid, HashGridConfig
from f3rm_ros.core.ops.feature_render import render_linear_head_fused, render_linear_head_reference

__all__ = ["FeatureFieldConfig", "FeatureField"]


@dataclass
class FeatureFieldConfig:
    """Defaults: f3rm's FeatureFieldModelConfig (feat_* settings)."""

    grid: HashGridConfig = param(HashGridConfig(num_levels=12, features_per_level=8, log2_hashmap_size=19,
                                                base_res=16, max_res=128), "feature hash grid")
    use_pe: bool = param(True, "concatenate a sin/cos positional encoding of the contracted position")
    pe_num_frequencies: int = param(6, "PE frequencies 2^0..2^(n-1) (times pi)", range=(1, 16))
    hidden_dim: int = param(64, "MLP width", range=(1, 4096))
    num_hidden_layers: int = param(2, "MLP hidden layers", range=(1, 16))
    fused_render: bool = param(True, "render hidden activations then apply the linear head once per ray "
                                     "(same result, no [rays, samples, D] tensor; ops.feature_render)")


class FeatureField(nn.Module):
    """``forward(positions [..., 3] field frame) -> features [..., feature_dim]``.

    Args:
        config: sizes.
        feature_dim: D, the distilled 2D features' dimension (768 for CLIP ViT-L/14).
        device: where to build it (also decides the hash grid backend).
    """

    def __init__(self, config: FeatureFieldConfig, feature_dim: int, device: torch.device | str | None = None):
        super().__init__()
        if feature_dim < 1:
            raise ValueError(f"feature_dim must be >= 1, got {feature_dim}")
        self.config = config
        self.feature_dim = int(feature_dim)
        self.grid = HashGrid(config.grid, device)
        self.pe = FrequencyEncoding(3, config.pe_num_frequencies, 0.0, config.pe_num_frequencies - 1.0) \
            if config.use_pe else None
        in_dim = self.grid.out_dim + (self.pe.out_dim if self.pe is not None else 0)
        mlp = make_mlp(in_dim, config.hidden_dim, config.num_hidden_layers, self.feature_dim)
        self.trunk = mlp[:-1]  # ends with ReLU: last hidden activation [.., hidden_dim]
        self.head = mlp[-1]  # linear, no output activation
        self.to(device)

    def hidden(self, positions: Tensor) -> Tensor:  # [..., 3] -> [..., hidden_dim]
        """Last hidden activation (before the linear head)."""
        u = contract_to_unit(positions)
        parts = [self.grid(u)]
        if self.pe is not None:
            parts.append(self.pe(u))
        return self.trunk(torch.cat(parts, dim=-1))

    def forward(self, positions: Tensor) -> Tensor:  # [..., 3] -> [..., D]
        return self.head(self.hidden(positions))

    def render(self, positions: Tensor, weights: Tensor) -> Tensor:
        """Rendered features ``sum_s w_s f(p_s)`` (positions detached by the caller).

        Args:
            positions  # [R, S, 3]
            weights  # [R, S]
        Returns:
            [R, D] float32
        """
        h = self.hidden(positions)
        if self.config.fused_render:
            return render_linear_head_fused(h, weights, self.head.weight, self.head.bias).float()
        return render_linear_head_reference(h, weights, self.head.weight, self.head.bias).float()
