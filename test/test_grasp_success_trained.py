"""Issue 6 success table on *trained* fields of the three built-in scenes (slow: ~CPU training).

Opt-in (it trains three fields on the CPU): ``F3RM_GRASP_TRAINED_TEST=1 pytest -s
test/test_grasp_success_trained.py``; without the variable it skips and says so. On a quiet 2-core
machine one scene trains in ~7 min (2000 steps with depth and the error map) and a query takes seconds with the CPU
planner settings below: about 20-25 minutes in all, well over a CI budget. ``F3RM_GRASP_FIELDS_CACHE=DIR``
keeps the trained fields between runs.

With the error map this test passed at 7de0b25: present 22/23 (96%), absent 16/16, 35 min on a quiet 2-core
machine (the one failure: a whole mug grasped 30 deg off antipodal, friction cone 26.6 deg).
``benchmarks/bench_grasp_trained.py`` on the same settings gave 21/23 at seeds 1 and 2 (19/23 without the
error map). Those error-map runs predate 9f94624, which made error-map training deterministic (duplicate
pixels in a batch), so they are samples, not this exact table.

Per scene, once per test module (datasets and fields cached in a tmp folder): render 60 views at
240x180 with label and depth images, distil label features into the demo's small CPU model with
depth supervision and error-map ray sampling (the ``small+synthetic+depth+error_map`` preset, 1024 rays,
``TRAIN_STEPS`` steps, seed 1) and measure the held-out PSNR. Without depth the small fields put a lid over
the uniform inside of every mug and the table stays near 57%; without the error map they hold only part
of the 10 mm mug handles and every "mug handle" query failed (19/23).
``benchmarks/bench_grasp_trained.py plan --device cpu --planner-cpu`` gives the same table (same
datasets, fields and planner settings) one scene at a time. Then every query of
:mod:`f3rm_ros.core.grasp.evaluate` runs on the trained field and
the top grasp is judged by the ground-truth check. The issue's thresholds are asserted (>= 90% of
present queries pass, >= 90% of absent ones return no grasp) -- unless a field's held-out PSNR is below
``MIN_PSNR_DB``: the small CPU config is seed-sensitive (floaters), and a planner cannot be judged on a
field that did not learn the scene; then the table is printed and the test skips with that reason.

Planner: the reference defaults except the workspace box (the synthetic table, as the oracle test)
and the demo's CPU query settings (``f3rm_ros.core.presets.PLANNER_CPU``: 25 Adam steps, 4 rotations per
voxel, pruning down to 512 poses, fewer geometric seeds and checked poses), so that a query on a trained
field takes seconds, not minutes, on 2 CPU cores.
``F3RM_GRASP_TRAIN_STEPS`` overrides the training steps (e.g. to try a shorter CI run).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from f3rm_ros.core.grasp import GraspPlanner, PlannerConfig, load_default_tasks
from f3rm_ros.core.grasp.evaluate import PRESENT_QUERIES, format_table, success_table
from f3rm_ros.core.presets import PLANNER_CPU

TRAIN_STEPS = int(os.environ.get("F3RM_GRASP_TRAIN_STEPS", "2000"))
TRAIN_SEED = 1
TRAIN_PRESET = "small+synthetic+depth+error_map"  # the demo's (f3rm_ros.ros.demo.TRAIN_PRESET) + depth + error map
NUM_VIEWS, WIDTH, HEIGHT = 60, 240, 180
MIN_PSNR_DB = 20.0
WORKSPACE = ((-0.35, -0.3, 0.005), (0.35, 0.3, 0.3))


def train_scene_field(scene_name: str, folder: Path) -> dict:
    """Render the scene's dataset and train a small label-feature field; returns paths, PSNR, seconds."""
    from f3rm_ros.core.config import replace
    from f3rm_ros.core.presets import trainer_config
    from f3rm_ros.core.dataset import load_dataset
    from f3rm_ros.core.features import create_extractor, extract_dataset_features
    from f3rm_ros.core.sim.export import SimDatasetConfig, render_dataset
    from f3rm_ros.core.sim.scene import resolve_scene
    from f3rm_ros.core.trainer import Trainer

    data, ckpt, meta = folder / "data", folder / "field.ckpt", folder / "field.json"
    if meta.exists():
        return json.loads(meta.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    cfg = replace(SimDatasetConfig(), width=WIDTH, height=HEIGHT, **{"trajectory.num_views": NUM_VIEWS})
    render_dataset(resolve_scene(scene_name), data, cfg, overwrite=True)
    t_render = time.perf_counter() - t0
    ds = load_dataset(data)
    ex = create_extractor({"extractor": "labels", "labels": {"dataset": str(data)}})
    fm = extract_dataset_features(ex, ds, folder / "feature_cache")
    tc = trainer_config(TRAIN_PRESET, rays_per_batch=1024, eval_every=0, eval_num_images=0, checkpoint_every=0,
                        seed=TRAIN_SEED)
    trainer = Trainer(tc, ds, fm, "cpu", extractor_info=ex.cache_key())
    t1 = time.perf_counter()
    trainer.train(TRAIN_STEPS)
    t_train = time.perf_counter() - t1
    ev = trainer.evaluate(save_images=False)
    trainer.save_checkpoint(ckpt, include_optimizer=False)
    info = {"scene": scene_name, "data": str(data), "checkpoint": str(ckpt), "psnr": float(ev["psnr"]),
            "feature_mse": ev.get("feature_mse"), "render_s": t_render, "train_s": t_train,
            "eval_frames": len(ev["frames"])}
    meta.write_text(json.dumps(info))
    return info


@pytest.fixture(scope="module")
def trained_fields(tmp_path_factory):
    """scene -> info of its trained field (trained once per test module, two torch threads).

    Cached in a tmp folder, or in ``$F3RM_GRASP_FIELDS_CACHE`` when set (kept between runs: a folder per
    scene with field.json naming the dataset and checkpoint; delete it to retrain)."""
    if os.environ.get("F3RM_GRASP_TRAINED_TEST") != "1":
        pytest.skip("opt-in: set F3RM_GRASP_TRAINED_TEST=1 (trains 3 small fields and plans 39 queries on the CPU: "
                    "tens of minutes on 2 cores; benchmarks/bench_grasp_trained.py gives the same table from a GPU)")
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    cache = os.environ.get("F3RM_GRASP_FIELDS_CACHE")
    root = Path(cache) if cache else tmp_path_factory.mktemp("trained_fields")
    out = {}
    try:
        for scene in PRESENT_QUERIES:
            out[scene] = train_scene_field(scene, root / scene)
            i = out[scene]
            print(f"trained {scene}: {TRAIN_STEPS} steps, held-out PSNR {i['psnr']:.2f} dB over {i['eval_frames']} "
                  f"views, feature MSE {i['feature_mse']}, render {i['render_s']:.0f} s, train {i['train_s']:.0f} s")
    finally:
        torch.set_num_threads(n)
    return out


def make_planner_factory(fields: dict, **overrides):
    from f3rm_ros.core.features import create_extractor
    from f3rm_ros.core.field_api import load_trained_field
    from f3rm_ros.core.sim.grasp_check import GraspChecker
    from f3rm_ros.core.sim.scene import resolve_scene

    def make(scene: str):
        info = fields[scene]
        ex = create_extractor({"extractor": "labels", "labels": {"dataset": info["data"]}})
        field = load_trained_field(info["checkpoint"], "cpu")
        cfg = PlannerConfig(workspace_min_m=WORKSPACE[0], workspace_max_m=WORKSPACE[1], **{**PLANNER_CPU, **overrides})
        return GraspPlanner(field, ex, load_default_tasks(), config=cfg), GraspChecker(resolve_scene(scene))

    return make


def test_success_table_trained(trained_fields):
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the planner's many small ops: one thread is faster on a busy 2-core machine
    try:
        t0 = time.perf_counter()
        outcomes = success_table(make_planner_factory(trained_fields))
    finally:
        torch.set_num_threads(n)
    psnrs = {s: round(i["psnr"], 2) for s, i in trained_fields.items()}
    print(f"\nsuccess table (trained fields, {TRAIN_STEPS} training steps, planner {PLANNER_CPU}), planning "
          f"{time.perf_counter() - t0:.0f} s; held-out PSNR {psnrs}\n" + format_table(outcomes))
    present = [o for o in outcomes if o.present]
    absent = [o for o in outcomes if not o.present]
    rate_p = sum(o.success for o in present) / len(present)
    rate_a = sum(o.success for o in absent) / len(absent)
    fails = [f"{o.scene}/{o.query}: {o.detail}" for o in outcomes if not o.success]
    print(f"present {rate_p:.0%}, absent -> no grasp {rate_a:.0%}; failures:", fails)
    weak = {s: p for s, p in psnrs.items() if p < MIN_PSNR_DB}
    if weak:
        pytest.skip(f"held-out PSNR below {MIN_PSNR_DB} dB for {weak}: the small CPU training config did not "
                    f"learn the scene (seed-sensitive floaters, issue 3); table printed above "
                    f"(present {rate_p:.0%}, absent {rate_a:.0%})")
    assert rate_p >= 0.9, fails
    assert rate_a >= 0.9, fails
