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
``nerf_to_world`` transform, and no foundation-model weights (format: :mod:`f3rm_ros.core.checkpoint`).

The trainer composes its parts: :class:`~f3rm_ros.core.training.batcher.RayBatcher` (pixels, masks,
error map, depth targets), :class:`~f3rm_ros.core.training.graphs.CudaGraphStep` (on CUDA the step is
captured as CUDA graphs, ``cuda_graphs``; the plain eager step stays the reference path) and
:class:`~f3rm_ros.core.training.evaluate.Evaluator` (eval renders, metrics, PNGs); it keeps the
model, the optimiser, the losses and the loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from f3rm_ros.core.checkpoint import (CheckpointError, check_resumable, checkpoint_payload, load_checkpoint,
                                      save_checkpoint_file)
from f3rm_ros.core.config import from_dict, to_dict
from f3rm_ros.core.fields.losses import depth_loss, distortion_loss, feature_mse, interlevel_loss, psnr, rgb_mse
from f3rm_ros.core.fields.model import FieldModel
from f3rm_ros.core.training.batcher import RayBatcher
from f3rm_ros.core.training.config import TrainerConfig
from f3rm_ros.core.training.evaluate import Evaluator
from f3rm_ros.core.training.graphs import CudaGraphStep, cuda_graphs_decision

__all__ = ["TrainerConfig", "ProgressInfo", "TrainResult", "Trainer"]

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
        self.device = dev = torch.device(device)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.extractor_info = dict(extractor_info or {})
        self.dataset = dataset
        n = len(dataset)
        self.train_indices = np.asarray(dataset.train_indices, dtype=np.int64)
        self.eval_indices = np.asarray(dataset.eval_indices, dtype=np.int64)
        if len(self.train_indices) == 0:
            raise ValueError("the dataset has no training images")
        if feature_maps is not None and (feature_maps.dim() != 4 or feature_maps.shape[0] != n):
            raise ValueError(f"feature_maps must be [N_frames={n}, h, w, D], got {tuple(feature_maps.shape)}")
        self.feature_dim = int(feature_maps.shape[-1]) if feature_maps is not None else 0
        # [N, 4, 4] float64, OpenCV convention, field frame
        self.c2w_nerf, self.nerf_to_world = normalise_poses(dataset.c2w, center=config.pose_center,
                                                            scale_factor=config.pose_scale_factor)
        self.intrinsics = list(dataset.intrinsics)

        torch.manual_seed(config.seed)
        self.model = FieldModel(config.model, len(self.train_indices), self.feature_dim, dev)
        log.info("hash grid backends: %s", self.model.hashgrid_backends())
        self.use_amp = bool(config.mixed_precision and dev.type == "cuda")
        self.reset_optimizer()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.generator = torch.Generator(device=dev if dev.type == "cuda" else torch.device("cpu"))
        self.generator.manual_seed(config.seed)
        self.step = 0

        self.feature_maps = feature_maps.to(dev) if feature_maps is not None else None
        self.field_units_per_metre = 1.0 / float(self.nerf_to_world[0, 0])
        self.batcher = RayBatcher(dataset, self.train_indices, self.intrinsics, self.c2w_nerf, self.feature_maps, dev,
                                  self.generator, config.rays_per_batch, config.error_sampling,
                                  config.ray_table_max_mb, config.losses.depth_mult, self.field_units_per_metre)
        self.evaluator = Evaluator(dataset, self.intrinsics, self.train_indices, self.eval_indices, self.feature_maps,
                                   dev, config.eval_chunk_rays, config.eval_num_images, self.use_amp, self.run_dir)
        active, reason = cuda_graphs_decision(config.cuda_graphs, dev, self.model.hashgrid_backends())
        log.info("training step: %s (%s)", "CUDA graphs" if active else "eager", reason)
        self.graphs = CudaGraphStep(dev, self.generator, config.cuda_graphs, active, reason, config.lr)
        # name -> () -> scalar tensor: terms added to every step's loss (e.g. a refresh's density penalty on a place
        # known to be empty); they must draw random numbers from ``self.generator`` only (CUDA graphs)
        self.extra_losses: dict[str, Callable[[], Tensor]] = {}
        # the scene the training rays see, through edits (FieldModel.render_rays' ``warp``, e.g. a refresh through the
        # query server's edits: ``f3rm_ros.core.edits.FieldWarp`` with each image's edits); None: the field as it is
        self.ray_warp: Callable[[Tensor, Tensor, Tensor | None], tuple[Tensor, Tensor, Tensor]] | None = None
        self.checkpoint_extra: dict[str, Any] = {}  # more keys for every checkpoint written (e.g. a refresh's edits)

    def reset_optimizer(self) -> None:
        """A fresh optimiser and learning-rate schedule over the model's parameters as they are now (after modules were
        added to the model, e.g. a refresh's colour grids; before the first step: the CUDA graphs capture them)."""
        cfg, dev = self.config, next(self.model.parameters()).device
        # CUDA: fused Adam (one multi-tensor kernel; the grad scaler's unscale and inf check happen inside it)
        # named: the state dict's param_groups carry ``param_names`` (a later fine-tune matches moments by name)
        self.optimizer = torch.optim.Adam(self.model.named_parameters(), lr=cfg.lr, eps=cfg.adam_eps,
                                          **({"fused": True} if dev.type == "cuda" else {}))
        ratio = cfg.lr_final / cfg.lr if cfg.lr > 0 else 1.0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: ratio ** min(s / cfg.lr_decay_steps, 1.0))

    # parameters whose moments a fine-tune never takes over: the appearance embedding is indexed by training image,
    # and image i of the earlier run is another frame than image i of this one
    FRESH_MOMENTS = ("rgb_field.appearance.weight",)

    def warm_start_moments(self, saved: dict[str, Any]) -> int:
        """Give the optimiser (fresh, before the first step) Adam's moments from ``saved`` (an Adam ``state_dict()``
        of this model's parameters, e.g. a checkpoint's ``optimizer``): each parameter's second moment and step count
        (its first moment zero: the fine-tune's direction comes from its own data), where the shapes agree; the
        learning rates and schedule stay this trainer's. Parameters are matched by name (``param_names`` of the saved
        groups: a refreshed field's colour grids come back from a checkpoint in another order than they were made),
        by position in a state saved without names; :attr:`FRESH_MOMENTS` start afresh. A fine-tune then moves each
        parameter relative to how its gradients ran in training, instead of Adam's fresh start, which moves every
        touched parameter by about the learning rate whatever its gradient. Returns how many parameters got
        moments."""
        groups = saved.get("param_groups", [])
        ids = [i for g in groups for i in g["params"]]
        names = [n for g in groups for n in g.get("param_names", [])]
        by_name = dict(zip(names, ids, strict=True)) if names and len(names) == len(ids) else None
        mine = self.optimizer.state_dict()  # reset_optimizer's: named
        my_ids = [i for g in mine["param_groups"] for i in g["params"]]
        my_names = [n for g in mine["param_groups"] for n in g["param_names"]]
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        theirs, state = saved.get("state", {}), {}
        for j, (p, name) in enumerate(zip(params, my_names, strict=True)):
            if name in self.FRESH_MOMENTS:
                continue
            if by_name is not None:
                i = by_name.get(name)
            else:
                i = ids[j] if j < len(ids) else None
            st = theirs.get(i) if i is not None else None
            if not st or "exp_avg_sq" not in st or tuple(st["exp_avg_sq"].shape) != tuple(p.shape):
                continue
            v = st["exp_avg_sq"].to(p.device, torch.float32)
            if v is st["exp_avg_sq"]:  # not copied by the move: the optimiser must not update the caller's tensor
                v = v.clone()
            step = st["step"] if torch.is_tensor(st["step"]) else torch.tensor(float(st["step"]))
            state[my_ids[j]] = {"step": step.detach().float().clone(), "exp_avg": torch.zeros_like(v), "exp_avg_sq": v}
        mine["state"] = state
        self.optimizer.load_state_dict(mine)
        return len(state)

    @property
    def cuda_graphs_active(self) -> bool:
        """Whether the step runs as CUDA graphs (False after a failed capture under ``auto``)."""
        return self.graphs.active

    @property
    def cuda_graphs_reason(self) -> str:
        return self.graphs.reason

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """The evaluation history (``metrics.json``)."""
        return self.evaluator.metrics

    # ---------------------------------------------------------------------------- one step
    def sample_batch(self) -> dict[str, Tensor]:
        """A random ray batch (see :meth:`RayBatcher.sample`)."""
        return self.batcher.sample()

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
                + (["depth"] if self.batcher.has_depth else []) + list(self.extra_losses) + ["total"])

    def _train_step_tensors(self) -> dict[str, Tensor]:
        """One optimisation step; the losses stay on the device (no host sync)."""
        self.model.train()
        sampler = self.model.sampler
        update = sampler.should_update(self.step)
        if self.graphs.active:
            sampler.anneal_tensor = self.graphs.anneal_t
            packed = self.graphs.run(update, lambda: self._packed(self._forward_backward(update, graph_safe=True)),
                                     self.optimizer, self.scaler, sampler.anneal(self.step), self.step)
            if packed is not None:
                self.scheduler.step()
                self.step += 1
                return dict(zip(self.loss_names(), packed.clone().unbind(), strict=True))
            sampler.anneal_tensor = None  # the capture failed: the eager step from now on
        losses = self._forward_backward(update)
        self.scheduler.step()
        self.step += 1
        return {k: v.detach() for k, v in losses.items()}

    def _forward_backward(self, update: bool, graph_safe: bool = False) -> dict[str, Tensor]:
        """Batch, forward, losses, backward and optimiser step (the plain eager step, and the body
        the CUDA graphs capture). ``graph_safe`` turns off autocast's weight-cast cache (a cache
        filled during capture must not outlive it); the maths is the same. Returns the losses."""
        cfg = self.config
        batch = self.batcher.sample()
        with torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=self.use_amp,
                            cache_enabled=False if graph_safe else None):
            out = self.model.render_rays(batch["origins"], batch["directions"], batch["camera_idx"], training=True,
                                         step=self.step, update_proposals=update, generator=self.generator,
                                         warp=self.ray_warp)
        losses = {"rgb": rgb_mse(out["rgb"], batch["rgb"], batch.get("rgb_weight")),
                  "interlevel": cfg.losses.interlevel_mult * interlevel_loss(out["s_edges"], out["weights"],
                                                                              out["proposals"]),
                  "distortion": cfg.losses.distortion_mult * distortion_loss(out["s_edges"], out["weights"])}
        if "features" in out:
            losses["feature"] = cfg.losses.feature_mult * feature_mse(out["features"], batch["features"],
                                                                      batch.get("feature_weight"))
        if "depth" in batch:
            losses["depth"] = cfg.losses.depth_mult * depth_loss(
                out["weights"], out["t_edges"], batch["depth"], batch["depth_valid"],
                cfg.losses.depth_margin_m * self.field_units_per_metre)
        for name, fn in self.extra_losses.items():
            losses[name] = fn()
        self.batcher.record_pixel_error(batch["sample"], out["rgb"], batch["rgb"], batch.get("rgb_weight"))
        total = sum(losses.values())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {**{k: v.detach() for k, v in losses.items()}, "total": total.detach()}

    def _packed(self, losses: dict[str, Tensor]) -> Tensor:  # -> [len(loss_names)] float32
        return torch.stack([losses[k].float().reshape(()) for k in self.loss_names()])

    # ------------------------------------------------------------------------ evaluation
    def render_image(self, frame: int, with_features: bool = True,
                     feature_sink: Callable[[Tensor, int], None] | None = None) -> dict[str, Tensor]:
        """Render dataset frame ``frame`` at its (downscaled) size: rgb [H,W,3], depth [H,W] (field
        units, ray distance), accumulation [H,W], features [H,W,D] if there is a feature field."""
        return self.evaluator.render_frame(self.model, self.c2w_nerf, frame, with_features, feature_sink)

    def evaluate(self, frames: list[int] | None = None, save_images: bool | None = None) -> dict[str, Any]:
        """Held-out PSNR, feature MSE and depth error (see :meth:`Evaluator.evaluate`)."""
        return self.evaluator.evaluate(self.model, self.c2w_nerf, self.field_units_per_metre, self.step, frames,
                                       save_images)

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
                last = self.evaluator.last
                on_progress(ProgressInfo(
                    step=self.step, total_steps=num_steps, losses=losses, psnr=psnr(losses["rgb"]), elapsed_s=elapsed,
                    eta_s=(num_steps - self.step) / max(rate, 1e-9), steps_per_s=rate, eval_psnr=last.get("psnr"),
                    eval_feature_mse=last.get("feature_mse"), lr=float(self.scheduler.get_last_lr()[0])))
        if self.step > start and stopped:
            losses = self.loss_floats(step_losses)
        ev = self.evaluate() if self.step > start or not self.evaluator.last else self.evaluator.last
        self._record(ev, losses)
        if self.run_dir is not None:
            ckpt = self.save_checkpoint()
        return TrainResult(step=self.step, stopped=stopped, elapsed_s=time.perf_counter() - t0, losses=losses,
                           eval=ev, checkpoint=ckpt)

    def _record(self, ev: dict[str, Any], losses: dict[str, float]) -> None:
        self.evaluator.record(self.step, ev, losses, {"hashgrid_backends": self.model.hashgrid_backends(),
                                                      "device": str(self.device)})

    # ------------------------------------------------------------------------ checkpoints
    def state_dict(self, include_optimizer: bool = True) -> dict[str, Any]:
        """Everything needed to resume or to query the field (no foundation-model weights).

        ``include_optimizer=False`` leaves out the optimiser / scheduler / scaler / random state
        (about 2/3 of the size: Adam keeps two moments per hash-table entry): such a file loads with
        :func:`f3rm_ros.core.field_api.load_trained_field` but cannot be resumed.
        """
        state = None
        if include_optimizer:
            state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "scaler": self.scaler.state_dict(), "generator": self.generator.get_state(),
                     "sampler_steps_since_update": self.model.sampler.steps_since_update,
                     "pixel_error": self.batcher.pixel_error}
        return {**checkpoint_payload(
            step=self.step, config=to_dict(self.config), model=self.model, num_train_images=len(self.train_indices),
            nerf_to_world=self.nerf_to_world, extractor_info=self.extractor_info, c2w_nerf=self.c2w_nerf,
            intrinsics=self.intrinsics, train_indices=self.train_indices, eval_indices=self.eval_indices,
            dataset_root=str(getattr(self.dataset, "root", "")), metrics=self.metrics, training_state=state),
            **self.checkpoint_extra}

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
        check_resumable(ck, len(self.train_indices), self.feature_dim, self.config.model)
        self.graphs.drop(self.optimizer)  # the optimiser state, poses and generator are replaced below
        self.model.sampler.anneal_tensor = None
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.scaler.load_state_dict(ck["scaler"])
        self.generator.set_state(ck["generator"].cpu() if self.generator.device.type == "cpu" else ck["generator"])
        self.model.sampler.steps_since_update = int(ck["sampler_steps_since_update"])
        self.batcher.load_pixel_error(ck.get("pixel_error"))
        self.step = int(ck["step"])
        self.evaluator.metrics = list(ck.get("metrics", []))
        self.nerf_to_world = np.asarray(ck["nerf_to_world"], dtype=np.float64)
        self.c2w_nerf = np.asarray(ck["cameras"]["c2w_nerf"], dtype=np.float64)
        self.field_units_per_metre = 1.0 / float(self.nerf_to_world[0, 0])
        self.batcher.set_poses(self.c2w_nerf, self.field_units_per_metre)
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
