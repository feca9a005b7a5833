"""Training the radiance + feature field from posed images (ROS-free).

``Trainer(config, dataset, feature_maps, device, run_dir=None)`` normalises the poses into the field's
frame, keeps the training images on the device, and ``train(num_steps, on_progress, should_stop)``
runs Adam on random ray batches drawn uniformly over all pixels of all training images (optionally
part of each batch by an error map, ``error_sampling``; not in F3RM) (F3RM recipe:
lr 1e-2, eps 1e-15, exponential decay to 1e-4 over 200k steps, mixed precision on CUDA, RGB MSE +
interlevel + distortion + 1e-3 feature MSE). Every ``eval_every`` steps it renders held-out views
(PSNR, feature MSE); every ``checkpoint_every`` steps it writes a checkpoint (atomically) into
``run_dir/checkpoints``. Checkpoints hold the field, optimiser, scheduler, AMP scaler and random
state (so a resumed run takes exactly the step the original would have), the camera poses and the
``nerf_to_world`` transform, and no foundation-model weights.

On CUDA the step is captured as CUDA graphs (``cuda_graphs``, see :meth:`Trainer._graph_step`): two
graphs (proposal nets updated or not) replayed every step, with the proposal annealing exponent and
the learning rate read from device tensors; the plain eager step stays the reference path.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from f3rm_ros.core.cameras import CameraIntrinsics, generate_rays, intrinsics_tensor
from f3rm_ros.core.checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, CheckpointError, latest_checkpoint,
                                      load_checkpoint, save_checkpoint_file)
from f3rm_ros.core.config import from_dict, to_dict
from f3rm_ros.core.feature_targets import nearest_patch_targets
from f3rm_ros.core.fields.losses import depth_loss, distortion_loss, feature_mse, interlevel_loss, psnr, rgb_mse
from f3rm_ros.core.fields.model import FieldModel
from f3rm_ros.core.fields.camera_render import render_camera as _render_camera
from f3rm_ros.core.io import atomic_write_json
from f3rm_ros.core.training.config import TrainerConfig
from f3rm_ros.core.ops.ray_cache import camera_direction_table, direction_table_bytes, rays_from_direction_table

__all__ = ["TrainerConfig", "ProgressInfo", "TrainResult", "Trainer", "CheckpointError", "CHECKPOINT_FORMAT",
           "CHECKPOINT_VERSION", "load_checkpoint", "latest_checkpoint", "save_checkpoint_file"]

log = logging.getLogger(__name__)

@dataclass
class ProgressInfo:
    """What ``on_progress`` receives."""

    step: int
    total_steps: int
    losses: dict[str, float]
    psnr: float  # training-batch PSNR (dB) of this step
    elapsed_s: float
    eta_s: float
    steps_per_s: float = 0.0
    eval_psnr: float | None = None  # latest held-out PSNR
    eval_feature_mse: float | None = None
    lr: float = 0.0


@dataclass
class TrainResult:
    """What ``train`` returns."""

    step: int
    stopped: bool  # True if should_stop ended the run early
    elapsed_s: float
    losses: dict[str, float]
    eval: dict[str, Any] = field(default_factory=dict)
    checkpoint: Path | None = None


def _rng_device(device: torch.device) -> torch.device:
    return device if device.type == "cuda" else torch.device("cpu")


def _cuda_graphs_decision(mode: str, trainer: Trainer) -> tuple[bool, str]:
    """Whether the trainer captures its step as CUDA graphs, and why (``cuda_graphs`` auto | on | off).

    Needs a CUDA device, ``torch.cuda.CUDAGraph.register_generator_state`` (the step draws its random
    numbers from the trainer's own generator), and every hash grid on the triton backend (the torch
    reference builds small index tensors on the host every call, which a capture does not allow; tcnn
    is untested here).

    Raises:
        ValueError: ``on`` where it is not possible, or an unknown mode.
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"cuda_graphs must be auto, on or off, got {mode!r}")
    if mode == "off":
        return False, "cuda_graphs: off"
    why = None
    if trainer.device.type != "cuda":
        why = f"device {trainer.device} is not CUDA"
    elif not hasattr(torch.cuda, "CUDAGraph") or not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
        why = f"torch {torch.__version__} has no CUDAGraph.register_generator_state"
    else:
        other = {k: v for k, v in trainer.model.hashgrid_backends().items() if v != "triton"}
        if other:
            why = f"hash grids not on the triton backend: {other}"
    if why is None:
        return True, f"cuda_graphs: {mode}"
    if mode == "on":
        raise ValueError(f"cuda_graphs: on, but the training step cannot be captured here: {why}")
    return False, f"cuda_graphs: auto -> eager ({why})"


class Trainer:
    """Trains a :class:`~f3rm_ros.core.fields.model.FieldModel` on a posed-image dataset.

    Args:
        config: training settings.
        dataset: a ``PosedImageDataset`` (uint8 images, per-frame intrinsics, OpenCV c2w in metres).
        feature_maps: ``[N_frames, h, w, D]`` features in the dataset's frame order (any device),
            or None to train the radiance field only.
        device: torch device.
        run_dir: folder for checkpoints, eval images and metrics.json (None = write nothing).
        extractor_info: name and settings of the 2D extractor (stored in checkpoints).
    """

    def __init__(self, config: TrainerConfig, dataset: Any, feature_maps: Tensor | None = None,
                 device: torch.device | str = "cpu", run_dir: str | Path | None = None,
                 extractor_info: dict[str, Any] | None = None):
        from f3rm_ros.core.dataset import normalise_poses  # noqa: PLC0415 - keep import light

        self.config = config
        self.device = torch.device(device)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.extractor_info = dict(extractor_info or {})
        self.dataset = dataset
        n = len(dataset)
        self.train_indices = np.asarray(dataset.train_indices, dtype=np.int64)
        self.eval_indices = np.asarray(dataset.eval_indices, dtype=np.int64)
        if len(self.train_indices) == 0:
            raise ValueError("the dataset has no training images")
        if feature_maps is not None:
            if feature_maps.dim() != 4 or feature_maps.shape[0] != n:
                raise ValueError(f"feature_maps must be [N_frames={n}, h, w, D], got {tuple(feature_maps.shape)}")
        self.feature_dim = int(feature_maps.shape[-1]) if feature_maps is not None else 0
        c2w_nerf, self.nerf_to_world = normalise_poses(dataset.c2w, center=config.pose_center,
                                                       scale_factor=config.pose_scale_factor)
        self.c2w_nerf = c2w_nerf  # [N, 4, 4] float64, OpenCV convention, field frame
        self.intrinsics: list[CameraIntrinsics] = list(dataset.intrinsics)

        torch.manual_seed(config.seed)
        self.model = FieldModel(config.model, len(self.train_indices), self.feature_dim, self.device)
        log.info("hash grid backends: %s", self.model.hashgrid_backends())
        self.use_amp = bool(config.mixed_precision and self.device.type == "cuda")
        # CUDA: fused Adam (one multi-tensor kernel; the grad scaler's unscale and inf check happen inside it)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr, eps=config.adam_eps,
                                          **({"fused": True} if self.device.type == "cuda" else {}))
        ratio = config.lr_final / config.lr if config.lr > 0 else 1.0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: ratio ** min(s / config.lr_decay_steps, 1.0))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.generator = torch.Generator(device=_rng_device(self.device))
        self.generator.manual_seed(config.seed)
        self.step = 0
        self.metrics: list[dict[str, Any]] = []
        self._last_eval: dict[str, Any] = {}

        # training pixels, flattened over all training images
        dev = self.device
        imgs = [torch.from_numpy(np.array(dataset.get_image(int(i)), dtype=np.uint8)) for i in self.train_indices]
        self._sizes = torch.tensor([[im.shape[1], im.shape[0]] for im in imgs], dtype=torch.long, device=dev)  # W, H
        counts = self._sizes[:, 0] * self._sizes[:, 1]
        self._starts = torch.cumsum(counts, 0) - counts
        self._pixels = torch.cat([im.reshape(-1, 3) for im in imgs]).to(dev)  # [P, 3] uint8
        self._valid = None
        masks = [dataset.get_mask(int(i)) if hasattr(dataset, "get_mask") else None for i in self.train_indices]
        if any(m is not None for m in masks):  # sample only unmasked pixels (images without a mask: all)
            parts = []
            for k, m in enumerate(masks):
                full = torch.arange(int(counts[k])) + int(self._starts[k])
                parts.append(full if m is None else full[torch.as_tensor(m).reshape(-1)])
            self._valid = torch.cat(parts).to(dev)
        self._num_pixels = int(self._valid.numel() if self._valid is not None else self._pixels.shape[0])
        self._K_train = intrinsics_tensor([self.intrinsics[int(i)] for i in self.train_indices], device=dev)
        self._c2w_train = torch.as_tensor(c2w_nerf[self.train_indices], dtype=torch.float32, device=dev)
        self._frame_of_train = torch.as_tensor(self.train_indices, device=dev)
        self._dirs_table = None  # [P, 3] camera-frame ray directions (ops.ray_cache), if it fits
        if 0 < direction_table_bytes(self._pixels.shape[0]) <= config.ray_table_max_mb * 2**20:
            self._dirs_table = camera_direction_table(self._K_train, self._sizes)
        self.feature_maps = feature_maps.to(dev) if feature_maps is not None else None
        self.field_units_per_metre = 1.0 / float(self.nerf_to_world[0, 0])
        # depth supervision: per training pixel, the measured distance along the ray (field units) and validity
        self._depth_t = self._depth_valid = None
        if config.losses.depth_mult > 0:
            if getattr(dataset, "has_depth", False):
                self._depth_t, self._depth_valid = self._depth_targets()
                log.info("depth supervision on: %.1f%% of the training pixels have a depth measurement",
                         100.0 * float(self._depth_valid.mean()))
            else:
                log.warning("losses.depth_mult is %g but the dataset has no depth images: depth supervision is off",
                            config.losses.depth_mult)

        # error map (error_sampling > 0): the latest squared RGB error of each sampleable pixel, 0 until drawn
        self._pixel_error = (torch.zeros(self._num_pixels, dtype=torch.float32, device=dev)
                             if config.error_sampling > 0 else None)

        # CUDA graphs of the whole step (see _graph_step); decided once here
        self.cuda_graphs_active, self.cuda_graphs_reason = _cuda_graphs_decision(config.cuda_graphs, self)
        log.info("training step: %s (%s)", "CUDA graphs" if self.cuda_graphs_active else "eager",
                 self.cuda_graphs_reason)
        self._graphs: dict[bool, Any] = {}  # update_proposals -> torch.cuda.CUDAGraph
        self._graph_out: dict[bool, Tensor] = {}  # update_proposals -> packed losses written by that graph
        self._graph_warm: dict[bool, int] = {True: 0, False: 0}
        self._graph_replays = 0
        self._side_stream = None
        self._anneal_t = self._lr_t = None
        if self.cuda_graphs_active:
            self._init_graph_tensors()

    # ------------------------------------------------------------------------------ batches
    def _depth_targets(self) -> tuple[Tensor, Tensor]:
        """Measured ray distances of every training pixel (field units) and their validity, both ``[P]``.

        Depth images hold z-depth (OpenCV optical axis, metres); along the unit ray through a pixel
        the surface lies at ``z / d_z`` with ``d`` the pixel's unit camera-frame direction.
        """
        dists, valids = [], []
        for k, i in enumerate(self.train_indices):
            W, H = int(self._sizes[k, 0]), int(self._sizes[k, 1])
            z = self.dataset.get_depth(int(i))
            if z is None:
                dists.append(torch.zeros(W * H, device=self.device))
                valids.append(torch.zeros(W * H, device=self.device))
                continue
            if self._dirs_table is not None:
                start = int(self._starts[k])
                dz = self._dirs_table[start:start + W * H, 2]
            else:  # one image at a time: the whole table did not fit in ray_table_max_mb
                dz = camera_direction_table(self._K_train[k:k + 1], self._sizes[k:k + 1])[:, 2]
            zt = torch.from_numpy(np.ascontiguousarray(z, np.float32)).reshape(-1).to(self.device)
            valid = (zt > 0).float()
            dists.append(zt / dz.clamp(min=1e-6) * self.field_units_per_metre * valid)
            valids.append(valid)
        return torch.cat(dists), torch.cat(valids)

    def _draw_pixels(self) -> Tensor:
        """``[B]`` indices into the sampleable pixels: uniform, except ``error_sampling`` of them drawn in
        proportion to the error map (inverse CDF; no host sync, so a CUDA graph captures it). Pixels never
        drawn have error 0, so the uniform part is what explores."""
        B = self.config.rays_per_batch
        n_err = int(round(B * self.config.error_sampling)) if self._pixel_error is not None else 0
        uniform = torch.randint(self._num_pixels, (B - n_err,), device=self.device, generator=self.generator)
        if n_err == 0:
            return uniform
        cdf = torch.cumsum(self._pixel_error + 1e-8, 0)  # + a floor: all-zero at the start means uniform
        u = torch.rand(n_err, device=self.device, generator=self.generator) * cdf[-1]
        by_error = torch.searchsorted(cdf, u).clamp_(max=self._num_pixels - 1)
        return torch.cat([uniform, by_error])

    def _record_pixel_error(self, sample: Tensor, pred_rgb: Tensor, target_rgb: Tensor) -> None:
        """Write each drawn pixel's squared RGB error (mean over channels) into the error map; a pixel drawn
        twice in one batch keeps the larger error (a max does not depend on the order the writes land in, so
        the map, and every later draw, is deterministic; a plain indexed write of duplicates is not)."""
        with torch.no_grad():
            err = (pred_rgb.detach().float() - target_rgb.float()).square().mean(-1)
            self._pixel_error.scatter_reduce_(0, sample, err, reduce="amax", include_self=False)

    def sample_batch(self) -> dict[str, Tensor]:
        """A random ray batch: origins/directions (field frame), rgb targets, camera and pixel indices
        (``sample``: the index into the sampleable pixels, for the error map)."""
        sample = self._draw_pixels()
        flat = sample
        if self._valid is not None:
            flat = self._valid[flat]
        cam = torch.searchsorted(self._starts, flat, right=True) - 1  # [B] index into train images
        local = flat - self._starts[cam]
        W = self._sizes[cam, 0]
        px, py = local % W, torch.div(local, W, rounding_mode="floor")
        if self._dirs_table is not None:  # same rays as generate_rays, without re-undistorting every step
            o, d = rays_from_direction_table(self._dirs_table, flat, self._c2w_train[cam])
        else:
            pix = torch.stack([px, py], -1).float() + 0.5
            o, d = generate_rays(self._K_train[cam], self._c2w_train[cam], pix)
        batch = {"origins": o, "directions": d, "rgb": self._pixels[flat].float() / 255.0, "camera_idx": cam,
                 "sample": sample}
        if self._depth_t is not None:
            batch["depth"], batch["depth_valid"] = self._depth_t[flat], self._depth_valid[flat]
        if self.feature_maps is not None:
            frame = self._frame_of_train[cam]
            batch["features"] = nearest_patch_targets(self.feature_maps, frame, px, py, W, self._sizes[cam, 1]).float()
        return batch

    # ---------------------------------------------------------------------------- one step
    def train_step(self) -> dict[str, float]:
        """One optimisation step; returns the loss values (floats)."""
        return self.loss_floats(self._train_step_tensors())

    def loss_floats(self, losses: dict[str, Tensor | float]) -> dict[str, float]:
        """Loss values of :meth:`_train_step_tensors` as floats (one device sync; floats pass through)."""
        if not any(isinstance(v, Tensor) for v in losses.values()):
            return dict(losses)
        vals = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=self.device).detach().reshape(())
                            for v in losses.values()]).tolist()
        out = dict(zip(losses, vals, strict=True))
        if "feature" in out and "feature_mse" not in out:
            fm = self.config.losses.feature_mult
            out["feature_mse"] = out["feature"] / fm if fm > 0 else 0.0
        return out

    def loss_names(self) -> list[str]:
        """Keys of the loss dict of one step (``total`` last)."""
        return (["rgb", "interlevel", "distortion"] + (["feature"] if self.feature_maps is not None else [])
                + (["depth"] if self._depth_t is not None else []) + ["total"])

    def _train_step_tensors(self) -> dict[str, Tensor]:
        """One optimisation step; the losses stay on the device (no host sync)."""
        self.model.train()
        update = self.model.sampler.should_update(self.step)
        if self.cuda_graphs_active:
            packed = self._graph_step(update)
            if packed is not None:
                self.scheduler.step()
                self.step += 1
                return dict(zip(self.loss_names(), packed.clone().unbind(), strict=True))
        losses = self._forward_backward(update)
        self.scheduler.step()
        self.step += 1
        return {k: v.detach() for k, v in losses.items()}

    def _forward_backward(self, update: bool, graph_safe: bool = False) -> dict[str, Tensor]:
        """Batch, forward, losses, backward and optimiser step (the plain eager step, and the body
        the CUDA graphs capture). ``graph_safe`` turns off autocast's weight-cast cache (a cache
        filled during capture must not outlive it); the maths is the same. Returns the losses."""
        cfg = self.config
        batch = self.sample_batch()
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp,
                            cache_enabled=False if graph_safe else None):
            out = self.model.render_rays(batch["origins"], batch["directions"], batch["camera_idx"], training=True,
                                         step=self.step, update_proposals=update, generator=self.generator)
        losses = {"rgb": rgb_mse(out["rgb"], batch["rgb"]),
                  "interlevel": cfg.losses.interlevel_mult * interlevel_loss(out["s_edges"], out["weights"],
                                                                              out["proposals"]),
                  "distortion": cfg.losses.distortion_mult * distortion_loss(out["s_edges"], out["weights"])}
        if "features" in out:
            losses["feature"] = cfg.losses.feature_mult * feature_mse(out["features"], batch["features"])
        if "depth" in batch:
            losses["depth"] = cfg.losses.depth_mult * depth_loss(
                out["weights"], out["t_edges"], batch["depth"], batch["depth_valid"],
                cfg.losses.depth_margin_m * self.field_units_per_metre)
        if self._pixel_error is not None:
            self._record_pixel_error(batch["sample"], out["rgb"], batch["rgb"])
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {**{k: v.detach() for k, v in losses.items()}, "total": total.detach()}

    def _packed(self, losses: dict[str, Tensor]) -> Tensor:  # -> [len(loss_names)] float32
        return torch.stack([losses[k].float().reshape(()) for k in self.loss_names()])

    # ----------------------------------------------------------------------- CUDA graphs
    _GRAPH_WARMUP_STEPS = 2  # eager steps (on a side stream) before each graph is captured

    def _init_graph_tensors(self) -> None:
        """The device scalars a captured step reads: annealing exponent and learning rate."""
        self._anneal_t = torch.ones((), dtype=torch.float32, device=self.device)
        self._lr_t = torch.full((), float(self.config.lr), dtype=torch.float32, device=self.device)

    def _graph_step(self, update: bool) -> Tensor | None:
        """One step through the CUDA graph for ``update`` (proposal nets trained or not).

        The graph holds the whole step: ray batch (random numbers from ``self.generator``, registered
        with the graph so every replay draws new ones), forward under autocast, losses, backward,
        the grad scaler's inf check and scale update, and fused Adam (``capturable``; lr read from a
        device tensor). What changes from step to step outside the graph: the proposal annealing
        exponent and the learning rate (two device fills before the replay), and which of the two
        graphs runs (``ProposalSampler.should_update``, on the host). The first
        ``_GRAPH_WARMUP_STEPS`` steps of each kind run eagerly on a side stream (lazy state, kernel
        compilation), the next one captures the graph and replays it.

        Returns:
            the packed losses (``loss_names`` order; overwritten by the next replay), or None when
            capture failed under ``cuda_graphs: auto`` (logged; the run continues eagerly).
        """
        sampler = self.model.sampler
        sampler.anneal_tensor = self._anneal_t
        self._anneal_t.fill_(sampler.anneal(self.step))
        self._lr_t.fill_(float(self.optimizer.param_groups[0]["lr"]))
        if self.device.type != "cuda":  # no capture off CUDA: the graph body runs eagerly (CPU tests)
            return self._packed(self._forward_backward(update, graph_safe=True))
        graph = self._graphs.get(update)
        if graph is None and self._graph_warm[update] < self._GRAPH_WARMUP_STEPS:
            if self._side_stream is None:
                self._side_stream = torch.cuda.Stream(device=self.device)
            cur = torch.cuda.current_stream(self.device)
            self._side_stream.wait_stream(cur)
            with torch.cuda.stream(self._side_stream):
                packed = self._packed(self._forward_backward(update, graph_safe=True))
            cur.wait_stream(self._side_stream)
            self._graph_warm[update] += 1
            return packed
        if graph is None:
            try:
                graph = self._capture(update)
            except Exception as e:  # noqa: BLE001 - auto falls back to the eager step, on re-raises
                self._capture_failed(e)
                if self.config.cuda_graphs == "on":
                    raise
                return None
        graph.replay()
        self._graph_replays += 1
        return self._graph_out[update]

    def _capture(self, update: bool) -> Any:
        """Capture the step for ``update`` into a new CUDA graph (shares the memory pool of the other one)."""
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(self.generator)
        pool = next(iter(self._graphs.values())).pool() if self._graphs else None
        groups = self.optimizer.param_groups
        saved = [(g["lr"], g["capturable"]) for g in groups]
        self.optimizer.zero_grad(set_to_none=True)  # gradients are allocated (and written) inside the graph
        try:
            for g in groups:  # Adam reads the lr tensor on every replay; capturable allows capture
                g["lr"], g["capturable"] = self._lr_t, True
            with torch.cuda.graph(graph, pool=pool):
                packed = self._packed(self._forward_backward(update, graph_safe=True))
        finally:
            for g, (lr, cap) in zip(groups, saved, strict=True):
                g["lr"], g["capturable"] = lr, cap
        self._graphs[update] = graph
        self._graph_out[update] = packed
        log.info("captured the training step (update_proposals=%s) as a CUDA graph at step %d", update, self.step)
        return graph

    def _capture_failed(self, err: Exception) -> None:
        """Undo a failed capture and continue with the eager step (cuda_graphs: auto)."""
        from torch.amp.grad_scaler import _refresh_per_optimizer_state  # noqa: PLC0415

        self.cuda_graphs_active = False
        self.cuda_graphs_reason = f"capture failed, eager step from step {self.step}: {type(err).__name__}: {err}"
        log.warning("CUDA graph %s", self.cuda_graphs_reason)
        self._drop_graphs()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler._per_optimizer_states = collections.defaultdict(_refresh_per_optimizer_state)
        for attr in ("grad_scale", "found_inf"):
            if hasattr(self.optimizer, attr):
                delattr(self.optimizer, attr)

    def _drop_graphs(self) -> None:
        """Forget captured graphs (their pointers go stale when state tensors are replaced, e.g. on load)."""
        self._graphs.clear()
        self._graph_out.clear()
        self._graph_warm = {True: 0, False: 0}
        self.model.sampler.anneal_tensor = None
        self.optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------------------ render
    @torch.no_grad()
    def render_image(self, frame: int, with_features: bool = True,
                     feature_sink: Callable[[Tensor, int], None] | None = None) -> dict[str, Tensor]:
        """Render dataset frame ``frame`` at its (downscaled) size: rgb [H,W,3], depth [H,W] (field
        units, ray distance), accumulation [H,W], features [H,W,D] if there is a feature field."""
        K = self.intrinsics[frame]
        c2w = torch.as_tensor(self.c2w_nerf[frame], dtype=torch.float32, device=self.device)
        return render_camera(self.model, K, c2w, self.config.eval_chunk_rays, with_features=with_features,
                             amp=self.use_amp, feature_sink=feature_sink)

    @torch.no_grad()
    def evaluate(self, frames: list[int] | None = None, save_images: bool | None = None) -> dict[str, Any]:
        """Held-out PSNR (mean over images), feature MSE and, when the dataset has depth images, the median
        |rendered - measured| ray distance in metres over measured pixels (``depth_median_error_m``; rendered
        = the expected depth); eval images go to run_dir/eval if saving."""
        if frames is None:
            frames = [int(i) for i in self.eval_indices]
            on_train = not frames
            if on_train:  # no eval split: report on training views, flagged
                frames = [int(i) for i in self.train_indices]
            n = self.config.eval_num_images
            if n and len(frames) > n:
                frames = [frames[int(round(j))] for j in np.linspace(0, len(frames) - 1, n)]
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

            has_feats = self.feature_maps is not None and self.model.feature_field is not None
            out = self.render_image(f, with_features=has_feats, feature_sink=sink if has_feats else None)
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
                rendered_m = out["depth"].reshape(-1).float() / self.field_units_per_metre
                depth_errs.append((rendered_m - zt / dz.clamp(min=1e-6))[hit].abs().cpu())
            if save and self.run_dir is not None:
                _save_eval_png(self.run_dir / "eval" / f"step-{self.step:07d}-frame-{f:04d}.png", gt, out)
        res = {"step": self.step, "psnr": float(np.mean(psnrs)) if psnrs else float("nan"),
               "psnr_per_image": psnrs, "frames": frames, "on_train_views": on_train}
        if fmses:
            res["feature_mse"] = float(np.mean(fmses))
        if depth_errs and sum(e.numel() for e in depth_errs):
            res["depth_median_error_m"] = float(torch.cat(depth_errs).median())
        self._last_eval = res
        return res

    # --------------------------------------------------------------------------- training
    def train(self, num_steps: int, on_progress: Callable[[ProgressInfo], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> TrainResult:
        """Train until ``self.step == num_steps`` (a total: a resumed run continues to it).

        Args:
            num_steps: the step count to reach.
            on_progress: called every ``progress_every`` steps and at the end.
            should_stop: polled every step; True ends the run early (a checkpoint is still written).
        """
        cfg = self.config
        t0 = time.perf_counter()
        start = self.step
        losses: dict[str, float] = {}
        stopped = False
        ckpt = None
        while self.step < num_steps:
            if should_stop is not None and should_stop():
                stopped = True
                break
            step_losses = self._train_step_tensors()  # no host sync unless something below reports them
            done = self.step - start
            do_eval = bool(cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < num_steps)
            do_progress = on_progress is not None and (self.step % cfg.progress_every == 0 or self.step == num_steps)
            if do_eval or do_progress or self.step >= num_steps:
                losses = self.loss_floats(step_losses)
            elapsed = time.perf_counter() - t0
            if do_eval:
                self._record(self.evaluate(), losses)
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.run_dir is not None:
                ckpt = self.save_checkpoint()
            if do_progress:
                rate = done / max(elapsed, 1e-9)
                on_progress(ProgressInfo(
                    step=self.step, total_steps=num_steps, losses=losses, psnr=psnr(losses["rgb"]), elapsed_s=elapsed,
                    eta_s=(num_steps - self.step) / max(rate, 1e-9), steps_per_s=rate,
                    eval_psnr=self._last_eval.get("psnr"), eval_feature_mse=self._last_eval.get("feature_mse"),
                    lr=float(self.scheduler.get_last_lr()[0])))
        if self.step > start and stopped:
            losses = self.loss_floats(step_losses)
        ev = self.evaluate() if self.step > start or not self._last_eval else self._last_eval
        self._record(ev, losses)
        if self.run_dir is not None:
            ckpt = self.save_checkpoint()
        return TrainResult(step=self.step, stopped=stopped, elapsed_s=time.perf_counter() - t0, losses=losses,
                           eval=ev, checkpoint=ckpt)

    def _record(self, ev: dict[str, Any], losses: dict[str, float]) -> None:
        entry = {"step": self.step, "eval_psnr": ev.get("psnr"), "eval_feature_mse": ev.get("feature_mse"),
                 "eval_on_train_views": ev.get("on_train_views"), "losses": losses, "time": time.time()}
        if self.metrics and self.metrics[-1]["step"] == self.step:
            self.metrics[-1] = entry
        else:
            self.metrics.append(entry)
        if self.run_dir is not None:
            atomic_write_json(self.run_dir / "metrics.json", {"hashgrid_backends": self.model.hashgrid_backends(),
                                                              "device": str(self.device), "history": self.metrics})

    # ------------------------------------------------------------------------ checkpoints
    def state_dict(self, include_optimizer: bool = True) -> dict[str, Any]:
        """Everything needed to resume or to query the field (no foundation-model weights).

        ``include_optimizer=False`` leaves out the optimiser / scheduler / scaler / random state
        (about 2/3 of the size: Adam keeps two moments per hash-table entry): such a file loads with
        :func:`f3rm_ros.core.field_api.load_trained_field` but cannot be resumed.
        """
        out = {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": self.step,
            "config": to_dict(self.config), "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "generator": self.generator.get_state(),
            "sampler_steps_since_update": self.model.sampler.steps_since_update,
            "num_train_images": len(self.train_indices), "feature_dim": self.feature_dim,
            "hashgrid_backends": self.model.hashgrid_backends(),
            "nerf_to_world": torch.as_tensor(self.nerf_to_world, dtype=torch.float64),
            "extractor_info": self.extractor_info,
            "cameras": {"c2w_nerf": torch.as_tensor(self.c2w_nerf, dtype=torch.float64),
                        "intrinsics": [k.to_dict() for k in self.intrinsics],
                        "train_indices": torch.as_tensor(self.train_indices),
                        "eval_indices": torch.as_tensor(self.eval_indices)},
            "dataset_root": str(getattr(self.dataset, "root", "")), "metrics": self.metrics,
        }
        if self._pixel_error is not None:  # training state: a resumed run draws the same rays
            out["pixel_error"] = self._pixel_error.detach().cpu().clone()
        if not include_optimizer:
            for k in ("optimizer", "scheduler", "scaler", "generator", "sampler_steps_since_update", "pixel_error"):
                out.pop(k, None)
        return out

    def save_checkpoint(self, path: str | Path | None = None, include_optimizer: bool = True) -> Path:
        """Write a checkpoint atomically (default ``run_dir/checkpoints/step-XXXXXXX.ckpt``; prunes old
        ones). ``include_optimizer=False`` writes a smaller query-only file (see :meth:`state_dict`)."""
        if path is None:
            if self.run_dir is None:
                raise ValueError("no path given and the trainer has no run_dir")
            path = self.run_dir / "checkpoints" / f"step-{self.step:07d}.ckpt"
        path = save_checkpoint_file(path, self.state_dict(include_optimizer))
        keep = self.config.keep_checkpoints
        if keep and path.parent == (self.run_dir / "checkpoints" if self.run_dir else None):
            for old in sorted(path.parent.glob("step-*.ckpt"))[:-keep]:
                old.unlink(missing_ok=True)
        return path

    def load_state(self, ck: dict[str, Any]) -> None:
        """Restore a checkpoint dict (from :func:`load_checkpoint`) into this trainer to resume.

        Raises:
            CheckpointError: the checkpoint does not fit this dataset / feature setup.
        """
        if int(ck["num_train_images"]) != len(self.train_indices) or int(ck["feature_dim"]) != self.feature_dim:
            raise CheckpointError(f"checkpoint was trained on {ck['num_train_images']} images with feature_dim "
                                  f"{ck['feature_dim']}, but this run has {len(self.train_indices)} images and "
                                  f"feature_dim {self.feature_dim}")
        if "optimizer" not in ck:
            raise CheckpointError("this checkpoint holds the field only (saved without optimiser state); it can be "
                                  "queried with load_trained_field but not resumed")
        if to_dict(from_dict(TrainerConfig, ck["config"]).model) != to_dict(self.config.model):
            raise CheckpointError("checkpoint model config differs from this trainer's; build the trainer with "
                                  "the checkpoint's config (Trainer.from_checkpoint)")
        self._drop_graphs()  # the optimiser state, poses and generator are replaced below
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        self.generator.set_state(ck["generator"].cpu() if self.generator.device.type == "cpu" else ck["generator"])
        self.model.sampler.steps_since_update = int(ck["sampler_steps_since_update"])
        if self._pixel_error is not None:
            saved = ck.get("pixel_error")
            if saved is not None and saved.numel() == self._pixel_error.numel():
                self._pixel_error.copy_(saved.to(self.device))
            else:  # a checkpoint of a run without the error map (or other images): start the map afresh
                self._pixel_error.zero_()
        self.step = int(ck["step"])
        self.metrics = list(ck.get("metrics", []))
        self.nerf_to_world = np.asarray(ck["nerf_to_world"], dtype=np.float64)
        self.c2w_nerf = np.asarray(ck["cameras"]["c2w_nerf"], dtype=np.float64)
        self._c2w_train = torch.as_tensor(self.c2w_nerf[self.train_indices], dtype=torch.float32, device=self.device)
        units = 1.0 / float(self.nerf_to_world[0, 0])
        if self._depth_t is not None and units != self.field_units_per_metre:  # depth targets are in field units
            self._depth_t.mul_(units / self.field_units_per_metre)
        self.field_units_per_metre = units
        if ck.get("extractor_info"):
            self.extractor_info = dict(ck["extractor_info"])

    @classmethod
    def from_checkpoint(cls, path: str | Path, dataset: Any, feature_maps: Tensor | None = None,
                        device: torch.device | str = "cpu", run_dir: str | Path | None = None,
                        config_overrides: dict[str, Any] | None = None) -> Trainer:
        """A trainer resumed from ``path`` (its config, optionally with non-model overrides)."""
        ck = load_checkpoint(path)
        data = dict(ck["config"])
        for k, v in (config_overrides or {}).items():
            if k == "model":
                raise CheckpointError("the model config of a checkpoint cannot be changed on resume")
            data[k] = v
        tr = cls(from_dict(TrainerConfig, data), dataset, feature_maps, device, run_dir,
                 extractor_info=ck.get("extractor_info"))
        tr.load_state(ck)
        return tr


# ----------------------------------------------------------------------------------- helpers
def render_camera(model: FieldModel, K: CameraIntrinsics, c2w_nerf: Tensor, chunk: int = 16384,
                  with_features: bool = True, amp: bool = False,
                  feature_sink: Callable[[Tensor, int], None] | None = None) -> dict[str, Tensor]:
    """:func:`f3rm_ros.core.fields.camera_render.render_camera` of a model in eval mode (its mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        return _render_camera(lambda o, d: model.render_rays(o, d, None, training=False, with_features=with_features),
                              K, c2w_nerf, chunk, amp=amp, feature_sink=feature_sink)
    finally:
        model.train(was_training)


def _save_eval_png(path: Path, gt: Tensor, out: dict[str, Tensor]) -> None:
    """ground truth | render | depth (normalised) side by side."""
    from PIL import Image  # noqa: PLC0415

    from f3rm_ros.core.io import atomic_write  # noqa: PLC0415

    d = out["depth"]
    lo, hi = torch.quantile(d.flatten()[:: max(1, d.numel() // 100000)], torch.tensor([0.02, 0.98], device=d.device))
    dn = ((d - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
    row = torch.cat([gt, out["rgb"].clamp(0, 1), dn[..., None].expand(-1, -1, 3)], dim=1)
    arr = (row.cpu().numpy() * 255).round().astype(np.uint8)
    atomic_write(path, lambda f: Image.fromarray(arr).save(f, format="PNG"))
