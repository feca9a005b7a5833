"""Capture without ROS: the decisions of the capture node (f3rm_ros.ros.capture_node), unit-tested directly.

* :mod:`.poses`: camera poses by stamp (:class:`PoseBuffer`, interpolation);
* :mod:`.keyframes`: the keyframe rule; :mod:`.sharpness`: the blur score;
* :mod:`.writer`: :class:`BackgroundWriter`, disk writes off the caller's thread.
"""

from f3rm_ros.core.capture.keyframes import KeyframeSelector
from f3rm_ros.core.capture.poses import T_BODY_OPTICAL, PoseBuffer, PoseLookup, interpolate_pose
from f3rm_ros.core.capture.sharpness import laplacian_variance, laplacian_variance_reference
from f3rm_ros.core.capture.writer import BackgroundWriter, WriteJob

__all__ = [
    "BackgroundWriter",
    "KeyframeSelector",
    "PoseBuffer",
    "PoseLookup",
    "T_BODY_OPTICAL",
    "WriteJob",
    "interpolate_pose",
    "laplacian_variance",
    "laplacian_variance_reference",
]
