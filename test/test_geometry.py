"""Transforms, quaternions and camera conventions against closed forms."""

import numpy as np
import pytest

from f3rm_ros.core import geometry as g


def random_rigid(rng):
    q = rng.normal(size=4)
    return g.pose_to_matrix(rng.normal(size=3), q)


def test_quaternion_round_trip_and_known_rotation():
    rng = np.random.default_rng(0)
    for _ in range(20):
        T = random_rigid(rng)
        t, q = g.matrix_to_pose(T)
        assert q[3] >= 0 and np.allclose(g.pose_to_matrix(t, q), T, atol=1e-9)
    Rz = g.quat_to_matrix([0, 0, np.sin(np.pi / 4), np.cos(np.pi / 4)])  # +90 deg about z
    assert np.allclose(Rz @ [1, 0, 0], [0, 1, 0])
    with pytest.raises(ValueError, match="quaternion"):
        g.quat_to_matrix([0, 0, 0, 0])
    with pytest.raises(ValueError):
        g.quat_to_matrix([np.nan, 0, 0, 1])


def test_inverse_and_rigidity():
    rng = np.random.default_rng(1)
    T = random_rigid(rng)
    assert np.allclose(g.invert_transform(T) @ T, np.eye(4), atol=1e-12)
    assert g.is_rigid(T) and not g.is_rigid(T * 2) and not g.is_rigid(np.full((4, 4), np.nan))


def test_look_at_opencv_points_the_optical_axis_and_keeps_up_up():
    eye, target = np.array([0.5, -0.4, 0.6]), np.array([0.0, 0.0, 0.05])
    T = g.look_at_opencv(eye, target)
    assert g.is_rigid(T)
    z = T[:3, 2]
    assert np.allclose(z, (target - eye) / np.linalg.norm(target - eye))
    assert T[:3, 1] @ [0, 0, 1] < 0  # image +y (down) points away from world up
    # the target projects to the image centre
    p = g.transform_points(g.invert_transform(T), target)
    assert abs(p[0]) < 1e-9 and abs(p[1]) < 1e-9 and p[2] > 0


def test_opencv_opengl_conversion_flips_y_and_z_and_is_an_involution():
    T = g.look_at_opencv([1.0, 0.0, 1.0], [0.0, 0.0, 0.0])
    gl = g.c2w_opencv_to_opengl(T)
    assert np.allclose(gl[:3, 0], T[:3, 0]) and np.allclose(gl[:3, 1], -T[:3, 1]) and np.allclose(gl[:3, 2], -T[:3, 2])
    assert np.allclose(g.c2w_opengl_to_opencv(gl), T)
    assert np.isclose(g.rotation_angle(T[:3, :3], gl[:3, :3]), np.pi)
