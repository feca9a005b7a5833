"""Issue 6 success table on the analytic oracle field of each built-in scene (no training).

For every object and graspable part query of the three built-in scenes the top grasp must pass the
ground-truth check (collision-free, antipodal, the queried object/part between the fingers) in at
least 90% of queries; absent things ("banana", ...) must give no grasp in at least 90% of cases.

Planner settings are the reference defaults except: the workspace box covers the synthetic table
(the reference box is in a robot's base frame) and 100 Adam steps instead of 200 to fit the CI time
budget on 2 CPU cores (with the 8 rotations per voxel and at most ~3000 poses per query here, the
reference's pruning never starts, so fewer steps only shortens the descent; the 200-step table is
in the report of issue 6).
"""

from __future__ import annotations

import time

import pytest
import torch

from f3rm_ros.core.features.configs import LabelFeatureConfig
from f3rm_ros.core.features.labels import LabelFeatureExtractor
from f3rm_ros.core.grasp import GraspPlanner, PlannerConfig, load_default_tasks
from f3rm_ros.core.grasp.evaluate import format_table, success_table
from f3rm_ros.core.grasp.oracle import OracleField
from f3rm_ros.core.sim.grasp_check import GraspChecker
from f3rm_ros.core.sim.scene import resolve_scene

TEST_STEPS = 100


def make_scene_planner(name: str, steps: int = TEST_STEPS):
    scene = resolve_scene(name)
    table, _ = scene.label_table()
    extractor = LabelFeatureExtractor(LabelFeatureConfig(), table=table)
    t0 = time.perf_counter()
    field = OracleField.from_extractor(scene, extractor, resolution=0.004)
    print(f"oracle field of {name}: {field.shape} grid, {field.backend}, {time.perf_counter() - t0:.1f} s")
    cfg = PlannerConfig(workspace_min_m=(-0.35, -0.3, 0.005), workspace_max_m=(0.35, 0.3, 0.3), num_steps=steps)
    return GraspPlanner(field, extractor, load_default_tasks(), config=cfg), GraspChecker(scene)


@pytest.fixture
def one_thread():
    """One torch thread: the planner's many small ops stall on a busy 2-core machine with two threads
    (measured 10x slower while other jobs ran); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_success_table_oracle(one_thread):
    torch.manual_seed(0)
    t0 = time.perf_counter()
    outcomes = success_table(make_scene_planner)
    print(f"\nsuccess table (oracle field, {TEST_STEPS} Adam steps), {time.perf_counter() - t0:.0f} s\n"
          + format_table(outcomes))
    present = [o for o in outcomes if o.present]
    absent = [o for o in outcomes if not o.present]
    rate_p = sum(o.success for o in present) / len(present)
    rate_a = sum(o.success for o in absent) / len(absent)
    fails = [f"{o.scene}/{o.query}: {o.detail}" for o in outcomes if not o.success]
    print("failures:", fails)
    assert rate_p >= 0.9, fails
    assert rate_a >= 0.9, fails


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_plan_on_cuda_matches_cpu_outcome():
    scene = resolve_scene("mug_bowl_box")
    table, _ = scene.label_table()
    ex = LabelFeatureExtractor(LabelFeatureConfig(), table=table)
    f = OracleField.from_extractor(scene, ex, device="cuda")
    cfg = PlannerConfig(workspace_min_m=(-0.35, -0.3, 0.005), workspace_max_m=(0.35, 0.3, 0.3), num_steps=TEST_STEPS)
    r = GraspPlanner(f, ex, load_default_tasks(), config=cfg).plan("mug handle")
    ok = GraspChecker(scene).check(r.best.T_world_gripper) if r.found else None
    print("cuda mug handle:", r.reason, r.timing, ok.reason if ok else None)
    assert r.found and ok.success and ok.part == "handle"
