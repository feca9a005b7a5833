"""Camera poses from TF for the capture session (optional: the PyPI ROS wheels have no ``tf2_ros``)."""

from __future__ import annotations

from typing import Any

from f3rm_ros.core.capture import PoseLookup
from f3rm_ros.ros.conversions import ConversionError, transform_msg_to_matrix

try:
    import tf2_ros  # type: ignore

    HAVE_TF2 = True
except ImportError:
    tf2_ros = None
    HAVE_TF2 = False

__all__ = ["HAVE_TF2", "TfPoses"]


class TfPoses:
    """``world`` -> ``camera`` from TF at an image stamp, as :class:`PoseLookup` (a session's ``pose_lookup``)."""

    def __init__(self, node: Any, world: str, camera: str, cache_s: float) -> None:
        from rclpy.duration import Duration

        if not HAVE_TF2:
            raise RuntimeError("camera poses from TF need the tf2_ros package, which is not installed here")
        self.buffer = tf2_ros.Buffer(cache_time=Duration(seconds=max(cache_s, 1.0)))
        self.listener = tf2_ros.TransformListener(self.buffer, node)
        self.world, self.camera = world, camera

    def lookup(self, stamp_s: float, final: bool) -> PoseLookup:
        """The pose at ``stamp_s``; "wait" while TF may still get it, unless ``final``."""
        from rclpy.time import Time

        try:
            tf = self.buffer.lookup_transform(self.world, self.camera, Time(nanoseconds=int(round(stamp_s * 1e9))))
        except (tf2_ros.ExtrapolationException, tf2_ros.LookupException, tf2_ros.ConnectivityException) as e:
            if not final:
                return PoseLookup("wait")
            kind = "too_far" if isinstance(e, tf2_ros.ExtrapolationException) else "empty"
            return PoseLookup(kind, detail=f"TF {self.world} -> {self.camera}: {e}")
        try:
            return PoseLookup("ok", transform_msg_to_matrix(tf), 0.0)
        except ConversionError as e:
            return PoseLookup("empty", detail=f"TF {self.world} -> {self.camera}: {e}")
