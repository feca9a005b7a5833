"""``capture_node``: keyframes from a camera stream + camera poses, written as a dataset as they arrive.

Subscribes (relative to the node's namespace, default ``/f3rm``; ``config/capture_node.yaml`` has every
parameter): ``camera/image_raw`` (``sensor_msgs/Image`` rgb8, bgr8, rgba8, bgra8, mono8; sensor-data QoS; or
``<image_topic>/compressed``, jpeg/png, with ``use_compressed``, which also reads labels from
``<labels_topic>/compressed`` (16-bit PNG) and depth from ``<depth_topic>/compressedDepth``, as
``image_transport`` and the robot host's ``camera_relay_node`` publish them), ``camera/camera_info``
(plumb_bob or no distortion; the newest is used, its size must match the image) and the camera pose: ``camera/pose``
(``geometry_msgs/PoseStamped``, or ``TransformStamped`` with ``pose_type: transform_stamped``) holding
**the pose of the camera in the world frame**, ``T_world_camera`` in metres, ``header.frame_id`` =
``world_frame`` (empty counts as it), stamped when the pose was valid; axes of a REP 103
``*_optical_frame`` (= OpenCV: x right, y down, z forward) with ``pose_frame_convention: optical``, or
x forward, y left, z up with ``body`` (converted). Or TF (``pose_source: tf``, needs ``tf2_ros``):
``world_frame`` -> ``camera_frame`` (the optical frame) at the image stamp. Optional, with the image's
stamp: 16-bit label images (``labels_topic``, mono16) with their ``f3rm_labels`` table
(``label_table_topic``, JSON, transient-local), and z-depth registered to the colour image (``depth_topic``,
``16UC1`` mm or ``32FC1`` m, REP 118), stored as ``depth_path`` for depth supervision.

The decisions are :class:`f3rm_ros.core.capture.CaptureSession`'s: each image is matched to the pose at its
stamp (interpolated when the poses around it are close) within ``pose_tolerance_s``, waiting up to
``pose_wait_s``; keyframes are sharp (``blur_threshold``) and ``min_translation_m`` or ``min_rotation_deg``
from every kept frame, at most ``max_frames``. They go to a ``transforms.json`` dataset in
``<data_root>/<dataset_name>`` frame by frame, atomically, through a writer thread (the executor never waits
for the disk: ``max_pending_writes``, ``writer_busy``; ``write_failed`` is an ERROR on ``/diagnostics``); a
restart continues the dataset. Poses on disk: camera-to-world, metres, ``world_frame``, OpenGL convention.

Service ``~/control`` (``f3rm_ros/srv/CaptureControl``): START; STOP (then waits up to ``drain_timeout_s``
until every kept frame is on disk); CLEAR (drops queued frames, deletes the dataset's frames; refused while
capturing); SAVE (waits for the frames kept so far, then stores the capture summary); APPEND (the scene changed:
keep frames of it into the same dataset, each with its ``scene_version``, for a refresh of the field; refused with
the reason for a dataset that does not exist or has no frames, or one of another camera or world frame).
Shutdown writes what is queued (at most ``drain_timeout_s``). Publishes ``~/status`` (``f3rm_ros/msg/CaptureStatus``;
``frames_kept`` = frames written) on every decision and at ``status_rate_hz``, and ``/diagnostics``. Every
bad input is a rejection with a reason (``REASONS``), logged (throttled); none stops the node.

Input QoS (``input_qos``): ``sensor_data`` (best effort, volatile: any camera driver) or ``relay`` (reliable,
transient-local, a deep queue: the topics of a ``camera_relay_node`` on another host, whose history delivers
the frames sent while the link was down or this node was restarting).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geometry_msgs.msg import PoseStamped, TransformStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String

from f3rm_ros.core.capture import REASONS, CaptureConfig, CaptureSession
from f3rm_ros.core.config import param
from f3rm_ros.msg import CaptureStatus
from f3rm_ros.ros.common import (ERROR, OK, WARN, DiagnosticsPublisher, PathRefused, Refused, resolve_under_root,
                                 run_node)
from f3rm_ros.ros.camera_relay_node import RELAY_READER_DEPTH, relay_qos
from f3rm_ros.ros.conversions import (ConversionError, camera_info_to_intrinsics, compressed_to_depth,
                                      compressed_to_labels, compressed_to_rgb, image_to_depth, image_to_labels,
                                      image_to_rgb, parse_label_table_json, pose_msg_to_matrix,
                                      transform_msg_to_matrix)
from f3rm_ros.ros.params import ParamBinding
from f3rm_ros.ros.tf_poses import HAVE_TF2, TfPoses
from f3rm_ros.srv import CaptureControl

__all__ = ["CaptureNodeSettings", "CaptureNode", "REASONS", "HAVE_TF2", "main"]


@dataclass
class CaptureNodeSettings(CaptureConfig):
    """Parameters of capture_node: the session's (:class:`CaptureConfig`) plus topics and rates, fixed at start."""

    start_capturing: bool = param(False, "keep frames from the start (else wait for START on ~/control)",
                                  read_only=True)
    image_topic: str = param("camera/image_raw", "colour image topic (sensor_msgs/Image)", read_only=True)
    use_compressed: bool = param(False, "subscribe <image_topic>/compressed (sensor_msgs/CompressedImage, jpeg/png) "
                                        "instead of the raw image, and <labels_topic>/compressed (16-bit PNG) and "
                                        "<depth_topic>/compressedDepth (16UC1) for labels and depth", read_only=True)
    input_qos: str = param("sensor_data", "QoS of the camera inputs: sensor_data (best effort; any driver) or relay "
                                          "(reliable, transient-local: a camera_relay_node's topics, whose history "
                                          "refills what a link outage or a restart missed)",
                           choices=("sensor_data", "relay"), read_only=True)
    camera_info_topic: str = param("camera/camera_info", "sensor_msgs/CameraInfo of the image", read_only=True)
    pose_source: str = param("topic", "camera pose from a topic (PoseStamped/TransformStamped) or tf (needs tf2_ros)",
                             choices=("topic", "tf"), read_only=True)
    pose_topic: str = param("camera/pose", "camera pose topic: T_world_camera in metres (pose_source topic)",
                            read_only=True)
    pose_type: str = param("pose_stamped", "message type on pose_topic", choices=("pose_stamped", "transform_stamped"),
                           read_only=True)
    camera_frame: str = param("camera_color_optical_frame", "TF frame of the camera (pose_source tf)", read_only=True)
    labels_topic: str = param("", "16-bit label images (mono16) with the image's stamp, stored as label_path "
                                  "(synthetic world); '' = none", read_only=True)
    label_table_topic: str = param("camera/label_table", "f3rm_labels table as JSON (std_msgs/String, "
                                                         "transient-local), used with labels_topic", read_only=True)
    depth_topic: str = param("", "z-depth images registered to the colour image (16UC1 mm or 32FC1 m) with the "
                                 "image's stamp, stored as depth_path; '' = none", read_only=True)
    status_rate_hz: float = param(1.0, "rate of ~/status and /diagnostics when nothing changes", range=(0.01, 100.0))


def _stamp_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class CaptureNode(Node):
    """See the module docstring: parameters, topics and the control service around a :class:`CaptureSession`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("capture_node", namespace=kwargs.pop("namespace", "/f3rm"), **kwargs)
        self.params = ParamBinding(self, CaptureNodeSettings, check=self._check_settings,
                                   on_change=self._settings_changed)
        s = self.settings = self.params.config
        if s.pose_source == "tf" and not HAVE_TF2:
            raise RuntimeError("pose_source 'tf' needs the tf2_ros package, which is not installed here; install "
                               "ROS 2 tf2_ros or publish the camera pose on a topic (pose_source: topic)")
        tf = TfPoses(self, s.world_frame, s.camera_frame, s.pose_buffer_s) if s.pose_source == "tf" else None
        self.status_pub = self.create_publisher(CaptureStatus, "~/status", 10)
        def topic(name: str) -> str:
            return self.resolve_topic_name(name) if name else ""

        self.session = CaptureSession(
            s, dataset_dir=self._dataset_dir, pose_lookup=tf.lookup if tf else None,
            camera_info_source=topic(s.camera_info_topic), labels_source=topic(s.labels_topic),
            depth_source=topic(s.depth_topic), log=self._log, on_change=self.publish_status)
        self.session.open_dataset(s.dataset_name)

        data = MutuallyExclusiveCallbackGroup()  # all frame processing is serialised
        ctrl = ReentrantCallbackGroup()
        best_effort = QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        # camera images: sensor-data QoS (best effort, volatile) with a deeper history than its 5, since a
        # recorder wants every frame, not the latest: an executor stall of 2.2 s at 4 Hz (seen in the sim test on
        # this 2-core machine) overflowed 5 and lost 3-4 frames
        sensor = QoSProfile(depth=20, reliability=qos_profile_sensor_data.reliability,
                            durability=qos_profile_sensor_data.durability, history=qos_profile_sensor_data.history)

        if s.input_qos == "relay":  # every camera input reliable with history (the relay's QoS, a deeper queue)
            sensor = best_effort = relay_qos(RELAY_READER_DEPTH)

        def sub(msg_type: Any, name: str, fn: Any, qos: Any) -> None:
            self.create_subscription(msg_type, name, self._safe(fn), qos, callback_group=data)

        se = self.session
        sub(CameraInfo, s.camera_info_topic,
            self._feed("_on_camera_info", camera_info_to_intrinsics, "bad_camera_info", se.add_camera_info, False),
            best_effort)
        if s.pose_source == "topic":
            sub(PoseStamped if s.pose_type == "pose_stamped" else TransformStamped, s.pose_topic, self._on_pose,
                best_effort)
        zipped = s.use_compressed  # labels and depth as CompressedImage too (16-bit PNG / compressedDepth)
        if s.labels_topic:
            sub(CompressedImage if zipped else Image, s.labels_topic.rstrip("/") + "/compressed" if zipped
                else s.labels_topic,
                self._feed("_on_labels", compressed_to_labels if zipped else image_to_labels, "bad_labels",
                           se.add_labels), sensor)
            sub(String, s.label_table_topic,
                self._feed("_on_label_table", lambda m: parse_label_table_json(m.data), "bad_labels",
                           se.set_label_table, False), latched)
        if s.depth_topic:
            sub(CompressedImage if zipped else Image, s.depth_topic.rstrip("/") + "/compressedDepth" if zipped
                else s.depth_topic,
                self._feed("_on_depth", compressed_to_depth if zipped else image_to_depth, "bad_depth", se.add_depth),
                sensor)
        # the image subscription last: the executor serves ready subscriptions in creation order, so camera_info
        # and the pose of the same instant are taken first
        image_topic = s.image_topic.rstrip("/") + "/compressed" if s.use_compressed else s.image_topic
        sub(CompressedImage if s.use_compressed else Image, image_topic, self._on_image, sensor)
        self.create_timer(0.1, self._safe(self.session.process), callback_group=data)

        self.create_service(CaptureControl, "~/control", self._on_control, callback_group=ctrl)
        self.create_timer(1.0 / s.status_rate_hz, self.publish_status, callback_group=ctrl)
        self.diagnostics = DiagnosticsPublisher(self, self._diagnostic_status, 1.0 / s.status_rate_hz,
                                                callback_group=ctrl)
        if s.start_capturing:
            ok, msg = self.session.start()
            if not ok:
                self.get_logger().error(f"start_capturing: {msg}")
        self.get_logger().info(
            f"capture_node ready: dataset {self.session.dataset_path} ({self.session.frames_written} frames), "
            f"image {topic(s.image_topic)}, pose from {s.pose_source if tf else topic(s.pose_topic)}, "
            f"capturing={self.session.capturing}")

    def _log(self, level: str, text: str) -> None:
        getattr(self.get_logger(), level)(text)

    def _dataset_dir(self, name: str) -> Path:
        """The dataset folder of ``name``: inside ``data_root``, not ``data_root`` itself (else PathRefused)."""
        path = resolve_under_root(name, self.settings.data_root, what="dataset folder")
        if path == resolve_under_root(".", self.settings.data_root):
            raise PathRefused("dataset_name must name a folder inside data_root, not data_root itself")
        return path

    # ------------------------------------------------------------------------------ parameters
    def _check_settings(self, new: CaptureNodeSettings, old: CaptureNodeSettings) -> None:
        """Refuse a new dataset_name while capturing or writing, or outside data_root (the binding checks the rest)."""
        if new.dataset_name != old.dataset_name:
            why = self.session.dataset_change_refusal()
            if why:
                raise Refused(why)
            resolve_under_root(new.dataset_name, new.data_root, what="dataset folder")

    def _settings_changed(self, new: CaptureNodeSettings, old: CaptureNodeSettings) -> None:
        self.settings = new
        self.session.configure(new)

    def _safe(self, fn: Any) -> Any:
        """``fn`` as a callback that never raises: an unexpected error is counted as ``internal_error``."""

        def callback(*args: Any) -> None:
            try:
                fn(*args)
            except Exception as e:
                self.session.reject("internal_error", f"{fn.__name__}: {type(e).__name__}: {e}")

        return callback

    # ---------------------------------------------------------------------- messages -> session
    def _feed(self, name: str, convert: Any, bad_reason: str, add: Any, stamped: bool = True) -> Any:
        """A callback that converts a message for the session (a ConversionError is rejected as ``bad_reason``)."""

        def callback(msg: Any) -> None:
            try:
                value = convert(msg)
            except ConversionError as e:
                self.session.reject(bad_reason, str(e))
                return
            add(_stamp_ns(msg.header.stamp), value) if stamped else add(value)

        callback.__name__ = name
        return callback

    def _on_pose(self, msg: PoseStamped | TransformStamped) -> None:
        if not self.session.pose_frame_ok(msg.header.frame_id):
            return
        try:
            T = pose_msg_to_matrix(msg) if isinstance(msg, PoseStamped) else transform_msg_to_matrix(msg)
        except ConversionError as e:
            self.session.reject("bad_pose", str(e))
            return
        self.session.add_pose(_stamp_ns(msg.header.stamp), T)

    def _on_image(self, msg: Image | CompressedImage) -> None:
        stamp, kind = _stamp_ns(msg.header.stamp), getattr(msg, "encoding", "") or msg.format
        if not self.session.image_received(stamp, f"{type(msg).__name__} {kind}"):
            return
        try:
            rgb = compressed_to_rgb(msg) if isinstance(msg, CompressedImage) else image_to_rgb(msg)
        except ConversionError as e:
            self.session.reject("bad_encoding" if "encoding" in str(e) else "bad_image", str(e))
            return
        self.session.add_image(stamp, rgb)

    # ----------------------------------------------------------------------------------- control
    def _on_control(self, req: CaptureControl.Request, res: CaptureControl.Response) -> CaptureControl.Response:
        C, session = CaptureControl.Request, self.session
        actions = {C.START: session.start, C.STOP: session.stop, C.CLEAR: session.clear, C.SAVE: session.save,
                   C.APPEND: session.append}
        try:
            if req.command in actions:
                res.success, res.message = actions[req.command]()
            else:
                res.success = False
                res.message = f"unknown command {req.command}; use START=0, STOP=1, CLEAR=2, SAVE=3 or APPEND=4"
        except Exception as e:  # never let a request take the node down
            res.success, res.message = False, f"{type(e).__name__}: {e}"
        res.frame_count = session.frames_written
        res.dataset_path = str(session.dataset_path or "")
        if res.success:
            self.get_logger().info(f"control command {req.command}: {res.message} ({res.frame_count} frames)")
        else:
            self.get_logger().warning(f"control command {req.command} refused: {res.message}")
        self.publish_status()
        return res

    def close(self) -> bool:
        """Stop capturing, write the queued frames (``drain_timeout_s``; run_node calls it after spinning ends)."""
        session = getattr(self, "session", None)
        return True if session is None else session.close()

    def destroy_node(self) -> None:
        self.close()
        super().destroy_node()

    # ------------------------------------------------------------------------------------ status
    def status_message(self) -> CaptureStatus:
        st = self.session.state()
        reasons = sorted(st.reject_counts)
        msg = CaptureStatus(capturing=st.capturing, frames_kept=st.frames_written,
                            frames_rejected=sum(st.reject_counts.values()), reject_reasons=reasons,
                            reject_counts=[int(st.reject_counts[k]) for k in reasons],
                            last_reject_reason=st.last_reject_reason, dataset_path=st.dataset_path,
                            frames_pending=st.frames_pending)
        if hasattr(msg, "scene_version"):  # interfaces built before issue 18 lack it
            msg.scene_version = int(st.scene_version)
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.settings.world_frame
        return msg

    def publish_status(self) -> None:
        try:
            self.status_pub.publish(self.status_message())
        except Exception:  # shutting down
            pass

    def _diagnostic_status(self) -> tuple[int, str, dict]:
        level, message, values = self.session.health()
        return {"ok": OK, "warn": WARN, "error": ERROR}[level], message, values


def main(args: list[str] | None = None) -> int:
    """``ros2 run f3rm_ros capture_node`` / ``scripts/nodes/capture_node``."""
    return run_node(CaptureNode, args)


if __name__ == "__main__":
    import sys

    sys.exit(main())
