"""Image preprocessing shared by the ViT extractors: short-side resize (no centre crop), normalise.

The resized size follows torchvision's ``Resize(int)`` rule: the short side becomes ``short`` and
the long side ``int(short * long / short_in)`` (truncated), so 1280x720 at 336 becomes 597x336.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["resized_size", "images_to_tensor", "resize_short_side", "normalize"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resized_size(height: int, width: int, short: int) -> tuple[int, int]:
    """(new_height, new_width) with the short side = ``short`` (torchvision ``Resize(int)`` rule)."""
    if short <= 0:
        raise ValueError(f"short side must be positive, got {short}")
    if height <= width:
        return short, int(short * width / height)
    return int(short * height / width), short


def images_to_tensor(images: Sequence[np.ndarray], device: torch.device | str = "cpu") -> Tensor:
    """Stack ``HxWx3 uint8`` images into a float tensor ``[B, 3, H, W]`` in [0, 1] on ``device``."""
    arr = np.stack([np.asarray(im) for im in images])  # [B, H, W, 3]
    x = torch.from_numpy(arr).to(device)
    return x.permute(0, 3, 1, 2).float().div_(255.0)


def resize_short_side(x: Tensor,  # [B, 3, H, W] float in [0, 1]
                      short: int, mode: str = "bicubic") -> Tensor:  # [B, 3, H', W']
    """Resize so the short side is ``short`` (antialiased when shrinking; as torchvision on tensors)."""
    h, w = resized_size(x.shape[-2], x.shape[-1], short)
    if (h, w) == tuple(x.shape[-2:]):
        return x
    return F.interpolate(x, size=(h, w), mode=mode, align_corners=False, antialias=True)


def normalize(x: Tensor,  # [B, 3, H, W]
              mean: Sequence[float], std: Sequence[float]) -> Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s
