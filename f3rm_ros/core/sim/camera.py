"""A simulated RGB-D camera moving along a trajectory (stand-in for a robot's wrist camera).

:class:`SimCamera` yields :class:`CameraFrame` objects: the rendered image, the intrinsics, the
camera pose ``T_world_cam`` (camera-to-world, **OpenCV** convention, as a ROS optical frame) and a
timestamp, plus ground-truth depth and labels. With pose noise enabled, ``T_world_cam`` is the noisy
pose a robot would report and ``T_world_cam_true`` the pose the image was rendered from.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Iterator

import numpy as np

from f3rm_ros.core.cameras import CameraIntrinsics
from f3rm_ros.core.sim.render import RenderConfig, Renderer
from f3rm_ros.core.sim.scene import Scene
from f3rm_ros.core.sim.trajectory import perturb_poses

__all__ = ["CameraFrame", "SimCamera"]


@dataclass
class CameraFrame:
    """One captured frame.

    Attributes:
        image: [H, W, 3] uint8 RGB.
        intrinsics: pinhole intrinsics (pixels).
        T_world_cam: (4, 4) reported camera-to-world, OpenCV convention (noisy if pose noise is on).
        timestamp: seconds.
        depth: [H, W] float32 z-depth in metres (0 = nothing hit).
        label: [H, W] uint16 ``f3rm_labels`` ids.
        T_world_cam_true: (4, 4) pose the image was rendered from.
        index: frame number along the trajectory.
    """

    image: np.ndarray
    intrinsics: CameraIntrinsics
    T_world_cam: np.ndarray
    timestamp: float
    depth: np.ndarray
    label: np.ndarray
    T_world_cam_true: np.ndarray
    index: int


class SimCamera:
    """Renders frames along a list of poses, at ``rate_hz`` simulated frames per second.

    Args:
        scene: the scene to film.
        intrinsics: camera intrinsics.
        poses: [N, 4, 4] camera-to-world (OpenCV) poses, in order.
        render_config: renderer settings (lighting, shadows, image noise).
        rate_hz: frame rate used for the timestamps.
        start_time: timestamp of the first frame, seconds.
        pose_noise_deg / pose_noise_m: std of the rotation / translation error of the reported pose.
        seed: seed of image and pose noise.
        renderer: reuse an existing renderer of ``scene`` (optional).
    """

    def __init__(self, scene: Scene, intrinsics: CameraIntrinsics, poses: np.ndarray,
                 render_config: RenderConfig | None = None, rate_hz: float = 2.0, start_time: float = 0.0,
                 pose_noise_deg: float = 0.0, pose_noise_m: float = 0.0, seed: int = 0,
                 renderer: Renderer | None = None):
        poses = np.asarray(poses, dtype=np.float64)
        if poses.ndim != 3 or poses.shape[1:] != (4, 4):
            raise ValueError(f"poses must be [N, 4, 4], got {poses.shape}")
        if not rate_hz > 0:
            raise ValueError(f"rate_hz must be > 0, got {rate_hz!r}")
        self.scene = scene
        self.intrinsics = intrinsics
        self.poses = poses
        self.rate_hz = float(rate_hz)
        self.start_time = float(start_time)
        self.renderer = renderer or Renderer(scene, render_config)
        self._rng = np.random.default_rng(seed)
        if pose_noise_deg > 0 or pose_noise_m > 0:
            self.reported_poses = perturb_poses(poses, pose_noise_deg, pose_noise_m, np.random.default_rng(seed + 1))
        else:
            self.reported_poses = poses.copy()

    def __len__(self) -> int:
        return len(self.poses)

    def capture(self, index: int) -> CameraFrame:
        """Render frame ``index`` of the trajectory."""
        out = self.renderer.render(self.intrinsics, self.poses[index], rng=self._rng)
        return CameraFrame(out.rgb, self.intrinsics, self.reported_poses[index].copy(),
                           self.start_time + index / self.rate_hz, out.depth, out.label,
                           self.poses[index].copy(), index)

    def __iter__(self) -> Iterator[CameraFrame]:
        for i in range(len(self.poses)):
            yield self.capture(i)
