"""Training the field, in parts: :mod:`.config` (``TrainerConfig``), :mod:`.batcher` (ray batches),
:mod:`.graphs` (the step as CUDA graphs), :mod:`.evaluate` (eval renders, metrics) and :mod:`.trainer`
(``Trainer``, which composes them). The checkpoint format lives in :mod:`f3rm_ros.core.checkpoint`, outside
this package, so the query side loads fields without importing training code."""

from f3rm_ros.core.training.config import TrainerConfig
from f3rm_ros.core.training.trainer import ProgressInfo, Trainer, TrainResult

__all__ = ["TrainerConfig", "Trainer", "ProgressInfo", "TrainResult"]
