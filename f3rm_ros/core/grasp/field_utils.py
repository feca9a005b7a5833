"""Small helpers around the field query API (:mod:`f3rm_ros.core.fields.protocol`): alpha, chunked queries,
feature checks.

A "field" here is any object with ``query_density(points_world) -> [N]``,
``query_features(points_world) -> [N, D]``, ``feature_dim``, ``device`` and ``extractor_info``;
points are in the world frame, metres.
"""

from __future__ import annotations


import torch

from f3rm_ros.core.fields.protocol import FoldableField, GraspField

__all__ = ["alpha_from_density", "field_has_features", "query_density_chunked", "query_features_chunked",
           "query_alpha_features", "field_has_feature_head", "query_alpha_hidden"]


def alpha_from_density(density: torch.Tensor, delta: float) -> torch.Tensor:
    """alpha = 1 - exp(-density * delta) for density in 1/metre and a step ``delta`` in metres.

    Optical depths below 1e-12 give exactly 0 and above 40 exactly 1: far from surfaces a field's
    density underflows into denormal floats, which are ~100x slower on CPUs and would then spread
    through the features and gradients of every pose in empty space.
    """
    tau = torch.clamp(density, min=0.0) * float(delta)
    tau = torch.where(tau < 1e-12, torch.zeros_like(tau), torch.clamp(tau, max=40.0))
    return 1.0 - torch.exp(-tau)


def field_has_features(field: GraspField) -> bool:
    """True if the field carries a distilled feature field (``feature_dim`` > 0)."""
    dim = getattr(field, "feature_dim", 0)
    has = getattr(field, "has_features", True)
    return bool(has) and dim is not None and int(dim) > 0 and hasattr(field, "query_features")


def query_density_chunked(field: GraspField, points: torch.Tensor,  # [N, 3] world
                          chunk: int) -> torch.Tensor:  # [N]
    """Density at ``points`` queried ``chunk`` points at a time (no gradient)."""
    out = []
    with torch.no_grad():
        for i in range(0, points.shape[0], chunk):
            out.append(field.query_density(points[i:i + chunk]).reshape(-1).float())
    if not out:
        return torch.zeros(0, device=points.device)
    return torch.cat(out)


def query_features_chunked(field: GraspField, points: torch.Tensor,  # [N, 3] world
                           chunk: int) -> torch.Tensor:  # [N, D]
    """Raw features at ``points`` queried ``chunk`` points at a time (no gradient)."""
    out = []
    with torch.no_grad():
        for i in range(0, points.shape[0], chunk):
            out.append(field.query_features(points[i:i + chunk]).float())
    if not out:
        return torch.zeros(0, int(field.feature_dim), device=points.device)
    return torch.cat(out)


def query_alpha_features(field: GraspField, points: torch.Tensor,  # [N, 3] world
                         delta: float) -> torch.Tensor:  # [N, D]
    """Alpha-weighted raw features ``alpha(density, delta) * feature`` (differentiable w.r.t. points).

    Uses the field's optional ``query_density_and_features(points) -> (density [N], features [N, D])``
    when it has one (one pass instead of two), else ``query_density`` and ``query_features``.
    """
    both = getattr(field, "query_density_and_features", None)
    if both is not None:
        density, feats = both(points)
        density, feats = density.reshape(-1).float(), feats.float()
    else:
        density = field.query_density(points).reshape(-1).float()
        feats = field.query_features(points).float()
    return alpha_from_density(density, delta)[:, None] * feats


def field_has_feature_head(field: GraspField) -> bool:
    """True if the field exposes its feature MLP's hidden activation and linear head
    (``query_feature_hidden(points) -> [N, H]`` and ``feature_head -> (W [D, H], b [D] | None)``)."""
    return field_has_features(field) and hasattr(field, "query_feature_hidden") and hasattr(field, "feature_head")


def query_alpha_hidden(field: FoldableField, points: torch.Tensor,  # [N, 3] world
                       delta: float) -> tuple[torch.Tensor, torch.Tensor]:  # [N], [N, H]
    """Alpha ``alpha(density, delta)`` and the feature MLP's hidden activation (differentiable w.r.t. points);
    ``query_alpha_features == alpha[:, None] * (hidden @ W.T + b)``."""
    density = field.query_density(points).reshape(-1).float()
    return alpha_from_density(density, delta), field.query_feature_hidden(points).float()
