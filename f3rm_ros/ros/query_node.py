"""``query_node``: language-guided grasp queries on a trained field (lifecycle node).

Loads the newest checkpoint (published by the train node on its transient-local ``~/checkpoint``
topic, parameter ``checkpoint_topic``; or asked for with ``~/load_field``) and serves:

* ``~/query_grasps`` (f3rm_ros/srv/QueryGrasps): best-first 6-DoF grasps for a text query;
* ``~/query_similarity`` (QuerySimilarity): the heat map of a text query;
* ``~/load_field`` (LoadField): load a checkpoint (under ``checkpoint_root``; "" = newest there);
* ``~/record_demo`` (RecordDemo): add a demonstration to a task file in ``tasks_dir`` (atomic write).

Publishes, all in the world frame and transient-local (RViz joining late still sees them):
``~/scene_cloud`` (PointCloud2 x y z rgb, rendered from the field's training cameras),
``~/heatmap`` (PointCloud2 x y z similarity rgb of the last query), ``~/grasp_markers``
(MarkerArray: gripper boxes per grasp, the best one green, score labels), and its status on
``/diagnostics``.

Requests are served one at a time (one callback group + a lock around the model); every bad
request (no field yet, empty or over-long text, a box with min >= max or NaN, a path outside the
roots, a missing or corrupt checkpoint, ...) is answered with ``success = false`` and the reason,
and the node keeps serving. Parameters: ``planner.*`` (PlannerConfig), ``task.*`` (TaskConfig),
``gripper.*`` (GripperConfig) and the node settings below (see config/query_node.yaml).
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from f3rm_ros.core.config import param
from f3rm_ros.core.grasp.config import PlannerConfig, TaskConfig
from f3rm_ros.core.gripper import Gripper, GripperConfig
from f3rm_ros.msg import Grasp as GraspMsg
from f3rm_ros.ros.common import (OK, WARN, DiagnosticsPublisher, PathRefused, Refused, expand_root, resolve_under_root,
                                 run_node)
from f3rm_ros.ros.conversions import ConversionError, make_point_cloud, matrix_to_pose_msg, pose_msg_to_matrix
from f3rm_ros.ros.params import ParamBinding
from f3rm_ros.ros.visuals import grasp_markers, heat_colors
from f3rm_ros.srv import LoadField, QueryGrasps, QuerySimilarity, RecordDemo

__all__ = ["QueryNodeConfig", "QueryNode", "LATCHED_QOS", "main"]

TASK_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# transient-local: a subscriber that joins later (RViz) still gets the last message
LATCHED_QOS = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)


@dataclass
class QueryNodeConfig:
    """Settings of the query node itself (the planner's are ``planner.*``)."""

    autostart: bool = param(True, "configure and activate on start (bringup without a lifecycle manager)")
    world_frame: str = param("world", "frame of every published pose and cloud; demo poses must use it")
    checkpoint_root: str = param("~/f3rm_checkpoints", "checkpoints may only be loaded from inside this folder "
                                                     "(~ and $VARS expanded; symlinks resolved)")
    checkpoint_topic: str = param("/f3rm/train_node/checkpoint", "std_msgs/String topic (transient-local) on "
                                  "which the train node announces new checkpoints; '' = do not subscribe")
    load_newest_on_activate: bool = param(False, "on activation, load the newest *.ckpt under checkpoint_root "
                                                 "if no field is loaded yet")
    tasks_dir: str = param("~/f3rm_tasks", "folder of recorded task files (<task_name>.npz), read at "
                                                "configure and written by ~/record_demo")
    use_default_tasks: bool = param(True, "also use the tasks shipped with the package (synthetic world, "
                                          "label features)")
    device: str = param("auto", "torch device of the field: auto, cpu, cuda, cuda:N")
    max_text_chars: int = param(1000, "longest accepted query text, characters", range=(1, 100000))
    max_negatives: int = param(32, "most negative phrases accepted per request", range=(0, 1000))
    max_workspace_voxels: int = param(20_000_000, "refuse a requested workspace box with more alpha-grid "
                                                  "voxels than this (bounds memory and time)",
                                      range=(1, 10**10))
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
    heatmap_min_similarity: float = param(0.0, "points of ~/heatmap below this similarity are left out "
                                               "(QuerySimilarity requests set their own)", range=(0.0, 1.0))
    diagnostics_period_s: float = param(1.0, "period of the /diagnostics status, seconds", range=(0.01, 3600.0))


class QueryNode(LifecycleNode):
    """The query node (see the module docstring). ``QueryNode()`` uses the node name ``query_node``
    in namespace ``/f3rm`` unless remapped; keyword arguments go to ``rclpy`` (``parameter_overrides``...)."""

    def __init__(self, node_name: str = "query_node", *, namespace: str = "/f3rm", **kwargs: Any):
        super().__init__(node_name, namespace=namespace, **kwargs)
        self._lock = threading.RLock()  # the model: field, planner, tasks
        self.params = {"": ParamBinding(self, QueryNodeConfig, on_change=self._settings_changed),
                       "planner": ParamBinding(self, PlannerConfig, "planner", on_change=self._planner_changed),
                       "task": ParamBinding(self, TaskConfig, "task", on_change=self._task_changed),
                       "gripper": ParamBinding(self, GripperConfig, "gripper", on_change=self._gripper_changed)}
        self.cfg: QueryNodeConfig = self.params[""].config
        self.planner_cfg: PlannerConfig = self.params["planner"].config
        self.task_cfg: TaskConfig = self.params["task"].config
        self.gripper_cfg: GripperConfig = self.params["gripper"].config
        self._active = False
        self.field: Any = None
        self.encoder: Any = None
        self.encoder_error = ""
        self.planner: Any = None
        self.checkpoint_path: Path | None = None
        self.tasks: list = []
        self.gripper = Gripper(self.gripper_cfg)
        self._pending_checkpoint: str | None = None
        self.stats = {"requests": 0, "refused": 0, "last_latency_s": float("nan"), "last_query": ""}
        self._last_error = ""

        self._service_group = MutuallyExclusiveCallbackGroup()  # one request at a time, in arrival order
        self._topic_group = MutuallyExclusiveCallbackGroup()
        self._diag_group = MutuallyExclusiveCallbackGroup()
        self.create_service(QueryGrasps, "~/query_grasps", self._on_query_grasps, callback_group=self._service_group)
        self.create_service(QuerySimilarity, "~/query_similarity", self._on_query_similarity,
                            callback_group=self._service_group)
        self.create_service(LoadField, "~/load_field", self._on_load_field, callback_group=self._service_group)
        self.create_service(RecordDemo, "~/record_demo", self._on_record_demo, callback_group=self._service_group)
        self.pub_cloud = self.pub_heat = self.pub_markers = None
        self._ckpt_sub = None
        self.diagnostics = DiagnosticsPublisher(self, self._status, period_s=self.cfg.diagnostics_period_s,
                                                callback_group=self._diag_group)
        if self.cfg.autostart:
            self.trigger_configure()
            self.trigger_activate()

    # --- parameters -----------------------------------------------------------------------------
    # (each section's ParamBinding has validated and replaced its config; these apply it under the model lock)
    def _settings_changed(self, new: QueryNodeConfig, old: QueryNodeConfig) -> None:
        with self._lock:
            self.cfg = new

    def _planner_changed(self, new: PlannerConfig, old: PlannerConfig) -> None:
        with self._lock:
            self.planner_cfg = new
            if self.planner is not None:
                self.planner.config = new
                self.planner.invalidate_cache()

    def _task_changed(self, new: TaskConfig, old: TaskConfig) -> None:
        with self._lock:
            self.task_cfg = new

    def _gripper_changed(self, new: GripperConfig, old: GripperConfig) -> None:
        with self._lock:
            self.gripper_cfg = new
            self.gripper = Gripper(new)
            if self.field is not None:
                self._build_planner()

    # --- lifecycle ------------------------------------------------------------------------------
    def on_configure(self, state) -> TransitionCallbackReturn:
        try:
            self.tasks = self._load_tasks()
        except Exception as e:  # a broken task folder must not stop the node: report it
            self._last_error = f"tasks not loaded: {e}"
            self.get_logger().error(self._last_error)
            self.tasks = []
        self.pub_cloud = self.create_lifecycle_publisher(PointCloud2, "~/scene_cloud", LATCHED_QOS)
        self.pub_heat = self.create_lifecycle_publisher(PointCloud2, "~/heatmap", LATCHED_QOS)
        self.pub_markers = self.create_lifecycle_publisher(MarkerArray, "~/grasp_markers", LATCHED_QOS)
        if self.cfg.checkpoint_topic:
            self._ckpt_sub = self.create_subscription(String, self.cfg.checkpoint_topic, self._on_checkpoint_msg,
                                                      LATCHED_QOS, callback_group=self._topic_group)
        self.get_logger().info(f"configured: {len(self.tasks)} tasks, checkpoint root "
                               f"{self.cfg.checkpoint_root}, checkpoint topic {self.cfg.checkpoint_topic!r}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state) -> TransitionCallbackReturn:
        ret = super().on_activate(state)
        self._active = True
        pending, self._pending_checkpoint = self._pending_checkpoint, None
        if pending:
            self._load_from_topic(pending)
        elif self.field is None and self.cfg.load_newest_on_activate:
            try:
                self.load_field("")
            except Refused as e:
                self.get_logger().warning(f"no field loaded on activation: {e}")
        elif self.field is not None:
            self._publish_cloud()
        return ret

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self._active = False
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self._active = False
        with self._lock:
            self.field = self.planner = self.encoder = None
            self.checkpoint_path = None
        for pub in (self.pub_cloud, self.pub_heat, self.pub_markers):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self.pub_cloud = self.pub_heat = self.pub_markers = None
        if self._ckpt_sub is not None:
            self.destroy_subscription(self._ckpt_sub)
            self._ckpt_sub = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        self._active = False
        with self._lock:
            self.field = self.planner = self.encoder = None
        return TransitionCallbackReturn.SUCCESS

    # --- status ---------------------------------------------------------------------------------
    def _status(self):
        vals = {"active": self._active, "checkpoint": str(self.checkpoint_path or ""),
                "feature_dim": getattr(self.field, "feature_dim", 0), "tasks": len(self.tasks),
                "requests": self.stats["requests"], "refused": self.stats["refused"],
                "last_latency_s": self.stats["last_latency_s"], "last_query": self.stats["last_query"]}
        if self._last_error:
            vals["last_error"] = self._last_error
        if not self._active:
            return WARN, "inactive (lifecycle): requests are refused", vals
        if self.field is None:
            return WARN, "active, no field loaded yet (waiting for a checkpoint)", vals
        if self.encoder is None:
            return WARN, f"field loaded but it cannot be queried by text: {self.encoder_error}", vals
        return OK, f"ready: {Path(str(self.checkpoint_path)).name}", vals

    # --- loading ----------------------------------------------------------------------------------
    def _load_tasks(self) -> list:
        from f3rm_ros.core.grasp.task import load_default_tasks, load_tasks

        tasks = load_default_tasks() if self.cfg.use_default_tasks else []
        d = expand_root(self.cfg.tasks_dir) if self.cfg.tasks_dir else None
        if d is not None and d.is_dir():
            by_name = {t.name: t for t in tasks}
            for t in load_tasks(d):
                by_name[t.name] = t
            tasks = list(by_name.values())
        return tasks

    def _compatible_tasks(self, field: Any) -> list:
        from f3rm_ros.core.grasp.task import ExtractorMismatchError, adapt_task

        out = []
        for t in self.tasks:
            try:
                adapt_task(t, getattr(field, "extractor_info", None))
                out.append(t)
            except (ExtractorMismatchError, ValueError) as e:
                self.get_logger().debug(f"task {t.name!r} not usable with this field: {e}")
        return out

    def _build_planner(self) -> None:
        from f3rm_ros.core.grasp.planner import GraspPlanner

        cache = self.planner._surface_cache if self.planner is not None else None
        self.planner = GraspPlanner(self.field, self.encoder, self._compatible_tasks(self.field), self.gripper,
                                    self.planner_cfg)
        if cache is not None:
            self.planner._surface_cache = cache

    def _newest_checkpoint(self) -> Path:
        root = expand_root(self.cfg.checkpoint_root)
        found = [p for p in root.rglob("*.ckpt") if p.is_file()] if root.is_dir() else []
        if not found:
            raise Refused(f"no checkpoint (*.ckpt) under the checkpoint root {root}; train a field first")
        return max(found, key=lambda p: (p.stat().st_mtime, str(p)))

    def load_field(self, checkpoint_path: str) -> str:
        """Load a checkpoint (under ``checkpoint_root``; "" = the newest there). Returns a summary.

        Raises:
            Refused: outside the root, missing, corrupt, or another format; the current field stays.
        """
        import torch

        from f3rm_ros.core.device import resolve_device
        from f3rm_ros.core.field_api import load_trained_field

        if checkpoint_path.strip():
            try:
                path = resolve_under_root(checkpoint_path, self.cfg.checkpoint_root, what="checkpoint path")
            except PathRefused as e:
                raise Refused(str(e)) from None
            if path.is_dir():
                found = sorted(path.rglob("*.ckpt"), key=lambda p: (p.stat().st_mtime, str(p)))
                if not found:
                    raise Refused(f"no checkpoint (*.ckpt) in the folder {path}")
                path = found[-1]
            if not path.is_file():
                raise Refused(f"checkpoint not found: {path}")
        else:
            path = self._newest_checkpoint()
        t0 = time.perf_counter()
        with self._lock:
            try:
                device = resolve_device(self.cfg.device)
                field = load_trained_field(path, device)
            except (ValueError, KeyError, RuntimeError, OSError, TypeError) as e:  # CheckpointError is a ValueError
                raise Refused(f"cannot load checkpoint {path}: {e}") from None
            encoder, enc_err = None, ""
            if field.feature_dim > 0:
                try:
                    from f3rm_ros.core.features import create_extractor

                    encoder = create_extractor(field.extractor_info)
                except Exception as e:  # weights unavailable, unknown extractor...
                    enc_err = f"text encoder of extractor {field.extractor_info.get('type')!r} unavailable: {e}"
            else:
                enc_err = "the field has no feature field (trained without 2D features)"
            self.field, self.encoder, self.encoder_error = field, encoder, enc_err
            self.checkpoint_path = path
            self.planner = None
            self._build_planner()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        dt = time.perf_counter() - t0
        msg = (f"loaded {path} ({dt:.1f} s): feature_dim {field.feature_dim}, extractor "
               f"{field.extractor_info.get('type', '?')!r}, {len(self.planner.tasks)} usable tasks")
        if enc_err:
            msg += f"; WARNING: {enc_err}"
        self.get_logger().info(msg)
        self._publish_cloud()
        return msg

    def _load_from_topic(self, path: str) -> None:
        try:
            self.load_field(path)
            self._last_error = ""
        except Refused as e:
            self._last_error = f"checkpoint from topic refused: {e}"
            self.get_logger().error(self._last_error)
        except Exception as e:  # never die on a message
            self._last_error = f"checkpoint from topic failed: {type(e).__name__}: {e}"
            self.get_logger().error(self._last_error)

    def _on_checkpoint_msg(self, msg: String) -> None:
        path = msg.data.strip()
        if not path:
            return
        if self.checkpoint_path is not None and Path(path) == self.checkpoint_path:
            return
        if not self._active:
            self._pending_checkpoint = path
            return
        self.get_logger().info(f"new checkpoint announced: {path}")
        self._load_from_topic(path)

    # --- publishing -----------------------------------------------------------------------------
    def _stamp(self):
        return self.get_clock().now().to_msg()

    def _publish_cloud(self) -> None:
        """Render the scene cloud from the field's training cameras and publish it."""
        if self.pub_cloud is None or self.field is None:
            return
        c = self.cfg
        try:
            with self._lock:
                field = self.field
                cams = getattr(field, "cameras", None) or {}
                pts = np.zeros((0, 3), np.float32)
                cols = np.zeros((0, 3), np.uint8)
                if c.cloud_cameras > 0 and cams.get("c2w_world_opencv"):
                    n = len(cams["c2w_world_opencv"])
                    idx = np.unique(np.linspace(0, n - 1, min(c.cloud_cameras, n)).round().astype(int))
                    sel = [(cams["c2w_world_opencv"][i], cams["intrinsics"][i].scaled(c.cloud_scale)) for i in idx]
                    pts, cols = field.point_cloud(sel, min_accumulation=c.cloud_min_accumulation, max_points=None)
                if c.cloud_crop_to_workspace and len(pts):
                    lo = np.asarray(self.planner_cfg.workspace_min_m) - c.cloud_crop_margin_m
                    hi = np.asarray(self.planner_cfg.workspace_max_m) + c.cloud_crop_margin_m
                    keep = np.all((pts >= lo) & (pts <= hi), axis=1)
                    pts, cols = pts[keep], cols[keep]
                if len(pts) > c.cloud_max_points:
                    keep = np.random.default_rng(0).choice(len(pts), c.cloud_max_points, replace=False)
                    pts, cols = pts[keep], cols[keep]
            self.pub_cloud.publish(make_point_cloud(pts, rgb=cols, frame_id=c.world_frame, stamp=self._stamp()))
            self.get_logger().info(f"scene cloud: {len(pts)} points")
        except Exception as e:  # display only: never fail a load because of it
            self.get_logger().warning(f"scene cloud not published: {type(e).__name__}: {e}")

    def _publish_heatmap(self, pts: np.ndarray, sim: np.ndarray, min_similarity: float) -> PointCloud2:
        keep = sim >= min_similarity
        msg = make_point_cloud(pts[keep], {"similarity": sim[keep]}, rgb=heat_colors(sim[keep]),
                               frame_id=self.cfg.world_frame, stamp=self._stamp())
        if self.pub_heat is not None:
            self.pub_heat.publish(msg)
        return msg

    def _publish_markers(self, grasps: list) -> None:
        if self.pub_markers is not None:
            self.pub_markers.publish(grasp_markers(grasps, self.gripper, self.cfg.world_frame, self._stamp()))

    # --- request checks -----------------------------------------------------------------------
    def _require_ready(self, need_text: bool = True) -> None:
        if not self._active:
            raise Refused("the query node is not active (lifecycle state); activate it first")
        if self.field is None or self.planner is None:
            raise Refused("no field is loaded yet: train one (the train node announces it) or call ~/load_field")
        if need_text and self.encoder is None:
            raise Refused(f"the loaded field cannot be queried by text: {self.encoder_error}")

    def _check_text(self, text: str, what: str = "query") -> str:
        if len(text) > self.cfg.max_text_chars:
            raise Refused(f"{what} text is {len(text)} characters long; at most {self.cfg.max_text_chars} "
                          f"are accepted")
        if not text.strip():
            raise Refused(f"empty {what}: say what to look for, e.g. 'mug handle'")
        return text

    def _negatives(self, negatives: list[str]) -> tuple[str, ...]:
        negs = [n for n in negatives]
        if len(negs) > self.cfg.max_negatives:
            raise Refused(f"{len(negs)} negative phrases; at most {self.cfg.max_negatives} are accepted")
        for n in negs:
            self._check_text(n, "negative phrase")
        return tuple(n.strip() for n in negs) if negs else tuple(self.planner_cfg.negatives)

    def _workspace(self, req: Any):
        if not req.use_workspace:
            return None
        lo = np.array([req.workspace_min.x, req.workspace_min.y, req.workspace_min.z], dtype=np.float64)
        hi = np.array([req.workspace_max.x, req.workspace_max.y, req.workspace_max.z], dtype=np.float64)
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            raise Refused(f"workspace box has non-finite values: min {lo.tolist()}, max {hi.tolist()}")
        if np.any(hi <= lo):
            axes = [a for a, lo_a, hi_a in zip("xyz", lo, hi, strict=True) if hi_a <= lo_a]
            raise Refused(f"workspace box is empty: max must exceed min on every axis (not on {axes}); "
                          f"min {lo.tolist()}, max {hi.tolist()}")
        n = float(np.prod(np.floor((hi - lo) / self.planner_cfg.voxel_size_m) + 1))
        if n > self.cfg.max_workspace_voxels:
            raise Refused(f"workspace box is too large: {n:.3g} voxels of {self.planner_cfg.voxel_size_m} m "
                          f"(at most {self.cfg.max_workspace_voxels}, parameter max_workspace_voxels)")
        return tuple(lo.tolist()), tuple(hi.tolist())

    def _serve(self, res: Any, what: str, fn) -> Any:
        """Run ``fn(res)`` under the model lock; any refusal or error becomes success=false + reason."""
        t0 = time.perf_counter()
        self.stats["requests"] += 1
        try:
            with self._lock:
                fn(res)
        except Refused as e:
            res.success, res.message = False, str(e)
            self.stats["refused"] += 1
        except Exception as e:  # never let a request take the node down
            res.success, res.message = False, f"internal error while serving {what}: {type(e).__name__}: {e}"
            self.stats["refused"] += 1
            self._last_error = res.message
            self.get_logger().error(res.message)
        self.stats["last_latency_s"] = time.perf_counter() - t0
        if not res.success:
            self.get_logger().info(f"{what} refused: {res.message}")
        return res

    # --- services ---------------------------------------------------------------------------------
    def _on_query_grasps(self, req: QueryGrasps.Request, res: QueryGrasps.Response) -> QueryGrasps.Response:
        return self._serve(res, "query_grasps", lambda r: self._query_grasps(req, r))

    def _query_grasps(self, req: Any, res: Any) -> None:
        self._check_text(req.text)
        self._require_ready()
        negs = self._negatives(list(req.negatives))
        workspace = self._workspace(req)
        cfg = dataclasses.replace(self.planner_cfg, negatives=negs)
        if req.max_grasps > 0:
            cfg = dataclasses.replace(cfg, max_grasps=int(req.max_grasps))
        planner = self.planner
        if req.task:
            match = [t for t in planner.tasks if t.name == req.task]
            if not match:
                raise Refused(f"unknown task {req.task!r}; known tasks: {[t.name for t in planner.tasks]}")
            from f3rm_ros.core.grasp.planner import GraspPlanner

            cache = planner._surface_cache
            planner = GraspPlanner(self.field, self.encoder, [t for t in self.tasks if t.name == req.task],
                                   self.gripper, cfg)
            planner._surface_cache = cache
        saved = planner.config
        planner.config = cfg
        try:
            t0 = time.perf_counter()
            result = planner.plan(req.text, workspace=workspace)
            res.planning_time = float(time.perf_counter() - t0)
            self.stats["last_query"] = req.text[:80]
            if result.found:
                origins = np.stack([g.T_world_gripper[:3, 3] for g in result.grasps])
                _, lang = planner.similarity_map(req.text, origins)
            pts, sim = planner.similarity_map(req.text, None if workspace is None else planner.surface(workspace)[0])
        finally:
            planner.config = saved
        self._publish_heatmap(pts, sim, self.cfg.heatmap_min_similarity)
        self._publish_markers(result.grasps)
        if not result.found:
            res.success, res.message = False, result.reason
            return
        stamp = self._stamp()
        for g, ls in zip(result.grasps, lang, strict=True):
            m = GraspMsg()
            m.pose = matrix_to_pose_msg(self.gripper.to_tool(g.T_world_gripper), frame_id=self.cfg.world_frame,
                                        stamp=stamp)
            m.score, m.language_similarity, m.opening_width = float(g.score), float(ls), float(g.width)
            m.task, m.rank = g.task, int(g.rank)
            res.grasps.append(m)
        res.success = True
        res.message = (f"{len(result.grasps)} grasps for {result.query!r} (task {result.task!r}, best score "
                       f"{result.grasps[0].score:.3f}, best similarity {result.stats.get('best_similarity', 0):.3f})")

    def _on_query_similarity(self, req: QuerySimilarity.Request,
                             res: QuerySimilarity.Response) -> QuerySimilarity.Response:
        return self._serve(res, "query_similarity", lambda r: self._query_similarity(req, r))

    def _query_similarity(self, req: Any, res: Any) -> None:
        self._check_text(req.text)
        self._require_ready()
        if not (0.0 <= req.min_similarity <= 1.0):  # also catches NaN
            raise Refused(f"min_similarity must be in [0, 1], got {req.min_similarity}")
        negs = self._negatives(list(req.negatives))
        planner = self.planner
        saved = planner.config
        planner.config = dataclasses.replace(self.planner_cfg, negatives=negs)
        try:
            pts, sim = planner.similarity_map(req.text)
        finally:
            planner.config = saved
        self.stats["last_query"] = req.text[:80]
        if len(sim) == 0:
            raise Refused("no surface in the workspace box: nothing to compare the query with")
        res.heatmap = self._publish_heatmap(pts, sim, float(req.min_similarity))
        res.num_points = int(np.count_nonzero(sim >= req.min_similarity))
        res.max_similarity = float(sim.max())
        res.mean_similarity = float(sim.mean())
        p = pts[int(np.argmax(sim))]
        res.peak.x, res.peak.y, res.peak.z = (float(v) for v in p)
        res.success = True
        res.message = f"{len(sim)} surface points, max similarity {res.max_similarity:.3f}"

    def _on_load_field(self, req: LoadField.Request, res: LoadField.Response) -> LoadField.Response:
        def fn(r: Any) -> None:
            if not self._active:
                raise Refused("the query node is not active (lifecycle state); activate it first")
            r.message = self.load_field(req.checkpoint_path)
            r.success = True
            r.checkpoint_path = str(self.checkpoint_path)
            r.feature_dim = int(self.field.feature_dim)
            r.extractor = str(self.field.extractor_info.get("type", ""))

        return self._serve(res, "load_field", fn)

    def _on_record_demo(self, req: RecordDemo.Request, res: RecordDemo.Response) -> RecordDemo.Response:
        return self._serve(res, "record_demo", lambda r: self._record_demo(req, r))

    def _record_demo(self, req: Any, res: Any) -> None:
        from f3rm_ros.core.grasp.task import (ExtractorMismatchError, Task, TaskFormatError, check_extractor,
                                              load_task, make_task, record_demo, save_task)

        if not TASK_NAME_RE.match(req.task_name):
            raise Refused(f"task name {req.task_name[:80]!r} is not allowed: 1-64 letters, digits, '_' or '-'")
        frame = req.gripper_pose.header.frame_id
        if frame != self.cfg.world_frame:
            raise Refused(f"gripper_pose must be in the world frame {self.cfg.world_frame!r}, got {frame!r}")
        try:
            T_tool = pose_msg_to_matrix(req.gripper_pose)
        except (ConversionError, ValueError) as e:
            raise Refused(f"bad gripper_pose: {e}") from None
        self._require_ready(need_text=False)
        if self.field.feature_dim <= 0:
            raise Refused("the loaded field has no feature field: demonstrations need features")
        T = self.gripper.from_tool(T_tool)
        if not self.cfg.tasks_dir:
            raise Refused("no tasks_dir is configured: cannot save tasks")
        folder = expand_root(self.cfg.tasks_dir)
        path = folder / f"{req.task_name}.npz"
        task = None
        if req.append and path.is_file():
            try:
                old = load_task(path)
                check_extractor(old, self.field.extractor_info)
            except (TaskFormatError, ExtractorMismatchError) as e:
                raise Refused(f"cannot append to {path.name}: {e} (send append=false to replace it)") from None
            feats, dens = record_demo(self.field, T, old.query_points)
            task = Task(name=old.name, query_points=old.query_points,
                        demo_poses=np.concatenate([old.demo_poses, T[None]]),
                        demo_features=np.concatenate([old.demo_features, feats[None]]),
                        demo_density=np.concatenate([old.demo_density, dens[None]]),
                        extractor_info=old.extractor_info, voxel_size_m=old.voxel_size_m, metadata=old.metadata)
        if task is None:
            task = make_task(req.task_name, self.field, [T], self.task_cfg,
                             metadata={"recorded_by": self.get_fully_qualified_name(),
                                       "checkpoint": str(self.checkpoint_path)})
        save_task(task, path)
        self.tasks = [t for t in self.tasks if t.name != task.name] + [task]
        self._build_planner()
        res.success = True
        res.num_demos = task.num_demos
        res.task_path = str(path)
        res.message = f"task {task.name!r} has {task.num_demos} demonstration(s), saved to {path}"

    def close(self) -> None:
        """Release the field (called by run_node on shutdown)."""
        with self._lock:
            self.field = self.planner = self.encoder = None


def main(args: list[str] | None = None) -> int:
    return run_node(QueryNode, args)


if __name__ == "__main__":
    import sys

    sys.exit(main())
