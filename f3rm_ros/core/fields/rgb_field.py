"""The RGB radiance field (nerfacto-style): hash grid -> geometry MLP -> density + geometry features;
geometry features + SH(direction) + per-image appearance embedding -> colour MLP -> RGB."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from f3rm_ros.core.config import param
from f3rm_ros.core.fields.common import contract_to_unit, make_mlp, trunc_exp
from f3rm_ros.core.fields.encodings import SHEncoding
from f3rm_ros.core.hashgrid import HashGrid, HashGridConfig

__all__ = ["RGBFieldConfig", "RGBField"]


@dataclass
class RGBFieldConfig:
    """Defaults: nerfstudio's NerfactoField (num_layers=2 / 3 there = 1 / 2 hidden layers here)."""

    grid: HashGridConfig = param(HashGridConfig(), "position hash grid (16 levels x 2 features, 2^19, 16..2048)")
    geo_hidden_dim: int = param(64, "geometry MLP width", range=(1, 4096))
    geo_num_hidden_layers: int = param(1, "geometry MLP hidden layers", range=(0, 16))
    geo_feat_dim: int = param(15, "geometry features passed to the colour MLP", range=(1, 1024))
    color_hidden_dim: int = param(64, "colour MLP width", range=(1, 4096))
    color_num_hidden_layers: int = param(2, "colour MLP hidden layers", range=(0, 16))
    sh_degree: int = param(4, "spherical-harmonics degree of the direction encoding (4 -> 25 dims)", range=(0, 4))
    appearance_embedding_dim: int = param(32, "per-training-image appearance embedding size (0 = off)",
                                          range=(0, 1024))
    average_appearance_for_eval: bool = param(True, "use the mean embedding for images without one (eval)")


class RGBField(nn.Module):
    """Density and view-dependent colour at points of the (normalised) field frame.

    Args:
        config: sizes.
        num_images: number of training images (appearance embeddings).
        device: where to build it (also decides the hash grid backend).
    """

    def __init__(self, config: RGBFieldConfig, num_images: int, device: torch.device | str | None = None):
        super().__init__()
        self.config = config
        self.grid = HashGrid(config.grid, device)
        self.geo_mlp = make_mlp(self.grid.out_dim, config.geo_hidden_dim, config.geo_num_hidden_layers,
                                1 + config.geo_feat_dim)
        self.dir_enc = SHEncoding(config.sh_degree)
        self.num_images = max(1, int(num_images))
        self.appearance = nn.Embedding(self.num_images, config.appearance_embedding_dim) \
            if config.appearance_embedding_dim > 0 else None
        if self.appearance is not None:
            nn.init.uniform_(self.appearance.weight, -0.05, 0.05)
        in_color = config.geo_feat_dim + self.dir_enc.out_dim + config.appearance_embedding_dim
        self.color_mlp = make_mlp(in_color, config.color_hidden_dim, config.color_num_hidden_layers, 3, nn.Sigmoid())
        self.to(device)

    def density(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Density and geometry features.

        Args:
            positions: field-frame points  # [..., 3]
        Returns:
            density (1 / field unit)  # [...]
            geometry features  # [..., geo_feat_dim]
        """
        h = self.geo_mlp(self.grid(contract_to_unit(positions)))
        return trunc_exp(h[..., 0].float()), h[..., 1:]

    def forward(self, positions: Tensor, directions: Tensor, camera_idx: Tensor | None) -> tuple[Tensor, Tensor]:
        """Density and colour.

        Args:
            positions: field-frame sample points  # [R, S, 3]
            directions: unit ray directions  # [R, 3], or one per sample  # [R, S, 3]
            camera_idx: training image index per ray, or None / -1 entries for "no image" (the mean
                embedding, or zeros if ``average_appearance_for_eval`` is off)  # [R]
        Returns:
            density  # [R, S]
            rgb in [0, 1]  # [R, S, 3]
        """
        density, geo = self.density(positions)
        R, S = positions.shape[:2]
        enc = self.dir_enc(directions)
        parts = [geo, (enc if directions.dim() == 3 else enc[:, None, :].expand(R, S, -1)).to(geo.dtype)]
        if self.appearance is not None:
            parts.append(self.appearance_for(camera_idx, R)[:, None, :].expand(R, S, -1).to(geo.dtype))
        rgb = self.color_mlp(torch.cat(parts, dim=-1))
        return density, rgb

    def appearance_for(self, camera_idx: Tensor | None, num_rays: int) -> Tensor:  # -> [R, A]
        """Appearance embedding per ray (mean or zeros where the index is None or < 0)."""
        w = self.appearance.weight
        fallback = w.mean(0) if self.config.average_appearance_for_eval else torch.zeros_like(w[0])
        if camera_idx is None:
            return fallback.expand(num_rays, -1)
        idx = camera_idx.long()
        # the range check reads the indices on the host: skipped while a CUDA graph is being captured
        # (a sync is not allowed there); the capturing trainer draws indices in range by construction
        if not (idx.is_cuda and torch.cuda.is_current_stream_capturing()) and (idx >= self.num_images).any():
            raise ValueError(f"camera index out of range (num_images={self.num_images})")
        emb = self.appearance(idx.clamp_min(0))
        return torch.where((idx >= 0)[:, None], emb, fallback.expand_as(emb))
