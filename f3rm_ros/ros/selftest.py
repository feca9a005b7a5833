"""Interface self-test: two real nodes that round-trip every f3rm_ros service and the action over DDS.

This checks the *plumbing* (colcon-built types, rclpy, the middleware), not the planner: the
server answers each request with values derived field by field from the request, and the client
checks that every field came back as sent. Used by ``scripts/setup.sh`` users as a smoke test
(``python -m f3rm_ros.ros.selftest``) and by ``test/test_ros_interfaces.py``.

    python -m f3rm_ros.ros.selftest serve   # only the server node (for a test in another process)
    python -m f3rm_ros.ros.selftest         # server in a child process + client here; exit 0 = all good
"""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time

import rclpy
from rclpy.action import ActionClient, ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node

from f3rm_ros.action import TrainFields
from f3rm_ros.msg import Grasp
from f3rm_ros.srv import CaptureControl, LoadField, QueryGrasps, QuerySimilarity, RecordDemo

NS = "/f3rm_selftest"


class EchoServer(Node):
    """Serves every interface; each response is a deterministic function of its request."""

    def __init__(self) -> None:
        super().__init__("interface_echo_server", namespace=NS)
        group = ReentrantCallbackGroup()
        self.create_service(QueryGrasps, "query_grasps", self.on_query, callback_group=group)
        self.create_service(QuerySimilarity, "query_similarity", self.on_similarity, callback_group=group)
        self.create_service(CaptureControl, "capture_control", self.on_capture, callback_group=group)
        self.create_service(LoadField, "load_field", self.on_load, callback_group=group)
        self.create_service(RecordDemo, "record_demo", self.on_demo, callback_group=group)
        self._busy = threading.Lock()
        ActionServer(self, TrainFields, "train_fields", execute_callback=self.on_train,
                     goal_callback=self.on_goal, cancel_callback=lambda _: CancelResponse.ACCEPT,
                     callback_group=group)

    def on_query(self, req, res):
        res.success = bool(req.text)
        res.message = "|".join([req.text, *req.negatives, req.task])
        lo, hi = req.workspace_min, req.workspace_max
        for i in range(req.max_grasps):
            g = Grasp()
            g.pose.header.frame_id = "world"
            g.pose.pose.position.x = lo.x + i * (hi.x - lo.x)
            g.pose.pose.position.y, g.pose.pose.position.z = lo.y, hi.z
            g.pose.pose.orientation.w = 1.0
            g.score, g.language_similarity, g.opening_width = -float(i), 0.5, 0.08
            g.task, g.rank = req.task or req.text, i
            g.source = ("demo", "geometric")[i % 2]  # the quality terms: distinct values per grasp
            g.antipodal_angle_deg, g.contact_width = 1.5 * i, 0.02 + 0.01 * i
            g.clearance, g.quality = 0.003, 0.9 - 0.1 * i
            res.grasps.append(g)
        res.planning_time = float(len(req.text))
        return res

    def on_similarity(self, req, res):
        from f3rm_ros.ros.conversions import make_point_cloud

        import numpy as np

        pts = np.array([[0.0, 0.0, 0.0], [0.1, 0.2, 0.3], [1.0, 1.0, 1.0]], np.float32)
        sim = np.array([0.1, 0.9, req.min_similarity], np.float32)
        res.heatmap = make_point_cloud(pts, {"similarity": sim}, frame_id="world")
        res.success, res.message = True, req.text + "|" + ",".join(req.negatives)
        res.num_points, res.max_similarity = 3, 0.9
        res.mean_similarity = float(sim.mean())
        res.peak.x, res.peak.y, res.peak.z = 0.1, 0.2, 0.3
        return res

    def on_capture(self, req, res):
        res.success, res.message = True, f"command {req.command}"
        res.frame_count, res.dataset_path = 10 * req.command, f"/selftest/{req.command}"
        return res

    def on_load(self, req, res):
        res.success, res.message, res.checkpoint_path = True, "loaded", req.checkpoint_path
        res.feature_dim, res.extractor = 768, "selftest"
        return res

    def on_demo(self, req, res):
        res.success = True
        res.message = f"{req.task_name}@{req.gripper_pose.header.frame_id}"
        res.num_demos = 2 if req.append else 1
        res.task_path = f"/selftest/{req.task_name}.npz"
        return res

    def on_goal(self, goal):
        if not self._busy.acquire(blocking=False):
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def on_train(self, handle):
        try:
            req, t0 = handle.request, time.monotonic()
            result = TrainFields.Result()
            for step in range(1, req.num_steps + 1):
                if handle.is_cancel_requested:
                    handle.canceled()
                    result.message, result.steps_done = "cancelled", step - 1
                    return result
                fb = TrainFields.Feedback(step=step, total_steps=req.num_steps, loss=1.0 / step,
                                          loss_names=["rgb", "feature"], loss_values=[0.5 / step, 0.5 / step],
                                          psnr=float(step), elapsed=time.monotonic() - t0,
                                          eta=0.05 * (req.num_steps - step))
                handle.publish_feedback(fb)
                time.sleep(0.05)
            handle.succeed()
            result.success, result.message = True, f"{req.dataset_path}|{req.feature_type}"
            result.checkpoint_path, result.steps_done = req.dataset_path + "/ckpt.pt", req.num_steps
            result.final_psnr, result.training_time = float(req.num_steps), time.monotonic() - t0
            return result
        finally:
            self._busy.release()


class SelfTestClient(Node):
    """Calls every interface of an :class:`EchoServer` and checks each field of each reply."""

    def __init__(self) -> None:
        super().__init__("interface_selftest_client", namespace=NS)
        self.failures: list[str] = []

    def check(self, what: str, ok: bool) -> None:
        print(f"  {'ok  ' if ok else 'FAIL'} {what}", flush=True)
        if not ok:
            self.failures.append(what)

    def call(self, srv_type, name: str, request, timeout: float = 10.0, resend_after: float = 2.0):
        """Call ``name`` and return its answer. A request unanswered after ``resend_after`` s is sent again (every
        echo service is stateless): a client made just before its first call races the server's matching of its
        response reader, and Fast DDS drops a response to a reader not matched within 100 ms
        (ros2/rmw_fastrtps#390, #467), which a loaded 2-core machine can miss (the first QueryGrasps timed out
        that way in a full test run)."""
        client = self.create_client(srv_type, name)
        deadline = time.monotonic() + timeout
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {NS}/{name} did not appear within {timeout} s")
        while True:
            future = client.call_async(request)
            left = deadline - time.monotonic()
            rclpy.spin_until_future_complete(self, future, timeout_sec=max(0.0, min(resend_after, left)))
            if future.done():
                return future.result()
            client.remove_pending_request(future)
            if time.monotonic() >= deadline:
                raise TimeoutError(f"service {NS}/{name} did not answer within {timeout} s")
            print(f"  (no answer from {NS}/{name} after {resend_after:g} s: sent again)", flush=True)

    def run_all(self) -> list[str]:
        req = QueryGrasps.Request(text="mug handle", negatives=["object", "stuff"], max_grasps=3,
                                  task="", use_workspace=True)
        req.workspace_min.x, req.workspace_min.y, req.workspace_min.z = 0.1, -0.45, 0.005
        req.workspace_max.x, req.workspace_max.y, req.workspace_max.z = 0.8, 0.45, 0.35
        r = self.call(QueryGrasps, "query_grasps", req)
        self.check("QueryGrasps text/negatives/task", r.success and r.message == "mug handle|object|stuff|")
        self.check("QueryGrasps grasps best first", [g.rank for g in r.grasps] == [0, 1, 2]
                   and [g.task for g in r.grasps] == ["mug handle"] * 3)
        self.check("QueryGrasps workspace box", math.isclose(r.grasps[1].pose.pose.position.x, 0.8, abs_tol=1e-9)
                   and math.isclose(r.grasps[0].pose.pose.position.z, 0.35, abs_tol=1e-9))
        self.check("QueryGrasps planning_time", r.planning_time == 10.0)
        g = r.grasps[2]
        self.check("QueryGrasps source and quality terms",
                   [x.source for x in r.grasps] == ["demo", "geometric", "demo"]
                   and all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(
                       (g.antipodal_angle_deg, g.contact_width, g.clearance, g.quality), (3.0, 0.04, 0.003, 0.7),
                       strict=True)))

        from f3rm_ros.ros.conversions import read_point_cloud

        r = self.call(QuerySimilarity, "query_similarity",
                      QuerySimilarity.Request(text="bowl", negatives=["texture"], min_similarity=0.25))
        cloud = read_point_cloud(r.heatmap)
        self.check("QuerySimilarity text", r.success and r.message == "bowl|texture")
        self.check("QuerySimilarity PointCloud2", cloud["xyz"].shape == (3, 3)
                   and abs(float(cloud["similarity"][2]) - 0.25) < 1e-6 and r.heatmap.header.frame_id == "world")
        self.check("QuerySimilarity summary", r.num_points == 3 and abs(r.peak.y - 0.2) < 1e-9)

        for cmd in (CaptureControl.Request.START, CaptureControl.Request.STOP,
                    CaptureControl.Request.CLEAR, CaptureControl.Request.SAVE):
            r = self.call(CaptureControl, "capture_control", CaptureControl.Request(command=cmd))
            self.check(f"CaptureControl command {cmd}",
                       r.frame_count == 10 * cmd and r.dataset_path == f"/selftest/{cmd}")

        r = self.call(LoadField, "load_field", LoadField.Request(checkpoint_path="/ckpt/step-2000.pt"))
        self.check("LoadField", r.checkpoint_path == "/ckpt/step-2000.pt" and r.feature_dim == 768)

        demo = RecordDemo.Request(task_name="mug_handle", append=True)
        demo.gripper_pose.header.frame_id = "world"
        r = self.call(RecordDemo, "record_demo", demo)
        self.check("RecordDemo", r.message == "mug_handle@world" and r.num_demos == 2)

        self.run_action()
        return self.failures

    def run_action(self, timeout: float = 20.0) -> None:
        client = ActionClient(self, TrainFields, "train_fields")
        if not client.wait_for_server(timeout_sec=timeout):
            raise TimeoutError(f"action {NS}/train_fields did not appear within {timeout} s")
        feedback: list = []

        def send(goal):
            fut = client.send_goal_async(goal, feedback_callback=lambda m: feedback.append(m.feedback))
            rclpy.spin_until_future_complete(self, fut, timeout_sec=timeout)
            return fut.result()

        # 1. a goal that completes, with feedback
        handle = send(TrainFields.Goal(dataset_path="/data/scene", num_steps=5, feature_type="labels"))
        self.check("TrainFields goal accepted", handle is not None and handle.accepted)
        fut = handle.get_result_async()
        rclpy.spin_until_future_complete(self, fut, timeout_sec=timeout)
        res = fut.result().result
        self.check("TrainFields result", res.success and res.steps_done == 5 and res.message == "/data/scene|labels")
        self.check("TrainFields feedback", len(feedback) >= 1 and feedback[-1].total_steps == 5
                   and list(feedback[-1].loss_names) == ["rgb", "feature"])

        # 2. a long goal, a second goal rejected while it runs, then cancelled
        handle = send(TrainFields.Goal(dataset_path="/data/scene", num_steps=400, feature_type="none"))
        second = send(TrainFields.Goal(dataset_path="/data/other", num_steps=1))
        self.check("TrainFields second goal rejected while busy", second is not None and not second.accepted)
        time.sleep(0.3)
        cfut = handle.cancel_goal_async()
        rclpy.spin_until_future_complete(self, cfut, timeout_sec=timeout)
        self.check("TrainFields cancel accepted", len(cfut.result().goals_canceling) == 1)
        fut = handle.get_result_async()
        rclpy.spin_until_future_complete(self, fut, timeout_sec=timeout)
        from action_msgs.msg import GoalStatus

        self.check("TrainFields cancelled", fut.result().status == GoalStatus.STATUS_CANCELED
                   and 0 < fut.result().result.steps_done < 400)


def serve() -> None:
    with rclpy.init():
        node = EchoServer()
        executor = MultiThreadedExecutor()
        executor.add_node(node)
        try:
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        serve()
        return 0
    server = subprocess.Popen([sys.executable, "-m", "f3rm_ros.ros.selftest", "serve"])
    try:
        with rclpy.init():
            client = SelfTestClient()
            print("f3rm_ros interface self-test (two processes, real DDS):", flush=True)
            failures = client.run_all()
            client.destroy_node()
    finally:
        server.terminate()
        server.wait(timeout=10)
    print("interface self-test:", "all interfaces round-tripped" if not failures else f"FAILED: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
