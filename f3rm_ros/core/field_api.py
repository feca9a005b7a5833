"""Query API of a trained field, in world units (metres, world frame): density, alpha, features,
camera renders and a scene point cloud. This is what the grasp planner and the query node use.

The field lives in a normalised frame; ``nerf_to_world`` (4x4 similarity, ``p_world = s R p_nerf + t``)
maps it to the world. Densities are converted so that ``alpha = 1 - exp(-density * d)`` over a step
of ``d`` metres: ``density_world = density_nerf / s``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from f3rm_ros.core.cameras import CameraIntrinsics, image_rays
from f3rm_ros.core.checkpoint import CheckpointError, checkpoint_cameras, load_checkpoint, load_field_model
from f3rm_ros.core.fields.camera_render import render_camera
from f3rm_ros.core.fields.model import FieldModel

__all__ = ["TrainedField", "load_trained_field"]


def _similarity_parts(M: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """(scale s, rotation R, translation t) of a similarity ``[[s R, t], [0, 1]]``."""
    A = np.asarray(M, dtype=np.float64)[:3, :3]
    s = float(np.cbrt(np.linalg.det(A)))
    if not (np.isfinite(s) and s > 0):
        raise ValueError(f"nerf_to_world is not a proper similarity (det {np.linalg.det(A)})")
    R = A / s
    if np.abs(R.T @ R - np.eye(3)).max() > 1e-5:
        raise ValueError("nerf_to_world is not a similarity (rotation part not orthonormal after removing the scale)")
    return s, R, np.asarray(M, dtype=np.float64)[:3, 3].copy()


class TrainedField:
    """A trained radiance + feature field with world-frame queries.

    Attributes:
        feature_dim: D (0 if the field has no feature field).
        device: where queries run.
        extractor_info: name and settings of the 2D extractor whose features were distilled.
        nerf_to_world: 4x4 similarity from the field frame to the world frame (metres).
        cameras: the training cameras (``c2w_world_opencv [N,4,4]``, ``intrinsics`` list), or {}.

    Queries keep autograd when the input points require grad (the network weights are frozen), so
    a planner can optimise poses through ``query_features`` / ``query_density``; otherwise they run
    under ``no_grad``. Points are processed in chunks of ``chunk`` points.
    """

    def __init__(self, model: FieldModel, nerf_to_world: np.ndarray, extractor_info: dict[str, Any] | None = None,
                 cameras: dict[str, Any] | None = None, chunk: int = 1 << 18):
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.nerf_to_world = np.asarray(nerf_to_world, dtype=np.float64)
        self._s, self._R, self._t = _similarity_parts(self.nerf_to_world)
        self.device = next(model.parameters()).device
        self.feature_dim = int(model.feature_dim)
        self.extractor_info = dict(extractor_info or {})
        self.cameras = dict(cameras or {})
        self.chunk = int(chunk)
        self._Rt = torch.as_tensor(self._R.T, dtype=torch.float32, device=self.device)
        self._tt = torch.as_tensor(self._t, dtype=torch.float32, device=self.device)

    @property
    def metres_per_unit(self) -> float:
        """Scale ``s`` of ``nerf_to_world`` (metres per field unit)."""
        return self._s

    def world_to_nerf(self, points_world: Tensor) -> Tensor:  # [N, 3] -> [N, 3]
        """World points (metres) to the field frame."""
        return ((points_world.to(self.device, torch.float32) - self._tt) @ self._Rt.T) / self._s

    def nerf_to_world_points(self, points_nerf: Tensor) -> Tensor:  # [N, 3] -> [N, 3]
        """Field-frame points to world points (metres)."""
        return self._s * (points_nerf.float() @ self._Rt) + self._tt

    def _run(self, points_world: Tensor, fn) -> Tensor:
        if points_world.dim() != 2 or points_world.shape[-1] != 3:
            raise ValueError(f"points_world must be [N, 3], got {tuple(points_world.shape)}")
        grad = points_world.requires_grad
        with torch.set_grad_enabled(grad):
            p = self.world_to_nerf(points_world)
            outs = [fn(p[i:i + self.chunk]) for i in range(0, p.shape[0], self.chunk)]
        return torch.cat(outs) if outs else fn(p)

    def query_density(self, points_world: Tensor) -> Tensor:  # [N, 3] -> [N]
        """Volume density in 1/metre at world points."""
        return self._run(points_world, lambda p: self.model.rgb_field.density(p)[0].float()) / self._s

    def query_alpha(self, points_world: Tensor, delta_m: float) -> Tensor:  # [N, 3] -> [N]
        """``1 - exp(-density * delta_m)``: opacity of a step of ``delta_m`` metres."""
        return 1.0 - torch.exp(-self.query_density(points_world) * float(delta_m))

    def query_features(self, points_world: Tensor) -> Tensor:  # [N, 3] -> [N, D]
        """Raw (not normalised) distilled features at world points."""
        if self.model.feature_field is None:
            raise ValueError("this field was trained without a feature field (feature_dim 0)")
        return self._run(points_world, lambda p: self.model.feature_field(p).float())

    def query_feature_hidden(self, points_world: Tensor) -> Tensor:  # [N, 3] -> [N, H]
        """The feature MLP's last hidden activation at world points: ``query_features(p) == hidden @ W.T + b``
        with ``(W, b) = feature_head``. A planner can fold the linear head into its loss (no [N, D] tensor)."""
        if self.model.feature_field is None:
            raise ValueError("this field was trained without a feature field (feature_dim 0)")
        return self._run(points_world, lambda p: self.model.feature_field.hidden(p).float())

    @property
    def feature_head(self) -> tuple[Tensor, Tensor | None]:
        """The feature field's linear head: weight [D, H] and bias [D] (or None), float32, frozen."""
        if self.model.feature_field is None:
            raise ValueError("this field was trained without a feature field (feature_dim 0)")
        head = self.model.feature_field.head
        return head.weight.detach().float(), (head.bias.detach().float() if head.bias is not None else None)

    def c2w_world_to_nerf(self, c2w_world_opencv: np.ndarray) -> Tensor:  # [4, 4] -> [4, 4]
        """A camera pose (OpenCV, world, metres) in the field frame (rotation stays orthonormal)."""
        T = np.asarray(c2w_world_opencv, dtype=np.float64)
        out = np.eye(4)
        out[:3, :3] = self._R.T @ T[:3, :3]
        out[:3, 3] = self._R.T @ (T[:3, 3] - self._t) / self._s
        return torch.as_tensor(out, dtype=torch.float32, device=self.device)

    @torch.no_grad()
    def render(self, c2w_world_opencv: np.ndarray, intrinsics: CameraIntrinsics, with_features: bool = True,
               chunk: int = 16384) -> dict[str, Tensor]:
        """Render a camera (OpenCV camera-to-world in the world frame, metres).

        Returns:
            rgb [H,W,3] in [0,1]; depth [H,W] metres along the ray; z_depth [H,W] metres along the
            optical axis; accumulation [H,W]; features [H,W,D] (raw) if there is a feature field.
        """
        c2w = self.c2w_world_to_nerf(c2w_world_opencv)
        self.model.eval()
        out = render_camera(lambda o, d: self.model.render_rays(o, d, None, training=False,
                                                                with_features=with_features),
                            intrinsics, c2w, chunk)
        depth = out["depth"] * self._s
        dirs_cam = out.pop("directions") @ c2w[:3, :3]  # rows: R^T d
        out["depth"] = depth
        out["z_depth"] = depth * dirs_cam[..., 2]
        return out

    @torch.no_grad()
    def point_cloud(self, cameras: list[tuple[np.ndarray, CameraIntrinsics]] | None = None,
                    min_accumulation: float = 0.9, max_depth_m: float | None = None, bbox_nerf: float | None = 1.0,
                    max_points: int | None = 1_000_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Scene point cloud from rendered depth: every pixel with accumulation >= ``min_accumulation``
        back-projected to its expected depth.

        Args:
            cameras: (c2w OpenCV world [4,4], intrinsics) pairs; default the training cameras.
            min_accumulation: drop pixels the field sees through.
            max_depth_m: drop points farther than this along the ray (e.g. background).
            bbox_nerf: keep only points with ``|p_nerf|_inf <= bbox_nerf`` in the field frame (1.0 = the
                un-contracted cube around the cameras; drops the background that the contraction
                squeezes beyond it); None keeps everything.
            max_points: random subset of at most this many points.
        Returns:
            points [M, 3] float32 (world, metres), colours [M, 3] uint8.
        """
        if cameras is None:
            if not self.cameras:
                raise ValueError("no cameras given and the field has no stored training cameras")
            cameras = list(zip(self.cameras["c2w_world_opencv"], self.cameras["intrinsics"], strict=True))
        pts, cols = [], []
        for c2w, K in cameras:
            out = self.render(c2w, K, with_features=False)
            c2w_t = torch.as_tensor(np.asarray(c2w), dtype=torch.float32, device=self.device)
            o, d = image_rays(K, c2w_t, device=self.device)
            keep = out["accumulation"] >= min_accumulation
            if max_depth_m is not None:
                keep &= out["depth"] <= max_depth_m
            p = o + d * out["depth"][..., None]
            if bbox_nerf is not None:
                keep &= self.world_to_nerf(p.reshape(-1, 3)).abs().amax(-1).reshape(keep.shape) <= bbox_nerf
            pts.append(p[keep].cpu())
            cols.append((out["rgb"][keep].clamp(0, 1) * 255).round().to(torch.uint8).cpu())
        P = torch.cat(pts).numpy().astype(np.float32)
        C = torch.cat(cols).numpy()
        if max_points is not None and len(P) > max_points:
            idx = np.random.default_rng(seed).choice(len(P), max_points, replace=False)
            P, C = P[idx], C[idx]
        return P, C


def load_trained_field(checkpoint_path: str | Path, device: torch.device | str = "cpu") -> Any:
    """Load a :class:`TrainedField` from a trainer checkpoint (:mod:`f3rm_ros.core.checkpoint`; only its
    ``config["model"]`` is read of the training settings, and no training module is imported). A checkpoint refreshed
    through edits (it carries ``live_edits``) loads as an :class:`~f3rm_ros.core.edits.EditedField` of them (its
    ``fixed`` edits: they cannot be undone), the scene as its last frames saw it.

    Raises:
        CheckpointError: missing/corrupt file or another checkpoint format version.
    """
    ck = load_checkpoint(checkpoint_path)
    model = load_field_model(ck, device)
    nerf_to_world = np.asarray(ck["nerf_to_world"], dtype=np.float64)
    cams: dict[str, Any] = {}
    stored = checkpoint_cameras(ck)
    if stored is not None:
        c2w_n, Ks, tr = stored
        s, R, t = _similarity_parts(nerf_to_world)
        c2w_w = c2w_n.copy()
        c2w_w[:, :3, :3] = R @ c2w_n[:, :3, :3]
        c2w_w[:, :3, 3] = (s * (R @ c2w_n[:, :3, 3].T)).T + t
        cams = {"c2w_world_opencv": [c2w_w[i] for i in tr], "intrinsics": [Ks[i] for i in tr]}
    field = TrainedField(model, nerf_to_world, ck.get("extractor_info"), cams)
    if not ck.get("live_edits"):
        return field
    # a field refreshed through edits (refresh_field(live_edits=...)) is served through them
    from f3rm_ros.core.edit_store import EditStoreError, checkpoint_live_edits  # noqa: PLC0415
    from f3rm_ros.core.edits import EditedField  # noqa: PLC0415

    try:
        edits, _ = checkpoint_live_edits(ck, str(checkpoint_path))
    except EditStoreError as e:
        raise CheckpointError(str(e)) from None
    return EditedField(field, edits, fixed=len(edits))
