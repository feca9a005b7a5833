"""capture_node and sim_camera_node over real DDS: sim camera -> capture -> dataset on disk; bad inputs
answered with reasons while the node keeps serving; SIGKILL mid-capture and restart. The ROS-free capture
decisions are tested in test_capture_logic.py and test_capture_session.py."""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: run the tests through scripts/test.sh (env.sh)")

from geometry_msgs.msg import PoseStamped  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from f3rm_ros.core.geometry import make_transform  # noqa: E402
from node_helpers import (Spinner, call_service, node_logs_on_failure, start_node, stop_process,  # noqa: E402
                          wait_for)


def _rot_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1.0]])


# --- nodes over DDS --------------------------------------------------------------------------------

def _status_listener(node: Node, topic: str) -> list:
    from f3rm_ros.msg import CaptureStatus

    got: list = []
    node.create_subscription(CaptureStatus, topic, got.append, 50)
    return got


def _counts(st) -> dict:
    return dict(zip(st.reject_reasons, st.reject_counts, strict=True))


@node_logs_on_failure("capture.log", "sim.log")
def test_capture_from_sim_camera(tmp_path):
    """sim_camera_node -> capture_node (two processes): every kept frame on disk with the sim's pose, image,
    labels, depth and label table; control service START/STOP/CLEAR/SAVE."""
    from f3rm_ros.core.dataset import load_dataset
    from f3rm_ros.core.sim import resolve_scene
    from f3rm_ros.core.sim.camera import SimCamera
    from f3rm_ros.core.sim.render import intrinsics_from_fov
    from f3rm_ros.core.sim.trajectory import TrajectoryConfig, scan_poses
    from f3rm_ros.srv import CaptureControl

    ns = "/t_capture_sim"
    data = tmp_path / "data"
    views = 10
    cap = start_node("capture_node", ns, {"data_root": str(data), "dataset_name": "scan", "start_capturing": False,
                                          "labels_topic": "camera/labels", "min_translation_m": 0.0,
                                          "depth_topic": "camera/aligned_depth_to_color/image_raw",
                                          "min_rotation_deg": 0.0, "pose_wait_s": 1.0}, tmp_path / "capture.log")
    sim = None
    t0 = time.monotonic()
    try:
        with rclpy.init():
            node = Node("test_client", namespace=ns)
            status = _status_listener(node, f"{ns}/capture_node/status")
            sp = Spinner(node)
            r = call_service(node, CaptureControl, f"{ns}/capture_node/control",
                             CaptureControl.Request(command=CaptureControl.Request.START))
            print(f"START: success={r.success} message={r.message!r} frames={r.frame_count} path={r.dataset_path}")
            assert r.success and r.frame_count == 0 and r.dataset_path == str((data / "scan").resolve())
            sim = start_node("sim_camera_node", ns, {"width": 48, "height": 36, "rate_hz": 4.0,
                                                     "trajectory.num_views": views, "wait_for_subscribers": 1,
                                                     "depth_topic": "camera/aligned_depth_to_color/image_raw",
                                                     "start_delay_s": 1.0}, tmp_path / "sim.log")
            from std_msgs.msg import Bool
            from rclpy.qos import DurabilityPolicy, QoSProfile

            done: list = []
            node.create_subscription(Bool, f"{ns}/sim_camera_node/finished", lambda m: done.append(m.data),
                                     QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
            wait_for(lambda: True in done, 90, "the sim camera to finish its trajectory")
            # Camera topics are best effort (sensor-data QoS), as on a robot. Disk writes run on the node's writer
            # thread, so a slow disk (seen to stall fsync for seconds) no longer blocks the executor and drops
            # frames (this allowed half the trajectory lost before; 10/10 decided in 5 of 5 runs since). One frame
            # may still be lost in transport on a starved 2-core machine; never a wrong decision.
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not (status and status[-1].frames_kept
                                                       + status[-1].frames_rejected >= views):
                time.sleep(0.1)
            decided_frames = status[-1].frames_kept + status[-1].frames_rejected if status else 0
            if decided_frames < views:
                print(f"note: {views - decided_frames} frame(s) lost in best-effort transport")
            assert decided_frames >= views - 1, f"the capture node decided on only {decided_frames}/{views} frames"
            time.sleep(0.5)
            r = call_service(node, CaptureControl, f"{ns}/capture_node/control",
                             CaptureControl.Request(command=CaptureControl.Request.CLEAR))
            print(f"CLEAR while capturing: {r.success} {r.message!r}")
            assert not r.success and "while capturing" in r.message
            r = call_service(node, CaptureControl, f"{ns}/capture_node/control",
                             CaptureControl.Request(command=CaptureControl.Request.STOP))
            assert r.success
            r = call_service(node, CaptureControl, f"{ns}/capture_node/control",
                             CaptureControl.Request(command=CaptureControl.Request.SAVE))
            st = status[-1]
            print(f"SAVE: {r.success} {r.message!r} frames={r.frame_count}; status kept={st.frames_kept} "
                  f"rejected={_counts(st)} last={st.last_reject_reason!r}")
            assert r.success and r.frame_count == st.frames_kept
            assert r.frame_count == decided_frames and st.frames_rejected == 0, (r.frame_count, _counts(st))
            sp.stop()
            node.destroy_node()
    finally:
        for p in (sim, cap):
            if p is not None:
                stop_process(p)
    print("capture log tail:\n" + "".join((tmp_path / "capture.log").read_text().splitlines(True)[-4:]))

    ds = load_dataset(data / "scan")
    meta = json.loads((data / "scan" / "transforms.json").read_text())
    assert meta["world_frame"] == "world" and meta["units"] == "metres" and "f3rm_capture" in meta
    scene = resolve_scene("mug_bowl_box")
    table, _ = scene.label_table()
    assert meta["f3rm_labels"] == json.loads(json.dumps(table))
    sim_poses = scan_poses(TrajectoryConfig(num_views=views))
    cam = SimCamera(scene, intrinsics_from_fov(48, 36, 42.5), sim_poses)
    errs, img_err = [], []
    for i in range(len(ds)):
        k = int(np.argmin(np.abs(sim_poses - ds.c2w[i]).reshape(views, -1).max(1)))
        errs.append(float(np.abs(sim_poses[k] - ds.c2w[i]).max()))
        fr = cam.capture(k)
        img_err.append(int(np.abs(ds.get_image(i).astype(int) - fr.image.astype(int)).max()))
        assert np.array_equal(ds.get_labels(i), fr.label)
        assert np.abs(ds.get_depth(i) - fr.depth).max() <= 0.0005 + 1e-6  # millimetre PNG
    K = ds.intrinsics[0]
    print(f"{len(ds)} frames in {time.monotonic() - t0:.1f} s; max pose error {max(errs):.2e} m; "
          f"max image difference {max(img_err)} levels; fx={K.fx:.3f} cx={K.cx:.3f}")
    assert max(errs) < 1e-6 and max(img_err) == 0
    ref = intrinsics_from_fov(48, 36, 42.5)
    assert abs(K.fx - ref.fx) < 1e-9 and abs(K.cx - ref.cx) < 1e-9
    # the captured dataset is usable for label-feature training (what train_node does with feature_type labels)
    from f3rm_ros.core.features import LabelFeatureConfig, create_extractor, extract_dataset_features

    ex = create_extractor(LabelFeatureConfig(patch_size=4), label_table=ds.labels_table)
    feats = extract_dataset_features(ex, ds, None, progress=False)
    print(f"label features of the captured dataset: {tuple(feats.shape)}")
    assert feats.shape == (len(ds), 9, 12, 64) and bool(feats.isfinite().all())


def _frame_image(i: int, w: int = 32, h: int = 24) -> np.ndarray:
    """A textured (sharp), recognisable test image for frame number ``i``."""
    return np.random.default_rng(1000 + i).integers(0, 256, (h, w, 3), dtype=np.uint8)


class _Feeder(Node):
    """Publishes camera_info, poses and images like a camera driver + robot state (test side)."""

    def __init__(self, ns: str):
        super().__init__("test_feeder", namespace=ns)
        from sensor_msgs.msg import CameraInfo

        from f3rm_ros.core.cameras import CameraIntrinsics

        self.K = CameraIntrinsics(fx=30.0, fy=30.0, cx=16.0, cy=12.0, width=32, height=24)
        self.img_pub = self.create_publisher(Image, "camera/image_raw", 50)
        self.info_pub = self.create_publisher(CameraInfo, "camera/camera_info", 50)
        self.pose_pub = self.create_publisher(PoseStamped, "camera/pose", 50)

    def matched(self) -> bool:
        return all(p.get_subscription_count() > 0 for p in (self.img_pub, self.info_pub, self.pose_pub))

    def subscriber_gids(self) -> set:
        """Endpoint ids of every subscription on the three camera topics (a killed node's stay listed
        until DDS notices it is gone, so a restart is seen as new ids, not as a non-zero count)."""
        return {bytes(e.endpoint_gid) for p in (self.img_pub, self.info_pub, self.pose_pub)
                for e in self.get_subscriptions_info_by_topic(p.topic_name)}

    def matched_new(self, old_gids: set) -> bool:
        """Every camera topic has a subscription that was not among ``old_gids``."""
        return all(any(bytes(e.endpoint_gid) not in old_gids
                       for e in self.get_subscriptions_info_by_topic(p.topic_name))
                   for p in (self.img_pub, self.info_pub, self.pose_pub))

    def stamp(self, t: float):
        from builtin_interfaces.msg import Time

        return Time(sec=int(t), nanosec=int(round((t - int(t)) * 1e9)))

    def pose(self, i: int) -> np.ndarray:
        return make_transform(_rot_z(7.0 * i), [0.1 * i, 0.02 * i, 0.5])

    def send(self, i: int, t: float, *, info: bool = True, pose: np.ndarray | None = None,
             pose_t: float | None = None, encoding: str | None = None, image: bool = True) -> None:
        from f3rm_ros.ros.conversions import intrinsics_to_camera_info, matrix_to_pose_msg, rgb_to_image

        st = self.stamp(t)
        if pose is not None or pose_t is not None or info:
            T = self.pose(i) if pose is None else pose
            self.pose_pub.publish(matrix_to_pose_msg(T, "world", self.stamp(t if pose_t is None else pose_t)))
        if info:
            self.info_pub.publish(intrinsics_to_camera_info(self.K, stamp=st))
        if image:
            msg = rgb_to_image(_frame_image(i), stamp=st)
            if encoding:
                msg.encoding = encoding
            self.img_pub.publish(msg)


def test_bad_inputs_answered_with_reasons(tmp_path):
    """Unsupported encoding, image without camera_info, pose too far from the stamp, NaN pose, pose in another
    frame: each counted with its reason; the node keeps serving and still keeps a good frame afterwards."""
    from f3rm_ros.ros.capture_node import CaptureNode
    from f3rm_ros.srv import CaptureControl

    ns = "/t_capture_bad"
    with rclpy.init():
        cap = CaptureNode(namespace=ns, parameter_overrides=[
            Parameter("data_root", value=str(tmp_path / "data")), Parameter("start_capturing", value=True),
            Parameter("pose_wait_s", value=0.3), Parameter("blur_threshold", value=1.0)])
        feed = _Feeder(ns)
        status = _status_listener(feed, f"{ns}/capture_node/status")
        sp = Spinner(cap, feed)
        try:
            wait_for(feed.matched, 20, "the capture node's subscriptions")

            def reasons():
                return _counts(status[-1]) if status else {}

            t = 1000.0
            feed.send(0, t, info=False)  # 1. image before any camera_info (pose present)
            wait_for(lambda: "no_camera_info" in reasons(), 10, "no_camera_info")
            feed.send(1, t + 1, image=False)  # camera_info now known
            time.sleep(0.2)
            feed.send(2, t + 2, encoding="32FC1")  # 2. unsupported encoding
            wait_for(lambda: "bad_encoding" in reasons(), 10, "bad_encoding")
            print("last reason:", status[-1].last_reject_reason)
            assert "32FC1" in status[-1].last_reject_reason
            nan = np.eye(4)
            nan[0, 3] = float("nan")
            feed.send(3, t + 3, pose=nan, image=False)  # 3. NaN pose
            wait_for(lambda: "bad_pose" in reasons(), 10, "bad_pose")
            print("last reason:", status[-1].last_reject_reason)
            feed.send(4, t + 4, pose_t=t + 3.5)  # 4. nearest pose 0.5 s from the image stamp
            wait_for(lambda: "pose_too_far" in reasons(), 10, "pose_too_far")
            print("last reason:", status[-1].last_reject_reason)
            assert "500.0 ms" in status[-1].last_reject_reason
            from f3rm_ros.ros.conversions import matrix_to_pose_msg, rgb_to_image

            other = matrix_to_pose_msg(feed.pose(5), "map", feed.stamp(t + 5))  # 5. pose in another frame
            feed.pose_pub.publish(other)
            wait_for(lambda: "wrong_frame" in reasons(), 10, "wrong_frame")
            feed.send(6, t + 6, info=False, pose=None, image=True)  # image with no pose near it
            bad = Image(height=24, width=32, encoding="rgb8", step=96, data=b"\x00" * 10)  # 6. truncated data
            bad.header.stamp = feed.stamp(t + 7)
            feed.img_pub.publish(bad)
            wait_for(lambda: "bad_image" in reasons(), 10, "bad_image")
            feed.send(8, t + 8)  # 7. a good frame is still kept
            wait_for(lambda: status[-1].frames_kept == 1, 10, "the good frame to be kept")
            for _ in range(2):  # 8. the same image twice with one stamp (a driver repeating itself), both
                feed.img_pub.publish(rgb_to_image(_frame_image(9), stamp=feed.stamp(t + 9)))  # waiting for the pose
            time.sleep(0.1)
            feed.send(9, t + 9, image=False)
            wait_for(lambda: "too_close" in reasons(), 10, "the repeated frame to be too close")
            # the kept copy is written by the writer thread: frames_kept counts it once it is on disk
            wait_for(lambda: status[-1].frames_kept == 2, 10, "the first copy to be written")
            assert "internal_error" not in reasons()
            st = status[-1]
            print(f"status: kept={st.frames_kept} rejected={st.frames_rejected} {_counts(st)}")
            for reason in ("no_camera_info", "bad_encoding", "bad_pose", "pose_too_far", "wrong_frame", "bad_image"):
                assert _counts(st).get(reason, 0) >= 1, reason
            r = call_service(feed, CaptureControl, f"{ns}/capture_node/control", CaptureControl.Request(command=9))
            print(f"unknown command: {r.success} {r.message!r}")
            assert not r.success and "unknown command" in r.message
            r = call_service(feed, CaptureControl, f"{ns}/capture_node/control",
                             CaptureControl.Request(command=CaptureControl.Request.SAVE))
            assert r.success and r.frame_count == 2
        finally:
            sp.stop()
            cap.destroy_node()
            feed.destroy_node()


def test_dataset_name_outside_root_refused(tmp_path):
    """A dataset folder that resolves outside data_root (.., absolute, symlink) is refused with a reason."""
    from f3rm_ros.ros.capture_node import CaptureNode
    from f3rm_ros.srv import CaptureControl

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "link").symlink_to(tmp_path)
    with rclpy.init():
        cap = CaptureNode(namespace="/t_capture_root", parameter_overrides=[
            Parameter("data_root", value=str(tmp_path / "data")), Parameter("dataset_name", value="../escape")])
        print("writer error:", cap.session.writer_error)
        assert cap.session.writer is None and "outside" in cap.session.writer_error
        client = Node("t_client", namespace="/t_capture_root")
        sp = Spinner(cap, client)
        try:
            r = call_service(client, CaptureControl, "/t_capture_root/capture_node/control",
                             CaptureControl.Request(command=CaptureControl.Request.START))
            print(f"START: {r.success} {r.message!r}")
            assert not r.success and "outside" in r.message
            for bad in ("/etc", "link/x"):
                res = cap.set_parameters([Parameter("dataset_name", value=bad)])[0]
                print(f"set dataset_name={bad!r}: {res.successful} {res.reason!r}")
                assert not res.successful and "outside" in res.reason
            assert cap.set_parameters([Parameter("dataset_name", value="ok_scan")])[0].successful
            r = call_service(client, CaptureControl, "/t_capture_root/capture_node/control",
                             CaptureControl.Request(command=CaptureControl.Request.START))
            assert r.success and r.dataset_path == str((tmp_path / "data" / "ok_scan").resolve())
        finally:
            sp.stop()
            cap.destroy_node()
            client.destroy_node()
    assert not (tmp_path / "escape").exists()


def test_tf_pose_source_optional(tmp_path):
    from f3rm_ros.ros.capture_node import HAVE_TF2, CaptureNode

    if HAVE_TF2:
        pytest.skip("tf2_ros is installed: the no-tf2 refusal does not apply (TF lookups are exercised by the "
                    "robot bringup, not here)")
    with rclpy.init():
        with pytest.raises(RuntimeError) as e:
            CaptureNode(namespace="/t_capture_tf", parameter_overrides=[
                Parameter("data_root", value=str(tmp_path)), Parameter("pose_source", value="tf")])
        print("pose_source tf without tf2_ros:", e.value)
        assert "tf2_ros" in str(e.value) and "pose_source: topic" in str(e.value)
    print("SKIP-NOTE: the TF lookup path itself is not run here because tf2_ros is not installed "
          "(PyPI ROS wheels); only its absence is handled")


@node_logs_on_failure("run1.log", "run2.log")
def test_sigkill_mid_capture_and_restart(tmp_path):
    """SIGKILL the capture process while frames stream in: every frame in transforms.json is intact and equal to
    what was sent; a restart continues the same dataset without overwriting a file."""
    from f3rm_ros.core.dataset import load_dataset

    ns = "/t_capture_kill"
    data = tmp_path / "data"
    params = {"data_root": str(data), "dataset_name": "scan", "start_capturing": True, "min_translation_m": 0.0,
              "min_rotation_deg": 0.0, "blur_threshold": 0.0, "pose_wait_s": 0.5}
    sent_stamps: dict[float, int] = {}
    with rclpy.init():
        feed = _Feeder(ns)
        status = _status_listener(feed, f"{ns}/capture_node/status")
        sp = Spinner(feed)
        proc = None
        try:
            proc = start_node("capture_node", ns, params, tmp_path / "run1.log")
            wait_for(feed.matched, 30, "capture node 1 subscriptions")
            time.sleep(0.3)
            i = 0
            t_kill = None
            while True:
                t = 2000.0 + i
                feed.send(i, t)
                sent_stamps[t] = i
                i += 1
                time.sleep(0.04)
                if t_kill is None and status and status[-1].frames_kept >= 6:
                    t_kill = i + 3  # kill while more frames are in flight
                if t_kill is not None and i >= t_kill:
                    proc.send_signal(signal.SIGKILL)
                    break
                assert i < 400, "capture node kept too few frames"
            proc.wait(timeout=10)
            print(f"run 1: sent {i} frames, SIGKILL (rc={proc.returncode}) after status kept={status[-1].frames_kept}, "
                  f"rejected {_counts(status[-1])}")
            ds1 = load_dataset(data / "scan")
            n1 = len(ds1)
            files1 = {p.name: p.read_bytes() for p in (data / "scan" / "images").iterdir()}
            for k in range(n1):
                j = sent_stamps[ds1.stamps[k]]
                assert np.array_equal(ds1.get_image(k), _frame_image(j)), f"frame {k} image differs from sent {j}"
                assert np.allclose(ds1.c2w[k], feed.pose(j), atol=1e-9)
            print(f"after kill: {n1} frames intact in transforms.json, {len(files1)} image files")
            assert n1 >= 6 and len(ds1.skipped) == 0

            status.clear()
            old_gids = feed.subscriber_gids()
            proc = start_node("capture_node", ns, params, tmp_path / "run2.log")
            wait_for(lambda: status and status[-1].frames_kept == n1, 30, "restarted node to report the old frames")
            wait_for(lambda: feed.matched_new(old_gids), 30, "capture node 2 subscriptions")
            time.sleep(0.3)
            # Send until 4 new frames are on disk: camera topics are best effort, so a frame may be lost before the
            # node sees it (the first ones while discovery completes); what is kept is checked exactly below.
            k = 0
            t_end = time.monotonic() + 30
            while not (status and status[-1].frames_kept >= n1 + 4):
                assert time.monotonic() < t_end and k < 200, f"no 4 new frames after restart: {_counts(status[-1])}"
                t = 3000.0 + k
                feed.send(100 + k, t)
                sent_stamps[t] = 100 + k
                k += 1
                time.sleep(0.1)
            print(f"run 2: sent {k} frames for 4 new ones on disk; rejected {_counts(status[-1])}")
            time.sleep(0.3)
            assert stop_process(proc) == 0
        finally:
            if proc is not None and proc.poll() is None:  # a failed check must not leave a node running
                stop_process(proc)
            sp.stop()
            feed.destroy_node()
    ds2 = load_dataset(data / "scan")
    print(f"after restart: {len(ds2)} frames (was {n1}); run 2 log tail: "
          f"{(tmp_path / 'run2.log').read_text().splitlines()[:2]}")
    assert len(ds2) >= n1 + 4
    for name, blob in files1.items():  # no file of run 1 was overwritten
        assert (data / "scan" / "images" / name).read_bytes() == blob
    for k in range(len(ds2)):
        j = sent_stamps[ds2.stamps[k]]
        assert np.array_equal(ds2.get_image(k), _frame_image(j))
    names = [Path(p).name for p in ds2.image_paths]
    assert len(set(names)) == len(names)


def test_compressed_images_transform_poses_body_convention(tmp_path):
    """use_compressed (PNG in sensor_msgs/CompressedImage), pose_type transform_stamped, pose_frame_convention body:
    the stored pose is T_world_body @ T_BODY_OPTICAL and the image is bit-exact; a corrupt JPEG is rejected."""
    import io

    from geometry_msgs.msg import TransformStamped
    from PIL import Image as PILImage
    from sensor_msgs.msg import CameraInfo, CompressedImage

    from f3rm_ros.core.cameras import CameraIntrinsics
    from f3rm_ros.core.dataset import load_dataset
    from f3rm_ros.core.geometry import matrix_to_pose
    from f3rm_ros.core.capture import T_BODY_OPTICAL
    from f3rm_ros.ros.capture_node import CaptureNode
    from f3rm_ros.ros.conversions import intrinsics_to_camera_info

    # body x (forward) is the optical z axis, body -y (right) the optical x axis, body -z (down) the optical y axis
    assert np.allclose(T_BODY_OPTICAL[:3, :3] @ [0, 0, 1], [1, 0, 0])
    assert np.allclose(T_BODY_OPTICAL[:3, :3] @ [1, 0, 0], [0, -1, 0])
    ns = "/t_capture_cmp"
    with rclpy.init():
        cap = CaptureNode(namespace=ns, parameter_overrides=[
            Parameter("data_root", value=str(tmp_path / "data")), Parameter("start_capturing", value=True),
            Parameter("use_compressed", value=True), Parameter("pose_type", value="transform_stamped"),
            Parameter("pose_frame_convention", value="body"), Parameter("pose_wait_s", value=0.3)])
        feed = Node("t_feed", namespace=ns)
        img_pub = feed.create_publisher(CompressedImage, "camera/image_raw/compressed", 10)
        info_pub = feed.create_publisher(CameraInfo, "camera/camera_info", 10)
        tf_pub = feed.create_publisher(TransformStamped, "camera/pose", 10)
        status = _status_listener(feed, f"{ns}/capture_node/status")
        sp = Spinner(cap, feed)
        try:
            wait_for(lambda: all(p.get_subscription_count() for p in (img_pub, info_pub, tf_pub)), 20, "subscriptions")
            K = CameraIntrinsics(fx=30.0, fy=30.0, cx=16.0, cy=12.0, width=32, height=24)
            T_body = make_transform(_rot_z(30.0), [0.3, -0.2, 0.4])
            sent = {}
            for i, (t, fmt) in enumerate([(10.0, "png"), (11.0, "jpeg-corrupt")]):
                from builtin_interfaces.msg import Time

                st = Time(sec=int(t))
                tf = TransformStamped()
                tf.header.stamp, tf.header.frame_id, tf.child_frame_id = st, "world", "camera_link"
                pos, q = matrix_to_pose(T_body @ make_transform(np.eye(3), [0.2 * i, 0, 0]))
                tf.transform.translation.x, tf.transform.translation.y, tf.transform.translation.z = map(float, pos)
                tf.transform.rotation.x, tf.transform.rotation.y, tf.transform.rotation.z, tf.transform.rotation.w = \
                    map(float, q)
                tf_pub.publish(tf)
                info_pub.publish(intrinsics_to_camera_info(K, stamp=st))
                img = _frame_image(i)
                buf = io.BytesIO()
                PILImage.fromarray(img).save(buf, format="PNG")
                data = buf.getvalue() if fmt == "png" else b"\xff\xd8\xff\xe0 not really a jpeg"
                sent[t] = img
                msg = CompressedImage(format="png" if fmt == "png" else "jpeg", data=data)
                msg.header.stamp = st
                img_pub.publish(msg)
                time.sleep(0.2)
            wait_for(lambda: status and status[-1].frames_kept == 1 and "bad_image" in _counts(status[-1]), 10,
                     "one kept frame and one bad_image")
            print("status:", _counts(status[-1]), status[-1].last_reject_reason)
        finally:
            sp.stop()
            cap.destroy_node()
            feed.destroy_node()
    ds = load_dataset(tmp_path / "data" / "capture")
    err = float(np.abs(ds.c2w[0] - T_body @ T_BODY_OPTICAL).max())
    print(f"stored pose error vs T_world_body @ T_BODY_OPTICAL: {err:.2e}")
    assert len(ds) == 1 and err < 1e-9 and np.array_equal(ds.get_image(0), sent[10.0])


def test_keyframe_rules_blur_and_max_frames_over_dds(tmp_path):
    """Same pose twice -> too_close; a flat image -> blurry; max_frames reached -> capture stops and START is
    refused with the reason."""
    from f3rm_ros.ros.capture_node import CaptureNode
    from f3rm_ros.ros.conversions import intrinsics_to_camera_info, matrix_to_pose_msg, rgb_to_image
    from f3rm_ros.srv import CaptureControl

    ns = "/t_capture_rules"
    with rclpy.init():
        cap = CaptureNode(namespace=ns, parameter_overrides=[
            Parameter("data_root", value=str(tmp_path / "data")), Parameter("start_capturing", value=True),
            Parameter("max_frames", value=2), Parameter("blur_threshold", value=50.0),
            Parameter("pose_wait_s", value=0.3)])
        feed = _Feeder(ns)
        status = _status_listener(feed, f"{ns}/capture_node/status")
        sp = Spinner(cap, feed)

        def send(t: float, T: np.ndarray, img: np.ndarray) -> None:
            st = feed.stamp(t)
            feed.pose_pub.publish(matrix_to_pose_msg(T, "world", st))
            feed.info_pub.publish(intrinsics_to_camera_info(feed.K, stamp=st))
            feed.img_pub.publish(rgb_to_image(img, stamp=st))

        def decided(n: int):
            return lambda: status and status[-1].frames_kept + status[-1].frames_rejected >= n

        try:
            wait_for(feed.matched, 20, "subscriptions")
            send(1.0, feed.pose(0), _frame_image(0))  # kept
            wait_for(decided(1), 10, "frame 1")
            send(2.0, feed.pose(0), _frame_image(1))  # same pose: too close
            wait_for(decided(2), 10, "frame 2")
            send(3.0, feed.pose(1), np.full((24, 32, 3), 120, np.uint8))  # flat: blurry
            wait_for(decided(3), 10, "frame 3")
            send(4.0, feed.pose(2), _frame_image(2))  # kept: 2 = max_frames, capture stops
            wait_for(lambda: status and status[-1].frames_kept == 2 and not status[-1].capturing, 10, "stop at max")
            st = status[-1]
            print(f"status: kept={st.frames_kept} capturing={st.capturing} {_counts(st)}")
            assert _counts(st) == {"too_close": 1, "blurry": 1}
            r = call_service(feed, CaptureControl, f"{ns}/capture_node/control",
                             CaptureControl.Request(command=CaptureControl.Request.START))
            print(f"START at max_frames: {r.success} {r.message!r}")
            assert not r.success and "max_frames" in r.message and r.frame_count == 2
            r = call_service(feed, CaptureControl, f"{ns}/capture_node/control",
                             CaptureControl.Request(command=CaptureControl.Request.CLEAR))
            assert r.success and r.frame_count == 0
            r = call_service(feed, CaptureControl, f"{ns}/capture_node/control",
                             CaptureControl.Request(command=CaptureControl.Request.START))
            assert r.success
            send(5.0, feed.pose(0), _frame_image(0))  # the old pose is no longer "kept": accepted again
            wait_for(lambda: status and status[-1].frames_kept == 1, 10, "a frame after CLEAR")
        finally:
            sp.stop()
            cap.destroy_node()
            feed.destroy_node()


def test_depth_images_over_dds(tmp_path):
    """depth_topic: registered depth (16UC1 mm and 32FC1 m) stored with the frame; a depth image of another
    size, a malformed one and a missing one are rejected with their reasons; the node keeps serving."""
    from f3rm_ros.core.dataset import load_dataset
    from f3rm_ros.ros.capture_node import CaptureNode
    from f3rm_ros.ros.conversions import depth_to_image

    ns = "/t_capture_depth"
    with rclpy.init():
        cap = CaptureNode(namespace=ns, parameter_overrides=[
            Parameter("data_root", value=str(tmp_path / "data")), Parameter("start_capturing", value=True),
            Parameter("pose_wait_s", value=0.3), Parameter("blur_threshold", value=1.0),
            Parameter("depth_topic", value="camera/depth")])
        feed = _Feeder(ns)
        depth_pub = feed.create_publisher(Image, "camera/depth", 50)
        status = _status_listener(feed, f"{ns}/capture_node/status")
        sp = Spinner(cap, feed)
        rng = np.random.default_rng(5)
        z0 = rng.uniform(0.3, 2.0, (24, 32)).astype(np.float32)
        z0[0, :5] = 0.0  # no measurement
        try:
            wait_for(lambda: feed.matched() and depth_pub.get_subscription_count() > 0, 20, "the subscriptions")

            def reasons():
                return _counts(status[-1]) if status else {}

            t = 2000.0
            depth_pub.publish(depth_to_image(z0, stamp=feed.stamp(t)))  # 1. good, 16UC1 millimetres
            feed.send(0, t)
            wait_for(lambda: status and status[-1].frames_kept == 1, 10, "the first frame")
            feed.send(1, t + 1)  # 2. no depth image with this stamp
            wait_for(lambda: "no_depth" in reasons(), 10, "no_depth")
            depth_pub.publish(depth_to_image(np.ones((12, 16)), stamp=feed.stamp(t + 2)))  # 3. another size
            feed.send(2, t + 2)
            wait_for(lambda: "bad_depth" in reasons(), 10, "bad_depth (size)")
            print("last reason:", status[-1].last_reject_reason)
            assert "registered" in status[-1].last_reject_reason
            bad = Image(height=24, width=32, encoding="16UC1", step=64, data=b"\x00" * 7)  # 4. truncated
            bad.header.stamp = feed.stamp(t + 3)
            depth_pub.publish(bad)
            wait_for(lambda: reasons().get("bad_depth", 0) >= 2, 10, "bad_depth (truncated)")
            f32 = Image(height=24, width=32, encoding="32FC1", step=128)  # 5. good, 32FC1 metres with a NaN
            z1 = z0.copy()
            z1[1, 1] = np.nan
            f32.data = z1.astype("<f4").tobytes()
            f32.header.stamp = feed.stamp(t + 4)
            depth_pub.publish(f32)
            feed.send(4, t + 4)
            wait_for(lambda: status[-1].frames_kept == 2, 10, "the 32FC1 frame")
            assert "internal_error" not in reasons()
            print(f"status: kept={status[-1].frames_kept} {_counts(status[-1])}")
        finally:
            sp.stop()
            cap.destroy_node()
            feed.destroy_node()
    ds = load_dataset(tmp_path / "data" / "capture", eval_every=0)
    assert len(ds) == 2 and ds.has_depth
    d0, d1 = ds.get_depth(0), ds.get_depth(1)
    print(f"depth on disk: max error {np.abs(d0 - z0).max() * 1000:.2f} mm / "
          f"{np.nanmax(np.abs(d1 - z1)) * 1000:.2f} mm")
    assert np.abs(d0 - z0).max() <= 0.0005 + 1e-6 and (d0[0, :5] == 0).all()
    assert d1[1, 1] == 0.0 and np.nanmax(np.abs(d1 - z1)) <= 0.0005 + 1e-6


def test_side_topics_subscribed_independently(tmp_path):
    """labels_topic (with the label table) and depth_topic each add exactly their own subscriptions."""
    from f3rm_ros.ros.capture_node import CaptureNode

    with rclpy.init():
        for labels, depth in (("camera/labels", ""), ("", "camera/depth"), ("camera/labels", "camera/depth"), ("", "")):
            cap = CaptureNode(namespace="/t_capture_side", parameter_overrides=[
                Parameter("data_root", value=str(tmp_path / "data")), Parameter("labels_topic", value=labels),
                Parameter("depth_topic", value=depth)])
            try:
                topics = {sub.topic_name.rsplit("/t_capture_side/", 1)[-1] for sub in cap.subscriptions}
            finally:
                cap.destroy_node()
            print(f"labels {labels!r}, depth {depth!r}: {sorted(topics)}")
            assert ("camera/labels" in topics) == bool(labels) and ("camera/label_table" in topics) == bool(labels)
            assert ("camera/depth" in topics) == bool(depth)
