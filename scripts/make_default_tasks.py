#!/usr/bin/env python3
"""Make the default grasp tasks for the synthetic world's label features.

Each task is demonstrated by two hand-placed gripper poses on an object of a built-in scene; every
demo pose must pass the ground-truth grasp check (f3rm_ros.core.sim.grasp_check) on the intended
object part, else the script fails. Features and density are recorded in the scene's analytic oracle
field (f3rm_ros.core.grasp.oracle) with the scene's label extractor, i.e. what a perfectly trained
field would give. Written to f3rm_ros/core/grasp/tasks/<slug>.npz (package data).

Usage: python scripts/make_default_tasks.py [--out DIR] [--check-only] [--label-dim D]

``--label-dim 768`` (with ``--out`` elsewhere) records the same tasks for label features of CLIP's width,
for benchmarks of the planner on 768-d fields (``benchmarks/bench_grasp_trained.py --label-dim 768
--tasks-dir DIR``); the shipped tasks use the default 64.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

from f3rm_ros.core.features.configs import LabelFeatureConfig
from f3rm_ros.core.features.labels import LabelFeatureExtractor
from f3rm_ros.core.grasp.config import TaskConfig
from f3rm_ros.core.grasp.demos import gripper_pose
from f3rm_ros.core.grasp.oracle import OracleField
from f3rm_ros.core.grasp.task import default_tasks_dir, make_task, save_task
from f3rm_ros.core.sim.grasp_check import GraspChecker
from f3rm_ros.core.sim.scene import resolve_scene


def _ring(radius: float, z: float, angles_deg: tuple[float, ...]) -> list[np.ndarray]:
    """Pinch grasps on a vertical wall at ``radius``: approach from above, close radially."""
    out = []
    for a in np.deg2rad(angles_deg):
        d = np.array([np.cos(a), np.sin(a), 0.0])
        out.append(gripper_pose(radius * d + [0, 0, z], [0, 0, -1], d))
    return out


# task name -> (scene, object, expected part or None, demo poses in the object frame)
H_MUG, R_MUG, W_MUG = 0.095, 0.041, 0.004
TASKS: dict[str, tuple[str, str, str | None, list[np.ndarray]]] = {
    "grasp mug by handle": ("mug_bowl_box", "mug", "handle", [
        gripper_pose([0.069, 0.0, H_MUG / 2 + 0.008], [-1, 0, 0], [0, 1, 0]),
        gripper_pose([0.069, 0.0, H_MUG / 2 + 0.004], [-np.cos(0.5), 0, -np.sin(0.5)], [0, 1, 0])]),
    "grasp mug by rim": ("mug_bowl_box", "mug", "rim", _ring(R_MUG - W_MUG / 2, H_MUG, (120.0, 240.0))),
    "grasp bowl by rim": ("mug_bowl_box", "bowl", "rim", _ring(0.075 - 0.0025, 0.055, (0.0, 90.0))),
    "grasp box from above": ("mug_bowl_box", "box", None, [
        gripper_pose([0.0, 0.0, 0.10], [0, 0, -1], [0, 1, 0]),
        gripper_pose([0.0, 0.0, 0.10], [0, 0, -1], [0, -1, 0])]),
    "grasp can from above": ("screwdriver_mug_can", "can", None, [
        gripper_pose([0.0, 0.0, 0.102], [0, 0, -1], [1, 0, 0]),
        gripper_pose([0.0, 0.0, 0.102], [0, 0, -1], [0, 1, 0])]),
    "grasp screwdriver by handle": ("screwdriver_mug_can", "screwdriver", "handle", [
        gripper_pose([-0.051 + dx, 0.0, 0.02], [0, 0, -1], [0, 1, 0]) for dx in (-0.015, 0.015)]),
}


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=default_tasks_dir(), help="output folder")
    ap.add_argument("--check-only", action="store_true", help="only run the ground-truth check of the demos")
    ap.add_argument("--label-dim", type=int, default=0, help="label feature dimension (default: the extractor's)")
    args = ap.parse_args(argv)
    scenes, fields, checkers, extractors = {}, {}, {}, {}
    ok = True
    for name, (scene_name, obj_name, part, demos_obj) in TASKS.items():
        if scene_name not in scenes:
            scenes[scene_name] = resolve_scene(scene_name)
            checkers[scene_name] = GraspChecker(scenes[scene_name])
        scene = scenes[scene_name]
        obj = scene.object(obj_name)
        demos = [obj.T_world_obj @ T for T in demos_obj]
        for i, T in enumerate(demos):
            r = checkers[scene_name].check(T)
            good = r.success and r.object == obj_name and (part is None or any(
                o == obj_name and p == part for (o, p) in r.between))
            print(f"{name!r} demo {i}: {'OK ' if good else 'BAD'} {r.reason}")
            ok &= good
        if args.check_only:
            continue
        if scene_name not in fields:
            table, _ = scene.label_table()
            lc = LabelFeatureConfig(dim=args.label_dim) if args.label_dim else LabelFeatureConfig()
            extractors[scene_name] = LabelFeatureExtractor(lc, table=table)
            fields[scene_name] = OracleField.from_extractor(scene, extractors[scene_name])
        task = make_task(name, fields[scene_name], demos, TaskConfig(),
                         metadata={"scene": scene_name, "object": obj_name, "part": part,
                                   "made_by": "scripts/make_default_tasks.py (oracle field of the scene)"})
        path = save_task(task, args.out / f"{slug(name)}.npz")
        print(f"  wrote {path} ({task.num_demos} demos, {task.num_query_points} query points, "
              f"{task.feature_dim}-dim, mean alpha {np.mean(1 - np.exp(-task.demo_density * 0.01)):.2f})")
    if not ok:
        print("some demonstrations fail the ground-truth check", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
