"""Ground-truth search for a feasible grasp (what the generalisation benchmark counts as 'a grasp exists')."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from f3rm_ros.core.sim.grasp_check import GraspChecker
from f3rm_ros.core.sim.grasp_feasible import find_feasible_grasp
from f3rm_ros.core.sim.scene import load_scene_text

_CAN = """
  - name: can
    mesh: {generator: can}
    pose: {position: [0.0, 0.0, 0.0]}
    color: [0.8, 0.2, 0.2]
"""
# four boxes taller than the can, 8 mm from it on every side: no finger (12 mm thick) fits beside the can,
# and the palm (204 mm along the closing axis) meets a box above it whichever way the gripper turns
_WALLS = "".join(f"""
  - name: wall{i}
    category: box
    mesh: {{generator: box, params: {{size: [0.06, 0.26, 0.25]}}}}
    pose: {{position: [{0.071 * np.cos(a):.4f}, {0.071 * np.sin(a):.4f}, 0.0], yaw_deg: {np.degrees(a):.1f}}}
    color: [0.3, 0.3, 0.8]
""" for i, a in enumerate(np.arange(4) * np.pi / 2))
_TABLE = "name: {name}\ntable:\n  size: [1.0, 0.8, 0.04]\nobjects:\n"


@pytest.fixture(scope="module")
def alone():
    return GraspChecker(load_scene_text(_TABLE.format(name="can_alone") + _CAN))


@pytest.fixture(scope="module")
def walled():
    return GraspChecker(load_scene_text(_TABLE.format(name="can_walled") + _CAN + _WALLS))


def test_collides_agrees_with_collisions(walled):
    """The early-exit test the search uses is the checker's own collision criterion."""
    rng = np.random.default_rng(0)
    outcomes = []
    for i in range(60):
        T = np.eye(4)
        T[:3, :3] = Rotation.random(random_state=i).as_matrix()
        T[:3, 3] = rng.normal([0, 0, 0.12], 0.08)
        fast, full = walled.collides(T, 0.08), bool(walled.collisions(T, 0.08))
        assert fast == full, i
        outcomes.append(full)
    assert 0 < sum(outcomes) < len(outcomes)  # both answers occur


def test_a_free_can_has_a_witness(alone):
    r = find_feasible_grasp(alone, ("can",))
    assert r.feasible, r.reason
    c = alone.check(r.T_world_gripper)
    assert c.success and c.object == "can"


def test_a_walled_in_can_has_none(walled):
    r = find_feasible_grasp(walled, ("can",), max_points=200, max_checks=1500)
    assert not r.feasible
    assert r.pairs > 0 and r.checked > 0  # antipodal pairs exist on the can; every pose of them collides
    assert "passes the check" in r.reason


def test_a_part_must_be_between_the_fingers(alone):
    r = find_feasible_grasp(alone, ("can",), "top")
    if r.feasible:  # a pinch on the lid's rim
        c = alone.check(r.T_world_gripper)
        assert any(p == "top" for (_, p) in c.between)
    assert not find_feasible_grasp(alone, ("can",), "no such part").feasible
