"""Gripper model: frame convention, boxes, collision points, display mesh, tool frame."""

import numpy as np
import pytest

from f3rm_ros.core.config import ConfigError, from_dict
from f3rm_ros.core.geometry import is_rigid, make_transform, quat_to_matrix
from f3rm_ros.core.gripper import Gripper, GripperConfig, box_grid_points


def test_panda_frame_convention():
    g = Gripper()
    boxes = {name: (T, size) for name, T, size in g.boxes(0.05)}
    assert set(boxes) == {"finger_left", "finger_right", "palm", "wrist"}
    Tl, sl = boxes["finger_left"]
    Tr, sr = boxes["finger_right"]
    inner_l = Tl[1, 3] - sl[1] / 2
    inner_r = Tr[1, 3] + sr[1] / 2
    tip = Tl[2, 3] - sl[2] / 2
    print(f"inner faces y = {inner_l:.4f} / {inner_r:.4f}, fingertip z = {tip:.4f}, max opening {g.max_opening}")
    assert inner_l == pytest.approx(0.025) and inner_r == pytest.approx(-0.025)
    assert tip == pytest.approx(-0.01)  # origin ~1 cm above the fingertips
    Tp, sp = boxes["palm"]
    assert Tp[2, 3] - sp[2] / 2 == pytest.approx(Tl[2, 3] + sl[2] / 2)  # palm sits on the finger roots
    assert Tp[2, 3] > 0  # +z towards the wrist
    assert g.max_opening == 0.08
    with pytest.raises(ValueError, match="opening"):
        g.boxes(0.09)


def test_collision_points_cover_boxes():
    g = Gripper()
    pts = g.collision_points()
    pts_f = g.collision_points(include_fingers=True)
    print(f"collision points: {len(pts)} without fingers, {len(pts_f)} with")
    assert len(pts_f) > len(pts) > 100
    # every point lies inside one of the boxes, spacing <= voxel
    for p_set, fingers in ((pts, False), (pts_f, True)):
        inside = np.zeros(len(p_set), bool)
        for _n, T, size in g.boxes(include_fingers=fingers):
            inside |= np.all(np.abs(p_set - T[:3, 3]) <= size / 2 + 1e-9, axis=1)
        assert inside.all()
    # no finger points without fingers: nothing between z=-0.01 and the palm bottom
    zb, zt = g.finger_z_range
    assert not np.any(pts[:, 2] < zt - 1e-9)
    assert np.any(pts_f[:, 2] < zt)
    # a thin box still gets points; spacing never exceeds the voxel
    thin = box_grid_points(np.array([0.001, 0.1, 0.02]), 0.0075)
    xs = np.unique(thin[:, 1])
    assert len(np.unique(thin[:, 0])) == 1 and np.diff(xs).max() <= 0.0075 + 1e-12


def test_mesh_and_tool_frame():
    g = Gripper()
    m = g.mesh(0.04)
    v = np.asarray(m.vertices)
    print(f"mesh: {len(v)} vertices, z range {v[:, 2].min():.3f}..{v[:, 2].max():.3f}")
    assert len(m.triangles) == 12 * 4
    assert v[:, 2].min() == pytest.approx(-0.01)
    # panda_hand_tcp-like tool frame: 180 deg about x, 1 cm down
    cfg = from_dict(GripperConfig, {"tool_position_m": [0, 0, -0.01], "tool_quat_xyzw": [1, 0, 0, 0]})
    g2 = Gripper(cfg)
    T = make_transform(quat_to_matrix(np.array([0.1, 0.2, 0.3, 0.9])), np.array([0.4, 0.1, 0.2]))
    Tt = g2.to_tool(T)
    assert is_rigid(Tt)
    # tool z is the approach direction (-z of the gripper frame)
    assert np.allclose(Tt[:3, 2], -T[:3, 2])
    assert np.allclose(Tt[:3, 3], T[:3, 3] - 0.01 * T[:3, 2])
    assert np.allclose(g2.from_tool(Tt), T)
    with pytest.raises(ConfigError):
        from_dict(GripperConfig, {"max_opening": 0.1})
