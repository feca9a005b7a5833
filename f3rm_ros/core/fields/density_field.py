"""Proposal density networks: a small hash grid + tiny MLP -> density only (nerfacto's HashMLPDensityField)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from f3rm_ros.core.config import param
from f3rm_ros.core.fields.common import contract_to_unit, make_mlp, trunc_exp
from f3rm_ros.core.hashgrid import HashGrid, HashGridConfig

__all__ = ["ProposalNetConfig", "ProposalDensityField"]


@dataclass
class ProposalNetConfig:
    """Defaults: nerfacto's first proposal net (5 levels, 2^17, max_res 128, hidden 16, num_layers=2)."""

    grid: HashGridConfig = param(HashGridConfig(num_levels=5, features_per_level=2, log2_hashmap_size=17,
                                                base_res=16, max_res=128), "proposal hash grid")
    hidden_dim: int = param(16, "MLP width", range=(1, 1024))
    num_hidden_layers: int = param(1, "MLP hidden layers", range=(0, 16))


class ProposalDensityField(nn.Module):
    """``forward(positions [..., 3] field frame) -> density [...]`` (1 / field unit)."""

    def __init__(self, config: ProposalNetConfig, device: torch.device | str | None = None):
        super().__init__()
        self.config = config
        self.grid = HashGrid(config.grid, device)
        self.mlp = make_mlp(self.grid.out_dim, config.hidden_dim, config.num_hidden_layers, 1)
        self.to(device)

    def forward(self, positions: Tensor) -> Tensor:
        return trunc_exp(self.mlp(self.grid(contract_to_unit(positions)))[..., 0].float())
