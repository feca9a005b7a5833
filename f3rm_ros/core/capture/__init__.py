"""Capture without ROS: posed keyframes from a camera stream, written as a dataset as they arrive.

* :mod:`.session`: :class:`CaptureSession`, what the capture node does (matching, keep/forget, reasons,
  START/STOP/CLEAR/SAVE, counters), fed with decoded data by :mod:`f3rm_ros.ros.capture_node`;
* :mod:`.matching`: images matched to intrinsics, poses, label and depth images by stamp; :data:`REASONS`;
* :mod:`.poses`: camera poses by stamp (:class:`PoseBuffer`, interpolation);
* :mod:`.keyframes`: the keyframe rule; :mod:`.sharpness`: the blur score;
* :mod:`.writer`: :class:`BackgroundWriter`, disk writes off the caller's thread;
* :mod:`.config`: :class:`CaptureConfig`, the settings.
"""

from f3rm_ros.core.capture.config import CaptureConfig
from f3rm_ros.core.capture.keyframes import KeyframeSelector
from f3rm_ros.core.capture.matching import REASONS, FrameMatcher, stamp_seconds
from f3rm_ros.core.capture.poses import T_BODY_OPTICAL, PoseBuffer, PoseLookup, interpolate_pose
from f3rm_ros.core.capture.session import CaptureSession, CaptureState
from f3rm_ros.core.capture.sharpness import laplacian_variance, laplacian_variance_reference
from f3rm_ros.core.capture.writer import BackgroundWriter, WriteJob

__all__ = [
    "BackgroundWriter",
    "CaptureConfig",
    "CaptureSession",
    "CaptureState",
    "FrameMatcher",
    "KeyframeSelector",
    "PoseBuffer",
    "PoseLookup",
    "REASONS",
    "T_BODY_OPTICAL",
    "WriteJob",
    "interpolate_pose",
    "laplacian_variance",
    "laplacian_variance_reference",
    "stamp_seconds",
]
