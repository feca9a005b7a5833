"""Building demonstration gripper poses from an approach direction and a closing direction.

Gripper frame (gripper.py): +z towards the wrist (the gripper moves along -z to approach), fingers
close along y, origin between the fingers about 1 cm above the fingertips.
"""

from __future__ import annotations

import numpy as np

__all__ = ["gripper_pose"]


def gripper_pose(origin: np.ndarray,  # (3,)
                 approach: np.ndarray,  # (3,) direction the gripper moves in to grasp
                 closing: np.ndarray) -> np.ndarray:  # (3,) direction the fingers close along
    """``T_frame_gripper`` (4, 4) with its origin at ``origin``, z = -approach and y along ``closing``
    (made orthogonal to the approach).

    Raises:
        ValueError: zero vectors or closing parallel to approach.
    """
    a = np.asarray(approach, dtype=np.float64)
    c = np.asarray(closing, dtype=np.float64)
    if np.linalg.norm(a) < 1e-12 or np.linalg.norm(c) < 1e-12:
        raise ValueError("approach and closing directions must be non-zero")
    z = -a / np.linalg.norm(a)
    y = c - np.dot(c, z) * z
    if np.linalg.norm(y) < 1e-9:
        raise ValueError("the closing direction must not be parallel to the approach direction")
    y /= np.linalg.norm(y)
    x = np.cross(y, z)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z], axis=1)
    T[:3, 3] = np.asarray(origin, dtype=np.float64)
    return T
