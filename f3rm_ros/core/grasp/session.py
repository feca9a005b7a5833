"""A query session: one loaded field, its text encoder, the grasp tasks and a planner (ROS-free).

What the query node serves, without ROS: the node converts messages, holds the parameters
(:class:`QueryConfig` plus its own) and calls a :class:`QuerySession`, which

* loads the tasks (the package's defaults merged with a folder of recorded task files,
  :func:`~f3rm_ros.core.grasp.task.task_library`) and a checkpoint (a file, or the newest under a
  folder: :func:`newest_checkpoint`), keeping the tasks usable with the field's extractor;
* checks a request (text length, negatives, workspace box) and plans it with per-request
  :class:`~f3rm_ros.core.grasp.result.PlanOptions` (the heat map comes with the result);
* records a demonstration into a task file (:func:`~f3rm_ros.core.grasp.task.record_task_demo`);
* renders the scene cloud of the field's training cameras.

A request it cannot serve raises :class:`QueryRefused` with the reason. Not thread-safe: the caller
serialises calls (the node holds one lock around them).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from f3rm_ros.core.config import param
from f3rm_ros.core.fields.protocol import GraspField
from f3rm_ros.core.gripper import Gripper, GripperConfig
from f3rm_ros.core.grasp.config import PlannerConfig, TaskConfig
from f3rm_ros.core.grasp.result import PlanOptions, PlanResult
from f3rm_ros.core.grasp.task import (ExtractorMismatchError, Task, TaskFormatError, merge_tasks, record_task_demo,
                                      task_library, usable_tasks)

__all__ = ["QueryConfig", "QueryRefused", "QuerySession", "newest_checkpoint", "TASK_NAME_RE"]

TASK_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # a task's name is its file name in tasks_dir


class QueryRefused(ValueError):
    """A request cannot be served (no field, bad text or box, unknown task, ...); the message says why."""


@dataclass
class QueryConfig:
    """Settings of a query session; the query node declares them as parameters of the same names."""

    checkpoint_root: str = param("~/f3rm_checkpoints", "checkpoints may only be loaded from inside this folder "
                                                     "(~ and $VARS expanded; symlinks resolved)")
    tasks_dir: str = param("~/f3rm_tasks", "folder of recorded task files (<task_name>.npz), read at "
                                           "configure and written by ~/record_demo")
    use_default_tasks: bool = param(True, "also use the tasks shipped with the package (synthetic world, "
                                          "label features)")
    device: str = param("auto", "torch device of the field: auto, cpu, cuda, cuda:N")
    max_text_chars: int = param(1000, "longest accepted query text, characters", range=(1, 100000))
    max_negatives: int = param(32, "most negative phrases accepted per request", range=(0, 1000))
    max_workspace_voxels: int = param(20_000_000, "refuse a requested workspace box with more alpha-grid "
                                                  "voxels than this (bounds memory and time)", range=(1, 10**10))
    cloud_cameras: int = param(6, "training cameras rendered for ~/scene_cloud (evenly spaced; 0 = none)",
                               range=(0, 10000))
    cloud_scale: float = param(0.25, "image scale of those renders (0.25 = a quarter of the width)",
                               range=(0.01, 1.0))
    cloud_min_accumulation: float = param(0.9, "keep pixels whose accumulated opacity reaches this",
                                          range=(0.0, 1.0))
    cloud_max_points: int = param(200_000, "most points in ~/scene_cloud", range=(1, 10**8))
    cloud_crop_to_workspace: bool = param(True, "keep only scene-cloud points inside the planner workspace "
                                                "box grown by cloud_crop_margin_m")
    cloud_crop_margin_m: float = param(0.1, "margin around the workspace box for the scene cloud, metres",
                                       range=(0.0, 100.0))


def _expand(path: str | os.PathLike) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(str(path))))


def newest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The most recently modified ``*.ckpt`` file anywhere under ``folder`` (ties: the larger path), or None."""
    folder = Path(folder)
    found = [p for p in folder.rglob("*.ckpt") if p.is_file()] if folder.is_dir() else []
    return max(found, key=lambda p: (p.stat().st_mtime, str(p))) if found else None


class QuerySession:
    """A field, its text encoder, the tasks and a planner; see the module docstring.

    Args:
        config: session settings (the query node passes its own config, a subclass).
        planner_config, task_config: the planner's and new tasks' settings.
        gripper: the gripper model (its tool transform gives the tool frame of grasps and demonstrations).
    """

    def __init__(self, config: QueryConfig | None = None, planner_config: PlannerConfig | None = None,
                 task_config: TaskConfig | None = None, gripper: Gripper | None = None):
        self.config = config or QueryConfig()
        self.planner_config = planner_config or PlannerConfig()
        self.task_config = task_config or TaskConfig()
        self.gripper = gripper or Gripper()
        self.tasks: list[Task] = []  # every loaded task; the planner gets those usable with the field
        self.skipped_tasks: dict[str, str] = {}  # task name -> why it is not usable with the field
        self.field: GraspField | None = None
        self.encoder: Any = None
        self.encoder_error = ""
        self.checkpoint_path: Path | None = None
        self.planner: Any = None

    # --- settings ------------------------------------------------------------------------------------
    def configure(self, *, config: QueryConfig | None = None, planner: PlannerConfig | None = None,
                  task: TaskConfig | None = None, gripper: GripperConfig | None = None) -> None:
        """Replace the given settings: the session's, the planner's (its surface is recomputed on the next
        query), new tasks' or the gripper's (a new gripper model and planner)."""
        if config is not None:
            self.config = config
        if task is not None:
            self.task_config = task
        if planner is not None:
            old, self.planner_config = self.planner_config, planner
            rebuild = any(getattr(old, k) != getattr(planner, k) for k in
                          ("collision_voxel_m", "collision_include_fingers", "fine_voxel_m", "device"))
            if self.planner is not None and rebuild:  # the gripper's point sets or the device change
                self._build_planner()
            elif self.planner is not None:
                self.planner.config = planner
                self.planner.invalidate_cache()
        if gripper is not None:
            self.gripper = Gripper(gripper)
            self._build_planner()

    # --- loading -------------------------------------------------------------------------------------
    def load_tasks(self) -> list[Task]:
        """(Re)load the default and recorded tasks (``use_default_tasks``, ``tasks_dir``)."""
        c = self.config
        self.tasks = task_library(_expand(c.tasks_dir) if c.tasks_dir else None, c.use_default_tasks)
        self._build_planner()
        return self.tasks

    def use_field(self, field: GraspField, encoder: Any, encoder_error: str = "",
                  checkpoint_path: str | os.PathLike | None = None) -> None:
        """Plan on ``field`` from now on (``encoder``: its text encoder, None when it cannot be queried by
        text, ``encoder_error`` says why). The surface cache starts empty."""
        self.field, self.encoder, self.encoder_error = field, encoder, encoder_error
        self.checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
        self.planner = None
        self._build_planner()

    def load_field(self, path: str | os.PathLike) -> str:
        """Load a checkpoint file, or the newest ``*.ckpt`` under a folder; returns a summary.

        Raises:
            QueryRefused: no checkpoint there, or it cannot be loaded (the current field stays).
        """
        import torch

        from f3rm_ros.core.device import resolve_device
        from f3rm_ros.core.field_api import load_trained_field

        t0, path = time.perf_counter(), Path(path)
        if path.is_dir():
            found = newest_checkpoint(path)
            if found is None:
                raise QueryRefused(f"no checkpoint (*.ckpt) under {path}; train a field first")
            path = found
        if not path.is_file():
            raise QueryRefused(f"checkpoint not found: {path}")
        try:
            field = load_trained_field(path, resolve_device(self.config.device))
        except (ValueError, KeyError, RuntimeError, OSError, TypeError) as e:  # CheckpointError is a ValueError
            raise QueryRefused(f"cannot load checkpoint {path}: {e}") from None
        encoder, err = None, ""
        if field.feature_dim > 0:
            try:
                from f3rm_ros.core.features import create_extractor

                encoder = create_extractor(field.extractor_info)
            except Exception as e:  # weights unavailable, unknown extractor...
                err = f"text encoder of extractor {field.extractor_info.get('type')!r} unavailable: {e}"
        else:
            err = "the field has no feature field (trained without 2D features)"
        self.use_field(field, encoder, err, path)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return (f"loaded {path} ({time.perf_counter() - t0:.1f} s): feature_dim {field.feature_dim}, extractor "
                f"{field.extractor_info.get('type', '?')!r}, {len(self.planner.tasks)} usable tasks"
                + (f"; WARNING: {err}" if err else ""))

    def _build_planner(self) -> None:
        if self.field is None:
            return
        from f3rm_ros.core.grasp.planner import GraspPlanner

        tasks, self.skipped_tasks = usable_tasks(self.tasks, getattr(self.field, "extractor_info", None),
                                                 getattr(self.field, "feature_dim", None) or None)
        old = self.planner
        self.planner = GraspPlanner(self.field, self.encoder, tasks, self.gripper, self.planner_config)
        # the surface depends on the field alone: keep it when only the tasks or the gripper change
        if old is not None and old.field is self.field and old.device == self.planner.device:
            self.planner.surface_cache = old.surface_cache

    # --- request checks ------------------------------------------------------------------------------
    def status(self) -> tuple[bool, str]:
        """(ready to answer text queries, what state the session is in)."""
        if self.field is None:
            return False, "no field loaded yet (waiting for a checkpoint)"
        if self.encoder is None:
            return False, f"field loaded but it cannot be queried by text: {self.encoder_error}"
        return True, f"ready: {self.checkpoint_path.name if self.checkpoint_path else 'a field'}"

    def require(self, need_text: bool = True) -> None:
        """Refuse unless a field is loaded (and, with ``need_text``, can be queried by text)."""
        if self.field is None or self.planner is None:
            raise QueryRefused("no field is loaded yet: train one (the train node announces it) or call "
                               "~/load_field")
        if need_text and self.encoder is None:
            raise QueryRefused(f"the loaded field cannot be queried by text: {self.encoder_error}")

    def check_text(self, text: str, what: str = "query") -> str:
        if len(text) > self.config.max_text_chars:
            raise QueryRefused(f"{what} text is {len(text)} characters long; at most {self.config.max_text_chars} "
                               f"are accepted")
        if not text.strip():
            raise QueryRefused(f"empty {what}: say what to look for, e.g. 'mug handle'")
        return text

    def check_negatives(self, negatives: Sequence[str]) -> tuple[str, ...] | None:
        """The request's negative phrases, stripped; None (the planner's) when there are none."""
        if len(negatives) > self.config.max_negatives:
            raise QueryRefused(f"{len(negatives)} negative phrases; at most {self.config.max_negatives} are "
                               f"accepted")
        for n in negatives:
            self.check_text(n, "negative phrase")
        return tuple(n.strip() for n in negatives) or None

    def check_workspace(self, lo: Sequence[float], hi: Sequence[float]) -> tuple[tuple, tuple]:
        """A requested workspace box: finite, non-empty, at most ``max_workspace_voxels`` alpha-grid voxels."""
        lo, hi = np.asarray(lo, dtype=np.float64).reshape(3), np.asarray(hi, dtype=np.float64).reshape(3)
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            raise QueryRefused(f"workspace box has non-finite values: min {lo.tolist()}, max {hi.tolist()}")
        if np.any(hi <= lo):
            axes = [a for a, lo_a, hi_a in zip("xyz", lo, hi, strict=True) if hi_a <= lo_a]
            raise QueryRefused(f"workspace box is empty: max must exceed min on every axis (not on {axes}); "
                               f"min {lo.tolist()}, max {hi.tolist()}")
        voxel = self.planner_config.voxel_size_m
        n = float(np.prod(np.floor((hi - lo) / voxel) + 1))
        if n > self.config.max_workspace_voxels:
            raise QueryRefused(f"workspace box is too large: {n:.3g} voxels of {voxel} m (at most "
                               f"{self.config.max_workspace_voxels}, parameter max_workspace_voxels)")
        return tuple(lo.tolist()), tuple(hi.tolist())

    # --- requests ------------------------------------------------------------------------------------
    def plan(self, text: str, negatives: Sequence[str] = (), max_grasps: int = 0, task: str = "",
             workspace: tuple[Sequence[float], Sequence[float]] | None = None) -> PlanResult:
        """Checked request -> grasps (best first) and the heat map of the workspace surface.

        ``max_grasps`` 0 and ``task`` "" mean the planner's settings; ``workspace`` is (lo, hi) or None.
        A query with nothing to grasp is a result with a reason, not a refusal.
        """
        self.check_text(text)
        self.require()
        negs = self.check_negatives(negatives)
        box = None if workspace is None else self.check_workspace(*workspace)
        if task and task not in [t.name for t in self.planner.tasks]:
            raise QueryRefused(f"unknown task {task!r}; known tasks: {[t.name for t in self.planner.tasks]}")
        result = self.planner.plan(text, options=PlanOptions(negatives=negs, max_grasps=max_grasps or None,
                                                             task=task or None, workspace=box, heatmap=True))
        if result.heatmap_points is None:  # stopped before the surface: an empty heat map
            result.heatmap_points, result.heatmap_similarity = np.zeros((0, 3), np.float32), np.zeros(0, np.float32)
        return result

    def similarity(self, text: str, negatives: Sequence[str] = (), min_similarity: float = 0.0
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Surface points [M, 3] of the workspace box and their similarity [M] to ``text`` (0..1); ``min_similarity``
        (what the caller will show) is only checked here."""
        self.check_text(text)
        self.require()
        if not (0.0 <= min_similarity <= 1.0):  # also catches NaN
            raise QueryRefused(f"min_similarity must be in [0, 1], got {min_similarity}")
        negs = self.check_negatives(negatives) or tuple(self.planner_config.negatives)
        pts, _ = self.planner.surface()
        if pts.shape[0] == 0:
            raise QueryRefused("no surface in the workspace box: nothing to compare the query with")
        return self.planner.similarity_map(text, pts, negatives=negs)

    def record_demo(self, task_name: str, T_world_tool: np.ndarray, append: bool = True,
                    metadata: dict | None = None) -> tuple[Task, Path]:
        """Record a demonstration (the gripper's tool frame in the world) into ``tasks_dir/<task_name>.npz``;
        the planner uses the task at once. Returns the task and its file."""
        if not TASK_NAME_RE.match(task_name):
            raise QueryRefused(f"task name {task_name[:80]!r} is not allowed: 1-64 letters, digits, '_' or '-'")
        self.require(need_text=False)
        if self.field.feature_dim <= 0:
            raise QueryRefused("the loaded field has no feature field: demonstrations need features")
        if not self.config.tasks_dir:
            raise QueryRefused("no tasks_dir is configured: cannot save tasks")
        path = _expand(self.config.tasks_dir).resolve() / f"{task_name}.npz"
        meta = {**(metadata or {}), "checkpoint": str(self.checkpoint_path)}
        try:
            task = record_task_demo(path, self.field, self.gripper.from_tool(np.asarray(T_world_tool, np.float64)),
                                    append=append, config=self.task_config, metadata=meta)
        except (TaskFormatError, ExtractorMismatchError) as e:
            raise QueryRefused(f"cannot append to {path.name}: {e} (send append=false to replace it)") from None
        self.tasks = merge_tasks(self.tasks, [task])
        self._build_planner()
        return task, path

    def scene_cloud(self) -> tuple[np.ndarray, np.ndarray]:
        """Points [N, 3] float32 and colours [N, 3] uint8 rendered from ``cloud_cameras`` of the field's training
        cameras (cropped to the workspace box grown by ``cloud_crop_margin_m``, at most ``cloud_max_points``)."""
        c, field = self.config, self.field
        pts, cols = np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
        cams = getattr(field, "cameras", None) or {}
        if field is None or c.cloud_cameras <= 0 or not cams.get("c2w_world_opencv"):
            return pts, cols
        n = len(cams["c2w_world_opencv"])
        idx = np.unique(np.linspace(0, n - 1, min(c.cloud_cameras, n)).round().astype(int))
        sel = [(cams["c2w_world_opencv"][i], cams["intrinsics"][i].scaled(c.cloud_scale)) for i in idx]
        pts, cols = field.point_cloud(sel, min_accumulation=c.cloud_min_accumulation, max_points=None)
        if c.cloud_crop_to_workspace and len(pts):
            lo = np.asarray(self.planner_config.workspace_min_m) - c.cloud_crop_margin_m
            hi = np.asarray(self.planner_config.workspace_max_m) + c.cloud_crop_margin_m
            keep = np.all((pts >= lo) & (pts <= hi), axis=1)
            pts, cols = pts[keep], cols[keep]
        if len(pts) > c.cloud_max_points:
            keep = np.random.default_rng(0).choice(len(pts), c.cloud_max_points, replace=False)
            pts, cols = pts[keep], cols[keep]
        return pts, cols

    def close(self) -> None:
        """Release the field."""
        self.field = self.planner = self.encoder = None
        self.checkpoint_path = None
