"""Ground-truth grasp check: hand-placed grasps that must pass and must fail."""

import numpy as np
import pytest

from f3rm_ros.core.sim.grasp_check import GraspChecker, obb_overlap_depth
from f3rm_ros.core.sim.scene import resolve_scene


def _pose(y_g, z_g, origin):
    """Gripper pose from its closing axis y and wrist axis z (world), origin between the fingers."""
    y_g, z_g = np.asarray(y_g, float), np.asarray(z_g, float)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = np.cross(y_g, z_g), y_g, z_g, origin
    return T


def _yaw(deg):
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])


@pytest.fixture(scope="module")
def world():
    s = resolve_scene("mug_bowl_box")
    return s, GraspChecker(s)


def _cases(s):
    Tm, Tb = s.object("mug").T_world_obj, s.object("box").T_world_obj
    R = Tm[:3, :3]
    # mug generator defaults: wall centre radius 0.039, handle arc radius 0.030 at mid-height 0.0475
    handle_bar = R @ np.array([0.039 + 0.030, 0.0, 0.0475]) + Tm[:3, 3]
    box_top = Tb[:3, 3] + [0, 0, 0.12]
    return {
        # pass
        "mug handle from the side": (_pose(R[:, 1], R[:, 0], handle_bar), True, ("mug", "handle")),
        "box from above": (_pose(Tb[:3, 1], [0, 0, 1], box_top - [0, 0, 0.025]), True, ("box", "body")),
        # fail
        "through the table": (_pose([0, 1, 0], [0, 0, 1], [0.3, 0.3, 0.0]), False, "collision: finger"),
        "fingers around empty space": (_pose([0, 1, 0], [0, 0, 1], [0.3, 0.3, 0.06]), False, "empty"),
        "palm in the object": (_pose(Tb[:3, 1], [0, 0, 1], box_top - [0, 0, 0.06]), False, "collision: palm"),
        "box corner, 35 deg off": (_pose(_yaw(35) @ Tb[:3, 1], [0, 0, 1], box_top - [0, 0, 0.025]), False,
                                   "not antipodal"),
        "mug body wider than the opening": (_pose(R[:, 1], -R[:, 0], Tm[:3, 3] + [0, 0, 0.05]), False,
                                            "collision: finger"),
    }


def test_hand_placed_grasps(world):
    s, gc = world
    for name, (T, ok, expect) in _cases(s).items():
        r = gc.check(T)
        print(f"{name:32s} success={r.success!s:5s} {r.reason}")
        assert r.success == ok, name
        if ok:
            assert (r.object, r.part) == expect
            assert max(r.normal_angles_deg) < 15
        else:
            assert r.reason.startswith(expect), (name, r.reason)


def test_table_collision_depth_and_obb():
    eye = np.eye(4)
    b = eye.copy()
    b[:3, 3] = [0.0, 0.0, 0.09]
    # unit-ish boxes: 0.1 cubes 0.09 apart overlap by 0.01
    d = obb_overlap_depth(eye, np.full(3, 0.1), b, np.full(3, 0.1))
    b2 = b.copy()
    b2[:3, :3] = _yaw(45)
    b2[:3, 3] = [0.13, 0.0, 0.0]  # rotated box: half-diagonal 0.0707 + 0.05 = 0.1207 < 0.13 -> separated
    d2 = obb_overlap_depth(eye, np.full(3, 0.1), b2, np.full(3, 0.1))
    print(f"overlap {d:.4f} m, separated {d2:.4f} m")
    assert d == pytest.approx(0.01) and d2 < 0


def test_gripper_lowered_into_table_reports_depth(world):
    s, gc = world
    r = gc.check(_pose([0, 1, 0], [0, 0, 1], [0.3, -0.3, 0.005]))
    print(r.reason, r.collisions)
    assert not r.success and r.collisions[0][1] == "table"
    assert r.collisions[0][3] == pytest.approx(0.005, abs=1e-6)  # fingertips 1 cm below the origin


def test_canonical_grasps_pass_in_builtin_scenes():
    from f3rm_ros.core.sim.grasps import scene_grasps
    from f3rm_ros.core.sim.scene import builtin_scene_names

    n = 0
    for name in builtin_scene_names():
        s = resolve_scene(name)
        gc = GraspChecker(s)
        for c in scene_grasps(s):
            r = gc.check(c.T_world_grasp)
            print(f"{name:20s} {c.object:12s} {c.task:12s} {r.reason}")
            assert r.success, (name, c.object, c.task, r.reason)
            assert r.object == c.object
            if c.part == "handle":
                assert r.part == "handle"
            n += 1
    assert n >= 15
