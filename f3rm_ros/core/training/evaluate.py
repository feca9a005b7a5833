"""Evaluation during training: renders of held-out views, PSNR / feature MSE / depth error, eval PNGs and
the ``metrics.json`` history of a run."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from f3rm_ros.core.cameras import CameraIntrinsics, intrinsics_tensor
from f3rm_ros.core.feature_targets import nearest_patch_targets
from f3rm_ros.core.fields.camera_render import render_camera
from f3rm_ros.core.fields.losses import psnr
from f3rm_ros.core.fields.model import FieldModel
from f3rm_ros.core.io import atomic_write, atomic_write_json
from f3rm_ros.core.ops.ray_cache import camera_direction_table

__all__ = ["Evaluator", "render_model", "save_eval_png"]


def render_model(model: FieldModel, K: CameraIntrinsics, c2w_nerf: Tensor, chunk: int = 16384,
                 with_features: bool = True, amp: bool = False,
                 feature_sink: Callable[[Tensor, int], None] | None = None) -> dict[str, Tensor]:
    """:func:`~f3rm_ros.core.fields.camera_render.render_camera` of a model in eval mode (its mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        return render_camera(lambda o, d: model.render_rays(o, d, None, training=False, with_features=with_features),
                             K, c2w_nerf, chunk, amp=amp, feature_sink=feature_sink)
    finally:
        model.train(was_training)


class Evaluator:
    """Renders dataset frames with the model being trained, scores them, and keeps the metrics history.

    Args:
        dataset: the ``PosedImageDataset`` (ground-truth images, optional depth).
        intrinsics: every frame's camera.
        train_indices, eval_indices: the split; with no eval frames the training views are scored (flagged).
        feature_maps: ``[N_frames, h, w, D]`` targets on ``device``, or None.
        device: where renders run.
        chunk_rays: rays per render chunk.
        num_images: held-out images per evaluation (0 = all), spread evenly over the split.
        amp: fp16 autocast for renders (CUDA).
        run_dir: where ``eval/*.png`` and ``metrics.json`` go (None = nowhere).
    """

    def __init__(self, dataset: Any, intrinsics: list[CameraIntrinsics], train_indices: np.ndarray,
                 eval_indices: np.ndarray, feature_maps: Tensor | None, device: torch.device, chunk_rays: int,
                 num_images: int, amp: bool, run_dir: Path | None):
        self.dataset, self.intrinsics, self.feature_maps, self.device = dataset, intrinsics, feature_maps, device
        self.train_indices, self.eval_indices = train_indices, eval_indices
        self.chunk_rays, self.num_images, self.amp, self.run_dir = chunk_rays, num_images, amp, run_dir
        self.metrics: list[dict[str, Any]] = []  # one entry per evaluated step (metrics.json "history")
        self.last: dict[str, Any] = {}  # the latest evaluation

    def default_frames(self) -> tuple[list[int], bool]:
        """The frames an evaluation renders, and whether they are training views (no eval split)."""
        frames = [int(i) for i in self.eval_indices]
        on_train = not frames
        if on_train:  # no eval split: report on training views, flagged
            frames = [int(i) for i in self.train_indices]
        n = self.num_images
        if n and len(frames) > n:
            frames = [frames[int(round(j))] for j in np.linspace(0, len(frames) - 1, n)]
        return frames, on_train

    @torch.no_grad()
    def render_frame(self, model: FieldModel, c2w_nerf: np.ndarray, frame: int, with_features: bool = True,
                     feature_sink: Callable[[Tensor, int], None] | None = None) -> dict[str, Tensor]:
        """Render dataset frame ``frame`` (poses ``c2w_nerf [N, 4, 4]``, field frame) at its size (see
        :func:`render_model`)."""
        c2w = torch.as_tensor(c2w_nerf[frame], dtype=torch.float32, device=self.device)
        return render_model(model, self.intrinsics[frame], c2w, self.chunk_rays, with_features=with_features,
                            amp=self.amp, feature_sink=feature_sink)

    @torch.no_grad()
    def evaluate(self, model: FieldModel, c2w_nerf: np.ndarray, field_units_per_metre: float, step: int,
                 frames: list[int] | None = None, save_images: bool | None = None) -> dict[str, Any]:
        """Held-out PSNR (mean over images), feature MSE and, when the dataset has depth images, the median
        |rendered - measured| ray distance in metres over measured pixels (``depth_median_error_m``; rendered
        = the expected depth); eval images go to run_dir/eval if saving."""
        if frames is None:
            frames, on_train = self.default_frames()
        else:
            on_train = False
        psnrs, fmses, depth_errs = [], [], []
        has_depth = getattr(self.dataset, "has_depth", False)
        save = (self.run_dir is not None) if save_images is None else save_images
        for f in frames:
            K = self.intrinsics[f]
            sq = {"sum": 0.0, "n": 0}

            def sink(feats: Tensor, first: int, f: int = f, W: int = K.width, H: int = K.height, sq=sq) -> None:
                idx = torch.arange(first, first + feats.shape[0], device=feats.device)
                tgt = nearest_patch_targets(self.feature_maps, torch.full_like(idx, f), idx % W,
                                            torch.div(idx, W, rounding_mode="floor"), W, H).float()
                sq["sum"] += float(((feats - tgt) ** 2).sum())
                sq["n"] += tgt.numel()

            has_feats = self.feature_maps is not None and model.feature_field is not None
            out = self.render_frame(model, c2w_nerf, f, with_features=has_feats,
                                    feature_sink=sink if has_feats else None)
            gt = torch.from_numpy(np.array(self.dataset.get_image(f), dtype=np.float32)).to(self.device) / 255.0
            psnrs.append(psnr(torch.mean((out["rgb"].clamp(0, 1) - gt) ** 2)))
            if has_feats:
                fmses.append(sq["sum"] / max(1, sq["n"]))
            z = self.dataset.get_depth(f) if has_depth else None
            if z is not None:
                dz = camera_direction_table(intrinsics_tensor([K], device=self.device),
                                            torch.tensor([[K.width, K.height]], device=self.device))[:, 2]
                zt = torch.from_numpy(np.ascontiguousarray(z, np.float32)).to(self.device).reshape(-1)
                hit = zt > 0
                rendered_m = out["depth"].reshape(-1).float() / field_units_per_metre
                depth_errs.append((rendered_m - zt / dz.clamp(min=1e-6))[hit].abs().cpu())
            if save and self.run_dir is not None:
                save_eval_png(self.run_dir / "eval" / f"step-{step:07d}-frame-{f:04d}.png", gt, out)
        res = {"step": step, "psnr": float(np.mean(psnrs)) if psnrs else float("nan"),
               "psnr_per_image": psnrs, "frames": frames, "on_train_views": on_train}
        if fmses:
            res["feature_mse"] = float(np.mean(fmses))
        if depth_errs and sum(e.numel() for e in depth_errs):
            res["depth_median_error_m"] = float(torch.cat(depth_errs).median())
        self.last = res
        return res

    def record(self, step: int, ev: dict[str, Any], losses: dict[str, float], header: dict[str, Any]) -> None:
        """Add (or, for the same step, replace) a history entry; rewrite ``run_dir/metrics.json`` (``header``
        keys first, then ``history``)."""
        entry = {"step": step, "eval_psnr": ev.get("psnr"), "eval_feature_mse": ev.get("feature_mse"),
                 "eval_on_train_views": ev.get("on_train_views"), "losses": losses, "time": time.time()}
        if self.metrics and self.metrics[-1]["step"] == step:
            self.metrics[-1] = entry
        else:
            self.metrics.append(entry)
        if self.run_dir is not None:
            atomic_write_json(self.run_dir / "metrics.json", {**header, "history": self.metrics})


def save_eval_png(path: Path, gt: Tensor, out: dict[str, Tensor]) -> None:
    """ground truth | render | depth (normalised) side by side."""
    from PIL import Image  # noqa: PLC0415

    d = out["depth"]
    lo, hi = torch.quantile(d.flatten()[:: max(1, d.numel() // 100000)], torch.tensor([0.02, 0.98], device=d.device))
    dn = ((d - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
    row = torch.cat([gt, out["rgb"].clamp(0, 1), dn[..., None].expand(-1, -1, 3)], dim=1)
    arr = (row.cpu().numpy() * 255).round().astype(np.uint8)
    atomic_write(path, lambda f: Image.fromarray(arr).save(f, format="PNG"))
