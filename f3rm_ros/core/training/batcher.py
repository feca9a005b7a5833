"""Random ray batches over every training pixel: the pixel store, masks, the error map and depth targets.

The training images live on the device as one flat ``[P, 3]`` uint8 buffer (image ``k`` from
``starts[k]``, row-major). A batch draws ``rays_per_batch`` indices into the sampleable pixels
(all of them, or those of the masks): uniformly, except ``error_sampling`` of them drawn in proportion
to each pixel's latest squared RGB error (the error map; not in F3RM). Every random number comes
from the trainer's generator, and nothing syncs with the host, so a CUDA graph can capture a batch.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import Tensor

from f3rm_ros.core.cameras import CameraIntrinsics, generate_rays, intrinsics_tensor
from f3rm_ros.core.feature_targets import nearest_patch_targets
from f3rm_ros.core.ops.ray_cache import camera_direction_table, direction_table_bytes, rays_from_direction_table

__all__ = ["RayBatcher"]

log = logging.getLogger(__name__)


class RayBatcher:
    """Ray batches (field frame) with their colour, feature and depth targets.

    Args:
        dataset: a ``PosedImageDataset`` (``get_image``, optionally ``get_mask``, ``get_depth``, ``has_depth``).
        train_indices: the training frames  # [N_train]
        intrinsics: every frame's camera (indexed by frame).
        c2w_nerf: every frame's camera-to-world, OpenCV, field frame  # [N, 4, 4]
        feature_maps: ``[N_frames, h, w, D]`` on ``device``, or None.
        device: where the pixels and batches live.
        generator: the trainer's random generator (shared with the sampler's jitter).
        rays_per_batch: rays per batch.
        error_sampling: fraction of each batch drawn by the error map (0 = uniform, no map).
        ray_table_max_mb: keep each pixel's camera-frame direction if the table fits (else rays are
            generated every batch).
        depth_mult: the depth loss weight: > 0 builds depth targets (when the dataset has depth images; else a
            warning).
        field_units_per_metre: scale of the field frame.
    """

    def __init__(self, dataset: Any, train_indices: np.ndarray, intrinsics: list[CameraIntrinsics],
                 c2w_nerf: np.ndarray, feature_maps: Tensor | None, device: torch.device, generator: torch.Generator,
                 rays_per_batch: int, error_sampling: float = 0.0, ray_table_max_mb: int = 1024,
                 depth_mult: float = 0.0, field_units_per_metre: float = 1.0):
        dev = self.device = device
        self.dataset = dataset
        self.train_indices = train_indices
        self.generator = generator
        self.rays_per_batch = int(rays_per_batch)
        self.error_sampling = float(error_sampling)
        self.feature_maps = feature_maps
        self.field_units_per_metre = float(field_units_per_metre)
        # training pixels, flattened over all training images
        imgs = [torch.from_numpy(np.array(dataset.get_image(int(i)), dtype=np.uint8)) for i in train_indices]
        self.sizes = torch.tensor([[im.shape[1], im.shape[0]] for im in imgs], dtype=torch.long, device=dev)  # W, H
        counts = self.sizes[:, 0] * self.sizes[:, 1]
        self.starts = torch.cumsum(counts, 0) - counts
        self.pixels = torch.cat([im.reshape(-1, 3) for im in imgs]).to(dev)  # [P, 3] uint8
        self.valid: Tensor | None = None  # [P_valid] indices of the sampleable pixels, None = all
        masks = [dataset.get_mask(int(i)) if hasattr(dataset, "get_mask") else None for i in train_indices]
        if any(m is not None for m in masks):  # sample only unmasked pixels (images without a mask: all)
            parts = []
            for k, m in enumerate(masks):
                full = torch.arange(int(counts[k])) + int(self.starts[k])
                parts.append(full if m is None else full[torch.as_tensor(m).reshape(-1)])
            self.valid = torch.cat(parts).to(dev)
        self.num_pixels = int(self.valid.numel() if self.valid is not None else self.pixels.shape[0])
        # per-pixel colour trust ([P] bool, True = trusted, False = its colour is left out while its depth and features
        # stay; the dataset's ``get_rgb_mask``), None = every colour; batches carry it as ``rgb_weight`` (1 / 0)
        self.rgb_trust: Tensor | None = None
        rgb_masks = [dataset.get_rgb_mask(int(i)) if hasattr(dataset, "get_rgb_mask") else None
                     for i in train_indices]
        if any(m is not None for m in rgb_masks):
            self.rgb_trust = torch.cat([torch.ones(int(counts[k]), dtype=torch.bool) if m is None else
                                        torch.as_tensor(np.asarray(m, bool).reshape(-1))
                                        for k, m in enumerate(rgb_masks)]).to(dev)
        self.feature_trust: Tensor | None = None  # the same for the feature targets (distrust_features)
        self.K_train = intrinsics_tensor([intrinsics[int(i)] for i in train_indices], device=dev)
        self.c2w_train = torch.as_tensor(c2w_nerf[train_indices], dtype=torch.float32, device=dev)
        self.frame_of_train = torch.as_tensor(train_indices, device=dev)
        self.dirs_table: Tensor | None = None  # [P, 3] camera-frame ray directions (ops.ray_cache), if it fits
        if 0 < direction_table_bytes(self.pixels.shape[0]) <= ray_table_max_mb * 2**20:
            self.dirs_table = camera_direction_table(self.K_train, self.sizes)
        # depth supervision: per training pixel, the measured distance along the ray (field units) and validity
        self.depth_t: Tensor | None = None
        self.depth_valid: Tensor | None = None
        if depth_mult > 0:
            if getattr(dataset, "has_depth", False):
                self.depth_t, self.depth_valid = self.depth_targets()
                log.info("depth supervision on: %.1f%% of the training pixels have a depth measurement",
                         100.0 * float(self.depth_valid.mean()))
            else:
                log.warning("losses.depth_mult is %g but the dataset has no depth images: depth supervision is off",
                            depth_mult)
        # error map (error_sampling > 0): the latest squared RGB error of each sampleable pixel, 0 until drawn
        self.pixel_error: Tensor | None = (torch.zeros(self.num_pixels, dtype=torch.float32, device=dev)
                                           if self.error_sampling > 0 else None)

    @property
    def has_depth(self) -> bool:
        """True when batches carry depth targets."""
        return self.depth_t is not None

    def depth_targets(self) -> tuple[Tensor, Tensor]:
        """Measured ray distances of every training pixel (field units) and their validity, both ``[P]``.

        Depth images hold z-depth (OpenCV optical axis, metres); along the unit ray through a pixel
        the surface lies at ``z / d_z`` with ``d`` the pixel's unit camera-frame direction.
        """
        dists, valids = [], []
        for k, i in enumerate(self.train_indices):
            W, H = int(self.sizes[k, 0]), int(self.sizes[k, 1])
            z = self.dataset.get_depth(int(i))
            if z is None:
                dists.append(torch.zeros(W * H, device=self.device))
                valids.append(torch.zeros(W * H, device=self.device))
                continue
            if self.dirs_table is not None:
                start = int(self.starts[k])
                dz = self.dirs_table[start:start + W * H, 2]
            else:  # one image at a time: the whole table did not fit in ray_table_max_mb
                dz = camera_direction_table(self.K_train[k:k + 1], self.sizes[k:k + 1])[:, 2]
            zt = torch.from_numpy(np.ascontiguousarray(z, np.float32)).reshape(-1).to(self.device)
            valid = (zt > 0).float()
            dists.append(zt / dz.clamp(min=1e-6) * self.field_units_per_metre * valid)
            valids.append(valid)
        return torch.cat(dists), torch.cat(valids)

    def surface_points(self, k: int) -> tuple[Tensor, Tensor]:
        """Training image ``k``'s measured surface in its camera frame (OpenCV, metres) ``[W*H, 3]`` (row-major, as
        the pixel buffer) and which of its pixels have a depth measurement ``[W*H]`` bool; needs depth targets."""
        if self.depth_t is None:
            raise ValueError("surface points need depth targets (losses.depth_mult > 0 and a dataset with depth)")
        W, H = int(self.sizes[k, 0]), int(self.sizes[k, 1])
        start = int(self.starts[k])
        if self.dirs_table is not None:
            d = self.dirs_table[start:start + W * H]
        else:
            d = camera_direction_table(self.K_train[k:k + 1], self.sizes[k:k + 1])
        dist = self.depth_t[start:start + W * H] / self.field_units_per_metre
        return d * dist[:, None], self.depth_valid[start:start + W * H] > 0

    def distrust_colour(self, flat: Tensor) -> None:
        """Leave out the colour of the pixels ``flat`` (indices into the pixel buffer, [n]): their ``rgb_weight`` is 0
        from now on, their depth and features stay (as a dataset's ``get_rgb_mask`` does)."""
        self.rgb_trust = self._untrusted(self.rgb_trust, flat)

    def distrust_features(self, flat: Tensor) -> None:
        """Leave out the feature targets of the pixels ``flat`` (as :meth:`distrust_colour`): ``feature_weight`` 0."""
        self.feature_trust = self._untrusted(self.feature_trust, flat)

    def _untrusted(self, trust: Tensor | None, flat: Tensor) -> Tensor | None:
        """``trust`` ([P] bool, None = all trusted) with the pixels ``flat`` set False (None stays None for none)."""
        if not flat.numel():
            return trust
        if trust is None:
            trust = torch.ones(self.pixels.shape[0], dtype=torch.bool, device=self.device)
        trust[flat.to(self.device)] = False
        return trust

    def set_poses(self, c2w_nerf: np.ndarray, field_units_per_metre: float) -> None:
        """New camera poses (field frame) and scale, e.g. from a checkpoint: the depth targets follow the scale."""
        self.c2w_train = torch.as_tensor(c2w_nerf[self.train_indices], dtype=torch.float32, device=self.device)
        units = float(field_units_per_metre)
        if self.depth_t is not None and units != self.field_units_per_metre:  # depth targets are in field units
            self.depth_t.mul_(units / self.field_units_per_metre)
        self.field_units_per_metre = units

    def load_pixel_error(self, saved: Tensor | None) -> None:
        """Restore the error map from a checkpoint (a map of another run or other images: start afresh)."""
        if self.pixel_error is None:
            return
        if saved is not None and saved.numel() == self.pixel_error.numel():
            self.pixel_error.copy_(saved.to(self.device))
        else:
            self.pixel_error.zero_()

    def draw_pixels(self) -> Tensor:
        """``[B]`` indices into the sampleable pixels: uniform, except ``error_sampling`` of them drawn in
        proportion to the error map (inverse CDF; no host sync, so a CUDA graph captures it). Pixels never
        drawn have error 0, so the uniform part is what explores."""
        B = self.rays_per_batch
        n_err = int(round(B * self.error_sampling)) if self.pixel_error is not None else 0
        uniform = torch.randint(self.num_pixels, (B - n_err,), device=self.device, generator=self.generator)
        if n_err == 0:
            return uniform
        cdf = torch.cumsum(self.pixel_error + 1e-8, 0)  # + a floor: all-zero at the start means uniform
        u = torch.rand(n_err, device=self.device, generator=self.generator) * cdf[-1]
        by_error = torch.searchsorted(cdf, u).clamp_(max=self.num_pixels - 1)
        return torch.cat([uniform, by_error])

    def record_pixel_error(self, sample: Tensor, pred_rgb: Tensor, target_rgb: Tensor,
                           rgb_weight: Tensor | None = None) -> None:
        """Write each drawn pixel's squared RGB error (mean over channels, times ``rgb_weight`` [B] when given: a
        pixel whose colour is left out is not drawn for its colour) into the error map (if any); a pixel
        drawn twice in one batch keeps the larger error (a max does not depend on the order the writes land in,
        so the map, and every later draw, is deterministic; a plain indexed write of duplicates is not)."""
        if self.pixel_error is None:
            return
        with torch.no_grad():
            err = (pred_rgb.detach().float() - target_rgb.float()).square().mean(-1)
            if rgb_weight is not None:
                err = err * rgb_weight.float()
            self.pixel_error.scatter_reduce_(0, sample, err, reduce="amax", include_self=False)

    def sample(self) -> dict[str, Tensor]:
        """A random ray batch: origins/directions (field frame), rgb targets, camera and pixel indices
        (``sample``: the index into the sampleable pixels, for the error map), and when present
        ``rgb_weight`` (the colour's trust), ``depth``/``depth_valid`` and ``features`` targets (with
        ``feature_weight``, their trust, when some are left out)."""
        sample = self.draw_pixels()
        flat = sample
        if self.valid is not None:
            flat = self.valid[flat]
        cam = torch.searchsorted(self.starts, flat, right=True) - 1  # [B] index into train images
        local = flat - self.starts[cam]
        W = self.sizes[cam, 0]
        px, py = local % W, torch.div(local, W, rounding_mode="floor")
        if self.dirs_table is not None:  # same rays as generate_rays, without re-undistorting every step
            o, d = rays_from_direction_table(self.dirs_table, flat, self.c2w_train[cam])
        else:
            pix = torch.stack([px, py], -1).float() + 0.5
            o, d = generate_rays(self.K_train[cam], self.c2w_train[cam], pix)
        batch = {"origins": o, "directions": d, "rgb": self.pixels[flat].float() / 255.0, "camera_idx": cam,
                 "sample": sample}
        if self.rgb_trust is not None:
            batch["rgb_weight"] = self.rgb_trust[flat].float()
        if self.depth_t is not None:
            batch["depth"], batch["depth_valid"] = self.depth_t[flat], self.depth_valid[flat]
        if self.feature_maps is not None:
            frame = self.frame_of_train[cam]
            batch["features"] = nearest_patch_targets(self.feature_maps, frame, px, py, W, self.sizes[cam, 1]).float()
            if self.feature_trust is not None:
                batch["feature_weight"] = self.feature_trust[flat].float()
        return batch
