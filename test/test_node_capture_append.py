"""capture_node APPEND over real DDS (issue 18): a capture session records a scan of the simulated camera
(sim_camera_node), the robot moves the bowl, and a second session started with APPEND adds views of the changed scene
(a second sim camera on the moved scene) to the same dataset with scene_version 1; the dataset loads with both sets of
frames, each the render of its scene. APPEND to a dataset that does not exist, or to one recorded with another
camera, is refused with the reason and changes nothing. Both nodes run in this process (DDS between them); the
session's decisions are tested without ROS in test_capture_append.py."""

from __future__ import annotations

import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: run the tests through scripts/test.sh (env.sh)")

from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from node_helpers import Spinner, call_service, wait_for  # noqa: E402

NS = "/t_capture_append"
W, H = 48, 36


def _sim_camera(scene: str, views: int, seed: int):
    from f3rm_ros.ros.sim_camera_node import SimCameraNode

    params = {"scene": scene, "width": W, "height": H, "rate_hz": 8.0, "start_delay_s": 0.0,
              "wait_for_subscribers": 1, "discovery_settle_s": 0.5, "labels_topic": "",
              "trajectory.num_views": views, "trajectory.seed": seed}
    return SimCameraNode(namespace=NS, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])


def test_append_session_over_dds(tmp_path):
    from f3rm_ros.core.cameras import CameraIntrinsics
    from f3rm_ros.core.dataset import DatasetWriter, load_dataset
    from f3rm_ros.core.sim import resolve_scene
    from f3rm_ros.core.sim.camera import SimCamera
    from f3rm_ros.core.sim.render import intrinsics_from_fov
    from f3rm_ros.core.sim.scene import builtin_scene_path
    from f3rm_ros.core.sim.trajectory import TrajectoryConfig, scan_poses
    from f3rm_ros.msg import CaptureStatus
    from f3rm_ros.ros.capture_node import CaptureNode
    from f3rm_ros.srv import CaptureControl

    data = tmp_path / "data"
    # the scene after the robot moved the bowl (the built-in scene with the bowl elsewhere)
    text = builtin_scene_path("mug_bowl_box").read_text()
    assert "position: [0.14, -0.08, 0.0]" in text
    moved = tmp_path / "moved.yaml"
    moved.write_text(text.replace("position: [0.14, -0.08, 0.0]", "position: [0.16, 0.18, 0.0]"))
    # a dataset recorded by another camera (64x48)
    w = DatasetWriter(data / "other_cam")
    w.add_frame(np.zeros((48, 64, 3), np.uint8), CameraIntrinsics(60.0, 60.0, 32.0, 24.0, 64, 48), np.eye(4))
    other_json = (data / "other_cam" / "transforms.json").read_bytes()
    C = CaptureControl.Request
    t0 = time.monotonic()
    with rclpy.init():
        cap = CaptureNode(namespace=NS, parameter_overrides=[
            Parameter("data_root", value=str(data)), Parameter("dataset_name", value="scan"),
            Parameter("min_translation_m", value=0.0), Parameter("min_rotation_deg", value=0.0),
            Parameter("pose_wait_s", value=1.0)])
        client = Node("t_append_client", namespace=NS)
        status: list = []
        client.create_subscription(CaptureStatus, f"{NS}/capture_node/status", status.append, 50)
        sp = Spinner(cap, client)

        def control(command: int):
            r = call_service(client, CaptureControl, f"{NS}/capture_node/control", C(command=command))
            print(f"command {command}: success={r.success} frames={r.frame_count} {r.message!r}")
            return r

        def record(scene: str, views: int, seed: int) -> None:
            """One sim camera run over its whole trajectory while the capture node listens."""
            sim = _sim_camera(scene, views, seed)
            sp.add(sim)
            try:
                wait_for(lambda: sim.finished, 60, f"the sim camera on {scene} to finish")
                time.sleep(0.5)  # the last frame's decision
            finally:
                sp.executor.remove_node(sim)
                sim.destroy_node()

        try:
            # nothing recorded yet: APPEND has no dataset to append to
            r = control(C.APPEND)
            assert not r.success and "no dataset" in r.message and r.frame_count == 0
            assert not (data / "scan" / "transforms.json").exists() and not cap.session.capturing

            assert control(C.START).success
            record("mug_bowl_box", 4, 0)
            r = control(C.STOP)
            assert r.success and r.frame_count >= 3, r.message  # best-effort transport may lose one frame
            n1 = r.frame_count

            r = control(C.APPEND)  # the robot moved the bowl: views of the changed scene
            assert r.success and "scene version 1" in r.message
            wait_for(lambda: status and status[-1].capturing and status[-1].scene_version == 1, 10,
                     "~/status to say capturing scene version 1")
            record(str(moved), 3, 7)
            r = control(C.STOP)
            assert r.success and r.frame_count >= n1 + 2, r.message
            n = r.frame_count

            # APPEND to a dataset of another camera (the sim camera's 48x36 is known from its camera_info)
            assert cap.set_parameters([Parameter("dataset_name", value="other_cam")])[0].successful
            r = control(C.APPEND)
            assert not r.success and "another camera" in r.message and "64x48" in r.message
            assert r.frame_count == 1 and not cap.session.capturing
            # APPEND to a dataset that does not exist
            assert cap.set_parameters([Parameter("dataset_name", value="missing")])[0].successful
            r = control(C.APPEND)
            assert not r.success and "no dataset" in r.message and not cap.session.capturing
        finally:
            sp.stop()
            cap.destroy_node()
            client.destroy_node()
    assert (data / "other_cam" / "transforms.json").read_bytes() == other_json
    assert not (data / "missing" / "transforms.json").exists()

    ds = load_dataset(data / "scan", eval_every=0)
    versions = [int(e.get("scene_version", 0)) for e in ds.frames_extra]
    print(f"{len(ds)} frames, scene versions {versions}, {time.monotonic() - t0:.1f} s")
    assert len(ds) == n and versions == [0] * n1 + [1] * (n - n1)
    # each frame is the render of its scene at its pose: the appended ones show the moved bowl
    K = intrinsics_from_fov(W, H, 42.5)
    for i, (scene, views, seed) in enumerate([(resolve_scene("mug_bowl_box"), 4, 0), (resolve_scene(moved), 3, 7)]):
        poses = scan_poses(TrajectoryConfig(num_views=views, seed=seed))
        cam = SimCamera(scene, K, poses)
        for j in [j for j, v in enumerate(versions) if v == i]:
            k = int(np.argmin(np.abs(poses - ds.c2w[j]).reshape(views, -1).max(1)))
            assert np.abs(poses[k] - ds.c2w[j]).max() < 1e-6
            assert np.array_equal(ds.get_image(j), cam.capture(k).image), f"frame {j} is not its scene's render"
    moved_cam = SimCamera(resolve_scene("mug_bowl_box"), K, scan_poses(TrajectoryConfig(num_views=3, seed=7)))
    j = versions.index(1)
    k = int(np.argmin(np.abs(moved_cam.poses - ds.c2w[j]).reshape(3, -1).max(1)))
    assert not np.array_equal(ds.get_image(j), moved_cam.capture(k).image)  # the scene did change
