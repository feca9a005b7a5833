"""Parallel-jaw gripper model (Franka Emika Panda hand by default) as a few oriented boxes.

Gripper frame (f3rm-method.md section 4), used by the grasp planner, the ground-truth grasp check
and the demos:

* origin between the two fingers, ``fingertip_below_origin_m`` (~1 cm) above the fingertips;
* +z points from the fingers towards the wrist, so the gripper approaches an object along -z;
* the fingers close along y: their inner (contact) faces sit at y = +-opening/2
  (``max_opening_m`` = 0.08 m for the Panda);
* x completes the right-handed frame (the finger width runs along x).

Geometry, bottom to top (Panda numbers, metres): each finger is a box 0.020 (x, width) x 0.012
(y, thickness) x 0.054 (z, length) whose tip is at z = -0.010; the palm (the hand housing) is a
box 0.063 x 0.204 x 0.060 sitting on the finger roots; above it a wrist box (flange and the last
arm link, 0.09 x 0.09 x 0.10) stands in for the arm so that a pose that drives the arm into the
table is rejected too. Every size is a :class:`GripperConfig` field.

A user's robot usually names a different tool frame (e.g. ``panda_hand_tcp``: z along the approach
direction). ``GripperConfig.tool_position_m`` / ``tool_quat_xyzw`` give the fixed transform
``T_grasp_tool`` (the user's tool frame expressed in our gripper frame); :meth:`Gripper.to_tool`
turns a planned pose ``T_world_grasp`` into ``T_world_tool``. For ``panda_hand_tcp`` at the
fingertip pads use position (0, 0, -0.01) and quaternion (1, 0, 0, 0) (180 degrees about x).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from f3rm_ros.core.config import param
from f3rm_ros.core.geometry import invert_transform, make_transform, pose_to_matrix

__all__ = ["GripperConfig", "Gripper", "box_grid_points"]


@dataclass
class GripperConfig:
    """Geometry of a parallel-jaw gripper (defaults: Franka Emika Panda hand)."""

    name: str = param("panda", "gripper name (informational)")
    max_opening_m: float = param(0.08, "maximum distance between the inner finger faces, metres",
                                 range=(0.005, 0.5))
    finger_size_m: tuple[float, float, float] = param(
        (0.020, 0.012, 0.054), "finger box size (x width, y thickness, z length), metres")
    fingertip_below_origin_m: float = param(
        0.010, "distance from the gripper origin down to the fingertips, metres", range=(0.0, 0.2))
    palm_size_m: tuple[float, float, float] = param(
        (0.063, 0.204, 0.060), "palm (hand housing) box size (x, y, z), metres; sits on the finger roots")
    wrist_size_m: tuple[float, float, float] = param(
        (0.090, 0.090, 0.100), "wrist/flange box above the palm (x, y, z), metres; z = 0 disables it")
    default_voxel_m: float = param(0.0075, "voxel size of collision_points(), metres", range=(1e-4, 0.1))
    tool_position_m: tuple[float, float, float] = param(
        (0.0, 0.0, 0.0), "origin of the user's tool frame in the gripper frame, metres")
    tool_quat_xyzw: tuple[float, float, float, float] = param(
        (0.0, 0.0, 0.0, 1.0), "orientation of the user's tool frame in the gripper frame (x, y, z, w)")


def box_grid_points(size: np.ndarray, voxel: float) -> np.ndarray:
    """Points on a regular grid filling an axis-aligned box centred at the origin.

    Each axis gets ``max(1, ceil(size / voxel))`` cells and one point at each cell centre, so every
    box, however thin, yields points and the spacing is at most ``voxel``.

    Args:
        size: (3,) box edge lengths in metres.
        voxel: grid spacing in metres (> 0).

    Returns:
        np.ndarray [M, 3] points in the box frame.
    """
    size = np.asarray(size, dtype=np.float64)
    if voxel <= 0 or not np.isfinite(voxel):
        raise ValueError(f"voxel must be a positive number, got {voxel!r}")
    axes = []
    for s in size:
        n = max(1, int(np.ceil(s / voxel - 1e-9)))
        axes.append((np.arange(n) + 0.5) * (s / n) - s / 2)
    g = np.meshgrid(*axes, indexing="ij")
    return np.stack([a.ravel() for a in g], axis=1)


class Gripper:
    """A parallel-jaw gripper made of boxes, in the gripper frame described in the module docstring.

    Example::

        g = Gripper()                               # Panda
        pts = g.collision_points()                  # [M, 3] palm + wrist points, gripper frame
        for name, T_gripper_box, size in g.boxes(0.05):
            ...
    """

    def __init__(self, config: GripperConfig | None = None):
        self.config = config or GripperConfig()
        c = self.config
        for fname in ("finger_size_m", "palm_size_m", "wrist_size_m", "tool_position_m"):
            v = np.asarray(getattr(c, fname), dtype=np.float64)
            if v.shape != (3,) or not np.all(np.isfinite(v)):
                raise ValueError(f"GripperConfig.{fname} must be 3 finite numbers, got {getattr(c, fname)!r}")
        if min(c.finger_size_m) <= 0 or min(c.palm_size_m) <= 0 or min(c.wrist_size_m) < 0:
            raise ValueError("GripperConfig: finger and palm sizes must be > 0, wrist sizes >= 0")
        self.T_grasp_tool = pose_to_matrix(np.asarray(c.tool_position_m), np.asarray(c.tool_quat_xyzw))

    # --- geometry ---------------------------------------------------------------------------------
    @property
    def max_opening(self) -> float:
        return float(self.config.max_opening_m)

    @property
    def finger_z_range(self) -> tuple[float, float]:
        """(bottom, top) z of the fingers in the gripper frame, metres."""
        z0 = -self.config.fingertip_below_origin_m
        return z0, z0 + self.config.finger_size_m[2]

    def _check_opening(self, opening: float | None) -> float:
        if opening is None:
            return self.max_opening
        opening = float(opening)
        if not np.isfinite(opening) or opening < 0 or opening > self.max_opening + 1e-9:
            raise ValueError(f"opening must be in [0, {self.max_opening}] m, got {opening!r}")
        return opening

    def boxes(self, opening: float | None = None, *, include_fingers: bool = True,
              include_wrist: bool = True) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """The gripper's boxes at a given finger opening.

        Args:
            opening: distance between the inner finger faces in metres (default: max opening).
            include_fingers / include_wrist: leave those boxes out when False.

        Returns:
            list of (name, T_gripper_box (4, 4), size (3,)) with names "finger_left" (+y),
            "finger_right" (-y), "palm" and "wrist"; each box is axis-aligned in the gripper frame
            and centred at T_gripper_box's origin.
        """
        c = self.config
        opening = self._check_opening(opening)
        fx, fy, fz = c.finger_size_m
        zb, zt = self.finger_z_range
        out: list[tuple[str, np.ndarray, np.ndarray]] = []
        if include_fingers:
            for name, sign in (("finger_left", 1.0), ("finger_right", -1.0)):
                centre = np.array([0.0, sign * (opening / 2 + fy / 2), (zb + zt) / 2])
                out.append((name, make_transform(np.eye(3), centre), np.array([fx, fy, fz])))
        px, py, pz = c.palm_size_m
        out.append(("palm", make_transform(np.eye(3), np.array([0.0, 0.0, zt + pz / 2])), np.array([px, py, pz])))
        wx, wy, wz = c.wrist_size_m
        if include_wrist and min(wx, wy, wz) > 0:
            out.append(("wrist", make_transform(np.eye(3), np.array([0.0, 0.0, zt + pz + wz / 2])),
                        np.array([wx, wy, wz])))
        return out

    def collision_points(self, voxel: float | None = None, include_fingers: bool = False,
                         opening: float | None = None, include_wrist: bool = True) -> np.ndarray:
        """Points filling the gripper's volume on a grid (for density-based collision checks).

        As in F3RM, the fingers are left out by default (they are meant to touch the object).

        Args:
            voxel: grid spacing, metres (default ``config.default_voxel_m`` = 0.0075).
            include_fingers: add points of both fingers (at ``opening``).
            opening: finger opening when fingers are included (default: max opening).
            include_wrist: add points of the wrist box (Panda default: 2016 of the 4032 points).

        Returns:
            np.ndarray [M, 3] float64, gripper frame, metres.
        """
        voxel = self.config.default_voxel_m if voxel is None else float(voxel)
        pts = []
        for _name, T, size in self.boxes(opening, include_fingers=include_fingers,
                                            include_wrist=include_wrist):
            pts.append(box_grid_points(size, voxel) + T[:3, 3])
        return np.concatenate(pts, axis=0)

    def closing_region(self, opening: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The box swept between the inner finger faces: (T_gripper_box (4, 4), size (3,))."""
        opening = self._check_opening(opening)
        zb, zt = self.finger_z_range
        return (make_transform(np.eye(3), np.array([0.0, 0.0, (zb + zt) / 2])),
                np.array([self.config.finger_size_m[0], opening, zt - zb]))

    def mesh(self, opening: float | None = None, color: tuple[float, float, float] = (0.55, 0.55, 0.6)):
        """An open3d TriangleMesh of the gripper (gripper frame) for display.

        Args:
            opening: finger opening in metres (default: max opening).
            color: RGB in [0, 1] painted on every vertex.
        """
        import open3d as o3d

        out = o3d.geometry.TriangleMesh()
        for _name, T, size in self.boxes(opening):
            box = o3d.geometry.TriangleMesh.create_box(*size)
            box.translate(-np.asarray(size) / 2)
            box.transform(T)
            out += box
        out.compute_vertex_normals()
        out.paint_uniform_color(color)
        return out

    # --- tool frame -------------------------------------------------------------------------------
    def to_tool(self, T_world_grasp: np.ndarray) -> np.ndarray:
        """Planned gripper poses (..., 4, 4) -> the user's tool-frame poses (..., 4, 4)."""
        return np.asarray(T_world_grasp, dtype=np.float64) @ self.T_grasp_tool

    def from_tool(self, T_world_tool: np.ndarray) -> np.ndarray:
        """Tool-frame poses (..., 4, 4) -> gripper-frame poses (..., 4, 4) (inverse of :meth:`to_tool`)."""
        return np.asarray(T_world_tool, dtype=np.float64) @ invert_transform(self.T_grasp_tool)
