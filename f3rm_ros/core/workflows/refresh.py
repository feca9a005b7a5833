"""Refresh a field from a few new views after the scene changed (issue 18; ROS-free, no open3d).

:func:`refresh_field` fine-tunes a trained checkpoint, in its own field frame (its ``nerf_to_world``), on the new
frames of an appended dataset plus the old frames that still agree with the scene: an old frame whose camera sees a
changed region (the old or the new place of an edit: :func:`frames_seeing`, the regions' points projected into each
camera, occlusion ignored, so the test errs on distrust) keeps only its pixels away from the changed places
(:func:`changed_mask`; the trainer samples rays of unmasked pixels only), or is dropped (``old_frames="drop"``).
The networks start from the checkpoint's weights (appearance embeddings: the checkpoint's mean for every frame), the
optimiser afresh, for a short step budget with the trainer's usual progress and stop callbacks. The result is a plain
checkpoint that ``load_trained_field`` and the query node load like any other (the node swaps it in atomically, as
every load).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from f3rm_ros.core.checkpoint import CheckpointError, load_checkpoint

__all__ = ["frames_seeing", "changed_mask", "changed_points", "boxes_points", "RefreshResult", "refresh_field",
           "refresh_scene"]


def frames_seeing(dataset: Any, points: np.ndarray, frames: Sequence[int] | None = None,
                  margin_px: float = 4.0) -> np.ndarray:
    """[len(frames)] bool: does each frame's camera (OpenCV c2w, world) see any of ``points`` [M, 3] (in front of it,
    inside the image grown by ``margin_px``)? Occlusion is not tested."""
    idx = range(len(dataset)) if frames is None else frames
    P = np.asarray(points, np.float64).reshape(-1, 3)
    out = []
    for i in idx:
        T, K = np.asarray(dataset.c2w[i], np.float64), dataset.intrinsics[i]
        pc = (P - T[:3, 3]) @ T[:3, :3]  # rows: R^T (p - t)
        z = pc[:, 2]
        front = z > 1e-3
        u = K.fx * pc[front, 0] / z[front] + K.cx
        v = K.fy * pc[front, 1] / z[front] + K.cy
        inside = (u >= -margin_px) & (u <= K.width + margin_px) & (v >= -margin_px) & (v <= K.height + margin_px)
        out.append(bool(inside.any()))
    return np.asarray(out, dtype=bool)


def changed_mask(c2w: np.ndarray, K: Any, points: np.ndarray, spacing: float, margin_px: int = 2) -> np.ndarray:
    """[H, W] bool: the pixels of camera ``(c2w, K)`` (OpenCV, world) onto which the ``points`` [M, 3] (a sampling of
    the changed places at ``spacing`` metres) project, each splatted by its footprint, grown by ``margin_px``."""
    T = np.asarray(c2w, np.float64)
    pc = (np.asarray(points, np.float64) - T[:3, 3]) @ T[:3, :3]
    pc = pc[pc[:, 2] > 1e-3]
    out = np.zeros((K.height, K.width), dtype=bool)
    if not len(pc):
        return out
    u = np.round(K.fx * pc[:, 0] / pc[:, 2] + K.cx - 0.5).astype(int)
    v = np.round(K.fy * pc[:, 1] / pc[:, 2] + K.cy - 0.5).astype(int)
    ok = (u >= 0) & (u < K.width) & (v >= 0) & (v < K.height)
    out[v[ok], u[ok]] = True
    r = int(np.ceil(max(K.fx, K.fy) * spacing / pc[:, 2].min())) + margin_px
    k = 2 * r + 1
    t = torch.from_numpy(out.astype(np.float32))[None, None]
    return (torch.nn.functional.max_pool2d(t, k, stride=1, padding=r)[0, 0] > 0).numpy()


class _MaskedDataset:
    """A dataset whose frames ``masks`` (index -> [H, W] bool, True = use the pixel) replace their own masks."""

    def __init__(self, ds: Any, masks: dict[int, np.ndarray]):
        self._ds, self._masks = ds, masks

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ds, name)

    def __len__(self) -> int:
        return len(self._ds)

    def get_mask(self, index: int) -> np.ndarray | None:
        m = self._masks.get(int(index))
        return m if m is not None else self._ds.get_mask(index)


def changed_points(edits: Sequence[Any], spacing: float = 0.02) -> np.ndarray:
    """Points [M, 3] of every edit's old place and new place (world, metres)."""
    pts = []
    for e in edits:
        p = e.region.sample_points(spacing)
        pts.append(p)
        if not e.removed:
            T = e.T_world_new_old
            pts.append(p @ T[:3, :3].T + T[:3, 3])
    return np.concatenate(pts) if pts else np.zeros((0, 3))


@dataclass
class RefreshResult:
    checkpoint: Path | None
    step: int
    stopped: bool
    frames_new: int
    frames_old_kept: int
    frames_old_dropped: int
    frames_old_masked: int  # old frames kept with the changed places' pixels left out
    seconds: float  # the whole refresh (features, setup, training, saving)
    train_s: float
    losses: dict[str, float] = field(default_factory=dict)
    trainer: Any = None


def refresh_field(checkpoint: str | Path, dataset: Any, new_frames: Sequence[int], changed: np.ndarray | None,
                  num_steps: int, features: Any = None, device: str | torch.device = "cpu",
                  out_path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                  on_progress: Callable[[Any], None] | None = None, should_stop: Callable[[], bool] | None = None,
                  keep_trainer: bool = False, feature_cache: str | Path | None = None, old_frames: str = "mask",
                  min_kept_fraction: float = 0.2, spacing: float = 0.01) -> RefreshResult:
    """Fine-tune ``checkpoint`` on ``dataset``'s ``new_frames`` plus its other frames, for ``num_steps`` steps. An old
    frame that sees ``changed`` (points [M, 3] sampled every ``spacing`` m, e.g. :func:`changed_points` of the edits;
    None trusts every old frame) is, with ``old_frames`` "mask", kept with the pixels the changed places project onto
    left out (:func:`changed_mask`; dropped when less than ``min_kept_fraction`` of it is left), with "drop" dropped.

    Args:
        features: the feature source as in ``TrainSceneRequest.features`` (the field's own extractor, e.g. a label
            extractor of the dataset); must give the checkpoint's feature width.
        overrides: flat ``TrainerConfig`` keys (not ``model.*``) on top of the checkpoint's config.
        out_path: where the refreshed field is saved (None: not saved).

    Raises:
        CheckpointError: the checkpoint does not fit (another feature width, model keys in overrides).
        ValueError: no new frame, an index out of range.
    """
    from f3rm_ros.core.config import from_dict, replace  # noqa: PLC0415
    from f3rm_ros.core.training import Trainer, TrainerConfig  # noqa: PLC0415
    from f3rm_ros.core.workflows.train_scene import scene_features  # noqa: PLC0415

    t0 = time.perf_counter()
    n = len(dataset)
    new = sorted({int(i) for i in new_frames})
    if not new:
        raise ValueError("a refresh needs at least one new frame")
    if new[0] < 0 or new[-1] >= n:
        raise ValueError(f"new frame indices must be in [0, {n}), got {new[0]}..{new[-1]}")
    old = [i for i in range(n) if i not in set(new)]
    sees = frames_seeing(dataset, changed, old) if changed is not None and len(changed) and old else \
        np.zeros(len(old), bool)
    if old_frames not in ("mask", "drop"):
        raise ValueError(f"old_frames must be 'mask' or 'drop', got {old_frames!r}")
    kept_old, masks = [], {}
    for i, s_ in zip(old, sees, strict=True):
        if not s_:
            kept_old.append(i)
        elif old_frames == "mask":
            m = ~changed_mask(dataset.c2w[i], dataset.intrinsics[i], changed, spacing)
            own = dataset.get_mask(i) if hasattr(dataset, "get_mask") else None
            m = m if own is None else m & own
            if m.mean() >= min_kept_fraction:
                masks[len(new) + len(kept_old)] = m
                kept_old.append(i)
    sub = dataset.subset(new + kept_old)
    ck = load_checkpoint(checkpoint)
    if overrides and any(k.startswith("model.") for k in overrides):
        raise CheckpointError("model settings cannot be changed when refreshing")
    cfg = from_dict(TrainerConfig, ck["config"])
    cfg = replace(cfg, **{"eval_every": 0, "eval_num_images": 0, "checkpoint_every": 0, **(overrides or {})})
    feats = scene_features(features, sub, feature_cache)
    ck_dim = int((ck.get("extractor_info") or {}).get("feature_dim", 0) or 0)
    got = int(feats.maps.shape[-1]) if feats.maps is not None else 0
    if ck_dim and got != ck_dim:
        raise CheckpointError(f"the refresh's features are {got}-dim, the field's {ck_dim}-dim: the dataset does not "
                              f"match the field")
    tr = Trainer(cfg, _MaskedDataset(sub, masks) if masks else sub, feats.maps, device,
                 extractor_info=ck.get("extractor_info"))
    state = dict(ck["model"])
    key = "rgb_field.appearance.weight"
    if key in state and tr.model.rgb_field.appearance is not None:
        w = state[key]
        state[key] = w.float().mean(0, keepdim=True).expand_as(tr.model.rgb_field.appearance.weight).clone()
    tr.model.load_state_dict(state)
    # the new frames in the checkpoint's field frame (the model's frame), not a frame of their own
    nw = np.asarray(ck["nerf_to_world"], np.float64)
    s = float(np.cbrt(np.linalg.det(nw[:3, :3])))
    R, t = nw[:3, :3] / s, nw[:3, 3]
    c2w = np.asarray(sub.c2w, np.float64).copy()
    c2w_n = c2w.copy()
    c2w_n[:, :3, :3] = R.T @ c2w[:, :3, :3]
    c2w_n[:, :3, 3] = ((c2w[:, :3, 3] - t) @ R) / s
    tr.nerf_to_world, tr.c2w_nerf = nw, c2w_n
    tr.field_units_per_metre = 1.0 / s
    tr.batcher.set_poses(c2w_n, tr.field_units_per_metre)
    # no final evaluation: the subset has no held-out split, so the trainer would render every training frame (175 s
    # of a 60-step CPU refresh); whoever refreshes measures the new views it holds out itself
    tr.evaluate = lambda frames=None, save_images=None: {}
    t1 = time.perf_counter()
    res = tr.train(int(num_steps), on_progress=on_progress, should_stop=should_stop)
    train_s = time.perf_counter() - t1
    path = tr.save_checkpoint(Path(out_path), include_optimizer=False) if out_path is not None else None
    return RefreshResult(path, res.step, res.stopped, len(new), len(kept_old), len(old) - len(kept_old), len(masks),
                         time.perf_counter() - t0, train_s, dict(res.losses), tr if keep_trainer else None)


def boxes_points(boxes: Sequence[float], spacing: float = 0.02) -> np.ndarray:
    """Points [M, 3] inside axis-aligned boxes given as 6 numbers each (xmin ymin zmin xmax ymax zmax)."""
    from f3rm_ros.core.edits import BoxRegion  # noqa: PLC0415

    b = np.asarray(list(boxes), dtype=np.float64)
    if b.size % 6 or not np.all(np.isfinite(b)):
        raise ValueError(f"changed_boxes must be finite numbers, 6 per box; got {b.size} values")
    pts = [BoxRegion.from_bounds(lo, hi).sample_points(spacing) for lo, hi in
           ((r[:3], r[3:]) for r in b.reshape(-1, 6))]
    return np.concatenate(pts) if pts else np.zeros((0, 3))


def _trained_on(checkpoint: Path) -> Path | None:
    """The dataset folder a checkpoint's run was trained on (its run folder's run.json), or None when unknown."""
    import json  # noqa: PLC0415

    for folder in (checkpoint.parent, checkpoint.parent.parent):
        run = folder / "run.json"
        if run.is_file():
            try:
                d = json.loads(run.read_text()).get("data_dir")
            except (OSError, ValueError):
                return None
            return Path(d).resolve() if d else None
    return None


def refresh_scene(request: Any, refresh_from: str | Path, changed_boxes: Sequence[float] = ()) -> Any:
    """:func:`refresh_field` as a ``train_scene``-like workflow (a ``TrainJob`` runner of the train node): the request's
    dataset, features, device, step budget, callbacks and run folder; the new frames are those of the dataset's highest
    ``scene_version`` (a capture APPEND). Writes ``RUN_DIR/field.ckpt`` and ``RUN_DIR/run.json``.

    Raises:
        ValueError: the dataset has no appended frames, or it is not the one the field was trained on; CheckpointError.
    """
    import datetime  # noqa: PLC0415

    from f3rm_ros.core.device import resolve_device  # noqa: PLC0415
    from f3rm_ros.core.io import atomic_write_json  # noqa: PLC0415
    from f3rm_ros.core.workflows.train_scene import RUN_FORMAT, RUN_VERSION, TrainSceneResult, load_scene  # noqa

    req = request
    phase = req.on_phase or (lambda _p: None)
    src = Path(refresh_from)
    phase("loading dataset")
    ds = load_scene(req.dataset, req.downscale, 0)
    trained_on = _trained_on(src)
    if trained_on is not None and trained_on != Path(ds.root).resolve():
        raise ValueError(f"the field {src} was trained on {trained_on}, not on the refresh's dataset {ds.root}: a "
                         f"refresh continues a field on its own dataset")
    versions = [int((fx or {}).get("scene_version", 0) or 0) for fx in ds.frames_extra] or [0]
    top = max(versions)
    if top == 0:
        raise ValueError(f"{ds.root} has no appended frames (no scene_version): capture the changed scene with APPEND "
                         f"first")
    new = [i for i, v in enumerate(versions) if v == top]
    device = resolve_device(req.device) if isinstance(req.device, str) else torch.device(req.device)
    if req.torch_threads:
        torch.set_num_threads(req.torch_threads)
    phase("training")
    run_dir = Path(req.run_dir) if req.run_dir is not None else None
    out = run_dir / "field.ckpt" if run_dir is not None else None
    res = refresh_field(src, ds, new, boxes_points(changed_boxes) if len(changed_boxes) else None, req.num_steps,
                        features=req.features, device=device, out_path=out, on_progress=req.on_progress,
                        should_stop=req.should_stop, feature_cache=req.feature_cache)
    if run_dir is not None:
        atomic_write_json(run_dir / "run.json", {
            "format": RUN_FORMAT, "version": RUN_VERSION, "data_dir": str(Path(ds.root).resolve()),
            "num_frames": len(ds), "device": str(device), "num_steps": int(req.num_steps), "command": req.command,
            "refreshed_from": str(src), "scene_version": top,
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "result": {"step": res.step, "stopped": res.stopped, "frames_new": res.frames_new,
                       "frames_old_kept": res.frames_old_kept, "frames_old_dropped": res.frames_old_dropped,
                       "frames_old_masked": res.frames_old_masked,
                       "train_s": res.train_s, "elapsed_s": res.seconds, "field": str(out)}})
    phase("done")
    return TrainSceneResult(step=res.step, stopped=res.stopped, started=True, elapsed_s=res.seconds,
                            train_s=res.train_s, features_s=0.0, losses=res.losses, eval={}, checkpoint=res.checkpoint,
                            field=res.checkpoint, run_dir=run_dir, resumed_from=src)
