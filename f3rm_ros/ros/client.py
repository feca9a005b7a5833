"""A small Python client of the f3rm_ros nodes for task planners (in the spirit of nav2's simple commander).

    from f3rm_ros.ros.client import F3RMClient

    with F3RMClient() as f3rm:                          # its own node; rclpy.init() if needed
        grasps = f3rm.query_grasps("mug handle", max_grasps=5)
        T = grasps[0].pose                              # 4x4, world frame, metres (gripper frame, Grasp.msg)

Every call has a deadline (``timeout`` seconds, for the service to appear and to answer) and raises an
:class:`F3RMError` subclass instead of returning a half-result:

* :class:`ServiceUnavailable`: the service/action server did not appear within the deadline;
* :class:`Timeout`: it appeared but did not answer in time (an action goal is cancelled first);
* :class:`RequestFailed`: the server answered ``success = false``; ``.reason`` is its message, e.g.
  "'banana' not found in the workspace: ...".

With ``node=None`` the client owns a node and spins it itself. With a node of yours that is spun by
your own executor in another thread, pass it as ``node``; the client then only waits on futures.
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

from f3rm_ros.action import TrainFields
from f3rm_ros.srv import CaptureControl, LoadField, QueryGrasps, QuerySimilarity, RecordDemo

__all__ = ["F3RMClient", "GraspResult", "SimilarityResult", "FieldInfo", "TrainOutcome", "CaptureOutcome",
           "DemoOutcome", "F3RMError", "ServiceUnavailable", "Timeout", "RequestFailed", "CAPTURE_COMMANDS"]

CAPTURE_COMMANDS = {"start": CaptureControl.Request.START, "stop": CaptureControl.Request.STOP,
                    "clear": CaptureControl.Request.CLEAR, "save": CaptureControl.Request.SAVE}


class F3RMError(RuntimeError):
    """Base of every error the client raises; ``reason`` is the human-readable cause."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ServiceUnavailable(F3RMError):
    """The service or action server did not appear before the deadline (node not running?)."""


class Timeout(F3RMError):
    """The server did not answer before the deadline."""


class RequestFailed(F3RMError):
    """The server answered and refused or failed the request; ``reason`` is its message."""


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
        self._lock = threading.Lock()

    # --- lifetime -------------------------------------------------------------------------------
    def close(self) -> None:
        """Destroy the clients (and the node and rclpy context the client created)."""
        for c in self._clients.values():
            try:
                c.destroy()
            except Exception:  # noqa: BLE001 - best effort on shutdown
                pass
        self._clients.clear()
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

    def _wait_future(self, future, deadline: float) -> bool:
        """Wait until ``future`` is done or ``deadline`` (monotonic) passes; True if done."""
        if self._executor is not None:
            while not future.done():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._executor.spin_until_future_complete(future, timeout_sec=min(left, 0.5))
            return future.done()
        ev = threading.Event()
        future.add_done_callback(lambda _f: ev.set())
        ev.wait(max(0.0, deadline - time.monotonic()))
        return future.done()

    def _wait_ready(self, is_ready: Callable[[], bool], name: str, deadline: float) -> None:
        while not is_ready():
            if time.monotonic() >= deadline:
                raise ServiceUnavailable(f"{name} is not available (is the node running and active, in the same "
                                         f"ROS_DOMAIN_ID?)")
            if self._executor is not None:
                self._executor.spin_once(timeout_sec=0.05)
            else:
                time.sleep(0.05)

    def call(self, srv_type: type, node: str, leaf: str, request: Any, timeout: float) -> Any:
        """Call ``<namespace>/<node>/<leaf>`` with a deadline; return the response (no success check)."""
        if not (timeout > 0):
            raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
        name = self.name(node, leaf)
        deadline = time.monotonic() + timeout
        client = self._client(srv_type, name)
        self._wait_ready(client.service_is_ready, f"service {name}", deadline)
        future = client.call_async(request)
        if not self._wait_future(future, deadline):
            client.remove_pending_request(future)
            raise Timeout(f"service {name} did not answer within {timeout:g} s")
        if future.exception() is not None:
            raise F3RMError(f"service {name} call failed: {future.exception()}")
        return future.result()

    def _checked(self, response: Any, what: str) -> Any:
        if not response.success:
            raise RequestFailed(response.message or f"{what} failed without a reason")
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
        return FieldInfo(res.checkpoint_path, int(res.feature_dim), res.extractor, res.message)

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
        """Capture control: "start", "stop", "clear" or "save" (or the CaptureControl constant)."""
        if isinstance(command, str):
            if command.lower() not in CAPTURE_COMMANDS:
                raise ValueError(f"unknown capture command {command!r}; one of {sorted(CAPTURE_COMMANDS)}")
            command = CAPTURE_COMMANDS[command.lower()]
        res = self._checked(self.call(CaptureControl, self.names.capture_node, "control",
                                      CaptureControl.Request(command=int(command)), timeout), "capture")
        return CaptureOutcome(int(res.frame_count), res.dataset_path, res.message)

    # --- train node -----------------------------------------------------------------------------
    def train(self, dataset: str = "", steps: int = 0, feature_type: str = "",
              feedback_cb: Callable[[Any], None] | None = None, timeout: float = 3600.0) -> TrainOutcome:
        """Run the ``TrainFields`` action to completion.

        Args:
            dataset: dataset folder under the train node's data root ("" = the latest capture).
            steps: 0 = the node's default.
            feature_type: "clip", "dino", "labels", "none" or "" (node default).
            feedback_cb: called with each ``TrainFields.Feedback``.
            timeout: seconds for the whole goal; on expiry the goal is cancelled and :class:`Timeout` raised.

        Raises:
            RequestFailed: goal rejected (e.g. another training runs) or training failed/cancelled.
        """
        name = self.name(self.names.train_node, "train")
        deadline = time.monotonic() + timeout
        client = self._client(TrainFields, name, action=True)
        self._wait_ready(client.server_is_ready, f"action {name}", deadline)
        count = [0]

        def on_feedback(msg: Any) -> None:
            count[0] += 1
            if feedback_cb is not None:
                feedback_cb(msg.feedback)

        goal = TrainFields.Goal(dataset_path=dataset, num_steps=int(steps), feature_type=feature_type)
        fut = client.send_goal_async(goal, feedback_callback=on_feedback)
        if not self._wait_future(fut, deadline):
            raise Timeout(f"action {name} did not accept or reject the goal within {timeout:g} s")
        handle = fut.result()
        if handle is None or not handle.accepted:
            raise RequestFailed("the train node rejected the goal (another training may be running; see its "
                                "log or /diagnostics)")
        rfut = handle.get_result_async()
        if not self._wait_future(rfut, deadline):
            cfut = handle.cancel_goal_async()
            self._wait_future(cfut, time.monotonic() + 5.0)
            raise Timeout(f"training did not finish within {timeout:g} s (goal cancelled)")
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
                if self._executor is not None:
                    self._executor.spin_once(timeout_sec=0.1)
                else:
                    ev.wait(0.1)
        finally:
            self.node.destroy_subscription(sub)
        if not got:
            raise Timeout(f"no matching message on {topic} within {timeout:g} s")
        return got[0]
