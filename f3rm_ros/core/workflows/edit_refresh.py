"""A refresh that knows the query server's edits (issue 18; ROS-free): the train node's ``TrainFields`` goal with
``edits_path``.

:func:`~f3rm_ros.core.workflows.refresh.refresh_scene` knows what changed from boxes only; here the changed places
are the edits' own regions (:func:`~f3rm_ros.core.workflows.refresh.edit_places`: every edit's old and new place,
from its voxels or box and its motion), so an old frame with a depth image loses only the pixels the edits
contradict and keeps the rays that see through the emptied old place (``refresh_field``'s ``changed_old`` /
``changed_new``), besides any ``changed_boxes``.

Every edit since the dataset's first capture counts: the first frames still show each thing at its first place. So a
refresh run keeps the edits it was given, after those of the field it refreshed, in ``RUN_DIR/baked_edits.json`` (the
:mod:`f3rm_ros.core.edit_store` format), and a refresh of that refreshed field (after the next move) takes them
first. The run folder is the one ``refresh_scene`` writes (``RUN_DIR/field.ckpt``, ``RUN_DIR/run.json`` with the
edits' counts and file).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from f3rm_ros.core.edit_store import load_edit_stack, save_edit_stack
from f3rm_ros.core.edits import SceneEdit

if TYPE_CHECKING:
    from f3rm_ros.core.workflows.refresh import RefreshConfig

__all__ = ["BAKED_EDITS_NAME", "baked_edits", "changed_places", "refresh_with_edits"]

BAKED_EDITS_NAME = "baked_edits.json"


def baked_edits(checkpoint: str | Path) -> tuple[SceneEdit, ...]:
    """The edits a refreshed field was refreshed with, since its dataset's first capture (its run folder's
    ``baked_edits.json``; () for a field that is not a refresh). EditStoreError when that file is malformed."""
    ckpt = Path(checkpoint)
    for folder in (ckpt.parent, ckpt.parent.parent):
        path = folder / BAKED_EDITS_NAME
        if path.is_file():
            return load_edit_stack(path, check_stamp=False).edits
    return ()


def changed_places(edits: Sequence[SceneEdit], changed_boxes: Sequence[float] = ()) -> dict[str, Any]:
    """``refresh_field``'s ``changed`` (points of every edit's old and new place and of the boxes, or None),
    ``changed_old`` and ``changed_new`` (:func:`~f3rm_ros.core.workflows.refresh.edit_places`; None without edits).
    ValueError for malformed boxes (6 finite numbers each)."""
    from f3rm_ros.core.workflows.refresh import boxes_points, changed_points, edit_places  # noqa: PLC0415

    boxes = boxes_points(changed_boxes) if len(changed_boxes) else np.zeros((0, 3))
    changed = np.concatenate([changed_points(edits) if edits else np.zeros((0, 3)), boxes])
    old, new, _ = edit_places(edits) if edits else (None, None, None)
    return {"changed": changed if len(changed) else None, "changed_old": old, "changed_new": new}


def refresh_with_edits(request: Any, refresh_from: str | Path, edits: Sequence[SceneEdit],
                       changed_boxes: Sequence[float] = (), edits_path: str | Path | None = None,
                       through: bool | None = None, config: RefreshConfig | None = None) -> Any:
    """``refresh_scene`` (the request's dataset, features, device, budget, callbacks, run folder; the new frames are
    the dataset's highest ``scene_version``) with ``edits`` (made on ``refresh_from``, oldest first, after the edits
    the checkpoint itself carries).

    ``through`` (default: whenever only edits are given, no ``changed_boxes``, and the field was not refreshed with
    baked edits): ``refresh_field`` through the edits: the checkpoint's own edits and ``edits`` stay live, each frame
    trains the field through the edits in force when its scene version was captured (the checkpoint's record; the
    new frames: all of them; version 0: none; any other version not on record is left out), and the refreshed
    checkpoint carries them all. Otherwise the changed places are ``edits`` after the ones ``refresh_from`` was itself
    refreshed with (:func:`baked_edits`), plus ``changed_boxes``, and the result is a plain field. ``config``: the
    refresh's :class:`~f3rm_ros.core.workflows.refresh.RefreshConfig` (None: its defaults).

    Raises:
        ValueError: no appended frames, another dataset than the field's, malformed boxes, a field that carries live
        edits refreshed with boxes (its edits would be lost), ``through`` for a field with baked edits;
        EditStoreError (a ValueError) for a malformed baked_edits.json or live-edit record; CheckpointError.
    """
    from f3rm_ros.core.device import resolve_device  # noqa: PLC0415
    from f3rm_ros.core.io import atomic_write_json  # noqa: PLC0415
    from f3rm_ros.core.workflows.refresh import (RefreshConfig, _trained_on, refresh_field,  # noqa: PLC0415
                                                 scene_versions)
    from f3rm_ros.core.workflows.train_scene import (RUN_FORMAT, RUN_VERSION, TrainSceneResult,  # noqa: PLC0415
                                                     load_scene)

    req = request
    phase = req.on_phase or (lambda _p: None)
    from f3rm_ros.core.checkpoint import load_checkpoint  # noqa: PLC0415
    from f3rm_ros.core.edit_store import checkpoint_live_edits  # noqa: PLC0415

    src = Path(refresh_from)
    history = baked_edits(src)
    live, live_versions = checkpoint_live_edits(load_checkpoint(src), str(src))
    if through is None:
        through = bool(live or edits) and not history and not len(changed_boxes)
    if through and history:
        raise ValueError(f"{src} was refreshed with its edits baked in ({BAKED_EDITS_NAME}); it cannot be refreshed "
                         f"through them")
    if not through and live:
        raise ValueError(f"{src} carries {len(live)} live edit(s) (it was refreshed through them): refresh it through "
                         f"its edits (no changed_boxes), or its edits would be lost")
    every = (*history, *edits)
    places = changed_places(every, changed_boxes) if not through else {"changed": None}
    phase("loading dataset")
    ds = load_scene(req.dataset, req.downscale, 0)
    trained_on = _trained_on(src)
    if trained_on is not None and trained_on != Path(ds.root).resolve():
        raise ValueError(f"the field {src} was trained on {trained_on}, not on the refresh's dataset {ds.root}: a "
                         f"refresh continues a field on its own dataset")
    versions = scene_versions(ds) or [0]
    top = max(versions)
    if top == 0:
        raise ValueError(f"{ds.root} has no appended frames (no scene_version): capture the changed scene with APPEND "
                         f"first")
    new = [i for i, v in enumerate(versions) if v == top]
    if through:
        every = (*live, *edits)
        counts = {0: 0, **live_versions, top: len(every)}
        places.update(live_edits=every, frame_edits=[counts.get(v, -1) for v in versions])
    device = resolve_device(req.device) if isinstance(req.device, str) else torch.device(req.device)
    if req.torch_threads:
        torch.set_num_threads(req.torch_threads)
    phase("training")
    run_dir = Path(req.run_dir) if req.run_dir is not None else None
    out = run_dir / "field.ckpt" if run_dir is not None else None
    res = refresh_field(src, ds, new, num_steps=req.num_steps, features=req.features, device=device, out_path=out,
                        on_progress=req.on_progress, should_stop=req.should_stop, feature_cache=req.feature_cache,
                        config=config, **places)
    if run_dir is not None:
        baked = save_edit_stack(run_dir / BAKED_EDITS_NAME, src, every) if every and src.is_file() and \
            not through else None
        atomic_write_json(run_dir / "run.json", {
            "format": RUN_FORMAT, "version": RUN_VERSION, "data_dir": str(Path(ds.root).resolve()),
            "num_frames": len(ds), "device": str(device), "num_steps": int(req.num_steps), "command": req.command,
            "refresh": dataclasses.asdict(config if config is not None else RefreshConfig()),
            "refreshed_from": str(src), "scene_version": top,
            "edits": {"given": len(edits), "baked_before": len(history), "file": str(edits_path or ""),
                      "baked": str(baked or ""), "through": bool(through), "live_before": len(live),
                      "live": len(every) if through else 0},
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "result": {"step": res.step, "stopped": res.stopped, "frames_new": res.frames_new,
                       "frames_old_kept": res.frames_old_kept, "frames_old_dropped": res.frames_old_dropped,
                       "frames_old_masked": res.frames_old_masked,
                       "train_s": res.train_s, "elapsed_s": res.seconds, "field": str(out)}})
    phase("done")
    return TrainSceneResult(step=res.step, stopped=res.stopped, started=True, elapsed_s=res.seconds,
                            train_s=res.train_s, features_s=0.0, losses=res.losses, eval={}, checkpoint=res.checkpoint,
                            field=res.checkpoint, run_dir=run_dir, resumed_from=src)
