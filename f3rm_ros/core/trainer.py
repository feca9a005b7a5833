"""The trainer's old import path, kept for its callers: the trainer lives in :mod:`f3rm_ros.core.training`, the
checkpoint format in :mod:`f3rm_ros.core.checkpoint`."""

from f3rm_ros.core.checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, CheckpointError, latest_checkpoint,
                                      load_checkpoint, save_checkpoint_file)
from f3rm_ros.core.training.config import TrainerConfig
from f3rm_ros.core.training.trainer import ProgressInfo, Trainer, TrainResult

__all__ = ["TrainerConfig", "ProgressInfo", "TrainResult", "Trainer", "CheckpointError", "CHECKPOINT_FORMAT",
           "CHECKPOINT_VERSION", "load_checkpoint", "latest_checkpoint", "save_checkpoint_file"]
