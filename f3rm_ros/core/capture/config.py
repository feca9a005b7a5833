"""Settings of a capture session (:class:`f3rm_ros.core.capture.session.CaptureSession`).

The capture node declares them as ROS parameters of the same names (its own settings, topics and
rates, extend this class), so each setting has one home and one help text.
"""

from __future__ import annotations

from dataclasses import dataclass

from f3rm_ros.core.config import param

__all__ = ["CaptureConfig"]


@dataclass
class CaptureConfig:
    """Dataset, pose matching and keyframe rules of a capture (all but the folders can change at run time)."""

    data_root: str = param("~/f3rm_data", "root folder of all datasets; the dataset folder must resolve inside it",
                           read_only=True)
    dataset_name: str = param("capture", "dataset folder under data_root (an existing dataset there is continued; "
                                         "can be changed while not capturing)")
    pose_frame_convention: str = param("optical", "axes of the posed camera frame: optical (x right, y down, "
                                                  "z forward; REP 103 *_optical_frame = OpenCV) or body (x forward, "
                                                  "y left, z up)", choices=("optical", "body"))
    world_frame: str = param("world", "frame the poses are given in and the dataset is stored in", read_only=True)
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
