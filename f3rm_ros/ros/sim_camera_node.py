"""``sim_camera_node``: a synthetic-world camera moving along a scanning trajectory, like a wrist camera.

Renders a :mod:`f3rm_ros.core.sim` scene at ``rate_hz`` along the hemisphere-arc trajectory of
:class:`~f3rm_ros.core.sim.trajectory.TrajectoryConfig` (parameters ``trajectory.*``, lighting
``render.*``; every parameter is read-only: fixed at start) and publishes, all with the same stamp (the render time):

* ``camera/pose`` (``geometry_msgs/PoseStamped``): ``T_world_camera`` in metres, ``header.frame_id`` =
  ``world_frame``, camera axes of the optical frame (x right, y down, z forward; OpenCV). With pose
  noise on, this is the noisy pose a robot would report (the image is rendered from the true one).
* TF ``world_frame`` -> ``camera_frame`` (same transform) when ``tf2_ros`` is installed and ``publish_tf``.
* ``camera/camera_info`` (``sensor_msgs/CameraInfo``, plumb_bob with zero distortion).
* ``camera/labels`` (``sensor_msgs/Image`` mono16 label ids; ``labels_topic`` '' = off) and, once,
  ``camera/label_table`` (``std_msgs/String`` JSON ``f3rm_labels`` table, transient-local).
* ``camera/aligned_depth_to_color/image_raw`` (``depth_topic``, '' = off, the default): z-depth registered
  to the colour image, ``sensor_msgs/Image`` 16UC1 in millimetres (REP 118), 0 = nothing hit.
* ``camera/image_raw`` (``sensor_msgs/Image`` rgb8), published last.
* ``~/finished`` (``std_msgs/Bool``, transient-local): true once the last pose was published (not with ``loop``).

The pose goes out first so a capture node has it when the image arrives. ``wait_for_subscribers``
holds the trajectory until that many subscribers listen to each data topic (e.g. a capture node), then
``discovery_settle_s`` more.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from geometry_msgs.msg import PoseStamped, TransformStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Bool, String

from f3rm_ros.core.config import param
from f3rm_ros.core.sim.render import RenderConfig
from f3rm_ros.core.sim.trajectory import TrajectoryConfig
from f3rm_ros.ros.common import OK, WARN, DiagnosticsPublisher, run_node
from f3rm_ros.ros.conversions import (depth_to_image, intrinsics_to_camera_info, labels_to_image, matrix_to_pose_msg,
                                      rgb_to_image)
from f3rm_ros.ros.params import ParamBinding

try:  # optional: also broadcast the camera pose on TF
    import tf2_ros  # type: ignore

    HAVE_TF2 = True
except ImportError:
    tf2_ros = None
    HAVE_TF2 = False

__all__ = ["SimCameraSettings", "SimCameraNode", "HAVE_TF2", "main"]


@dataclass
class SimCameraSettings:
    """Parameters of sim_camera_node (besides trajectory.* and render.*); fixed at start."""

    scene: str = param("mug_bowl_box", "built-in scene name (mug_bowl_box, screwdriver_mug_can, cluttered_table) "
                                       "or a scene YAML file", read_only=True)
    width: int = param(320, "image width, pixels", range=(8, 8192), read_only=True)
    height: int = param(240, "image height, pixels", range=(8, 8192), read_only=True)
    fov_y_deg: float = param(42.5, "vertical field of view, degrees (42.5 ~ RealSense D435 colour)",
                             range=(1.0, 170.0), read_only=True)
    rate_hz: float = param(2.0, "frames per second (rendering may be slower on a CPU)", range=(0.01, 100.0),
                           read_only=True)
    loop: bool = param(False, "start the trajectory again after the last pose (false: stop there)", read_only=True)
    start_delay_s: float = param(0.5, "wait this long after start before the first frame, seconds", range=(0.0, 3600.0),
                                 read_only=True)
    wait_for_subscribers: int = param(0, "hold the trajectory until this many subscribers listen to each of the "
                                         "image, camera_info, pose (and labels) topics (0 = start at once)",
                                      range=(0, 100), read_only=True)
    discovery_settle_s: float = param(1.0, "after wait_for_subscribers is met, wait this long before the first frame, "
                                           "seconds: the publisher sees a subscriber before that subscriber has "
                                           "matched the publisher, and best-effort frames sent in between are lost",
                                      range=(0.0, 60.0), read_only=True)
    pose_noise_deg: float = param(0.0, "std of the rotation error of the published pose, degrees", range=(0.0, 45.0),
                                  read_only=True)
    pose_noise_m: float = param(0.0, "std of the translation error of the published pose, metres", range=(0.0, 1.0),
                                read_only=True)
    seed: int = param(0, "seed of image and pose noise", range=(0, 2**31 - 1), read_only=True)
    image_topic: str = param("camera/image_raw", "rgb8 image topic", read_only=True)
    camera_info_topic: str = param("camera/camera_info", "camera info topic", read_only=True)
    pose_topic: str = param("camera/pose", "camera pose topic (PoseStamped, T_world_camera, optical axes)",
                            read_only=True)
    labels_topic: str = param("camera/labels", "ground-truth label image topic (mono16); '' = do not publish",
                              read_only=True)
    label_table_topic: str = param("camera/label_table", "f3rm_labels table topic (String JSON, transient-local)",
                                   read_only=True)
    depth_topic: str = param("", "z-depth registered to the colour image (16UC1 millimetres), e.g. "
                                 "camera/aligned_depth_to_color/image_raw; '' = do not publish", read_only=True)
    publish_tf: bool = param(True, "also broadcast world_frame -> camera_frame on TF (when tf2_ros is installed)",
                             read_only=True)
    world_frame: str = param("world", "world frame (z up, table top at z = 0)", read_only=True)
    camera_frame: str = param("camera_color_optical_frame", "optical frame of the camera (frame_id of images)",
                              read_only=True)


class SimCameraNode(Node):
    """See the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("sim_camera_node", namespace=kwargs.pop("namespace", "/f3rm"), **kwargs)
        from f3rm_ros.core.sim import resolve_scene
        from f3rm_ros.core.sim.camera import SimCamera
        from f3rm_ros.core.sim.render import intrinsics_from_fov
        from f3rm_ros.core.sim.trajectory import scan_poses

        # every setting is used once, at start: read-only, so a change is refused rather than accepted and ignored
        self.params = {"": ParamBinding(self, SimCameraSettings),
                       "trajectory": ParamBinding(self, TrajectoryConfig, "trajectory", read_only=True),
                       "render": ParamBinding(self, RenderConfig, "render", read_only=True)}
        self.settings: SimCameraSettings = self.params[""].config
        self.trajectory: TrajectoryConfig = self.params["trajectory"].config
        self.render_config: RenderConfig = self.params["render"].config
        s = self.settings
        self.scene = resolve_scene(s.scene)
        K = intrinsics_from_fov(s.width, s.height, s.fov_y_deg)
        self.camera = SimCamera(self.scene, K, scan_poses(self.trajectory), self.render_config, rate_hz=s.rate_hz,
                                pose_noise_deg=s.pose_noise_deg, pose_noise_m=s.pose_noise_m, seed=s.seed)
        self.index = 0
        self.published = 0
        self.finished = False
        self._started_at = time.monotonic()
        self._matched_at: float | None = None
        self._render_s: list[float] = []

        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                             reliability=ReliabilityPolicy.RELIABLE)
        self.pose_pub = self.create_publisher(PoseStamped, s.pose_topic, reliable)
        self.info_pub = self.create_publisher(CameraInfo, s.camera_info_topic, reliable)
        self.image_pub = self.create_publisher(Image, s.image_topic, reliable)
        self.labels_pub = self.create_publisher(Image, s.labels_topic, reliable) if s.labels_topic else None
        self._data_pubs = [self.pose_pub, self.info_pub, self.image_pub]
        if self.labels_pub is not None:
            self._data_pubs.append(self.labels_pub)
        self.depth_pub = self.create_publisher(Image, s.depth_topic, reliable) if s.depth_topic else None
        if self.depth_pub is not None:
            self._data_pubs.append(self.depth_pub)
        self.finished_pub = self.create_publisher(Bool, "~/finished", latched)
        self.finished_pub.publish(Bool(data=False))
        if s.labels_topic:
            table, _ = self.scene.label_table()
            self.table_pub = self.create_publisher(String, s.label_table_topic, latched)
            self.table_pub.publish(String(data=json.dumps(table)))
        self.tf = tf2_ros.TransformBroadcaster(self) if (HAVE_TF2 and s.publish_tf) else None
        if s.publish_tf and not HAVE_TF2:
            self.get_logger().info("tf2_ros is not installed: the camera pose goes out on the pose topic only")
        group = MutuallyExclusiveCallbackGroup()
        self.timer = self.create_timer(1.0 / s.rate_hz, self._on_timer, callback_group=group)
        self.diagnostics = DiagnosticsPublisher(self, self._diagnostic_status)
        self.get_logger().info(f"sim camera: scene {self.scene.name!r}, {len(self.camera)} poses at {s.rate_hz:g} Hz, "
                               f"{s.width}x{s.height}, publishing {self.resolve_topic_name(s.image_topic)}")

    def _on_timer(self) -> None:
        s = self.settings
        if self.finished:
            return
        if time.monotonic() - self._started_at < s.start_delay_s:
            return
        if s.wait_for_subscribers and self._matched_at is None:
            if min(p.get_subscription_count() for p in self._data_pubs) < s.wait_for_subscribers:
                return
            self._matched_at = time.monotonic()
        if self._matched_at is not None and time.monotonic() - self._matched_at < s.discovery_settle_s:
            return  # let discovery settle on the subscriber side too
        try:
            self.publish_frame(self.index)
        except Exception as e:  # never die on a render problem; say it and go on
            self.get_logger().error(f"frame {self.index}: {type(e).__name__}: {e}", throttle_duration_sec=5.0)
        self.index += 1
        if self.index >= len(self.camera):
            if s.loop:
                self.index = 0
            else:
                self.finished = True
                self.finished_pub.publish(Bool(data=True))
                self.get_logger().info(f"trajectory finished after {self.published} frames")

    def publish_frame(self, index: int) -> None:
        """Render pose ``index`` and publish pose, TF, camera_info, labels, depth and image with one stamp."""
        s = self.settings
        t0 = time.perf_counter()
        fr = self.camera.capture(index)
        self._render_s.append(time.perf_counter() - t0)
        stamp = self.get_clock().now().to_msg()
        pose = matrix_to_pose_msg(fr.T_world_cam, frame_id=s.world_frame, stamp=stamp)
        self.pose_pub.publish(pose)
        if self.tf is not None:
            tf = TransformStamped()
            tf.header = pose.header
            tf.child_frame_id = s.camera_frame
            p, q = pose.pose.position, pose.pose.orientation
            tf.transform.translation.x, tf.transform.translation.y, tf.transform.translation.z = p.x, p.y, p.z
            tf.transform.rotation = q
            self.tf.sendTransform(tf)
        self.info_pub.publish(intrinsics_to_camera_info(fr.intrinsics, stamp=stamp, frame_id=s.camera_frame))
        if self.labels_pub is not None:
            self.labels_pub.publish(labels_to_image(fr.label, stamp=stamp, frame_id=s.camera_frame))
        if self.depth_pub is not None:
            self.depth_pub.publish(depth_to_image(fr.depth, stamp=stamp, frame_id=s.camera_frame))
        self.image_pub.publish(rgb_to_image(fr.image, stamp=stamp, frame_id=s.camera_frame))
        self.published += 1

    def _diagnostic_status(self) -> tuple[int, str, dict]:
        values = {"scene": self.scene.name, "frame": self.index, "frames_published": self.published,
                  "trajectory_length": len(self.camera), "finished": self.finished,
                  "render_s_mean": float(np.mean(self._render_s)) if self._render_s else 0.0}
        if self._render_s and np.mean(self._render_s[-10:]) > 1.0 / self.settings.rate_hz:
            return WARN, "rendering is slower than rate_hz", values
        return OK, "finished" if self.finished else "publishing", values


def main(args: list[str] | None = None) -> int:
    """``ros2 run f3rm_ros sim_camera_node`` / ``scripts/nodes/sim_camera_node``."""
    return run_node(SimCameraNode, args)


if __name__ == "__main__":
    import sys

    sys.exit(main())
