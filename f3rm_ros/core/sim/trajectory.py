"""Camera trajectories like a robot arm scanning a table: arcs on a hemisphere around a target.

Views are spread over ``num_arcs`` horizontal arcs at heights between ``min_height_m`` and
``max_height_m`` above the table top, at horizontal distance ``radius_m`` from the target, over an
azimuth range (a robot standing on one side of the table cannot see from behind: set
``azimuth_range_deg`` to e.g. (-120, 120)). The arcs alternate direction, as a robot sweeping back
and forth would. Each camera looks at the target (plus jitter) with the world z axis up in the image.
Poses are camera-to-world in the **OpenCV** convention.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from f3rm_ros.core.config import param
from f3rm_ros.core.geometry import look_at_opencv, make_transform

__all__ = ["TrajectoryConfig", "scan_poses", "perturb_poses", "look_at_cv"]


def look_at_cv(eye: np.ndarray, target: np.ndarray, up: np.ndarray = (0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world (4, 4), OpenCV convention, at ``eye`` looking at ``target``, ``up`` upwards in the image.

    Same as :func:`f3rm_ros.core.geometry.look_at_opencv` since e8b4ea6 fixed its roll (a test
    checks that world up appears upwards); kept as the simulator's name for it.
    """
    return look_at_opencv(eye, target, up)


@dataclass
class TrajectoryConfig:
    """A hemisphere-arc scanning trajectory (metres, degrees, world frame with z up)."""

    num_views: int = param(50, "number of camera poses", range=(1, 100000))
    num_arcs: int = param(3, "number of arcs at different heights", range=(1, 100))
    radius_m: float = param(0.55, "horizontal distance from the target to the cameras", range=(0.01, 100.0))
    min_height_m: float = param(0.25, "height of the lowest arc above the table top", range=(-10.0, 100.0))
    max_height_m: float = param(0.65, "height of the highest arc above the table top", range=(-10.0, 100.0))
    azimuth_range_deg: tuple[float, float] = param((-180.0, 180.0), "azimuth range of each arc (0 = +x)")
    target: tuple[float, float, float] = param((0.0, 0.0, 0.04), "point the cameras look at")
    position_jitter_m: float = param(0.02, "std of random camera position offsets", range=(0.0, 10.0))
    target_jitter_m: float = param(0.03, "std of random look-at target offsets", range=(0.0, 10.0))
    roll_jitter_deg: float = param(3.0, "std of random roll about the optical axis", range=(0.0, 180.0))
    seed: int = param(0, "random seed of the jitter")


def scan_poses(config: TrajectoryConfig | None = None) -> np.ndarray:
    """Camera poses along the scanning trajectory.

    Returns:
        [num_views, 4, 4] camera-to-world, OpenCV convention, in trajectory order.
    """
    c = config or TrajectoryConfig()
    if c.max_height_m < c.min_height_m:
        raise ValueError(f"max_height_m ({c.max_height_m}) < min_height_m ({c.min_height_m})")
    rng = np.random.default_rng(c.seed)
    arcs = min(c.num_arcs, c.num_views)
    counts = [c.num_views // arcs + (1 if i < c.num_views % arcs else 0) for i in range(arcs)]
    heights = np.linspace(c.min_height_m, c.max_height_m, arcs) if arcs > 1 else np.array([c.min_height_m])
    a0, a1 = np.deg2rad(c.azimuth_range_deg[0]), np.deg2rad(c.azimuth_range_deg[1])
    full = abs((a1 - a0) - 2 * np.pi) < 1e-6
    target = np.asarray(c.target, dtype=np.float64)
    poses = []
    for k, (n, h) in enumerate(zip(counts, heights, strict=True)):
        if full:  # closed circle: no duplicate endpoint; offset alternate arcs by half a step
            az = a0 + (np.arange(n) + 0.5 * (k % 2)) * (a1 - a0) / n
        else:
            az = np.linspace(a0, a1, n) if n > 1 else np.array([(a0 + a1) / 2])
        if k % 2 == 1:
            az = az[::-1]
        for a in az:
            eye = target + np.array([c.radius_m * np.cos(a), c.radius_m * np.sin(a), 0.0])
            eye[2] = h
            eye = eye + rng.normal(0, c.position_jitter_m, 3)
            tgt = target + rng.normal(0, c.target_jitter_m, 3)
            T = look_at_cv(eye, tgt)
            roll = np.deg2rad(rng.normal(0, c.roll_jitter_deg))
            Rz = np.array([[np.cos(roll), -np.sin(roll), 0], [np.sin(roll), np.cos(roll), 0], [0, 0, 1.0]])
            T[:3, :3] = T[:3, :3] @ Rz
            poses.append(T)
    return np.stack(poses)


def perturb_poses(poses: np.ndarray, rotation_std_deg: float, translation_std_m: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Poses [N, 4, 4] with random rigid errors (as a robot's forward kinematics + hand-eye calibration).

    The error is applied in the camera frame: ``T' = T @ dT`` with dT a rotation about a random axis
    by N(0, rotation_std_deg) degrees and a translation of N(0, translation_std_m) per axis.
    """
    from scipy.spatial.transform import Rotation

    out = np.array(poses, dtype=np.float64, copy=True)
    for i in range(len(out)):
        rv = rng.normal(0, 1, 3)
        rv = rv / np.linalg.norm(rv) * np.deg2rad(rng.normal(0, rotation_std_deg))
        dT = make_transform(Rotation.from_rotvec(rv).as_matrix(), rng.normal(0, translation_std_m, 3))
        out[i] = out[i] @ dT
    return out
