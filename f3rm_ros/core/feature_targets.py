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

__all__ = ["nearest_patch_targets", "synthetic_feature_maps", "SYNTHETIC_EXTRACTOR_INFO", "features_from_extractor"]


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


def features_from_extractor(name: str, dataset, cache_dir, settings: dict | None = None
                            ) -> tuple[Tensor, dict]:
    """Feature maps of every frame from a 2D extractor of ``f3rm_ros.core.features`` (hook for the
    trainer CLI / node): builds ``FeaturesConfig(extractor=name, **settings)``, calls
    ``create_extractor_for_dataset`` (or ``create_extractor``) and
    ``extract_dataset_features(extractor, dataset, cache_dir)``.

    Returns:
        feature maps ``[N_frames, h, w, D]`` and the extractor info to store in checkpoints
        (``name``, ``feature_dim`` and the extractor's ``cache_key()``).
    Raises:
        RuntimeError: the features module (or one of those functions) is not available.
    """
    try:
        from f3rm_ros.core import features as F  # noqa: PLC0415
        extract = F.extract_dataset_features
        create = getattr(F, "create_extractor_for_dataset", None)  # label features need the dataset's table
        if create is None:
            create = lambda cfg, _ds: F.create_extractor(cfg)  # noqa: E731
    except (ImportError, AttributeError) as e:
        raise RuntimeError("feature extraction needs f3rm_ros.core.features with create_extractor() and "
                           f"extract_dataset_features(): {e}") from None
    cfg_data = {"extractor": name, **(settings or {})}
    if hasattr(F, "FeaturesConfig"):
        from f3rm_ros.core.config import from_dict  # noqa: PLC0415

        cfg = from_dict(F.FeaturesConfig, cfg_data)
    else:
        cfg = cfg_data
    extractor = create(cfg, dataset)
    maps = extract(extractor, dataset, cache_dir)
    info = {"name": extractor.name, "feature_dim": int(extractor.feature_dim), **dict(extractor.cache_key())}
    return maps, info
