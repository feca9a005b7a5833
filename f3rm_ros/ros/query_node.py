"""``query_node``: language-guided grasp queries on a trained field (lifecycle node).

Loads the newest checkpoint (announced on the train node's transient-local ``~/checkpoint`` topic,
``checkpoint_topic``; or asked for with ``~/load_field``: a file under ``checkpoint_root``, "" = the newest
there) and serves ``~/query_grasps`` (srv/QueryGrasps: best-first 6-DoF grasps, each with its source, a
task's demonstrations or geometric, and quality terms: msg/Grasp.msg), ``~/query_similarity`` (a text's heat
map), ``~/record_demo`` (a demonstration into a task file in ``tasks_dir``, written atomically) and ``~/edit_scene``
(srv/EditScene: after the robot moved or removed a thing, the served field is edited at once, without training:
core/workflows/scene_edits.py; queries, the heat map and the scene cloud follow; a new field clears the edits). The
edit stack is kept beside the served checkpoint (``<checkpoint>.<namespace>.<node>.edits.json``, written atomically
after every edit and undo: core/edit_store.py; EditScene answers its path, which a refresh, TrainFields
``edits_path``, takes); loading that checkpoint again (after a restart, or asked to) restores the edits and says so,
loading another field clears them (and removes that file); a stack that cannot be used is reported with the reason
and the plain field is served.
Publishes in the world frame, transient-local (RViz joining late still sees them): ``~/scene_cloud`` (x y z
rgb, rendered from the training cameras), ``~/heatmap`` (x y z similarity rgb of the last query),
``~/grasp_markers`` (gripper boxes coloured by source, scores: ros/visuals.py); status on ``/diagnostics``.

The work is :class:`f3rm_ros.core.grasp.session.QuerySession`'s; the node converts messages and holds the
parameters (``planner.*``, ``task.*``, ``gripper.*``, the session's and its own: config/query_node.yaml).
Every bad request (no field, empty or long text, an empty or NaN box, a path outside the root, a corrupt
checkpoint...) is answered with ``success = false`` and the reason.

No request waits behind an expensive one: grasp queries, similarity queries and loads/demonstrations have
their own callback groups on a multi-threaded executor. A grasp query is checked first (a refusal is
immediate), then planned by one of ``grasp_workers``; up to ``grasp_queue`` more wait for a worker (at most
``grasp_wait_s``), and any beyond that are answered "busy: ..." at once. Similarity queries read the field
alongside running grasp queries. A load or demonstration is checked first too (a bad path is refused at
once); one that arrives while another runs is answered "busy: ...". A load builds the new field beside the
served one, with its workspace surface (queries go on meanwhile on the old one), and swaps it in; the scene
cloud is rendered afterwards in a background thread.

The node comes back as it was: after every successful load it records the checkpoint it serves in
``state_file`` (atomically; default ``<checkpoint_root>/.<namespace>.<node>.served.json``) and, with
``restore_last_field`` (default on), loads it again when it starts, in the background: requests that need
the field meanwhile are answered "not ready yet: ..." (the client's ``NotReady``). A checkpoint announcement
that was already handled before the restart (the topic is transient-local) does not replace it. ``~/alive``
carries the node's liveliness and state ("restoring ...", "ready", "inactive") for clients.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import String
from visualization_msgs.msg import MarkerArray

from f3rm_ros.core.config import param
from f3rm_ros.core.edit_store import (carry_over_edits, edit_stack_path, keep_field_edits, remove_edit_stack,
                                      restore_field_edits)
from f3rm_ros.core.edits import EditError, rigid_from_pose
from f3rm_ros.core.grasp.config import PlannerConfig, TaskConfig
from f3rm_ros.core.grasp.session import QueryConfig, QueryRefused, QuerySession
from f3rm_ros.core.gripper import Gripper, GripperConfig
from f3rm_ros.core.workflows.scene_edits import EditConfig, EditRequest, edit_count, edit_field, session_with_field
from f3rm_ros.core.workflows.served_field import ServedField, read_served, write_served
from f3rm_ros.ros.common import (BUSY, NOT_READY, OK, WARN, AliveBeacon, DiagnosticsPublisher, ReadWriteLock, Refused,
                                 expand_root, release_free_memory, resolve_under_root, run_node)
from f3rm_ros.ros.conversions import ConversionError, grasp_to_msg, make_point_cloud, pose_msg_to_matrix
from f3rm_ros.ros.params import ParamBinding
from f3rm_ros.ros.visuals import grasp_markers, heat_colors
from f3rm_ros.srv import EditScene, LoadField, QueryGrasps, QuerySimilarity, RecordDemo

__all__ = ["QueryNodeConfig", "QueryNode", "LATCHED_QOS", "main"]

# transient-local: a subscriber that joins later (RViz) still gets the last message
LATCHED_QOS = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)


@dataclass
class QueryNodeConfig(QueryConfig):
    """Settings of the query node: the session's (:class:`QueryConfig`) plus its own."""

    autostart: bool = param(True, "configure and activate on start (bringup without a lifecycle manager)")
    world_frame: str = param("world", "frame of every published pose and cloud; demo poses must use it")
    checkpoint_topic: str = param("/f3rm/train_node/checkpoint", "std_msgs/String topic (transient-local) on "
                                  "which the train node announces new checkpoints; '' = do not subscribe")
    load_newest_on_activate: bool = param(False, "on activation, load the newest *.ckpt under checkpoint_root "
                                                 "if no field is loaded yet (and none is restored)")
    restore_last_field: bool = param(True, "on start, load again the field served before the node stopped "
                                           "(recorded in state_file after every load), in the background")
    state_file: str = param("", "where the served field is recorded (JSON, written atomically); '' = "
                                "<checkpoint_root>/.<namespace>.<node name>.served.json", read_only=True)
    grasp_workers: int = param(1, "grasp queries planned at the same time", range=(1, 64), read_only=True)
    grasp_queue: int = param(4, "grasp queries that may wait for a worker; more are answered 'busy' at once",
                             range=(0, 1000), read_only=True)
    grasp_wait_s: float = param(20.0, "a grasp query that waited this long for a worker is answered 'busy' instead "
                                      "of planned (its client's deadline, 30 s by default, would pass while it plans)",
                                range=(0.0, 3600.0))
    heatmap_min_similarity: float = param(0.0, "points of ~/heatmap below this similarity are left out "
                                               "(QuerySimilarity requests set their own)", range=(0.0, 1.0))
    diagnostics_period_s: float = param(1.0, "period of the /diagnostics status, seconds", range=(0.01, 3600.0))


class QueryNode(LifecycleNode):
    """The query node (see the module docstring). ``QueryNode()`` uses the node name ``query_node``
    in namespace ``/f3rm`` unless remapped; keyword arguments go to ``rclpy`` (``parameter_overrides``...)."""

    def __init__(self, node_name: str = "query_node", *, namespace: str = "/f3rm", **kwargs: Any):
        super().__init__(node_name, namespace=namespace, **kwargs)
        # the session: queries read it together, a settings change writes it; a load swaps in a new session
        self._rw = ReadWriteLock()
        self._admin = threading.Lock()  # loads and demonstrations, one at a time
        self.params = {name: ParamBinding(self, cls, name, on_change=self._apply(name or "config"))
                       for name, cls in (("", QueryNodeConfig), ("planner", PlannerConfig), ("task", TaskConfig),
                                         ("gripper", GripperConfig), ("edit", EditConfig))}
        self.session = self._new_session()
        self._active, self._pending_checkpoint, self._last_error = False, None, ""
        self._starting, self._served = "", ServedField()  # what the node is restoring ("" = nothing)
        self.stats = {"requests": 0, "refused": 0, "busy": 0, "last_latency_s": float("nan"), "last_query": ""}
        self._stats_lock = threading.Lock()
        c = self.cfg
        self._grasp_slots = threading.BoundedSemaphore(c.grasp_workers + c.grasp_queue)  # running + waiting
        self._grasp_workers = threading.BoundedSemaphore(c.grasp_workers)
        # loads and demonstrations are checked before they take the admin lock: a bad path is refused at once even
        # while a load runs, and one that finds the lock taken is answered busy (no executor thread waits on it)
        grasp, cheap, admin = ReentrantCallbackGroup(), ReentrantCallbackGroup(), ReentrantCallbackGroup()
        self._topic_group = MutuallyExclusiveCallbackGroup()
        for srv, name, fn, group in ((QueryGrasps, "query_grasps", self._query_grasps, grasp),
                                     (QuerySimilarity, "query_similarity", self._query_similarity, cheap),
                                     (LoadField, "load_field", self._load, admin),
                                     (RecordDemo, "record_demo", self._record_demo, admin),
                                     (EditScene, "edit_scene", self._edit_scene, admin)):
            self.create_service(srv, f"~/{name}", self._serving(name, fn), callback_group=group)
        self.pub_cloud = self.pub_heat = self.pub_markers = self._ckpt_sub = None
        self.diagnostics = DiagnosticsPublisher(self, self._status, period_s=self.cfg.diagnostics_period_s,
                                                callback_group=MutuallyExclusiveCallbackGroup())
        self.alive = AliveBeacon(self)  # ~/alive: clients notice at once when this process dies
        if self.cfg.autostart:
            self.trigger_configure()
            self.trigger_activate()

    @property
    def executor_threads(self) -> int:
        """Threads the executor needs so that no request waits for a thread (run_node and bringup read it):
        every grasp query running or waiting holds one; similarity, loads, topics and timers need a few more."""
        return self.cfg.grasp_workers + self.cfg.grasp_queue + 5

    def _new_session(self) -> QuerySession:
        return QuerySession(*(self.params[k].config for k in ("", "planner", "task")),
                            Gripper(self.params["gripper"].config))

    # the sections' configs: each ParamBinding validates a change, then _apply hands it to the session
    cfg = property(lambda self: self.session.config)
    planner_cfg = property(lambda self: self.session.planner_config)
    gripper_cfg = property(lambda self: self.session.gripper.config)
    gripper = property(lambda self: self.session.gripper)

    def _apply(self, section: str):
        def on_change(new: Any, old: Any) -> None:
            if section == "edit":  # read by each edit request
                return
            with self._rw.write():
                self.session.configure(**{section: new})

        return on_change

    # --- lifecycle ------------------------------------------------------------------------------
    def on_configure(self, state) -> TransitionCallbackReturn:
        with self._rw.write():
            try:
                self.session.load_tasks()
            except Exception as e:  # a broken task folder must not stop the node: report it
                self._last_error = f"tasks not loaded: {e}"
                self.get_logger().error(self._last_error)
        pub = self.create_lifecycle_publisher
        self.pub_cloud, self.pub_heat, self.pub_markers = (pub(PointCloud2, "~/scene_cloud", LATCHED_QOS),
                                                           pub(PointCloud2, "~/heatmap", LATCHED_QOS),
                                                           pub(MarkerArray, "~/grasp_markers", LATCHED_QOS))
        if self.cfg.checkpoint_topic:
            self._ckpt_sub = self.create_subscription(String, self.cfg.checkpoint_topic, self._on_checkpoint_msg,
                                                      LATCHED_QOS, callback_group=self._topic_group)
        self.get_logger().info(f"configured: {len(self.session.tasks)} tasks, checkpoint root "
                               f"{self.cfg.checkpoint_root}, checkpoint topic {self.cfg.checkpoint_topic!r}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state) -> TransitionCallbackReturn:
        ret = super().on_activate(state)
        self._active = True
        pending, self._pending_checkpoint = self._pending_checkpoint, None
        restore = self._restore_target()  # read always: the field served before, whose edits another field clears
        target = pending or restore
        if target is None and self.session.field is None and self.cfg.load_newest_on_activate:
            target = ""
        if target is not None:  # in the background: the executor serves ("not ready yet") meanwhile
            self._starting = f"{NOT_READY}: restoring the field {target or '(newest)'} (started {time.strftime('%X')})"
            self.alive.set(f"restoring {target or '(newest)'}")
            threading.Thread(target=self._startup_load, args=(target, pending), name="query-restore",
                             daemon=True).start()
        else:
            self.alive.set("ready")
            if self.session.field is not None:
                self._publish_cloud_async(self.session)
        return ret

    def _state_path(self) -> Path:
        if self.cfg.state_file:
            return expand_root(self.cfg.state_file)
        name = self.get_fully_qualified_name().strip("/").replace("/", ".")
        return expand_root(self.cfg.checkpoint_root) / f".{name}.served.json"

    def _restore_target(self) -> str | None:
        """The checkpoint to restore at start (the one recorded in the state file), or None."""
        if not self.cfg.restore_last_field or self.session.field is not None:
            return None
        try:
            record, why = read_served(self._state_path())
        except Exception as e:  # noqa: BLE001 - a bad state file never stops the node
            record, why = None, f"{type(e).__name__}: {e}"
        if why:
            self._last_error = f"served-field record not used: {why}"
            self.get_logger().warning(self._last_error)
        if record is None:
            return None
        self._served = record
        if not record.checkpoint:
            return None
        if not Path(record.checkpoint).is_file():
            self._last_error = f"the field served before the restart, {record.checkpoint}, no longer exists"
            self.get_logger().warning(self._last_error)
            return None
        return record.checkpoint

    def _startup_load(self, target: str, announced: str | None) -> None:
        try:
            self._load_quietly(target, announced=announced)
        finally:
            self._starting = ""
            self.alive.set("ready" if self._active else "inactive")

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        self._active = False
        self.alive.set("inactive")
        return super().on_deactivate(state)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        self.close()
        for pub in (self.pub_cloud, self.pub_heat, self.pub_markers, self._ckpt_sub):
            if pub is not None:
                (self.destroy_subscription if pub is self._ckpt_sub else self.destroy_lifecycle_publisher)(pub)
        self.pub_cloud = self.pub_heat = self.pub_markers = self._ckpt_sub = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        self.close()
        return TransitionCallbackReturn.SUCCESS

    def close(self) -> None:
        """Release the field (called by run_node on shutdown)."""
        self._active = False
        with self._rw.write():
            self.session.close()

    def _status(self):
        s = self.session
        vals = {"active": self._active, "checkpoint": str(s.checkpoint_path or ""), "edits": edit_count(s.field),
                "feature_dim": getattr(s.field, "feature_dim", 0), "tasks": len(s.tasks), **self.stats}
        vals.update({"last_error": self._last_error} if self._last_error else {})
        if self._starting:
            return WARN, self._starting, vals
        if not self._active:
            return WARN, "inactive (lifecycle): requests are refused", vals
        ready, what = s.status()
        return (OK if ready else WARN), (what if ready else f"active, {what}"), vals

    def load_field(self, checkpoint_path: str, announced: str | None = None, wait: bool = True) -> str:
        """Load a checkpoint under ``checkpoint_root`` (a folder or "": the newest there); Refused: the field stays.

        The new field is loaded beside the served one (queries go on) with its workspace surface computed (the
        first query on it is not slower), then swapped in and recorded in the state file; ``announced``: the
        checkpoint announcement this load answers (recorded too); ``wait`` False: refuse "busy" when another load
        or demonstration is in progress instead of waiting for it."""
        path = (resolve_under_root(checkpoint_path, self.cfg.checkpoint_root, what="checkpoint path")
                if checkpoint_path.strip() else expand_root(self.cfg.checkpoint_root))
        with self._admin_lock(wait, "load"):
            old = self.session
            edits = edit_count(old.field)
            prev = old.checkpoint_path or (Path(self._served.checkpoint) if self._served.checkpoint else None)
            new = self._new_session()
            new.tasks = list(old.tasks)
            msg = new.load_field(path)
            field, restored, why = restore_field_edits(new.field, new.checkpoint_path, self._edits_owner())
            if restored:  # the same field again (a restart, a reload): its edits come back
                session_with_field(new, field)
                msg += (f"; restored its {restored} edit(s) saved in "
                        f"{edit_stack_path(new.checkpoint_path, self._edits_owner())}")
            elif why:
                msg += f"; its saved edits were NOT restored (the field is served as trained): {why}"
                self._last_error = why
            carried = int(getattr(new.field, "fixed", 0) or 0)
            if carried:  # a field refreshed through edits serves the scene through them (core/workflows/refresh.py)
                msg += f"; it carries {carried} edit(s) from its refresh (served through them, not undoable)"
                field, kept = carry_over_edits(old.field, new.field)  # edits made while the refresh ran
                if kept:
                    session_with_field(new, field)
                    saved, err = keep_field_edits(field, new.checkpoint_path, self._edits_owner())
                    msg += (f"; the {kept} edit(s) made while it was refreshed are kept on top"
                            + (f" (saved in {saved})" if saved else f" (not saved: {err})"))
            if new.planner is not None:
                try:
                    new.planner.surface()
                except Exception as e:  # noqa: BLE001 - a query will say what is wrong with the field
                    self.get_logger().warning(f"workspace surface of the new field not computed: {e}")
            self._swap_in(new)
            self._record(str(new.checkpoint_path), announced)
            another = prev is not None and Path(prev).resolve() != Path(new.checkpoint_path).resolve()
            if another:  # the previous field's edits are cleared, on disk too (they no longer follow the scene)
                try:
                    remove_edit_stack(edit_stack_path(prev, self._edits_owner()))
                except OSError as e:
                    self.get_logger().warning(f"edit stack of {prev} not removed: {e}")
        release_free_memory()
        if edits and not carried and (another or prev is None or not restored):
            msg += f"; the {edits} edit(s) of the previous field are cleared"
        self.get_logger().info(msg)
        self._publish_cloud_async(new)
        return msg

    @contextlib.contextmanager
    def _admin_lock(self, wait: bool, what: str) -> Iterator[None]:
        """The admin lock (loads, demonstrations); Refused "busy" when it is taken and not ``wait``."""
        if not self._admin.acquire(blocking=wait):
            raise Refused(f"{BUSY}: another load or demonstration is in progress; send the {what} again shortly")
        try:
            yield
        finally:
            self._admin.release()

    def _swap_in(self, new: QuerySession) -> None:
        """Serve ``new`` from now on, under the write lock (queries in flight finish on the old session first),
        with the parameters as they are now (they may have changed while ``new`` was built)."""
        with self._rw.write():
            cfg, planner, task = (self.params[k].config for k in ("", "planner", "task"))
            if (new.config, new.planner_config, new.task_config) != (cfg, planner, task):  # changed meanwhile
                new.configure(config=cfg, planner=planner, task=task)
            if new.gripper.config != self.params["gripper"].config:
                new.configure(gripper=self.params["gripper"].config)
            self.session = new

    def _record(self, checkpoint: str | None, announced: str | None) -> None:
        """Record the served field (and a handled announcement) in the state file; a failure is logged only."""
        if checkpoint is not None:
            self._served.checkpoint = checkpoint
        if announced is not None:
            self._served.announced = announced
        try:
            write_served(self._state_path(), self._served)
        except Exception as e:  # noqa: BLE001 - a full disk must not fail the load
            self._last_error = f"served field not recorded in {self._state_path()}: {type(e).__name__}: {e}"
            self.get_logger().warning(self._last_error)

    def _load_quietly(self, path: str, announced: str | None = None) -> None:
        try:
            self.load_field(path, announced=announced)
        except Exception as e:  # refused or failed: never die on a message
            self._last_error = f"checkpoint {path or '(newest)'} not loaded: {type(e).__name__}: {e}"
            self.get_logger().error(self._last_error)
            if announced is not None:  # handled, even though it failed: a restart does not try it again
                self._record(None, announced)

    def _on_checkpoint_msg(self, msg: String) -> None:
        path = msg.data.strip()
        if not path or Path(path) == self.session.checkpoint_path:
            return
        if path == self._served.announced:  # handled before a restart (the topic is transient-local)
            return
        if not self._active:
            self._pending_checkpoint = path
            return
        self.get_logger().info(f"new checkpoint announced: {path}")
        self._load_quietly(path, announced=path)

    def _stamp(self):
        return self.get_clock().now().to_msg()

    def _publish_cloud_async(self, session: QuerySession) -> None:
        """Render and publish the scene cloud of ``session``'s field in a background thread (off the service path:
        it can take long on a CPU)."""
        if self.pub_cloud is not None and session.field is not None:
            threading.Thread(target=self._publish_cloud, args=(session,), name="scene-cloud", daemon=True).start()

    def _publish_cloud(self, session: QuerySession, surface: bool = False) -> None:
        try:
            with self._rw.read():
                if session is not self.session:  # a newer field came meanwhile: its own thread publishes
                    return
                if surface and session.planner is not None:  # an edited field's workspace surface, for the next query
                    session.planner.surface()
                pts, cols = session.scene_cloud()
            if session is self.session and self.pub_cloud is not None:
                self.pub_cloud.publish(make_point_cloud(pts, rgb=cols, frame_id=self.cfg.world_frame,
                                                        stamp=self._stamp()))
                self.get_logger().info(f"scene cloud: {len(pts)} points")
        except Exception as e:  # display only: never fail because of it
            self.get_logger().warning(f"scene cloud not published: {type(e).__name__}: {e}")

    def _publish_heatmap(self, pts: np.ndarray, sim: np.ndarray, min_similarity: float) -> PointCloud2:
        keep = sim >= min_similarity
        msg = make_point_cloud(pts[keep], {"similarity": sim[keep]}, rgb=heat_colors(sim[keep]),
                               frame_id=self.cfg.world_frame, stamp=self._stamp())
        if self.pub_heat is not None:
            self.pub_heat.publish(msg)
        return msg

    # --- services ---------------------------------------------------------------------------------
    def _serving(self, what: str, fn):
        """A service callback running ``fn(req, res)``; a refusal or error is success=false + reason. Locking is
        each handler's own (see the module docstring)."""
        def callback(req: Any, res: Any) -> Any:
            t0 = time.perf_counter()
            try:
                if not self._active:
                    raise Refused("the query node is not active (lifecycle state); activate it first")
                if self._starting:
                    raise Refused(self._starting + "; try again in a moment")
                fn(req, res)
            except (Refused, QueryRefused) as e:
                res.success, res.message = False, str(e)
            except Exception as e:  # never let a request take the node down
                res.success, res.message = False, f"internal error while serving {what}: {type(e).__name__}: {e}"
                self._last_error = res.message
                self.get_logger().error(res.message)
            with self._stats_lock:
                st = self.stats
                st["requests"] += 1
                st["refused"] += 0 if res.success else 1
                st["busy"] += 1 if not res.success and res.message.startswith(BUSY) else 0
                st["last_latency_s"] = time.perf_counter() - t0
            if not res.success:
                self.get_logger().info(f"{what} refused: {res.message}")
            return res

        return callback

    def _query_grasps(self, req: Any, res: Any) -> None:
        ws = None
        if req.use_workspace:
            ws = [(p.x, p.y, p.z) for p in (req.workspace_min, req.workspace_max)]
        s = self.session  # the checks first, so that a refusal never waits for a worker
        s.check_text(req.text)
        s.require()
        s.check_negatives(list(req.negatives))
        if ws is not None:
            s.check_workspace(*ws)
        if req.task and req.task not in [t.name for t in s.planner.tasks]:
            raise Refused(f"unknown task {req.task!r}; known tasks: {[t.name for t in s.planner.tasks]}")
        if not self._grasp_slots.acquire(blocking=False):
            c = self.cfg
            raise Refused(f"{BUSY}: {c.grasp_workers + c.grasp_queue} grasp queries are running or waiting "
                          f"(grasp_workers {c.grasp_workers} + grasp_queue {c.grasp_queue}); try again shortly")
        try:
            waited = time.perf_counter()
            if not self._grasp_workers.acquire(timeout=self.cfg.grasp_wait_s):
                raise Refused(f"{BUSY}: waited {time.perf_counter() - waited:.0f} s for a grasp worker (grasp_wait_s); "
                              "try again shortly")
            try:
                t0 = time.perf_counter()
                with self._rw.read():
                    result = self.session.plan(req.text, list(req.negatives), int(req.max_grasps), req.task, ws)
            finally:
                self._grasp_workers.release()
        finally:
            self._grasp_slots.release()
        res.planning_time = float(time.perf_counter() - t0)
        release_free_memory()  # a plan's temporaries, freed in this thread's arena: back to the OS
        self.stats["last_query"] = req.text[:80]
        self._publish_heatmap(result.heatmap_points, result.heatmap_similarity, self.cfg.heatmap_min_similarity)
        if self.pub_markers is not None:
            self.pub_markers.publish(grasp_markers(result.grasps, self.gripper, self.cfg.world_frame, self._stamp()))
        if not result.found:
            res.success, res.message = False, result.reason
            return
        stamp = self._stamp()
        res.grasps = [grasp_to_msg(g, self.cfg.world_frame, stamp) for g in result.grasps]
        b, res.success = result.grasps[0], True
        res.message = (f"{len(result.grasps)} grasps for {result.query!r} (best: {b.source} {b.task!r}, score "
                       f"{b.score:.3f}, best similarity {result.stats.get('best_similarity', 0):.3f})")

    def _query_similarity(self, req: Any, res: Any) -> None:
        with self._rw.read(urgent=True):  # alongside running grasp queries, never behind a waiting settings change
            pts, sim = self.session.similarity(req.text, list(req.negatives), float(req.min_similarity))
        self.stats["last_query"] = req.text[:80]
        res.heatmap = self._publish_heatmap(pts, sim, float(req.min_similarity))
        res.num_points = int(np.count_nonzero(sim >= req.min_similarity))
        res.max_similarity, res.mean_similarity = float(sim.max()), float(sim.mean())
        res.peak.x, res.peak.y, res.peak.z = (float(v) for v in pts[int(np.argmax(sim))])
        res.success = True
        res.message = f"{len(sim)} surface points, max similarity {res.max_similarity:.3f}"

    def _load(self, req: Any, res: Any) -> None:
        res.message = self.load_field(req.checkpoint_path, wait=False)
        res.success = True
        session = self.session
        field = session.field
        res.checkpoint_path = str(session.checkpoint_path)
        res.feature_dim, res.extractor = int(field.feature_dim), str(field.extractor_info.get("type", ""))
        if hasattr(res, "num_edits"):  # interfaces built before the edits were saved lack it
            res.num_edits = edit_count(field)

    def _edits_owner(self) -> str:
        """Whose edit stack it is (the node's full name): two servers of one field keep their own."""
        return self.get_fully_qualified_name()

    def _edit_scene(self, req: Any, res: Any) -> None:
        T = None
        if not (req.undo or req.removed):
            frame = req.motion.header.frame_id
            if frame != self.cfg.world_frame:
                raise Refused(f"motion must be in the world frame {self.cfg.world_frame!r}, got {frame!r}")
            p, q = req.motion.pose.position, req.motion.pose.orientation
            try:
                T = rigid_from_pose((p.x, p.y, p.z), (q.x, q.y, q.z, q.w), "motion (T_world_new_old)")
            except EditError as e:
                raise Refused(str(e)) from None
        else:
            p, q = req.motion.pose.position, req.motion.pose.orientation
            if any(abs(v) > 1e-9 for v in (p.x, p.y, p.z, q.x, q.y, q.z)) or abs(q.w - 1.0) > 1e-9:
                raise Refused(f"{'undo' if req.undo else 'removed'} takes no motion: leave it at identity")
        box = None
        if req.use_box:
            box = ((req.box_min.x, req.box_min.y, req.box_min.z), (req.box_max.x, req.box_max.y, req.box_max.z))
        er = EditRequest(text=req.object, box=box, T_world_new_old=T, removed=bool(req.removed), undo=bool(req.undo))
        with self._admin_lock(False, "edit"):  # one edit, load or demonstration at a time
            old = self.session
            try:
                with self._rw.read(urgent=True):  # the selection reads the served field beside running queries
                    out = edit_field(old, er, self.params["edit"].config)
            except EditError as e:
                raise Refused(str(e)) from None
            new = session_with_field(old, out.field, self._new_session())
            self._swap_in(new)  # queries in flight finish on the old field first
            saved, why = keep_field_edits(out.field, new.checkpoint_path, self._edits_owner())  # atomically
        if hasattr(res, "edits_path"):
            res.edits_path = str(saved or "")
        if why:
            self.get_logger().warning(why)
        res.success, res.num_edits, res.edit_time = True, len(out.field.edits), float(out.seconds)
        if out.region is not None:  # the old place and the new one, for a refresh (TrainFields changed_boxes)
            c = out.region.corners()
            boxes = [np.r_[c.min(0), c.max(0)]]
            T = out.field.edits[-1].T_world_new_old
            if T is not None:
                cn = c @ T[:3, :3].T + T[:3, 3]
                boxes.append(np.r_[cn.min(0), cn.max(0)])
            res.changed_boxes = [float(v) for b in boxes for v in b]
        res.message = f"{out.message} ({out.seconds:.3f} s)" + (f"; {why}" if why else "")
        self.get_logger().info(res.message)
        if self.pub_cloud is not None:  # the scene cloud of the edited field, and its surface for the next query
            threading.Thread(target=self._publish_cloud, args=(new, True), name="scene-cloud", daemon=True).start()

    def _record_demo(self, req: Any, res: Any) -> None:
        frame = req.gripper_pose.header.frame_id
        if frame != self.cfg.world_frame:
            raise Refused(f"gripper_pose must be in the world frame {self.cfg.world_frame!r}, got {frame!r}")
        try:
            T_tool = pose_msg_to_matrix(req.gripper_pose)
        except (ConversionError, ValueError) as e:
            raise Refused(f"bad gripper_pose: {e}") from None
        # the session swaps its task list and planner when done: running queries keep the ones they started with
        with self._admin_lock(False, "demonstration"), self._rw.read():
            task, path = self.session.record_demo(req.task_name, T_tool, append=bool(req.append),
                                                  metadata={"recorded_by": self.get_fully_qualified_name()})
        res.success, res.num_demos, res.task_path = True, task.num_demos, str(path)
        res.message = f"task {task.name!r} has {task.num_demos} demonstration(s), saved to {path}"


def main(args: list[str] | None = None) -> int:
    return run_node(QueryNode, args)  # threads: QueryNode.executor_threads


if __name__ == "__main__":
    import sys

    sys.exit(main())
