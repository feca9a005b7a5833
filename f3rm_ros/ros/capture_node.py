"""``capture_node``: keyframes from a camera stream + camera poses, written as a dataset as they arrive.

Inputs (topics relative to the node's namespace, default ``/f3rm``):

* ``camera/image_raw`` (``sensor_msgs/Image``: rgb8, bgr8, rgba8, bgra8, mono8; sensor-data QoS),
  or ``camera/image_raw/compressed`` (``sensor_msgs/CompressedImage``, jpeg/png) with
  ``use_compressed: true``.
* ``camera/camera_info`` (``sensor_msgs/CameraInfo``; plumb_bob or no distortion). The newest one
  is used for each image; its size must match the image.
* The camera pose, one of

  - ``camera/pose`` as ``geometry_msgs/PoseStamped`` (``pose_type: pose_stamped``, default) or
    ``geometry_msgs/TransformStamped`` (``pose_type: transform_stamped``): **the pose of the camera
    in the world frame**, ``T_world_camera``, in metres: ``header.frame_id`` = the world frame
    (parameter ``world_frame``; empty is taken as the world frame), position = the camera's optical
    centre, orientation = the camera's axes. With ``pose_frame_convention: optical`` (default) the
    axes are those of a REP 103 ``*_optical_frame`` (= OpenCV: x right, y down, z forward into the
    scene); with ``body`` they are x forward, y left, z up (e.g. ``camera_link``) and are converted.
    The stamp must be the time the pose was valid (robot state at image exposure).
  - TF (``pose_source: tf``; needs ``tf2_ros``): the transform ``world_frame`` -> ``camera_frame``
    at the image stamp (``camera_frame`` must be the optical frame).

* ``camera/labels`` (optional, ``labels_topic``): 16-bit label images (``mono16``) with the same
  stamp as the image (the synthetic world's ground truth) and ``camera/label_table``
  (``std_msgs/String`` JSON, transient-local) with the ``f3rm_labels`` table.
* a depth image (optional, ``depth_topic``, e.g. ``camera/aligned_depth_to_color/image_raw`` of an RGB-D
  camera): z-depth **registered to the colour image** (same size and intrinsics), ``16UC1`` millimetres or
  ``32FC1`` metres (REP 118), with the image's stamp; stored per frame as ``depth_path`` (16-bit PNG,
  millimetres) for the trainer's depth supervision (``losses.depth_mult``, preset ``depth``).

Each image is matched to the pose with the nearest stamp (interpolated between the poses before and
after it when they are close) within ``pose_tolerance_s``; it waits up to ``pose_wait_s`` for a pose
after its stamp. Keyframes: the image must be sharp (variance of the Laplacian >= ``blur_threshold``)
and differ from every kept frame by ``min_translation_m`` or ``min_rotation_deg``; at most
``max_frames`` are kept (capture stops there).

Output: a ``transforms.json`` dataset in ``<data_root>/<dataset_name>`` written with
:class:`f3rm_ros.core.dataset.DatasetWriter` frame by frame (atomic: a crash or kill loses at most
the frames not yet written, never corrupts a saved one; a restart continues the same dataset). Poses
on disk are camera-to-world in metres in ``world_frame`` (OpenGL convention in the file, as
nerfstudio).

Disk writes never block the executor: the data callbacks only decode, validate and decide keyframes
(against every kept frame, written or still queued), then hand the frame to a writer thread
(:class:`f3rm_ros.core.capture.BackgroundWriter`, FIFO) that writes the image and rewrites
``transforms.json``. At most ``max_pending_writes`` kept frames wait for the disk; a frame kept while
the queue is full is rejected as ``writer_busy``. A failed write (disk full, permissions) is counted
as ``write_failed``, sets ``/diagnostics`` to ERROR until a write succeeds again, and never stops
the node.

Service ``~/control`` (``f3rm_ros/srv/CaptureControl``): START; STOP (stops keeping frames, then
waits up to ``drain_timeout_s`` until every kept frame is on disk; success false with the reason if
not); CLEAR (drops queued frames, waits for the one being written, then deletes the dataset's
frames; refused while capturing); SAVE (waits up to ``drain_timeout_s`` until every frame kept
before the request is written, then stores the capture summary). Node shutdown writes what is
queued (at most ``drain_timeout_s``). Publishes ``~/status`` (``f3rm_ros/msg/CaptureStatus``;
``frames_kept`` = frames written to the dataset) on every decision and at ``status_rate_hz``, and
``/diagnostics`` (also frames pending/written, write failures and times). Every bad input is counted
as a rejection with a reason (see ``REASONS``), logged (throttled per reason) and never stops the
node.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from geometry_msgs.msg import PoseStamped, TransformStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String

from f3rm_ros.core.config import param
from f3rm_ros.core.geometry import c2w_opengl_to_opencv
from f3rm_ros.msg import CaptureStatus
from f3rm_ros.core.capture import (T_BODY_OPTICAL, BackgroundWriter, KeyframeSelector, PoseBuffer, PoseLookup, WriteJob,
                                   laplacian_variance)
from f3rm_ros.ros.common import OK, WARN, ERROR, DiagnosticsPublisher, PathRefused, resolve_under_root, run_node
from f3rm_ros.ros.conversions import (ConversionError, camera_info_to_intrinsics, compressed_to_rgb, image_to_depth,
                                      image_to_labels, image_to_rgb, parse_label_table_json, pose_msg_to_matrix,
                                      transform_msg_to_matrix)
from f3rm_ros.ros.params import declare_config, read_config
from f3rm_ros.srv import CaptureControl

try:  # optional: TF as the pose source
    import tf2_ros  # type: ignore

    HAVE_TF2 = True
except ImportError:  # the PyPI ROS wheels have no tf2_ros
    tf2_ros = None
    HAVE_TF2 = False

__all__ = ["CaptureNodeSettings", "CaptureNode", "REASONS", "HAVE_TF2", "main"]

# Rejection reasons (keys of CaptureStatus.reject_reasons).
REASONS = {
    "bad_encoding": "image encoding not supported",
    "bad_image": "image message malformed or undecodable",
    "no_camera_info": "no camera_info within pose_wait_s of the image",
    "bad_camera_info": "camera_info malformed",
    "size_mismatch": "image size differs from camera_info",
    "bad_pose": "pose message has NaN/inf values or a zero quaternion",
    "wrong_frame": "pose is not given in the world frame",
    "no_pose": "no camera pose received for the image",
    "pose_too_far": "nearest camera pose too far from the image stamp",
    "no_labels": "no label image with the image's stamp",
    "bad_labels": "label image malformed",
    "no_depth": "no depth image with the image's stamp",
    "bad_depth": "depth image malformed or of another size than the image",
    "blurry": "image too blurry",
    "too_close": "too close to a kept frame",
    "max_frames": "dataset full (max_frames)",
    "overflow": "too many images waiting for a pose",
    "write_failed": "writing the frame failed",
    "writer_busy": "max_pending_writes kept frames are already waiting to be written (disk too slow)",
    "internal_error": "unexpected error in a callback (a bug: please report the logged reason)",
}


@dataclass
class CaptureNodeSettings:
    """Parameters of capture_node (topics and frames are fixed at start; the rest can change at run time)."""

    data_root: str = param("~/f3rm_data", "root folder of all datasets; the dataset folder must resolve inside it",
                           read_only=True)
    dataset_name: str = param("capture", "dataset folder under data_root (an existing dataset there is continued; "
                                         "can be changed while not capturing)")
    start_capturing: bool = param(False, "keep frames from the start (else wait for START on ~/control)",
                                  read_only=True)
    image_topic: str = param("camera/image_raw", "colour image topic (sensor_msgs/Image)", read_only=True)
    use_compressed: bool = param(False, "subscribe <image_topic>/compressed (sensor_msgs/CompressedImage, jpeg/png) "
                                        "instead of the raw image", read_only=True)
    camera_info_topic: str = param("camera/camera_info", "sensor_msgs/CameraInfo of the image", read_only=True)
    pose_source: str = param("topic", "camera pose from a topic (PoseStamped/TransformStamped) or tf (needs tf2_ros)",
                             choices=("topic", "tf"), read_only=True)
    pose_topic: str = param("camera/pose", "camera pose topic: T_world_camera in metres (pose_source topic)",
                            read_only=True)
    pose_type: str = param("pose_stamped", "message type on pose_topic", choices=("pose_stamped", "transform_stamped"),
                           read_only=True)
    pose_frame_convention: str = param("optical", "axes of the posed camera frame: optical (x right, y down, "
                                                  "z forward; REP 103 *_optical_frame = OpenCV) or body (x forward, "
                                                  "y left, z up)", choices=("optical", "body"))
    world_frame: str = param("world", "frame the poses are given in and the dataset is stored in", read_only=True)
    camera_frame: str = param("camera_color_optical_frame", "TF frame of the camera (pose_source tf)", read_only=True)
    pose_tolerance_s: float = param(0.05, "largest time between an image stamp and the nearest pose, seconds",
                                    range=(0.0, 10.0))
    pose_buffer_s: float = param(5.0, "how long received poses are kept, seconds", range=(0.01, 600.0))
    pose_wait_s: float = param(0.5, "how long an image waits for a pose (and label image) after its stamp, "
                                    "seconds", range=(0.0, 60.0))
    interpolate_poses: bool = param(True, "interpolate between the poses before and after the image stamp")
    min_translation_m: float = param(0.05, "keyframe rule: a frame is kept only if, for every kept frame, it is at "
                                           "least min_translation_m metres away or turned at least min_rotation_deg "
                                           "from it (both 0 = keep every frame)", range=(0.0, 100.0))
    min_rotation_deg: float = param(10.0, "rotation part of the keyframe rule, degrees", range=(0.0, 180.0))
    blur_threshold: float = param(10.0, "reject images whose variance of the Laplacian (grey levels 0-255) is "
                                        "below this; 0 = off", range=(0.0, 1e6))
    max_frames: int = param(300, "keyframes kept at most (capture stops there); 0 = no limit", range=(0, 1_000_000))
    max_pending: int = param(16, "images waiting for their pose at most (older ones are dropped)", range=(1, 1000))
    max_pending_writes: int = param(32, "kept frames waiting to be written to disk at most (held in memory); a frame "
                                        "kept while this many wait is rejected as writer_busy", range=(1, 10000))
    drain_timeout_s: float = param(8.0, "how long STOP, SAVE, CLEAR and node shutdown wait for kept frames to be "
                                        "written, seconds (keep it below the clients' service timeout, 10 s for "
                                        "f3rm_ros.ros.client)", range=(0.0, 600.0))
    image_format: str = param("png", "image file format of the dataset", choices=("png", "jpg"), read_only=True)
    jpeg_quality: int = param(95, "JPEG quality (image_format jpg)", range=(1, 100), read_only=True)
    labels_topic: str = param("", "16-bit label images (mono16) with the image's stamp, stored as label_path "
                                  "(synthetic world); '' = none", read_only=True)
    label_table_topic: str = param("camera/label_table", "f3rm_labels table as JSON (std_msgs/String, "
                                                         "transient-local), used with labels_topic", read_only=True)
    depth_topic: str = param("", "z-depth images registered to the colour image (16UC1 mm or 32FC1 m) with the "
                                 "image's stamp, stored as depth_path; '' = none", read_only=True)
    status_rate_hz: float = param(1.0, "rate of ~/status and /diagnostics when nothing changes", range=(0.01, 100.0))


def _stamp_s(stamp: Any) -> float:
    return float(stamp.sec) + 1e-9 * float(stamp.nanosec)


def _stamp_ns(stamp: Any) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


@dataclass(eq=False)  # compared by identity (equal stamps must not compare image arrays)
class _Pending:
    stamp: float
    stamp_ns: int
    rgb: np.ndarray
    intrinsics: Any
    arrival: float
    sharpness: float


class _TfPoses:
    """Camera poses from TF (tf2_ros): ``world_frame`` -> ``camera_frame`` at the image stamp."""

    def __init__(self, node: Node, world: str, camera: str, cache_s: float) -> None:
        from rclpy.duration import Duration

        self.buffer = tf2_ros.Buffer(cache_time=Duration(seconds=max(cache_s, 1.0)))
        self.listener = tf2_ros.TransformListener(self.buffer, node)
        self.world, self.camera = world, camera

    def lookup(self, stamp_s: float, final: bool) -> PoseLookup:
        from rclpy.time import Time

        t = Time(nanoseconds=int(round(stamp_s * 1e9)))
        try:
            tf = self.buffer.lookup_transform(self.world, self.camera, t)
        except (tf2_ros.ExtrapolationException, tf2_ros.LookupException, tf2_ros.ConnectivityException) as e:
            if not final:
                return PoseLookup("wait")
            kind = "too_far" if isinstance(e, tf2_ros.ExtrapolationException) else "empty"
            return PoseLookup(kind, detail=f"TF {self.world} -> {self.camera}: {e}")
        try:
            return PoseLookup("ok", transform_msg_to_matrix(tf), 0.0)
        except ConversionError as e:
            return PoseLookup("empty", detail=f"TF {self.world} -> {self.camera}: {e}")


class CaptureNode(Node):
    """See the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("capture_node", namespace=kwargs.pop("namespace", "/f3rm"), **kwargs)
        self.settings: CaptureNodeSettings = declare_config(self, CaptureNodeSettings)
        s = self.settings
        if s.pose_source == "tf" and not HAVE_TF2:
            raise RuntimeError("pose_source 'tf' needs the tf2_ros package, which is not installed here; install "
                               "ROS 2 tf2_ros or publish the camera pose on a topic (pose_source: topic)")
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.add_post_set_parameters_callback(self._after_set_parameters)

        self._lock = threading.RLock()
        self.capturing = False
        self.writer = None
        self.writer_error = ""
        self.dataset_path: Path | None = None
        self.reject_counts: collections.Counter[str] = collections.Counter()
        self.last_reject_reason = ""
        self._last_log: dict[str, float] = {}
        self._camera_info = None
        self._camera_info_msg_size: tuple[int, int] | None = None
        self._pending: list[_Pending] = []
        self._labels: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._depths: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._label_table: dict | None = None
        self.images_seen = 0
        self._last_image_time = 0.0
        self.keyframes = KeyframeSelector(s.min_translation_m, s.min_rotation_deg)
        # kept frames of the open dataset: written + waiting in the write queue (keyframes and max_frames use it)
        self._kept_total = 0
        self.write_error = ""  # the last write failure; cleared by the next successful write
        self.write_queue = BackgroundWriter(s.max_pending_writes, name="capture-writer")
        self.poses = PoseBuffer(s.pose_buffer_s, s.pose_tolerance_s, s.interpolate_poses)
        self.tf_poses = None
        if s.pose_source == "tf":
            self.tf_poses = _TfPoses(self, s.world_frame, s.camera_frame, s.pose_buffer_s)

        self._open_dataset(s.dataset_name)

        data = MutuallyExclusiveCallbackGroup()  # all frame processing is serialised
        ctrl = ReentrantCallbackGroup()
        best_effort = QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT)
        # camera images: sensor-data QoS (best effort, volatile) with a deeper history than its 5, since a
        # recorder wants every frame, not the latest: an executor stall of 2.2 s at 4 Hz (seen in the sim test on
        # this 2-core machine) overflowed 5 and lost 3-4 frames
        sensor = QoSProfile(depth=20, reliability=qos_profile_sensor_data.reliability,
                            durability=qos_profile_sensor_data.durability, history=qos_profile_sensor_data.history)
        self.create_subscription(CameraInfo, s.camera_info_topic, self._safe(self._on_camera_info), best_effort,
                                 callback_group=data)
        if s.pose_source == "topic":
            if s.pose_type == "pose_stamped":
                self.create_subscription(PoseStamped, s.pose_topic, self._safe(self._on_pose), best_effort,
                                         callback_group=data)
            else:
                self.create_subscription(TransformStamped, s.pose_topic, self._safe(self._on_pose), best_effort,
                                         callback_group=data)
        if s.labels_topic:
            self.create_subscription(Image, s.labels_topic, self._safe(self._on_labels), sensor,
                                     callback_group=data)
            latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                                 reliability=ReliabilityPolicy.RELIABLE)
            self.create_subscription(String, s.label_table_topic, self._safe(self._on_label_table), latched,
                                     callback_group=data)
        if s.depth_topic:
            self.create_subscription(Image, s.depth_topic, self._safe(self._on_depth), sensor,
                                     callback_group=data)
        # the image subscription last: the executor serves ready subscriptions in creation order, so camera_info
        # and the pose of the same instant are taken first
        if s.use_compressed:
            self.create_subscription(CompressedImage, s.image_topic.rstrip("/") + "/compressed",
                                     self._safe(self._on_image),
                                     sensor, callback_group=data)
        else:
            self.create_subscription(Image, s.image_topic, self._safe(self._on_image), sensor,
                                     callback_group=data)
        self.create_timer(0.1, self._safe(self._on_tick), callback_group=data)

        self.status_pub = self.create_publisher(CaptureStatus, "~/status", 10)
        self.create_service(CaptureControl, "~/control", self._on_control, callback_group=ctrl)
        self.create_timer(1.0 / s.status_rate_hz, self.publish_status, callback_group=ctrl)
        self.diagnostics = DiagnosticsPublisher(self, self._diagnostic_status, 1.0 / s.status_rate_hz,
                                                callback_group=ctrl)
        if s.start_capturing:
            ok, msg = self._start()
            if not ok:
                self.get_logger().error(f"start_capturing: {msg}")
        self.get_logger().info(
            f"capture_node ready: dataset {self.dataset_path} ({len(self.writer) if self.writer else 0} frames), "
            f"image {self.resolve_topic_name(s.image_topic)}, pose from "
            f"{s.pose_source if s.pose_source == 'tf' else self.resolve_topic_name(s.pose_topic)}, "
            f"capturing={self.capturing}")

    # ------------------------------------------------------------------------------ parameters
    def _on_set_parameters(self, params: list) -> Any:
        from rcl_interfaces.msg import SetParametersResult

        changed = {p.name: p.value for p in params}
        try:
            new = read_config(self, CaptureNodeSettings, "", changed)
        except ValueError as e:
            return SetParametersResult(successful=False, reason=str(e))
        if "dataset_name" in changed:
            if self.capturing:
                return SetParametersResult(successful=False, reason="dataset_name cannot change while capturing; "
                                                                    "send STOP first")
            if self.write_queue.pending("frame"):
                return SetParametersResult(successful=False, reason="dataset_name cannot change while kept frames "
                                                                    "are still being written; try again")
            try:
                resolve_under_root(new.dataset_name, new.data_root, what="dataset folder")
            except PathRefused as e:
                return SetParametersResult(successful=False, reason=str(e))
        return SetParametersResult(successful=True)

    def _after_set_parameters(self, params: list) -> None:
        with self._lock:
            old = self.settings
            self.settings = s = read_config(self, CaptureNodeSettings)
            self.keyframes.min_translation_m, self.keyframes.min_rotation_deg = s.min_translation_m, s.min_rotation_deg
            self.poses.tolerance_s, self.poses.duration_s = s.pose_tolerance_s, s.pose_buffer_s
            self.poses.interpolate = s.interpolate_poses
            self.write_queue.max_pending = s.max_pending_writes
            if s.dataset_name != old.dataset_name:
                self._open_dataset(s.dataset_name)

    # ---------------------------------------------------------------------------------- dataset
    def _open_dataset(self, name: str) -> None:
        """Open (or continue) ``<data_root>/<name>``; on failure remember why (START is then refused)."""
        from f3rm_ros.core.dataset import DatasetWriter

        s = self.settings
        self.writer, self.writer_error = None, ""
        try:
            self.dataset_path = resolve_under_root(name, s.data_root, what="dataset folder")
            if self.dataset_path == resolve_under_root(".", s.data_root):
                raise PathRefused("dataset_name must name a folder inside data_root, not data_root itself")
            self.writer = DatasetWriter(self.dataset_path, image_format=s.image_format, jpeg_quality=s.jpeg_quality,
                                        world_frame=s.world_frame)
        except Exception as e:  # PathRefused, DatasetError (corrupt json), OSError
            self.writer_error = f"cannot open dataset {name!r}: {e}"
            self.get_logger().error(self.writer_error)
            return
        poses = [c2w_opengl_to_opencv(np.asarray(f["transform_matrix"], dtype=np.float64)) for f in self.writer.frames]
        self.keyframes.reset(np.stack(poses) if poses else None)
        self._kept_total = len(self.writer)
        if self._label_table is not None:
            self._write_label_table()
        if len(self.writer):
            self.get_logger().info(f"continuing dataset {self.dataset_path} with {len(self.writer)} frames")

    def _write_label_table(self) -> None:
        if self.writer is None or self._label_table is None:
            return
        if self.writer._data.get("f3rm_labels") != self._label_table:
            self.writer.set_labels_table(self._label_table)

    def _safe(self, fn: Any) -> Any:
        """``fn`` as a callback that never raises: an unexpected error is counted as ``internal_error``."""

        def callback(*args: Any) -> None:
            try:
                fn(*args)
            except Exception as e:
                self.reject("internal_error", f"{fn.__name__}: {type(e).__name__}: {e}")

        return callback

    # --------------------------------------------------------------------------------- rejections
    def reject(self, reason: str, detail: str) -> None:
        """Count a rejection, remember its reason, log it (at most every 2 s per reason)."""
        with self._lock:
            self.reject_counts[reason] += 1
            self.last_reject_reason = f"{reason}: {detail}"
        now = time.monotonic()
        if now - self._last_log.get(reason, -1e9) >= 2.0:
            self._last_log[reason] = now
            self.get_logger().warning(f"frame rejected ({reason}, {self.reject_counts[reason]} so far): {detail}")
        self.publish_status()

    # ---------------------------------------------------------------------------------- callbacks
    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            K = camera_info_to_intrinsics(msg)
        except ConversionError as e:
            self.reject("bad_camera_info", str(e))
            return
        self._camera_info = K

    def _on_pose(self, msg: PoseStamped | TransformStamped) -> None:
        s = self.settings
        frame = msg.header.frame_id.lstrip("/")
        if frame not in ("", s.world_frame):
            self.reject("wrong_frame", f"pose frame_id {msg.header.frame_id!r} is not the world frame "
                                       f"{s.world_frame!r} (publish T_world_camera, or set world_frame)")
            return
        try:
            T = pose_msg_to_matrix(msg) if isinstance(msg, PoseStamped) else transform_msg_to_matrix(msg)
        except ConversionError as e:
            self.reject("bad_pose", str(e))
            return
        if s.pose_frame_convention == "body":
            T = T @ T_BODY_OPTICAL
        self.poses.add(_stamp_s(msg.header.stamp), T)
        self._process_pending()

    def _on_labels(self, msg: Image) -> None:
        self._cache_by_stamp(msg, image_to_labels, self._labels, "bad_labels")

    def _on_depth(self, msg: Image) -> None:
        self._cache_by_stamp(msg, image_to_depth, self._depths, "bad_depth")

    def _cache_by_stamp(self, msg: Image, convert: Any, cache: collections.OrderedDict, bad_reason: str) -> None:
        """Keep a per-pixel side image (labels, depth) under its stamp until its colour image is decided."""
        try:
            arr = convert(msg)
        except ConversionError as e:
            self.reject(bad_reason, str(e))
            return
        cache[_stamp_ns(msg.header.stamp)] = arr
        while len(cache) > 4 * self.settings.max_pending:
            cache.popitem(last=False)
        self._process_pending()

    def _on_label_table(self, msg: String) -> None:
        try:
            table = parse_label_table_json(msg.data)
        except ConversionError as e:
            self.reject("bad_labels", str(e))
            return
        with self._lock:
            self._label_table = table
            writer = self.writer
        if writer is None:
            return

        def write() -> None:
            with self._lock:
                if writer is not self.writer:
                    return
            self._write_label_table()

        # through the writer thread (after the frames queued before it); forced: tiny and never to be lost
        self.write_queue.submit(WriteJob(write, kind="meta",
                                         on_error=lambda e: self.reject("write_failed", f"label table: {e}")),
                                force=True)

    def _on_image(self, msg: Image | CompressedImage) -> None:
        self.images_seen += 1
        self._last_image_time = time.monotonic()
        if self.images_seen == 1:
            self.get_logger().info(f"first image received (t={_stamp_s(msg.header.stamp):.3f}, "
                                   f"{type(msg).__name__} {getattr(msg, 'encoding', '') or msg.format}); "
                                   f"capturing={self.capturing}")
        if not self.capturing:
            return
        s = self.settings
        stamp = _stamp_s(msg.header.stamp)
        try:
            rgb = compressed_to_rgb(msg) if isinstance(msg, CompressedImage) else image_to_rgb(msg)
        except ConversionError as e:
            self.reject("bad_encoding" if "encoding" in str(e) else "bad_image", str(e))
            return
        K = self._camera_info  # None: wait up to pose_wait_s for one (drivers publish both at once, in any order)
        if K is not None and not self._size_ok(rgb, K):
            return
        sharp = laplacian_variance(rgb)
        if s.blur_threshold > 0 and sharp < s.blur_threshold:
            self.reject("blurry", f"variance of Laplacian {sharp:.1f} < blur_threshold {s.blur_threshold:g}")
            return
        with self._lock:
            self._pending.append(_Pending(stamp, _stamp_ns(msg.header.stamp), rgb, K, time.monotonic(), sharp))
            overflow = self._pending[:-s.max_pending] if len(self._pending) > s.max_pending else []
            del self._pending[: len(overflow)]
        for p in overflow:
            self.reject("overflow", f"image at t={p.stamp:.3f} dropped: more than max_pending={s.max_pending} "
                                    "images wait for their camera pose")
        self._process_pending()

    def _size_ok(self, rgb: np.ndarray, K: Any) -> bool:
        if (rgb.shape[1], rgb.shape[0]) != tuple(K.size):
            self.reject("size_mismatch", f"image is {rgb.shape[1]}x{rgb.shape[0]} but camera_info says "
                                         f"{K.width}x{K.height}")
            return False
        return True

    def _on_tick(self) -> None:
        self._process_pending()

    # ---------------------------------------------------------------------------------- decisions
    def _lookup(self, p: _Pending, final: bool) -> PoseLookup:
        if self.tf_poses is not None:
            return self.tf_poses.lookup(p.stamp, final)
        return self.poses.lookup(p.stamp, final)

    def _process_pending(self) -> None:
        s = self.settings
        now = time.monotonic()
        with self._lock:
            pending = list(self._pending)
        for p in pending:
            final = now - p.arrival >= s.pose_wait_s
            if p.intrinsics is None:
                if self._camera_info is None and not final:
                    continue
                p.intrinsics = self._camera_info
            labels = depth = None
            if s.labels_topic:
                labels = self._labels.get(p.stamp_ns)
                if labels is None and not final:
                    continue
            if s.depth_topic:
                depth = self._depths.get(p.stamp_ns)
                if depth is None and not final:
                    continue
            look = self._lookup(p, final)
            if look.status == "wait" or (look.status == "empty" and not final):
                continue
            with self._lock:
                if p not in self._pending:
                    continue
                self._pending.remove(p)
                if not self.capturing:
                    continue
            if p.intrinsics is None:
                self.reject("no_camera_info", f"image at t={p.stamp:.3f} but no camera_info received on "
                                              f"{self.resolve_topic_name(s.camera_info_topic)} within "
                                              f"pose_wait_s={s.pose_wait_s:g} s")
            elif not self._size_ok(p.rgb, p.intrinsics):
                pass
            elif look.status == "empty":
                self.reject("no_pose", f"image at t={p.stamp:.3f}: {look.reason} within "
                                       f"pose_wait_s={s.pose_wait_s:g} s")
            elif look.status == "too_far":
                self.reject("pose_too_far", f"image at t={p.stamp:.3f}: {look.reason} "
                                            f"(pose_tolerance_s={s.pose_tolerance_s:g})")
            elif s.labels_topic and labels is None:
                self.reject("no_labels", f"image at t={p.stamp:.3f}: no label image with this stamp on "
                                         f"{self.resolve_topic_name(s.labels_topic)} within {s.pose_wait_s:g} s")
            elif labels is not None and labels.shape != p.rgb.shape[:2]:
                self.reject("bad_labels", f"label image {labels.shape[::-1]} differs from image {p.rgb.shape[1::-1]}")
            elif s.depth_topic and depth is None:
                self.reject("no_depth", f"image at t={p.stamp:.3f}: no depth image with this stamp on "
                                        f"{self.resolve_topic_name(s.depth_topic)} within {s.pose_wait_s:g} s")
            elif depth is not None and depth.shape != p.rgb.shape[:2]:
                self.reject("bad_depth", f"depth image {depth.shape[::-1]} differs from image {p.rgb.shape[1::-1]} "
                                         "(it must be registered to the colour image)")
            else:
                self._keep(p, look, labels, depth)

    def _keep(self, p: _Pending, look: PoseLookup, labels: np.ndarray | None,
              depth: np.ndarray | None = None) -> None:
        """Decide on a frame with a pose and hand a keyframe to the writer thread (never waits for the disk)."""
        s = self.settings
        with self._lock:
            if not self.capturing:  # STOP came in between
                return
            if self.writer is None:
                self.reject("write_failed", self.writer_error or "no dataset open")
                return
            if s.max_frames and self._kept_total >= s.max_frames:
                self.capturing = False
                self.reject("max_frames", f"the dataset has max_frames={s.max_frames} frames; capture stopped")
                return
            ok, why = self.keyframes.check(look.pose)
            if not ok:
                self.reject("too_close", why)
                return
            extra = {"sharpness": round(p.sharpness, 3), "pose_dt_s": round(look.dt, 6),
                     "pose_interpolated": look.interpolated}
            job = self._frame_job(self.writer, p, look, labels, extra, depth)
            if not self.write_queue.submit(job):
                self.reject("writer_busy", f"image at t={p.stamp:.3f}: {self.write_queue.pending('frame')} kept "
                                           f"frames still wait to be written (max_pending_writes="
                                           f"{s.max_pending_writes}); the disk is too slow")
                return
            self.keyframes.add(look.pose)  # before the write: later frames are decided against it
            self._kept_total += 1
            n = self._kept_total
            if s.max_frames and n >= s.max_frames:
                self.capturing = False
                self.get_logger().info(f"max_frames={s.max_frames} reached: capture stopped")
        self.publish_status()

    def _frame_job(self, writer: Any, p: _Pending, look: PoseLookup, labels: np.ndarray | None,
                   extra: dict, depth: np.ndarray | None = None) -> WriteJob:
        """The write of one kept frame, with its bookkeeping (callbacks run on the writer thread)."""
        pose = look.pose

        def run() -> int:
            return writer.add_frame(p.rgb, p.intrinsics, pose, stamp=p.stamp, extra=extra, labels=labels, depth_m=depth)

        def forget() -> None:  # the frame will not be in the dataset: later frames may take its place
            with self._lock:
                if writer is self.writer:
                    self._kept_total -= 1
                    self.keyframes.remove(pose)

        def done(idx: int) -> None:
            with self._lock:
                self.write_error = ""
            q = self.write_queue
            self.get_logger().info(f"kept frame {idx} (t={p.stamp:.3f}, pose dt {look.dt * 1000:.1f} ms, sharpness "
                                   f"{p.sharpness:.0f}, written in {q.last_duration_s:.3f} s); {len(writer)} in "
                                   f"{writer.root}, {q.pending('frame') - 1} waiting")
            self.publish_status()

        def failed(e: BaseException) -> None:
            forget()
            with self._lock:
                self.write_error = f"image at t={p.stamp:.3f} not written: {type(e).__name__}: {e}"
            self.reject("write_failed", self.write_error)

        return WriteJob(run, kind="frame", on_done=done, on_error=failed, on_discard=forget)

    def _wait_written(self, what: str) -> tuple[bool, str]:
        """Wait (at most drain_timeout_s) until every frame queued so far is written; (ok, reason if not).

        A barrier job through the FIFO, so frames kept after this call (still capturing) are not waited for.
        Never called with ``self._lock`` held (the writer's callbacks take it).
        """
        timeout = self.settings.drain_timeout_s
        passed = self.write_queue.barrier()
        if passed is None:
            return False, f"{what}: the writer is closed (node shutting down)"
        if passed.wait(timeout):
            return True, ""
        n = self.write_queue.pending("frame")
        return False, (f"{what}: {n} kept frame(s) still wait to be written after drain_timeout_s={timeout:g} s "
                       f"(disk too slow; they are written in the background: ask again later)")

    # ----------------------------------------------------------------------------------- control
    def _start(self) -> tuple[bool, str]:
        with self._lock:
            if self.writer is None:
                self._open_dataset(self.settings.dataset_name)
            if self.writer is None:
                return False, self.writer_error
            if self.settings.max_frames and self._kept_total >= self.settings.max_frames:
                return False, f"the dataset already has max_frames={self.settings.max_frames} frames"
            self.capturing = True
            return True, "capturing"

    def _on_control(self, req: CaptureControl.Request, res: CaptureControl.Response) -> CaptureControl.Response:
        cmd = req.command
        C = CaptureControl.Request
        try:
            if cmd == C.START:
                with self._lock:
                    res.success, res.message = self._start()
            elif cmd == C.STOP:
                with self._lock:
                    self.capturing = False
                    self._pending.clear()
                ok, why = self._wait_written("stopped")
                res.success, res.message = ok, why or "stopped; every kept frame is written"
            elif cmd == C.CLEAR:
                res.success, res.message = self._clear()
            elif cmd == C.SAVE:
                if self.writer is None:
                    res.success, res.message = False, self.writer_error or "no dataset open"
                else:
                    ok, why = self._wait_written("not saved")
                    if ok:
                        with self._lock:
                            writer, summary = self.writer, self._summary()
                        writer.update_meta({"f3rm_capture": summary})
                        res.success, res.message = True, f"saved {writer.json_path}"
                    else:
                        res.success, res.message = False, why
            else:
                res.success = False
                res.message = f"unknown command {cmd}; use START=0, STOP=1, CLEAR=2 or SAVE=3"
        except Exception as e:  # never let a request take the node down
            res.success, res.message = False, f"{type(e).__name__}: {e}"
        res.frame_count = len(self.writer) if self.writer is not None else 0
        res.dataset_path = str(self.dataset_path or "")
        if res.success:
            self.get_logger().info(f"control command {cmd}: {res.message} ({res.frame_count} frames)")
        else:
            self.get_logger().warning(f"control command {cmd} refused: {res.message}")
        self.publish_status()
        return res

    def _clear(self) -> tuple[bool, str]:
        """CLEAR: drop queued frames, let the one being written finish, delete every frame of the dataset."""
        with self._lock:
            if self.capturing:
                return False, "CLEAR refused while capturing; send STOP first"
            if self.writer is None:
                return False, self.writer_error or "no dataset open"
        dropped = self.write_queue.discard("frame")
        if not self.write_queue.wait_idle(self.settings.drain_timeout_s):
            return False, (f"CLEAR refused: a write still runs after drain_timeout_s="
                           f"{self.settings.drain_timeout_s:g} s (disk too slow); try again")
        with self._lock:
            if self.capturing or self.write_queue.pending("frame"):
                return False, "CLEAR refused: capture was started again meanwhile"
            n = len(self.writer)
            self.writer.clear()
            self.keyframes.reset()
            self._kept_total = 0
        return True, f"cleared {n} frames" + (f" ({dropped} not yet written dropped)" if dropped else "")

    def _summary(self) -> dict[str, Any]:
        return {"frames_rejected": dict(self.reject_counts), "images_seen": self.images_seen,
                "write_failures": self.write_queue.failed, "max_write_s": round(self.write_queue.max_duration_s, 4),
                "settings": {k: getattr(self.settings, k) for k in ("min_translation_m", "min_rotation_deg",
                                                                     "blur_threshold", "pose_tolerance_s")}}

    # ---------------------------------------------------------------------------------- shutdown
    def close(self) -> bool:
        """Stop capturing and write the queued frames (at most ``drain_timeout_s``); True if all were written.

        Called by :func:`f3rm_ros.ros.common.run_node` after spinning ends and by :meth:`destroy_node`.
        """
        if getattr(self, "write_queue", None) is None or self.write_queue.closed:  # never opened / closed
            return True
        with self._lock:
            self.capturing = False
        n = self.write_queue.pending("frame")
        t0 = time.monotonic()
        ok = self.write_queue.close(self.settings.drain_timeout_s)
        try:
            if ok and n:
                self.get_logger().info(f"shutdown: wrote the {n} queued frame(s) in {time.monotonic() - t0:.2f} s")
            elif not ok:
                self.get_logger().error(f"shutdown: frames still unwritten after drain_timeout_s="
                                        f"{self.settings.drain_timeout_s:g} s were dropped")
        except Exception:  # logging after rclpy shut down
            pass
        return ok

    def destroy_node(self) -> None:
        self.close()
        super().destroy_node()

    # ------------------------------------------------------------------------------------ status
    def frame_counts(self) -> tuple[int, int, int]:
        """(written to the dataset, waiting to be written, kept = written + waiting), one consistent snapshot."""
        with self._lock:
            if self.writer is None:
                return 0, 0, 0
            written = len(self.writer)
            kept = max(self._kept_total, written)
            return written, kept - written, kept

    def status_message(self) -> CaptureStatus:
        with self._lock:
            msg = CaptureStatus(capturing=self.capturing,
                                frames_kept=len(self.writer) if self.writer is not None else 0,
                                frames_rejected=sum(self.reject_counts.values()),
                                reject_reasons=sorted(self.reject_counts),
                                last_reject_reason=self.last_reject_reason,
                                dataset_path=str(self.dataset_path or ""))
            msg.reject_counts = [int(self.reject_counts[k]) for k in msg.reject_reasons]
            msg.frames_pending = int(self.frame_counts()[1])
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.settings.world_frame
        return msg

    def publish_status(self) -> None:
        try:
            self.status_pub.publish(self.status_message())
        except Exception:  # shutting down
            pass

    def _diagnostic_status(self) -> tuple[int, str, dict]:
        st = self.status_message()
        q = self.write_queue
        written, pending, kept_total = self.frame_counts()
        # frames_kept as in ~/status (= written); frames_kept_total also counts the frames waiting for the disk
        values = {"capturing": st.capturing, "frames_kept": st.frames_kept, "frames_written": written,
                  "frames_pending": pending, "frames_kept_total": kept_total,
                  "max_pending_writes": q.max_pending,
                  "write_failures": q.failed, "last_write_s": q.last_duration_s, "max_write_s": q.max_duration_s,
                  "frames_rejected": st.frames_rejected, "images_seen": self.images_seen, "dataset": st.dataset_path,
                  **{f"rejected.{k}": v for k, v in zip(st.reject_reasons, st.reject_counts, strict=True)}}
        if self.writer is None:
            return ERROR, self.writer_error or "no dataset open", values
        if self.write_error:
            return ERROR, f"writing frames fails: {self.write_error}", values
        if pending >= q.max_pending:
            return WARN, f"the disk is behind: {pending} kept frames wait to be written", values
        if self.capturing and time.monotonic() - self._last_image_time > 5.0:
            return WARN, "capturing but no image for 5 s", values
        return OK, ("capturing" if self.capturing else "idle") + f", {st.frames_kept} frames", values


def main(args: list[str] | None = None) -> int:
    """``ros2 run f3rm_ros capture_node`` / ``scripts/nodes/capture_node``."""
    return run_node(CaptureNode, args)


if __name__ == "__main__":
    import sys

    sys.exit(main())
