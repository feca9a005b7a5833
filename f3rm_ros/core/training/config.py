"""Training settings (:class:`TrainerConfig`: F3RM / nerfacto defaults), apart from the trainer so that
presets, the CLI and the nodes read them without the training code."""

from __future__ import annotations

from dataclasses import dataclass

from f3rm_ros.core.config import param
from f3rm_ros.core.fields.losses import LossConfig
from f3rm_ros.core.fields.model import FieldModelConfig

__all__ = ["TrainerConfig"]


@dataclass
class TrainerConfig:
    """Training settings (F3RM / nerfacto defaults)."""

    model: FieldModelConfig = param(FieldModelConfig(), "networks and sampler")
    losses: LossConfig = param(LossConfig(), "loss weights")
    rays_per_batch: int = param(4096, "rays per training step", range=(1, 1 << 22))
    lr: float = param(1e-2, "Adam learning rate (all networks)", range=(0.0, 10.0))
    adam_eps: float = param(1e-15, "Adam epsilon", range=(0.0, 1.0))
    lr_final: float = param(1e-4, "learning rate reached after lr_decay_steps (exponential decay)",
                            range=(0.0, 10.0))
    lr_decay_steps: int = param(200_000, "steps of the exponential decay", range=(1, 100_000_000))
    mixed_precision: bool = param(True, "fp16 autocast + gradient scaling (CUDA only; ignored on the CPU)")
    eval_every: int = param(1000, "steps between evaluations (0 = only at the end)", range=(0, 100_000_000))
    eval_num_images: int = param(4, "held-out images rendered per evaluation (0 = all)", range=(0, 100000))
    eval_chunk_rays: int = param(16384, "rays per chunk when rendering images", range=(1, 1 << 24))
    checkpoint_every: int = param(2000, "steps between checkpoints (0 = only at the end)", range=(0, 100_000_000))
    keep_checkpoints: int = param(2, "step checkpoints kept in run_dir/checkpoints (0 = all)", range=(0, 10000))
    progress_every: int = param(10, "steps between progress callbacks", range=(1, 1_000_000))
    seed: int = param(0, "random seed (initialisation, ray batches, sample jitter)", range=(0, 2**62))
    pose_center: str = param("focus", "pose normalisation centre: focus, poses or none",
                             choices=("focus", "poses", "none"))
    pose_scale_factor: float = param(1.0, "largest |camera coordinate| in the field frame", range=(1e-6, 1e6))
    ray_table_max_mb: int = param(1024, "precompute the undistorted camera-frame direction of every training pixel "
                                        "if that table fits in this many MB (0 = generate rays every step)",
                                  range=(0, 1 << 20))
    error_sampling: float = param(0.0, "fraction of each ray batch drawn in proportion to every training pixel's "
                                       "latest RGB error (an error map, as instant-ngp keeps one; per pixel here) "
                                       "instead of uniformly: thin parts the field still misses are drawn again "
                                       "sooner. 0 = uniform over all pixels (F3RM)", range=(0.0, 1.0))
    cuda_graphs: str = param("auto", "capture the whole training step (ray batch, forward, backward, Adam) as CUDA "
                                     "graphs and replay them: auto = on for CUDA when every hash grid runs on the "
                                     "triton backend, on (error if not possible), off (the plain eager step)",
                             choices=("auto", "on", "off"))
