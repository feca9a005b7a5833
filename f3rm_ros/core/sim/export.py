"""Render a scene along a scanning trajectory into a ``transforms.json`` dataset with label images.

The dataset is written with :class:`f3rm_ros.core.dataset.DatasetWriter` (OpenGL poses on disk,
``world_frame``/``units``/``camera_convention`` keys) plus the synthetic-world extras
(read by :mod:`f3rm_ros.core.dataset`): per frame ``label_path`` (16-bit PNG of label ids, 0 = nothing)
and the top-level ``f3rm_labels`` table. Per frame we also write ``depth_path`` (16-bit PNG, millimetres, 0 = no hit;
``depth_scale`` = 0.001 metres per unit) and, when pose noise is on, ``true_transform_matrix`` (the
noise-free camera-to-world, OpenGL convention). The top-level ``f3rm_sim`` key records the scene and
every setting used.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from f3rm_ros.core.config import param, to_dict
from f3rm_ros.core.geometry import c2w_opencv_to_opengl
from f3rm_ros.core.dataset import encode_depth_png  # noqa: F401 - re-exported (was defined here)
from f3rm_ros.core.sim.camera import SimCamera
from f3rm_ros.core.sim.render import RenderConfig, intrinsics_from_fov
from f3rm_ros.core.sim.scene import Scene
from f3rm_ros.core.sim.trajectory import TrajectoryConfig, scan_poses

__all__ = ["SimDatasetConfig", "render_dataset", "encode_depth_png"]


@dataclass
class SimDatasetConfig:
    """Everything `f3rm-sim render` needs besides the scene."""

    width: int = param(640, "image width, pixels", range=(8, 8192))
    height: int = param(480, "image height, pixels", range=(8, 8192))
    fov_y_deg: float = param(42.5, "vertical field of view (42.5 deg ~ RealSense D435 colour at 640x480)",
                             range=(1.0, 170.0))
    rate_hz: float = param(2.0, "simulated frame rate for the timestamps", range=(1e-3, 1000.0))
    pose_noise_deg: float = param(0.0, "std of the rotation error of the written poses", range=(0.0, 45.0))
    pose_noise_m: float = param(0.0, "std of the translation error of the written poses", range=(0.0, 1.0))
    seed: int = param(0, "seed of image and pose noise")
    write_depth: bool = param(True, "also write 16-bit depth PNGs (millimetres)")
    image_format: str = param("png", "image file format", choices=("png", "jpg"))
    trajectory: TrajectoryConfig = param(TrajectoryConfig(), "camera trajectory")
    render: RenderConfig = param(RenderConfig(), "lighting and image noise")


def render_dataset(scene: Scene, out_dir: str | Path, config: SimDatasetConfig | None = None,
                   overwrite: bool = False, progress=None) -> dict:
    """Render ``scene`` into a dataset folder.

    Args:
        scene: the scene.
        out_dir: dataset folder (created); must be empty of frames unless ``overwrite``.
        config: settings (default :class:`SimDatasetConfig`).
        overwrite: remove an existing dataset's frames first.
        progress: optional callable(i, n, seconds_for_this_frame).

    Returns:
        {"path": transforms.json path, "num_frames": N, "render_s_per_image": mean render time,
        "total_s": wall time}
    """
    from f3rm_ros.core.dataset import DatasetWriter

    c = config or SimDatasetConfig()
    out_dir = Path(out_dir)
    writer = DatasetWriter(out_dir, image_format=c.image_format)
    if len(writer):
        if not overwrite:
            raise FileExistsError(f"{out_dir} already holds a dataset with {len(writer)} frames "
                                  "(pass overwrite=True / --overwrite)")
        writer.clear()
    K = intrinsics_from_fov(c.width, c.height, c.fov_y_deg)
    poses = scan_poses(c.trajectory)
    cam = SimCamera(scene, K, poses, c.render, rate_hz=c.rate_hz, pose_noise_deg=c.pose_noise_deg,
                    pose_noise_m=c.pose_noise_m, seed=c.seed)
    table, _ = scene.label_table()
    writer.set_labels_table(table)
    writer.update_meta({"f3rm_sim": {"scene": scene.name, "scene_file": scene.source,
                                     "settings": to_dict(c), "table_top_z_m": 0.0}})
    noisy = c.pose_noise_deg > 0 or c.pose_noise_m > 0
    t_start = time.perf_counter()
    render_times = []
    for i in range(len(cam)):
        t0 = time.perf_counter()
        fr = cam.capture(i)
        render_times.append(time.perf_counter() - t0)
        extra = {}
        if noisy:
            extra["true_transform_matrix"] = c2w_opencv_to_opengl(fr.T_world_cam_true).tolist()
        writer.add_frame(fr.image, fr.intrinsics, fr.T_world_cam, stamp=fr.timestamp, extra=extra,
                         labels=fr.label, depth_m=fr.depth if c.write_depth else None)
        if progress is not None:
            progress(i, len(cam), render_times[-1])
    return {"path": writer.json_path, "num_frames": len(cam),
            "render_s_per_image": float(np.mean(render_times)) if render_times else 0.0,
            "total_s": time.perf_counter() - t_start}
