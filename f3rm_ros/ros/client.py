"""A small Python client of the f3rm_ros nodes for task planners (in the spirit of nav2's simple commander).

    from f3rm_ros.ros.client import F3RMClient

    with F3RMClient() as f3rm:                          # its own node; rclpy.init() if needed
        grasps = f3rm.query_grasps("mug handle", max_grasps=5)
        T = grasps[0].pose                              # 4x4, world frame, metres (gripper frame, Grasp.msg)

Every call has a deadline (``timeout`` seconds, for the service to appear and to answer) and raises an
:class:`F3RMError` subclass instead of returning a half-result:

* :class:`ServiceUnavailable`: the service/action server did not appear within the deadline;
* :class:`ServerGone`: the server went away while the call waited for it (killed, crashed or shut down):
  raised within about a second, not at the deadline. Each node offers ``~/alive`` with DDS liveliness
  (:class:`~f3rm_ros.ros.common.AliveBeacon`); the client watches it and the ROS graph while it waits;
* :class:`Timeout`: the server lived but did not answer in time (a training goal is then cancelled, and the
  message says whether the node acknowledged the cancel);
* :class:`RequestFailed`: the server answered ``success = false``; ``.reason`` is its message, e.g.
  "'banana' not found in the workspace: ...". Two kinds go away by themselves, worth a retry:
  :class:`NotReady` (the node is still starting, e.g. restoring its field) and :class:`Busy` (its queue for
  expensive work is full).

A client survives a restart of a node: the next call waits (up to its deadline) for the node to come back
and is served by the new process; nothing has to be rebuilt. The first request to each service or action (and the
first after its node came back) waits 0.25 s before it is sent, so that the server has matched the client's reader
of its answer (``MATCH_SETTLE_S``); later requests go at once.

With ``node=None`` the client owns a node and spins it itself (calls from several threads at once are fine).
With a node of yours that is spun by your own executor in another thread, pass it as ``node``; the client
then only waits on futures.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable, Sequence

import numpy as np
import rclpy
from rclpy.action import ActionClient
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from std_msgs.msg import String

from f3rm_ros.action import TrainFields
from f3rm_ros.ros.common import ALIVE_QOS, BUSY, NOT_READY
from f3rm_ros.srv import CaptureControl, EditScene, LoadField, QueryGrasps, QuerySimilarity, RecordDemo

__all__ = ["F3RMClient", "GraspResult", "SimilarityResult", "FieldInfo", "TrainOutcome", "CaptureOutcome",
           "DemoOutcome", "F3RMError", "ServiceUnavailable", "ServerGone", "Timeout", "RequestFailed", "NotReady",
           "Busy", "CAPTURE_COMMANDS", "MATCH_SETTLE_S"]

CAPTURE_COMMANDS = {"start": CaptureControl.Request.START, "stop": CaptureControl.Request.STOP,
                    "clear": CaptureControl.Request.CLEAR, "save": CaptureControl.Request.SAVE,
                    "append": CaptureControl.Request.APPEND}


class F3RMError(RuntimeError):
    """Base of every error the client raises; ``reason`` is the human-readable cause."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ServiceUnavailable(F3RMError):
    """The service or action server did not appear before the deadline (node not running?)."""


class ServerGone(F3RMError):
    """The server went away (process killed or shut down) while the call was waiting for its answer."""


class Timeout(F3RMError):
    """The server did not answer before the deadline."""


class RequestFailed(F3RMError):
    """The server answered and refused or failed the request; ``reason`` is its message."""


class NotReady(RequestFailed):
    """The node answered that it is not ready yet (still starting, e.g. restoring its field): retry shortly."""


class Busy(RequestFailed):
    """The node's queue for expensive work (grasp queries) is full: retry shortly."""


_GRACE_S = 0.3  # a call on a node that is not alive spins this long for news of it before it gives up
# A request sent at once by a client that has just found its server (new, or the server's node restarted) races the
# server's matching of the client's response reader: Fast DDS drops a response whose reader the server has not
# matched within 100 ms (ros2/rmw_fastrtps#390, #467), so on a loaded machine a fast answer (an edit, a load) could
# be lost and the call time out after the server had acted on it. Such a first request waits this long first.
MATCH_SETTLE_S = 0.25


class _Watch:
    """Liveliness of one node's ``~/alive`` beacon, as seen by this client (updated by DDS events)."""

    def __init__(self, client: F3RMClient, node: str) -> None:
        from rclpy.event_handler import SubscriptionEventCallbacks

        self.topic = client.name(node, "alive")
        self.alive = 0  # writers alive now
        self.seen = False  # ever alive
        self.changed = time.monotonic()  # of the liveliness (creation until the first event)
        self.revivals = 0  # times it became alive after not being so (a start or restart of the node)
        self.state = ""  # the last readiness the node published
        self.local = False  # the beacon is in this process (see check_local)
        self.sub = client.node.create_subscription(
            String, self.topic, self._on_state, ALIVE_QOS,
            event_callbacks=SubscriptionEventCallbacks(liveliness=self._on_liveliness))

    def _on_state(self, msg: Any) -> None:
        self.state = msg.data
        if self.alive == 0:  # a message is news from a live writer (a dead one cannot send, nor replay its history)
            self.alive, self.seen, self.changed = 1, True, time.monotonic()
            self.revivals += 1

    def _on_liveliness(self, info: Any) -> None:
        self.revivals += int(self.alive == 0 and info.alive_count > 0)
        self.alive = int(info.alive_count)
        self.seen = self.seen or self.alive > 0
        self.changed = time.monotonic()

    def check_local(self, node: Node) -> bool:
        """Whether the node's beacon is in this client's own process (DDS participant), whose liveliness DDS does
        not report to a reader of the same participant (it lapses after a lease); such a server cannot die
        without this client anyway. Sets and returns ``local``."""
        own = {bytes(i.endpoint_gid)[:12] for i in node.get_subscriptions_info_by_topic(self.topic)}
        pubs = {bytes(i.endpoint_gid)[:12] for i in node.get_publishers_info_by_topic(self.topic)}
        self.local = bool(pubs) and pubs <= own
        return self.local

    @property
    def gone(self) -> bool:
        """The node was alive and its liveliness has lapsed (or it left)."""
        return self.seen and self.alive == 0 and not self.local


@dataclass
class GraspResult:
    """One grasp: ``pose`` (4, 4) gripper (or tool) frame in ``frame_id`` (world), metres.

    ``source`` is "demo" (guided by the demonstrations of ``task``) or "geometric" (zero-shot, ``task`` "");
    ``quality`` holds the terms it was ranked by, as in the core's ``Grasp.quality``: ``antipodal_deg``,
    ``contact_width_m``, ``contact_similarity`` (= ``language_similarity``), ``clearance_m``, ``quality``
    (msg/Grasp.msg documents each)."""

    pose: np.ndarray
    score: float
    width: float
    task: str
    rank: int
    language_similarity: float = 0.0
    frame_id: str = "world"
    source: str = ""
    quality: dict[str, float] = field(default_factory=dict)


@dataclass
class SimilarityResult:
    """Heat map of a text query: ``points`` [N, 3] world, ``similarity`` [N] in 0..1, ``rgb`` [N, 3] uint8."""

    points: np.ndarray
    similarity: np.ndarray
    rgb: np.ndarray | None
    max_similarity: float
    mean_similarity: float
    peak: np.ndarray
    message: str = ""


@dataclass
class FieldInfo:
    checkpoint_path: str
    feature_dim: int
    extractor: str
    message: str = ""
    num_edits: int = 0  # edits restored from the stack saved beside the field (the same field loaded again)


@dataclass
class TrainOutcome:
    checkpoint_path: str
    steps_done: int
    final_psnr: float
    final_feature_mse: float
    training_time: float
    message: str = ""
    feedback_count: int = 0


@dataclass
class CaptureOutcome:
    frame_count: int
    dataset_path: str
    message: str = ""


@dataclass
class DemoOutcome:
    num_demos: int
    task_path: str
    message: str = ""


@dataclass
class EditOutcome:
    num_edits: int  # edits on the served field now
    edit_time: float  # seconds the node took
    message: str = ""
    changed_boxes: list[float] = field(default_factory=list)  # old and new place, 6 numbers each: for train()
    edits_path: str = ""  # the node's whole edit stack as saved now, for train(edits_path=...); "" = none saved


@dataclass
class _Names:
    query_node: str = "query_node"
    train_node: str = "train_node"
    capture_node: str = "capture_node"


class F3RMClient:
    """Client of the capture, train and query nodes under ``namespace``.

    Args:
        node: an rclpy node to create the clients on (spun by you), or None to own one.
        namespace: namespace of the f3rm nodes (default "/f3rm").
        query_node / train_node / capture_node: node names under the namespace.
        wait_timeout: default seconds to wait for a service to appear (each call also has a deadline).
    """

    def __init__(self, node: Node | None = None, namespace: str = "/f3rm", *, query_node: str = "query_node",
                 train_node: str = "train_node", capture_node: str = "capture_node"):
        self._own_context = False
        if node is None:
            if not rclpy.ok():
                rclpy.init()
                self._own_context = True
            node = Node(f"f3rm_client_{os.getpid()}_{id(self) & 0xFFFF:x}")
            self._executor: SingleThreadedExecutor | None = SingleThreadedExecutor()
            self._executor.add_node(node)
            self._own_node = True
        else:
            self._executor = None
            self._own_node = False
        self.node = node
        ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
        self.namespace = ns
        self.names = _Names(query_node, train_node, capture_node)
        self._clients: dict[str, Any] = {}
        # per service / action called: its node's ``_Watch.revivals`` when its server was last waited for
        self._matched: dict[str, int] = {}
        self._watches: dict[str, _Watch] = {}
        self._lock = threading.Lock()
        self._spin_lock = threading.Lock()  # one thread spins the own executor at a time
        # a call waits this long (within its deadline) for a node that died to come back (respawn: a new process
        # imports torch and restores its field, 6-15 s on a busy 2-core machine) before it raises
        # ServiceUnavailable; a killed node stays in the ROS graph for ~20 s, so waiting on the graph alone would
        # wait out the whole deadline
        self.reconnect_timeout = 30.0

    # --- lifetime -------------------------------------------------------------------------------
    def close(self) -> None:
        """Destroy the clients (and the node and rclpy context the client created)."""
        for c in self._clients.values():
            try:
                c.destroy()
            except Exception:  # noqa: BLE001 - best effort on shutdown
                pass
        self._matched.clear()
        self._clients.clear()
        for w in self._watches.values():
            try:
                self.node.destroy_subscription(w.sub)
            except Exception:  # noqa: BLE001 - best effort on shutdown
                pass
        self._watches.clear()
        if self._own_node:
            if self._executor is not None:
                self._executor.shutdown(timeout_sec=1.0)
            self.node.destroy_node()
            self._own_node = False
        if self._own_context and rclpy.ok():
            rclpy.shutdown()
            self._own_context = False

    def __enter__(self) -> F3RMClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- plumbing -------------------------------------------------------------------------------
    def name(self, node: str, leaf: str) -> str:
        """Fully qualified name of a node's private service/action, e.g. /f3rm/query_node/query_grasps."""
        return f"{self.namespace}/{node}/{leaf}"

    def _client(self, kind: type, name: str, action: bool = False):
        with self._lock:
            c = self._clients.get(name)
            if c is None:
                c = ActionClient(self.node, kind, name) if action else self.node.create_client(kind, name)
                self._clients[name] = c
            return c

    def _watch(self, node: str) -> _Watch:
        with self._lock:
            w = self._watches.get(node)
            if w is None:
                w = self._watches[node] = _Watch(self, node)
            return w

    def _spin_or_wait(self, seconds: float, ev: threading.Event | None = None) -> None:
        """Spin the client's own executor for up to ``seconds`` (one thread at a time: calls from several threads
        share it, the others wait on ``ev``), or wait when the node is spun elsewhere."""
        if self._executor is not None and self._spin_lock.acquire(blocking=False):
            try:
                self._executor.spin_once(timeout_sec=seconds)
            finally:
                self._spin_lock.release()
        elif ev is not None:
            ev.wait(seconds)
        else:
            time.sleep(seconds)

    def _gone_reason(self, watch: _Watch, is_ready: Callable[[], bool], what: str) -> str:
        """Why the server of ``what`` is gone ("" while it lives): its liveliness lapsed, or it left the graph."""
        if watch.gone:
            return (f"{what}: the node went away (its liveliness on {watch.topic} lapsed: killed, crashed or shut "
                    f"down)")
        if not is_ready():
            return f"{what}: the server left the ROS graph (node shut down)"
        return ""

    def _wait_future(self, future, deadline: float, gone: Callable[[], str] | None = None) -> str:
        """Wait until ``future`` is done, ``deadline`` (monotonic) passes or ``gone()`` names a reason.

        Returns: "" when done, "timeout", or the reason the server is gone.
        """
        ev = threading.Event()
        future.add_done_callback(lambda _f: ev.set())
        while not future.done():
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            if gone is not None and (why := gone()):
                return why
            self._spin_or_wait(min(left, 0.05), ev)
        return ""

    def _ready_and_matched(self, is_ready: Callable[[], bool], watch: _Watch, name: str, key: str,
                           deadline: float) -> None:
        """:meth:`_wait_ready`, then, the first time ``key`` is called, when its server was not there at the call or
        when its node came alive again since (a restart), :data:`MATCH_SETTLE_S` for the server to match this
        client's response reader (at most up to ``deadline``). A node in this process cannot restart on its own, and
        its beacon's liveliness lapses and returns with DDS leases (``_Watch.check_local``): it is not counted."""
        def generation() -> int:
            return 0 if watch.local else watch.revivals

        absent = not is_ready()
        self._wait_ready(is_ready, watch, name, deadline)  # (it also sees a restarted node's liveliness)
        with self._lock:
            settle = absent or self._matched.get(key) != generation()
        if settle:
            end = min(deadline, time.monotonic() + MATCH_SETTLE_S)
            while (left := end - time.monotonic()) > 0:
                self._spin_or_wait(min(left, 0.02))
            with self._lock:
                self._matched[key] = generation()

    def _wait_ready(self, is_ready: Callable[[], bool], watch: _Watch, name: str, deadline: float) -> None:
        """Wait for the server of ``name`` (and, when its node has a beacon, for the beacon to be alive: a killed
        node stays in the graph for ~20 s). Every call spins at least ``_GRACE_S`` before it gives up, so that the
        liveliness events of a node that came back meanwhile are seen (a call that gave up at once never would)."""
        grace = time.monotonic() + _GRACE_S
        while True:
            beacon = (watch.seen or self.node.count_publishers(watch.topic) > 0) and not watch.check_local(self.node)
            if is_ready() and (watch.alive > 0 or not beacon):
                return
            now = time.monotonic()
            if now >= grace and beacon and watch.alive == 0 and now - watch.changed > self.reconnect_timeout:
                raise ServiceUnavailable(f"{name} is not available: its node has not been alive for "
                                         f"{now - watch.changed:.0f} s (killed or stopped: no liveliness on "
                                         f"{watch.topic}; reconnect_timeout {self.reconnect_timeout:g} s)")
            if now >= deadline:
                if beacon and watch.alive == 0:
                    raise ServiceUnavailable(f"{name} is not available: its node is not alive (killed or stopped; "
                                             f"liveliness on {watch.topic} lapsed) and did not come back in time")
                raise ServiceUnavailable(f"{name} is not available (is the node running and active, in the same "
                                         f"ROS_DOMAIN_ID?)")
            self._spin_or_wait(0.02)

    def call(self, srv_type: type, node: str, leaf: str, request: Any, timeout: float) -> Any:
        """Call ``<namespace>/<node>/<leaf>`` with a deadline; return the response (no success check).

        Raises:
            ServiceUnavailable, ServerGone, Timeout: see the module docstring.
        """
        if not (timeout > 0):
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        name = self.name(node, leaf)
        deadline = time.monotonic() + timeout
        client = self._client(srv_type, name)
        watch = self._watch(node)
        self._ready_and_matched(client.service_is_ready, watch, f"service {name}", name, deadline)
        future = client.call_async(request)
        why = self._wait_future(future, deadline, lambda: self._gone_reason(watch, client.service_is_ready,
                                                                            f"service {name}"))
        if why:
            client.remove_pending_request(future)
            if why == "timeout":
                raise Timeout(f"service {name} did not answer within {timeout:g} s (its node is alive)")
            raise ServerGone(f"{why}; the request was not answered")
        if future.exception() is not None:
            raise F3RMError(f"service {name} call failed: {future.exception()}")
        return future.result()

    def _checked(self, response: Any, what: str) -> Any:
        if not response.success:
            msg = response.message or f"{what} failed without a reason"
            kind = NotReady if msg.startswith(NOT_READY) else Busy if msg.startswith(BUSY) else RequestFailed
            raise kind(msg)
        return response

    # --- query node -----------------------------------------------------------------------------
    def query_grasps(self, text: str, negatives: Sequence[str] = (), max_grasps: int = 0, task: str = "",
                     workspace: tuple[Sequence[float], Sequence[float]] | None = None,
                     timeout: float = 30.0) -> list[GraspResult]:
        """Grasps for ``text``, best first.

        Args:
            text: what to pick up, e.g. "mug handle".
            negatives: negative phrases (empty: the node's default).
            max_grasps: 0 = the node's default.
            task: explicit task name; "" = the best match.
            workspace: ((xmin, ymin, zmin), (xmax, ymax, zmax)) world box in metres, or None for the node's.
            timeout: seconds.

        Raises:
            RequestFailed: nothing found ("'banana' not found ..."), no field loaded, bad input...
        """
        req = QueryGrasps.Request(text=text, negatives=list(negatives), max_grasps=int(max_grasps), task=task)
        if workspace is not None:
            lo, hi = (np.asarray(v, dtype=float).reshape(3) for v in workspace)
            req.use_workspace = True
            req.workspace_min.x, req.workspace_min.y, req.workspace_min.z = (float(v) for v in lo)
            req.workspace_max.x, req.workspace_max.y, req.workspace_max.z = (float(v) for v in hi)
        res = self._checked(self.call(QueryGrasps, self.names.query_node, "query_grasps", req, timeout), "query")
        from f3rm_ros.ros.conversions import grasp_msg_to_dict

        return [GraspResult(**grasp_msg_to_dict(g)) for g in res.grasps]

    def query_similarity(self, text: str, negatives: Sequence[str] = (), min_similarity: float = 0.0,
                         timeout: float = 30.0) -> SimilarityResult:
        """Heat map of ``text`` over the scene (points with similarity >= ``min_similarity``)."""
        from f3rm_ros.ros.conversions import read_point_cloud

        req = QuerySimilarity.Request(text=text, negatives=list(negatives), min_similarity=float(min_similarity))
        res = self._checked(self.call(QuerySimilarity, self.names.query_node, "query_similarity", req, timeout),
                            "similarity query")
        cloud = read_point_cloud(res.heatmap)
        n = int(res.heatmap.width) * int(res.heatmap.height)
        return SimilarityResult(points=cloud.get("xyz", np.zeros((n, 3), np.float32)),
                                similarity=cloud.get("similarity", np.zeros(n, np.float32)), rgb=cloud.get("rgb"),
                                max_similarity=float(res.max_similarity), mean_similarity=float(res.mean_similarity),
                                peak=np.array([res.peak.x, res.peak.y, res.peak.z]), message=res.message)

    def load_field(self, checkpoint_path: str = "", timeout: float = 60.0) -> FieldInfo:
        """Load a checkpoint (under the node's checkpoint root; "" = the newest there)."""
        res = self._checked(self.call(LoadField, self.names.query_node, "load_field",
                                      LoadField.Request(checkpoint_path=checkpoint_path), timeout), "load_field")
        return FieldInfo(res.checkpoint_path, int(res.feature_dim), res.extractor, res.message,
                         int(getattr(res, "num_edits", 0)))

    def _edit(self, req: Any, timeout: float) -> EditOutcome:
        res = self._checked(self.call(EditScene, self.names.query_node, "edit_scene", req, timeout), "edit_scene")
        return EditOutcome(int(res.num_edits), float(res.edit_time), res.message, [float(v) for v in res.changed_boxes],
                           str(getattr(res, "edits_path", "")))

    @staticmethod
    def _edit_request(obj: str, box: tuple[Sequence[float], Sequence[float]] | None) -> Any:
        req = EditScene.Request(object=obj)
        if box is not None:
            req.use_box = True
            (req.box_min.x, req.box_min.y, req.box_min.z), (req.box_max.x, req.box_max.y, req.box_max.z) = \
                ([float(v) for v in box[0]], [float(v) for v in box[1]])
        return req

    def object_moved(self, obj: str, T_world_new_old: np.ndarray, box: tuple[Sequence[float], Sequence[float]] |
                     None = None, frame_id: str = "world", timeout: float = 30.0) -> EditOutcome:
        """Tell the query node that the robot moved ``obj`` (as a query names it; or the thing in ``box``, (min, max)
        world corners, with ``obj`` "") by the rigid ``T_world_new_old`` (4x4, world frame): the served field is edited
        at once (srv/EditScene.srv). A refusal (unknown object, a non-rigid motion, off the workspace) raises
        RequestFailed and changes nothing."""
        from f3rm_ros.core.edits import EditError, check_rigid
        from f3rm_ros.ros.conversions import matrix_to_pose_msg

        try:  # a pose message cannot carry a scale or shear: refuse them here rather than send something else
            T = check_rigid(T_world_new_old)
        except EditError as e:
            raise RequestFailed(f"object_moved refused: {e}") from None
        req = self._edit_request(obj, box)
        req.motion = matrix_to_pose_msg(T, frame_id=frame_id)
        return self._edit(req, timeout)

    def object_removed(self, obj: str, box: tuple[Sequence[float], Sequence[float]] | None = None,
                       timeout: float = 30.0) -> EditOutcome:
        """Tell the query node that ``obj`` (or the thing in ``box``) is gone from the workspace."""
        req = self._edit_request(obj, box)
        req.removed = True
        return self._edit(req, timeout)

    def undo_edit(self, timeout: float = 30.0) -> EditOutcome:
        """Drop the newest edit of the served field (RequestFailed when there is none)."""
        return self._edit(EditScene.Request(undo=True), timeout)

    def record_demo(self, task_name: str, pose: np.ndarray, append: bool = True, frame_id: str = "world",
                    timeout: float = 30.0) -> DemoOutcome:
        """Record a demonstration: gripper pose (4, 4) in the world frame that grasps well."""
        from f3rm_ros.ros.conversions import matrix_to_pose_msg

        req = RecordDemo.Request(task_name=task_name, append=bool(append))
        req.gripper_pose = matrix_to_pose_msg(np.asarray(pose, dtype=float), frame_id=frame_id)
        res = self._checked(self.call(RecordDemo, self.names.query_node, "record_demo", req, timeout), "record_demo")
        return DemoOutcome(int(res.num_demos), res.task_path, res.message)

    # --- capture node ---------------------------------------------------------------------------
    def capture(self, command: str | int, timeout: float = 10.0) -> CaptureOutcome:
        """Capture control: "start", "stop", "clear", "save" or "append" (or the CaptureControl constant)."""
        if isinstance(command, str):
            if command.lower() not in CAPTURE_COMMANDS:
                raise ValueError(f"unknown capture command {command!r}; one of {sorted(CAPTURE_COMMANDS)}")
            command = CAPTURE_COMMANDS[command.lower()]
        res = self._checked(self.call(CaptureControl, self.names.capture_node, "control",
                                      CaptureControl.Request(command=int(command)), timeout), "capture")
        return CaptureOutcome(int(res.frame_count), res.dataset_path, res.message)

    # --- train node -----------------------------------------------------------------------------
    def train(self, dataset: str = "", steps: int = 0, feature_type: str = "",
              feedback_cb: Callable[[Any], None] | None = None, timeout: float = 3600.0,
              resume: str = "", refresh_from: str = "", changed_boxes: Sequence[float] = (),
              edits_path: str = "") -> TrainOutcome:
        """Run the ``TrainFields`` action to completion.

        Args:
            dataset: dataset folder under the train node's data root ("" = the latest capture).
            steps: 0 = the node's default.
            feature_type: "clip", "dino", "labels", "none" or "" (node default).
            feedback_cb: called with each ``TrainFields.Feedback``.
            timeout: seconds for the whole goal; on expiry the goal is cancelled and :class:`Timeout` raised.
            resume: "" = a new run; "latest" = continue the dataset's newest interrupted or cancelled run from its
                last checkpoint (``steps`` 0 = to its own total); or a run folder / checkpoint under the node's
                checkpoint root.
            refresh_from: a refresh after the scene changed (and a capture ``append`` added views of it): the field
                (checkpoint under the node's checkpoint root) to fine-tune for ``steps`` (0 = the node's refresh_steps)
                on the new frames plus the old ones that see none of ``changed_boxes`` (the ``changed_boxes`` of each
                ``object_moved`` / ``object_removed`` since that field, concatenated).
            edits_path: a refresh from the query node's edits (the ``edits_path`` of the latest ``object_moved`` /
                ``object_removed`` / ``undo_edit``): the old frames distrust each edit's old and new place; with
                ``refresh_from`` "" the field the edits were made on is refreshed.

        Raises:
            RequestFailed: goal rejected (e.g. another training runs) or training failed/cancelled.
        """
        name = self.name(self.names.train_node, "train")
        deadline = time.monotonic() + timeout
        client = self._client(TrainFields, name, action=True)
        watch = self._watch(self.names.train_node)
        self._ready_and_matched(client.server_is_ready, watch, f"action {name}", name, deadline)
        count, last = [0], [None]

        def on_feedback(msg: Any) -> None:
            count[0] += 1
            last[0] = msg.feedback
            if feedback_cb is not None:
                feedback_cb(msg.feedback)

        def gone() -> str:
            return self._gone_reason(watch, client.server_is_ready, f"action {name}")

        def where() -> str:
            fb = last[0]
            return f"step {fb.step}/{fb.total_steps}" if fb is not None else "before any feedback"

        goal = TrainFields.Goal(dataset_path=dataset, num_steps=int(steps), feature_type=feature_type)
        if resume:
            if not hasattr(goal, "resume"):
                raise F3RMError("the TrainFields interface has no 'resume' field: rebuild the interfaces (colcon)")
            goal.resume = resume
        if refresh_from or edits_path:
            if not hasattr(goal, "refresh_from") or (edits_path and not hasattr(goal, "edits_path")):
                raise F3RMError("the TrainFields interface has no 'refresh_from' / 'edits_path' field: rebuild the "
                                "interfaces")
            goal.refresh_from = refresh_from
            goal.changed_boxes = [float(v) for v in changed_boxes]
            if edits_path:
                goal.edits_path = edits_path
        fut = client.send_goal_async(goal, feedback_callback=on_feedback)
        why = self._wait_future(fut, deadline, gone)
        if why == "timeout":
            raise Timeout(f"action {name} did not accept or reject the goal within {timeout:g} s (its node is alive)")
        if why:
            raise ServerGone(f"{why}; the goal was not accepted")
        handle = fut.result()
        if handle is None or not handle.accepted:
            raise RequestFailed("the train node rejected the goal (another training may be running; see its "
                                "log or /diagnostics)")
        rfut = handle.get_result_async()
        why = self._wait_future(rfut, deadline, gone)
        if why and why != "timeout":
            raise ServerGone(f"{why}; training stopped at {where()} (its run folder keeps the checkpoints written "
                             f"so far: train(resume='latest') continues it once the node is back)")
        if why == "timeout":
            cfut = handle.cancel_goal_async()
            cwhy = self._wait_future(cfut, time.monotonic() + 5.0, gone)
            if not cwhy and cfut.result() is not None and len(cfut.result().goals_canceling) > 0:
                what = "goal cancelled: the node stops at the next step and writes its last checkpoint"
                # the cancelled goal's result names that checkpoint (and the node is free for the next goal)
                if not self._wait_future(rfut, time.monotonic() + 10.0, gone) and rfut.result() is not None:
                    r = rfut.result().result
                    what = (f"goal cancelled: stopped at step {r.steps_done}, last checkpoint "
                            f"{r.checkpoint_path or 'none'}")
            elif not cwhy:
                what = "the node refused to cancel the goal"
            else:
                what = f"cancel not acknowledged: {'no answer within 5 s' if cwhy == 'timeout' else cwhy}"
            raise Timeout(f"training did not finish within {timeout:g} s, at {where()} ({what})")
        from action_msgs.msg import GoalStatus

        wrapped = rfut.result()
        res = wrapped.result
        if wrapped.status != GoalStatus.STATUS_SUCCEEDED or not res.success:
            state = {GoalStatus.STATUS_CANCELED: "cancelled", GoalStatus.STATUS_ABORTED: "aborted"}.get(
                wrapped.status, f"status {wrapped.status}")
            raise RequestFailed(f"training {state}: {res.message or 'no reason given'}")
        return TrainOutcome(res.checkpoint_path, int(res.steps_done), float(res.final_psnr),
                            float(res.final_feature_mse), float(res.training_time), res.message, count[0])

    # --- topics -----------------------------------------------------------------------------------
    def wait_for_message(self, msg_type: type, topic: str, timeout: float = 10.0,
                         predicate: Callable[[Any], bool] | None = None, transient_local: bool = False) -> Any:
        """The first message on ``topic`` (absolute, or relative to the namespace) that satisfies ``predicate``."""
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

        if not topic.startswith("/"):
            topic = f"{self.namespace}/{topic}"
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL if transient_local else DurabilityPolicy.VOLATILE)
        got: list = []
        ev = threading.Event()

        def cb(msg: Any) -> None:
            if not got and (predicate is None or predicate(msg)):
                got.append(msg)
                ev.set()

        sub = self.node.create_subscription(msg_type, topic, cb, qos)
        try:
            deadline = time.monotonic() + timeout
            while not ev.is_set() and time.monotonic() < deadline:
                self._spin_or_wait(0.1, ev)
        finally:
            self.node.destroy_subscription(sub)
        if not got:
            raise Timeout(f"no matching message on {topic} within {timeout:g} s")
        return got[0]
