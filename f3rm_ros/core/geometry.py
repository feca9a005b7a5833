"""Rigid transforms, rotations and camera conventions (numpy; metres, right-handed, REP 103).

Conventions used across the project:

* A pose ``T_a_b`` is a 4x4 homogeneous matrix mapping points expressed in frame ``b`` to frame
  ``a`` (so ``T_world_cam`` is the camera's pose in the world, "camera-to-world").
* Quaternions are ``(x, y, z, w)``, the order of ``geometry_msgs/Quaternion``.
* Camera conventions:
  - **OpenCV** (ROS optical frames, REP 103 ``*_optical_frame``): +x right, +y down, +z forward.
  - **OpenGL** (nerfstudio / instant-ngp ``transforms.json``): +x right, +y up, +z backward.
  Converting a camera-to-world matrix between them flips the camera's y and z axes.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "OPENGL_FROM_OPENCV",
    "c2w_opencv_to_opengl",
    "c2w_opengl_to_opencv",
    "make_transform",
    "invert_transform",
    "transform_points",
    "quat_to_matrix",
    "matrix_to_quat",
    "pose_to_matrix",
    "matrix_to_pose",
    "look_at_opencv",
    "rotation_angle",
    "is_rigid",
]

# Multiplying a camera-to-world matrix on the right by this flips the camera's y and z axes.
OPENGL_FROM_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])


def c2w_opencv_to_opengl(T_world_cam_cv: np.ndarray) -> np.ndarray:
    """Camera-to-world (..., 4, 4) in the OpenCV convention -> the same camera in OpenGL's."""
    return np.asarray(T_world_cam_cv, dtype=np.float64) @ OPENGL_FROM_OPENCV


def c2w_opengl_to_opencv(T_world_cam_gl: np.ndarray) -> np.ndarray:
    """Camera-to-world (..., 4, 4) in the OpenGL convention -> the same camera in OpenCV's."""
    return np.asarray(T_world_cam_gl, dtype=np.float64) @ OPENGL_FROM_OPENCV  # the flip is its own inverse


def make_transform(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """4x4 from a rotation (3, 3) and a translation (3,) in metres."""
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


def invert_transform(T: np.ndarray) -> np.ndarray:
    """Inverse of rigid transforms (..., 4, 4) (rotation transposed, no general matrix inverse)."""
    T = np.asarray(T, dtype=np.float64)
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    out = np.zeros_like(T)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -(Rt @ t[..., None])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform (may include uniform scale) to points (..., 3)."""
    points = np.asarray(points, dtype=np.float64)
    return points @ T[:3, :3].T + T[:3, 3]


def quat_to_matrix(q_xyzw: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) from quaternions (..., 4) in (x, y, z, w) order.

    The quaternion is normalised first; a zero or non-finite quaternion raises ValueError.
    """
    q = np.asarray(q_xyzw, dtype=np.float64)
    n = np.linalg.norm(q, axis=-1, keepdims=True)
    if not np.all(np.isfinite(q)) or np.any(n < 1e-12):
        raise ValueError(f"invalid quaternion {q.tolist()}: must be finite and non-zero")
    x, y, z, w = np.moveaxis(q / n, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
        np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
        np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """Quaternions (..., 4) in (x, y, z, w) order, w >= 0, from rotation matrices (..., 3, 3)."""
    from scipy.spatial.transform import Rotation

    R = np.asarray(R, dtype=np.float64)
    q = Rotation.from_matrix(R.reshape(-1, 3, 3)).as_quat().reshape(*R.shape[:-2], 4)
    return np.where(q[..., 3:4] < 0, -q, q)


def pose_to_matrix(position: np.ndarray, q_xyzw: np.ndarray) -> np.ndarray:
    """4x4 from a position (3,) in metres and a quaternion (x, y, z, w)."""
    return make_transform(quat_to_matrix(q_xyzw), np.asarray(position, dtype=np.float64))


def matrix_to_pose(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position (3,), quaternion (x, y, z, w)) of a rigid 4x4."""
    return np.asarray(T[:3, 3], dtype=np.float64).copy(), matrix_to_quat(T[:3, :3])


def look_at_opencv(eye: np.ndarray, target: np.ndarray, up: np.ndarray = (0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world (4, 4), OpenCV convention, for a camera at ``eye`` looking at ``target``.

    ``up`` is the world direction that should appear upwards in the image (default world +z).
    """
    eye = np.asarray(eye, dtype=np.float64)
    z = np.asarray(target, dtype=np.float64) - eye
    z /= np.linalg.norm(z)
    up = np.asarray(up, dtype=np.float64)
    x = np.cross(z, up)  # image +x (right) = forward x up; then image +y = forward x right points down
    if np.linalg.norm(x) < 1e-9:  # looking straight along up: pick any perpendicular
        x = np.cross(z, np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0]))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return make_transform(np.stack([x, y, z], axis=1), eye)


def rotation_angle(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Angle in radians of the relative rotation between two rotation matrices."""
    c = (np.trace(np.asarray(R_a).T @ np.asarray(R_b)) - 1.0) / 2.0
    return float(np.arccos(np.clip(c, -1.0, 1.0)))


def is_rigid(T: np.ndarray, tol: float = 1e-4) -> bool:
    """True if ``T`` is a finite 4x4 rigid transform (orthonormal rotation, det +1, last row 0 0 0 1)."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        return False
    R = T[:3, :3]
    return (np.allclose(R.T @ R, np.eye(3), atol=tol) and abs(np.linalg.det(R) - 1.0) < tol
            and np.allclose(T[3], [0, 0, 0, 1], atol=tol))
