"""Per-ray feature targets from cached 2D feature maps, and a synthetic smooth feature map.

Feature maps are ``[N_images, h, w, D]`` in the dataset's frame order (as
``f3rm_ros.core.features.extract_dataset_features`` returns them). A ray through pixel (column x,
row y) of a ``W x H`` image takes the nearest patch: ``feat[img, floor(y * h / H), floor(x * w / W)]``
(F3RM's lookup, with integer pixel indices).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["nearest_patch_targets", "synthetic_feature_maps", "SYNTHETIC_EXTRACTOR_INFO"]


def nearest_patch_targets(feature_maps: Tensor,  # [N, h, w, D]
                          image_idx: Tensor,  # [R] int, dataset frame index
                          px: Tensor,  # [R] int column in [0, W)
                          py: Tensor,  # [R] int row in [0, H)
                          image_w: Tensor | int,  # [R] or scalar: that image's width in pixels
                          image_h: Tensor | int) -> Tensor:  # [R, D]
    """Nearest-patch feature target of each ray (see module docstring)."""
    _, h, w, _ = feature_maps.shape
    fy = torch.div(py.long() * h, torch.as_tensor(image_h, device=py.device), rounding_mode="floor").clamp(0, h - 1)
    fx = torch.div(px.long() * w, torch.as_tensor(image_w, device=px.device), rounding_mode="floor").clamp(0, w - 1)
    return feature_maps[image_idx.long(), fy, fx]


SYNTHETIC_EXTRACTOR_INFO = {"name": "synthetic", "type": "synthetic",
                            "settings": {"note": "patch-averaged colours through a fixed random sin map"}}


def synthetic_feature_maps(images: np.ndarray | list[np.ndarray],  # N x [H, W, 3] uint8
                           dim: int = 16, patch: int = 14, seed: int = 0) -> Tensor:  # [N, h, w, D]
    """A smooth, view-consistent stand-in for CLIP features (no weights needed).

    Each image is average-pooled into ``patch x patch`` pixel patches (grid ``ceil(H/patch) x
    ceil(W/patch)``); the mean colour c of a patch maps to ``sin(A c + b)`` with a fixed random
    ``A [D, 3]`` (std 3) and ``b [D]``. Features of a Lambertian surface point are therefore
    (nearly) the same in every view, like distilled features, and vary smoothly.
    """
    if dim < 1 or patch < 1:
        raise ValueError(f"dim and patch must be >= 1, got {dim}, {patch}")
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(dim, 3, generator=g) * 3.0
    b = torch.rand(dim, generator=g) * 2 * np.pi
    out = []
    for img in images:
        x = torch.from_numpy(np.array(img, dtype=np.float32)).permute(2, 0, 1)[None] / 255.0  # [1, 3, H, W]
        pooled = torch.nn.functional.avg_pool2d(x, patch, stride=patch, ceil_mode=True)[0]  # [3, h, w]
        out.append(torch.sin(torch.einsum("dc,chw->hwd", A, pooled) + b))
    shapes = {tuple(o.shape) for o in out}
    if len(shapes) != 1:
        raise ValueError(f"images give different feature grid sizes {sorted(shapes)}; resize them first")
    return torch.stack(out)
