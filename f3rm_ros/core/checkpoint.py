"""The field checkpoint format: what a file holds, writing, reading, and the field model it describes.

Shared by the trainer (which writes and resumes checkpoints) and the query side
(:func:`f3rm_ros.core.field_api.load_trained_field`), which must not import any training code: this
module imports the field model and the camera types only.

A checkpoint is a ``torch.save`` dict (loaded with ``weights_only=True``):

* ``format`` (:data:`CHECKPOINT_FORMAT`), ``version`` (:data:`CHECKPOINT_VERSION`), ``step``;
* ``config``: the trainer's whole config as a plain dict (``config["model"]`` is the
  :class:`~f3rm_ros.core.fields.model.FieldModelConfig`, see :func:`model_config`);
* ``model``: the field's ``state_dict``; ``num_train_images`` (appearance embeddings) and ``feature_dim``;
* ``hashgrid_backends``, ``nerf_to_world`` (4x4 float64 similarity, field frame -> world metres),
  ``extractor_info`` (the 2D feature extractor's name and settings; no foundation-model weights);
* ``cameras``: ``c2w_nerf`` [N, 4, 4] float64 (OpenCV, field frame), ``intrinsics`` (one
  ``CameraIntrinsics.to_dict()`` per frame), ``train_indices``, ``eval_indices``;
* ``dataset_root`` and ``metrics`` (the evaluation history);
* the training state, left out of query-only files (:data:`TRAINING_STATE_KEYS`): ``optimizer``,
  ``scheduler``, ``scaler``, ``generator``, ``sampler_steps_since_update`` and, with the error map,
  ``pixel_error``.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from f3rm_ros.core.cameras import CameraIntrinsics
from f3rm_ros.core.config import from_dict, to_dict
from f3rm_ros.core.fields.model import FieldModel, FieldModelConfig
from f3rm_ros.core.io import atomic_write_bytes

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "TRAINING_STATE_KEYS", "CheckpointError",
           "save_checkpoint_file", "load_checkpoint", "latest_checkpoint", "checkpoint_payload", "model_config",
           "load_field_model", "checkpoint_cameras", "check_resumable"]

CHECKPOINT_FORMAT = "f3rm_ros.field_checkpoint"
CHECKPOINT_VERSION = 1
# what a resumable checkpoint holds beyond the field (in this order after "model"; pixel_error last)
TRAINING_STATE_KEYS = ("optimizer", "scheduler", "scaler", "generator", "sampler_steps_since_update", "pixel_error")


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, of another format, or of another format version."""


def _torch_save_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save_checkpoint_file(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write a checkpoint dict atomically (never a half-written file)."""
    return atomic_write_bytes(Path(path), _torch_save_bytes(payload))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and check a checkpoint written by the trainer.

    Raises:
        CheckpointError: missing file, not a checkpoint of ours, or another format version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt, truncated, or pickled objects we refuse to load
        raise CheckpointError(f"{path}: cannot read checkpoint: {e}") from None
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        fmt = ck.get("format") if isinstance(ck, dict) else type(ck).__name__
        raise CheckpointError(f"{path}: not an f3rm_ros field checkpoint (format {fmt!r})")
    if ck.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {ck.get('version')!r}, but this code reads version "
                              f"{CHECKPOINT_VERSION}; retrain with this version of f3rm_ros "
                              "(or use the matching release)")
    return ck


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest ``step-*.ckpt`` in ``run_dir/checkpoints`` (or ``run_dir`` itself), or None."""
    run_dir = Path(run_dir)
    for d in (run_dir / "checkpoints", run_dir):
        found = sorted(d.glob("step-*.ckpt"))
        if found:
            return found[-1]
    return None


def checkpoint_payload(*, step: int, config: Mapping[str, Any], model: FieldModel, num_train_images: int,
                       nerf_to_world: np.ndarray, extractor_info: Mapping[str, Any], c2w_nerf: np.ndarray,
                       intrinsics: Sequence[CameraIntrinsics], train_indices: np.ndarray, eval_indices: np.ndarray,
                       dataset_root: str, metrics: list[dict[str, Any]],
                       training_state: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint dict (see the module docstring).

    Args:
        config: the trainer's config as a plain dict (``to_dict``).
        c2w_nerf: every frame's camera-to-world, OpenCV, field frame  # [N, 4, 4]
        training_state: the :data:`TRAINING_STATE_KEYS` to resume from (``pixel_error`` optional), or None
            for a query-only file.
    """
    out: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": int(step),
                           "config": dict(config), "model": model.state_dict()}
    state = dict(training_state or {})
    if training_state is not None:
        out.update({k: state[k] for k in TRAINING_STATE_KEYS[:-1]})
    out.update({
        "num_train_images": int(num_train_images), "feature_dim": int(model.feature_dim),
        "hashgrid_backends": model.hashgrid_backends(),
        "nerf_to_world": torch.as_tensor(nerf_to_world, dtype=torch.float64),
        "extractor_info": dict(extractor_info),
        "cameras": {"c2w_nerf": torch.as_tensor(c2w_nerf, dtype=torch.float64),
                    "intrinsics": [k.to_dict() for k in intrinsics],
                    "train_indices": torch.as_tensor(train_indices),
                    "eval_indices": torch.as_tensor(eval_indices)},
        "dataset_root": str(dataset_root), "metrics": metrics,
    })
    if state.get("pixel_error") is not None:  # training state: a resumed run draws the same rays
        out["pixel_error"] = state["pixel_error"].detach().cpu().clone()
    return out


def model_config(ck: Mapping[str, Any]) -> FieldModelConfig:
    """The field model's config stored in a checkpoint (``config["model"]``)."""
    return from_dict(FieldModelConfig, ck["config"]["model"], where="model")


def load_field_model(ck: Mapping[str, Any], device: torch.device | str = "cpu") -> FieldModel:
    """The trained :class:`FieldModel` of a checkpoint dict, on ``device`` (train mode, as constructed)."""
    model = FieldModel(model_config(ck), int(ck["num_train_images"]), int(ck["feature_dim"]), torch.device(device))
    model.load_state_dict(ck["model"])
    return model


def checkpoint_cameras(ck: Mapping[str, Any]) -> tuple[np.ndarray, list[CameraIntrinsics], np.ndarray] | None:
    """The stored cameras: (c2w_nerf [N, 4, 4] float64, intrinsics [N], train_indices [N_train] int64), or None."""
    if "cameras" not in ck:
        return None
    cams = ck["cameras"]
    Ks = [CameraIntrinsics(fx=k["fl_x"], fy=k["fl_y"], cx=k["cx"], cy=k["cy"], width=k["w"], height=k["h"],
                           k1=k["k1"], k2=k["k2"], p1=k["p1"], p2=k["p2"], k3=k["k3"]) for k in cams["intrinsics"]]
    return (np.asarray(cams["c2w_nerf"], dtype=np.float64), Ks, np.asarray(cams["train_indices"], dtype=np.int64))


def check_resumable(ck: Mapping[str, Any], num_train_images: int, feature_dim: int,
                    config_model: FieldModelConfig) -> None:
    """Whether a training run of ``num_train_images`` images, ``feature_dim`` features and model config
    ``config_model`` can continue from checkpoint dict ``ck``.

    Raises:
        CheckpointError: other images or features, a query-only file, a field refreshed through scene edits, or
            another model config.
    """
    if ck.get("live_edits"):
        raise CheckpointError("this checkpoint was refreshed through scene edits (live_edits): it is served through "
                              "them, and training it on as a plain field would drop them; refresh it again "
                              "(refresh_from / edits_path) or train a new field")
    if int(ck["num_train_images"]) != num_train_images or int(ck["feature_dim"]) != feature_dim:
        raise CheckpointError(f"checkpoint was trained on {ck['num_train_images']} images with feature_dim "
                              f"{ck['feature_dim']}, but this run has {num_train_images} images and "
                              f"feature_dim {feature_dim}")
    if "optimizer" not in ck:
        raise CheckpointError("this checkpoint holds the field only (saved without optimiser state); it can be "
                              "queried with load_trained_field but not resumed")
    if to_dict(model_config(ck)) != to_dict(config_model):
        raise CheckpointError("checkpoint model config differs from this trainer's; build the trainer with "
                              "the checkpoint's config (Trainer.from_checkpoint)")
