"""``camera_relay_node``: the robot host's side of a two-host setup; the camera's topics, compressed, for the link.

Runs on the robot's computer beside the camera driver and republishes what the capture node (on the GPU host)
needs, in the node's namespace (default ``/f3rm``), so that only compressed images cross the network:

* ``image_in`` (``sensor_msgs/Image``, rgb8/bgr8/rgba8/bgra8/mono8) -> ``<image_out>/compressed``
  (``sensor_msgs/CompressedImage``, JPEG ``jpeg_quality`` or PNG, image_transport's format string);
* ``depth_in`` (16UC1 mm or 32FC1 m, registered to the colour image; '' = none) ->
  ``<depth_out>/compressedDepth`` (16-bit PNG of millimetres behind compressed_depth_image_transport's header);
* ``labels_in`` (mono16 label ids, the synthetic world; '' = none) -> ``<labels_out>/compressed`` (16-bit PNG);
* ``camera_info_in``, ``pose_in`` (``PoseStamped``, ``T_world_camera``) and ``label_table_in`` unchanged, to
  ``camera_info_out``, ``pose_out`` and ``label_table_out``.

QoS: inputs are read best effort (matches any publisher on this host); outputs are RELIABLE and
TRANSIENT_LOCAL with the last ``history`` frames (``pose_history`` poses) kept, so a capture node that
starts late, or whose link was down for a few seconds, or that was restarted, still receives the frames it
missed, up to that history (subscribe with the capture node's ``input_qos: relay``). The flip side: a capture
node that starts capturing at once (``start_capturing``) also takes the last ``history`` frames of an earlier
scan; for a new scene, start the capture with START once the camera moves over it (or restart the relay).
Headers (stamps, frame ids) are kept. Bad messages are counted and logged (throttled), never fatal;
``/diagnostics`` reports frames and bytes in and out.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from geometry_msgs.msg import PoseStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import String

from f3rm_ros.core.config import param
from f3rm_ros.core.image_codec import COLOR_FORMATS
from f3rm_ros.ros.common import OK, WARN, DiagnosticsPublisher, run_node
from f3rm_ros.ros.conversions import (ConversionError, depth_to_compressed, image_to_depth, image_to_labels,
                                      image_to_rgb, labels_to_compressed, rgb_to_compressed)
from f3rm_ros.ros.params import ParamBinding

__all__ = ["RelaySettings", "CameraRelayNode", "relay_qos", "RELAY_READER_DEPTH", "main"]

RELAY_READER_DEPTH = 200  # what a reader of the relay keeps (capture_node input_qos relay): >= the relay's history


def relay_qos(depth: int) -> QoSProfile:
    """QoS of the relay's outputs (and, with ``RELAY_READER_DEPTH``, of a capture node reading them)."""
    return QoSProfile(depth=int(depth), history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)


@dataclass
class RelaySettings:
    """Parameters of camera_relay_node; all fixed at start. ``*_in`` topics are the camera driver's (absolute
    names are usual), ``*_out`` are relative to the node's namespace (the capture node's defaults)."""

    image_in: str = param("/camera/color/image_raw", "colour image of the camera driver (sensor_msgs/Image)",
                          read_only=True)
    camera_info_in: str = param("/camera/color/camera_info", "sensor_msgs/CameraInfo of that image", read_only=True)
    pose_in: str = param("/camera/pose", "camera pose (PoseStamped, T_world_camera, optical axes); '' = none "
                                         "(the capture node then uses TF)", read_only=True)
    depth_in: str = param("", "registered z-depth (16UC1 mm or 32FC1 m), e.g. /camera/aligned_depth_to_color/"
                              "image_raw; '' = none", read_only=True)
    labels_in: str = param("", "ground-truth label images (mono16; the synthetic world); '' = none", read_only=True)
    label_table_in: str = param("", "f3rm_labels table (String JSON, transient-local); '' = none", read_only=True)
    image_out: str = param("camera/image_raw", "compressed colour goes to <image_out>/compressed", read_only=True)
    camera_info_out: str = param("camera/camera_info", "camera info output topic", read_only=True)
    pose_out: str = param("camera/pose", "pose output topic", read_only=True)
    depth_out: str = param("camera/aligned_depth_to_color/image_raw",
                           "compressed depth goes to <depth_out>/compressedDepth", read_only=True)
    labels_out: str = param("camera/labels", "compressed labels go to <labels_out>/compressed", read_only=True)
    label_table_out: str = param("camera/label_table", "label table output topic (transient-local)", read_only=True)
    color_format: str = param("jpeg", "colour compression: jpeg (lossy, ~10x smaller) or png (lossless)",
                              choices=COLOR_FORMATS, read_only=True)
    jpeg_quality: int = param(90, "JPEG quality (color_format jpeg)", range=(1, 100), read_only=True)
    history: int = param(100, "frames each output keeps for subscribers that join late, lost the link for a "
                              "while or restarted (transient-local, reliable); memory ~ history x frame size",
                         range=(1, 10000), read_only=True)
    pose_history: int = param(1000, "poses the pose output keeps (poses often come faster than images)",
                              range=(1, 100000), read_only=True)


class _Stats:
    """Frames and bytes in/out per stream (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.frames: dict[str, int] = {}
        self.bytes_in: dict[str, int] = {}
        self.bytes_out: dict[str, int] = {}
        self.encode_s = 0.0
        self.errors = 0

    def add(self, stream: str, n_in: int, n_out: int, seconds: float = 0.0) -> None:
        with self.lock:
            self.frames[stream] = self.frames.get(stream, 0) + 1
            self.bytes_in[stream] = self.bytes_in.get(stream, 0) + n_in
            self.bytes_out[stream] = self.bytes_out.get(stream, 0) + n_out
            self.encode_s += seconds


class CameraRelayNode(Node):
    """See the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("camera_relay_node", namespace=kwargs.pop("namespace", "/f3rm"), **kwargs)
        self.params = ParamBinding(self, RelaySettings)
        s = self.settings = self.params.config
        self.stats = _Stats()
        out = relay_qos(s.history)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        best_effort = QoSProfile(depth=20, reliability=ReliabilityPolicy.BEST_EFFORT)
        group = MutuallyExclusiveCallbackGroup()

        def relay(msg_type: Any, topic_in: str, topic_out: str, qos_out: Any, convert: Any, stream: str,
                  qos_in: Any = best_effort, out_type: Any = CompressedImage) -> None:
            pub = self.create_publisher(out_type, topic_out, qos_out)
            self.create_subscription(msg_type, topic_in, self._callback(pub, convert, stream), qos_in,
                                     callback_group=group)

        relay(CameraInfo, s.camera_info_in, s.camera_info_out, out, None, "camera_info", out_type=CameraInfo)
        if s.pose_in:
            relay(PoseStamped, s.pose_in, s.pose_out, relay_qos(s.pose_history), None, "pose", out_type=PoseStamped)
        if s.label_table_in:
            relay(String, s.label_table_in, s.label_table_out, latched, None, "label_table", qos_in=latched,
                  out_type=String)
        if s.depth_in:
            relay(Image, s.depth_in, s.depth_out.rstrip("/") + "/compressedDepth", out,
                  lambda m: depth_to_compressed(image_to_depth(m)), "depth")
        if s.labels_in:
            relay(Image, s.labels_in, s.labels_out.rstrip("/") + "/compressed", out,
                  lambda m: labels_to_compressed(image_to_labels(m)), "labels")
        relay(Image, s.image_in, s.image_out.rstrip("/") + "/compressed", out,
              lambda m: rgb_to_compressed(image_to_rgb(m), s.color_format, s.jpeg_quality), "image")
        self.diagnostics = DiagnosticsPublisher(self, self._diagnostic_status)
        self.get_logger().info(f"camera relay: {s.image_in} -> {self.resolve_topic_name(s.image_out)}/compressed "
                               f"({s.color_format}), history {s.history} frames"
                               + (f", depth {s.depth_in}" if s.depth_in else "")
                               + (f", labels {s.labels_in}" if s.labels_in else ""))

    def _callback(self, pub: Any, convert: Any, stream: str) -> Any:
        def callback(msg: Any) -> None:
            try:
                t0 = time.perf_counter()
                out = msg if convert is None else convert(msg)
                dt = time.perf_counter() - t0
                if convert is not None:
                    out.header = msg.header
                pub.publish(out)
                n_in = len(msg.data) if convert is not None else 0
                self.stats.add(stream, n_in, len(out.data) if convert is not None else 0, dt)
            except ConversionError as e:
                with self.stats.lock:
                    self.stats.errors += 1
                self.get_logger().warning(f"{stream}: not relayed: {e}", throttle_duration_sec=5.0)
            except Exception as e:  # never die on one message
                with self.stats.lock:
                    self.stats.errors += 1
                self.get_logger().error(f"{stream}: {type(e).__name__}: {e}", throttle_duration_sec=5.0)

        return callback

    def _diagnostic_status(self) -> tuple[int, str, dict]:
        st = self.stats
        with st.lock:
            values: dict[str, Any] = {f"{k}_frames": v for k, v in st.frames.items()}
            values.update({f"{k}_bytes_in": v for k, v in st.bytes_in.items() if v})
            values.update({f"{k}_bytes_out": v for k, v in st.bytes_out.items() if v})
            values["errors"] = st.errors
            n = sum(st.frames.get(k, 0) for k in ("image", "depth", "labels"))
            values["encode_ms_mean"] = round(1000 * st.encode_s / n, 2) if n else 0.0
        if st.errors:
            return WARN, f"{st.errors} message(s) could not be relayed", values
        return OK, "relaying" if st.frames.get("image") else "waiting for images", values


def main(args: list[str] | None = None) -> int:
    """``ros2 run f3rm_ros camera_relay_node`` / ``scripts/nodes/camera_relay_node``."""
    return run_node(CameraRelayNode, args)


if __name__ == "__main__":
    import sys

    sys.exit(main())
