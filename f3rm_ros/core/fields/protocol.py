"""What the grasp planner needs of a field: the query contract, as ``typing.Protocol`` classes.

A field answers queries at points in the **world frame, metres**; densities are in 1/metre (so
``alpha = 1 - exp(-density * d)`` over a step of ``d`` metres) and features are the raw (not
normalised) distilled features. Queries keep autograd when the points require grad (the planner
optimises gripper poses through them). :class:`~f3rm_ros.core.field_api.TrainedField` (a trained
checkpoint) and :class:`~f3rm_ros.core.grasp.oracle.OracleField` (an analytic synthetic scene)
implement it.

* :class:`GraspField`: what every planner call uses.
* :class:`FoldableField`: a field that also exposes its feature MLP's last hidden activation and linear
  head, so the planner can fold the head into its task loss (``PlannerConfig.fold_feature_head``).
* :class:`FusedQueryField`: a field that answers density and features in one pass.

The planner detects the optional parts with ``hasattr`` (``grasp.field_utils``), so a field that
has only :class:`GraspField` works everywhere. The protocols are ``runtime_checkable``: an
``isinstance`` check looks only at the names, not the signatures (and on Python 3.11 it reads each
attribute, so ``isinstance(field, FoldableField)`` raises the ValueError of ``TrainedField.feature_head``
for a field trained without features; check ``feature_dim`` first).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

__all__ = ["GraspField", "FoldableField", "FusedQueryField"]


@runtime_checkable
class GraspField(Protocol):
    """The field query API the grasp planner, its tasks and demonstrations use.

    Attributes:
        feature_dim: D of the distilled features (0: a field without features; the planner then uses the
            density alone).
        device: where queries run (the planner puts its tensors there).
        extractor_info: name and settings of the 2D extractor whose features were distilled (tasks
            recorded with another extractor are refused or adapted).
        nerf_to_world: 4x4 similarity from the field's own frame to the world frame (metres).
    """

    feature_dim: int
    device: torch.device
    extractor_info: dict[str, Any]
    nerf_to_world: np.ndarray

    def query_density(self, points_world: Tensor) -> Tensor:  # [N, 3] -> [N]
        """Volume density in 1/metre at world points (metres)."""
        ...

    def query_features(self, points_world: Tensor) -> Tensor:  # [N, 3] -> [N, D]
        """Raw distilled features at world points; raises ValueError for a field without features."""
        ...


@runtime_checkable
class FoldableField(GraspField, Protocol):
    """A :class:`GraspField` whose features are a linear head on a hidden activation:
    ``query_features(p) == query_feature_hidden(p) @ W.T + b`` with ``(W, b) = feature_head``."""

    def query_feature_hidden(self, points_world: Tensor) -> Tensor:  # [N, 3] -> [N, H]
        """The feature MLP's last hidden activation at world points."""
        ...

    @property
    def feature_head(self) -> tuple[Tensor, Tensor | None]:
        """The linear head: weight [D, H] and bias [D] (or None), float32, frozen."""
        ...


@runtime_checkable
class FusedQueryField(GraspField, Protocol):
    """A :class:`GraspField` that answers density and features in one pass (faster than two queries)."""

    def query_density_and_features(self, points_world: Tensor) -> tuple[Tensor, Tensor]:  # [N, 3] -> [N], [N, D]
        """(density [N] in 1/metre, raw features [N, D]) at world points."""
        ...
