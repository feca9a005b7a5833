"""The query node's work without ROS: finding the newest checkpoint, merging task libraries, recording
demonstrations into task files, and a QuerySession that checks requests and plans with per-request options
(grasps with source and quality, the heat map from the same pass) on the analytic oracle field."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from f3rm_ros.core.grasp import PlannerConfig
from f3rm_ros.core.grasp.session import QueryConfig, QueryRefused, QuerySession, newest_checkpoint
from f3rm_ros.core.grasp.task import (ExtractorMismatchError, Task, TaskFormatError, adapt_task, append_demo,
                                      load_default_tasks, load_task, make_task, merge_tasks, record_task_demo,
                                      save_task, task_library, usable_tasks)

WORKSPACE = ((-0.35, -0.3, 0.005), (0.35, 0.3, 0.3))


def _touch(path: Path, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    os.utime(path, (mtime, mtime))
    return path


def test_newest_checkpoint_is_the_last_modified_anywhere_below(tmp_path):
    assert newest_checkpoint(tmp_path / "missing") is None
    assert newest_checkpoint(tmp_path) is None
    now = time.time()
    _touch(tmp_path / "run1" / "checkpoints" / "step-0000900.ckpt", now - 100)
    newest = _touch(tmp_path / "run2" / "field.ckpt", now - 10)
    _touch(tmp_path / "run3" / "notes.txt", now)  # not a checkpoint
    (tmp_path / "run4" / "dir.ckpt").mkdir(parents=True)  # a folder named like one
    os.utime(tmp_path / "run4" / "dir.ckpt", (now, now))
    assert newest_checkpoint(tmp_path) == newest
    b = _touch(tmp_path / "b.ckpt", now - 10)  # same time: the larger path wins (deterministic)
    assert newest_checkpoint(tmp_path) == max(newest, b, key=str)
    assert newest_checkpoint(tmp_path / "run1") == tmp_path / "run1" / "checkpoints" / "step-0000900.ckpt"


def _task(name: str, dim: int = 4, info: dict | None = None, demos: int = 1) -> Task:
    rng = np.random.default_rng(len(name))
    return Task(name=name, query_points=rng.normal(size=(5, 3)) * 0.01, demo_poses=np.stack([np.eye(4)] * demos),
                demo_features=rng.normal(size=(demos, 5, dim)), demo_density=np.ones((demos, 5)),
                extractor_info=info or {"type": "test", "settings": {"dim": dim}})


def test_merge_tasks_later_wins_by_name_in_place():
    a, b, c = _task("a"), _task("b"), _task("c")
    b2 = _task("b", demos=2)
    merged = merge_tasks([a, b], [b2, c])
    assert [t.name for t in merged] == ["a", "b", "c"] and merged[1] is b2
    assert merge_tasks() == [] and merge_tasks([a], []) == [a]


def test_task_library_merges_defaults_with_a_folder(tmp_path):
    defaults = load_default_tasks()
    assert defaults, "the package ships default tasks"
    assert [t.name for t in task_library(None)] == [t.name for t in defaults]
    assert [t.name for t in task_library(tmp_path / "missing")] == [t.name for t in defaults]
    assert task_library(tmp_path, use_default=False) == []
    replaced = _task(defaults[0].name, demos=3)
    save_task(replaced, tmp_path / "x.npz")
    save_task(_task("mine"), tmp_path / "mine.npz")
    lib = task_library(tmp_path)
    assert [t.name for t in lib] == [t.name for t in defaults] + ["mine"]
    assert lib[0].num_demos == 3, "a recorded task replaces the default of the same name"
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(TaskFormatError):
        task_library(tmp_path)


def test_usable_tasks_says_why_a_task_is_left_out():
    info = {"type": "test", "settings": {"dim": 4}}
    ok, skipped = usable_tasks([_task("same", info=info), _task("other", info={"type": "clip"}),
                                _task("wide", dim=8, info=info)], info, feature_dim=4)
    assert [t.name for t in ok] == ["same"]
    assert set(skipped) == {"other", "wide"}
    assert "clip" in skipped["other"] and "8-dim" in skipped["wide"]


@pytest.fixture(scope="module")
def oracle():
    """The oracle field of mug_bowl_box and its label-feature extractor (a few seconds)."""
    from f3rm_ros.core.features.configs import LabelFeatureConfig
    from f3rm_ros.core.features.labels import LabelFeatureExtractor
    from f3rm_ros.core.grasp.oracle import OracleField
    from f3rm_ros.core.sim.scene import resolve_scene

    scene = resolve_scene("mug_bowl_box")
    table, _ = scene.label_table()
    ex = LabelFeatureExtractor(LabelFeatureConfig(), table=table)
    return OracleField.from_extractor(scene, ex, resolution=0.006), ex, scene


def _pose(x: float, y: float, z: float) -> np.ndarray:
    T = np.eye(4)
    T[:3, 3] = (x, y, z)
    return T


def test_record_task_demo_creates_appends_and_replaces(oracle, tmp_path):
    field, _, _ = oracle
    path = tmp_path / "tasks" / "my_task.npz"
    t1 = record_task_demo(path, field, _pose(0.0, 0.0, 0.05), metadata={"by": "test"})
    assert t1.name == "my_task" and t1.num_demos == 1 and t1.metadata["by"] == "test"
    t2 = record_task_demo(path, field, _pose(0.01, 0.0, 0.05))
    assert t2.num_demos == 2
    on_disk = load_task(path)
    assert on_disk.num_demos == 2 and np.allclose(on_disk.demo_poses[1], _pose(0.01, 0.0, 0.05))
    np.testing.assert_array_equal(on_disk.query_points, t1.query_points)  # appended at the task's query points
    np.testing.assert_allclose(on_disk.demo_features[0], t1.demo_features[0])
    assert record_task_demo(path, field, _pose(0.0, 0.0, 0.05), append=False).num_demos == 1
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "temporary files left behind"
    # appending to a task of another extractor is refused and leaves the file alone
    other = tmp_path / "tasks" / "other.npz"
    save_task(_task("other", dim=field.feature_dim, info={"type": "clip"}), other)
    before = other.read_bytes()
    with pytest.raises(ExtractorMismatchError):
        record_task_demo(other, field, _pose(0.0, 0.0, 0.05))
    assert other.read_bytes() == before
    with pytest.raises(ValueError, match="finite"):
        append_demo(load_task(path), field, np.full((4, 4), np.nan))


def test_append_demo_to_a_label_task_of_another_table_re_expresses_it(oracle):
    """A label-feature task recorded in another scene (another label table) is brought into the field's
    space before the new demonstration joins it, so all its demonstrations live in one space."""
    field, _, _ = oracle
    task = next(t for t in load_default_tasks() if t.name == "grasp can from above")  # screwdriver_mug_can
    assert task.extractor_info["label_table"] != field.extractor_info["label_table"]
    grown = append_demo(task, field, _pose(0.0, 0.0, 0.05))
    assert grown.num_demos == task.num_demos + 1
    assert grown.extractor_info.get("label_table") == field.extractor_info.get("label_table")
    expected = adapt_task(task, field.extractor_info).demo_features
    np.testing.assert_allclose(grown.demo_features[:task.num_demos], expected)
    assert not np.allclose(expected, task.demo_features), "the tables differ, so the vectors must change"


def test_session_refuses_bad_requests_with_a_reason(tmp_path):
    s = QuerySession(QueryConfig(tasks_dir=str(tmp_path), use_default_tasks=False, max_text_chars=20,
                                 max_negatives=2, max_workspace_voxels=1000), PlannerConfig(voxel_size_m=0.01))
    with pytest.raises(QueryRefused, match="no field is loaded"):
        s.plan("mug")
    with pytest.raises(QueryRefused, match="empty query"):
        s.plan("  ")
    with pytest.raises(QueryRefused, match="at most 20"):
        s.plan("m" * 21)
    with pytest.raises(QueryRefused, match="empty negative phrase"):
        s.check_negatives(["object", ""])
    with pytest.raises(QueryRefused, match="at most 2"):
        s.check_negatives(["a", "b", "c"])
    assert s.check_negatives([" a "]) == ("a",) and s.check_negatives([]) is None
    with pytest.raises(QueryRefused, match="non-finite"):
        s.check_workspace((np.nan, 0, 0), (1, 1, 1))
    with pytest.raises(QueryRefused, match=r"max must exceed min.*\['y'\]"):
        s.check_workspace((0, 1, 0), (0.05, 1, 0.05))
    with pytest.raises(QueryRefused, match="too large"):
        s.check_workspace((0, 0, 0), (1, 1, 1))
    assert s.check_workspace((0, 0, 0), (0.05, 0.05, 0.05)) == ((0.0, 0.0, 0.0), (0.05, 0.05, 0.05))
    with pytest.raises(QueryRefused, match="not allowed"):
        s.record_demo("../evil", np.eye(4))
    with pytest.raises(QueryRefused, match="no field is loaded"):
        s.record_demo("fine_name", np.eye(4))
    assert s.status() == (False, "no field loaded yet (waiting for a checkpoint)")


def test_session_loads_the_newest_checkpoint_or_refuses(tmp_path):
    s = QuerySession(QueryConfig(device="cpu"))
    with pytest.raises(QueryRefused, match="no checkpoint"):
        s.load_field(tmp_path)
    with pytest.raises(QueryRefused, match="not found"):
        s.load_field(tmp_path / "nope.ckpt")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "field.ckpt").write_bytes(os.urandom(256))
    with pytest.raises(QueryRefused, match="cannot load checkpoint .*field.ckpt"):
        s.load_field(tmp_path)  # the newest under the folder is tried
    assert s.field is None


def test_session_plans_with_per_request_options(oracle, tmp_path):
    """Grasps carry their source and quality terms; negatives, max_grasps and the task apply to one request
    only; the heat map comes with the result; an unknown task is refused; a recorded demonstration is used."""
    field, ex, scene = oracle
    torch.set_num_threads(1)
    cfg = PlannerConfig(workspace_min_m=WORKSPACE[0], workspace_max_m=WORKSPACE[1], num_steps=20, max_grasps=5)
    s = QuerySession(QueryConfig(tasks_dir=str(tmp_path / "tasks"), use_default_tasks=True), cfg)
    s.load_tasks()
    s.use_field(field, ex)
    assert s.status()[0]
    t0 = time.perf_counter()
    r = s.plan("mug handle", max_grasps=2, negatives=["object", "things"])
    print(f"mug handle: {time.perf_counter() - t0:.1f} s, {r.reason or [(g.source, g.task) for g in r.grasps]}")
    assert r.found and len(r.grasps) == 2
    for g in r.grasps:
        assert g.source in ("demo", "geometric") and (g.task != "") == (g.source == "demo")
        assert {"antipodal_deg", "contact_width_m", "contact_similarity", "clearance_m", "quality"} <= set(g.quality)
        assert 0 <= g.quality["antipodal_deg"] <= cfg.antipodal_max_deg and 0 < g.quality["contact_width_m"] < 0.08
    assert r.heatmap_points.shape == (len(r.heatmap_similarity), 3) and len(r.heatmap_similarity) > 100
    assert s.planner.config is cfg and s.planner_config.max_grasps == 5, "a request must not change the config"
    # the same heat map as the planner's similarity map (same pass, same negatives)
    pts, sim = s.similarity("mug handle", ["object", "things"])
    np.testing.assert_allclose(pts, r.heatmap_points)
    np.testing.assert_allclose(sim, r.heatmap_similarity, atol=1e-5)
    _, sim_default = s.similarity("mug handle")
    np.testing.assert_allclose(sim_default, s.planner.similarity_map("mug handle")[1], atol=1e-6)
    with pytest.raises(QueryRefused, match="min_similarity"):
        s.similarity("bowl", min_similarity=float("nan"))
    with pytest.raises(QueryRefused, match="unknown task 'nope'"):
        s.plan("mug handle", task="nope")
    absent = s.plan("banana")
    assert not absent.found and "not found" in absent.reason and absent.heatmap_similarity is not None
    # a demonstration recorded through the session is saved and usable at once, by name
    mug = next(g for g in r.grasps)
    surface = s.planner.surface_cache
    assert surface, "the queries above computed the workspace surface"
    task, path = s.record_demo("my_grasp", mug.T_world_tool, append=True, metadata={"by": "test"})
    assert s.planner.surface_cache is surface, "a recorded demonstration keeps the field's surface"
    assert path == (tmp_path / "tasks" / "my_grasp.npz").resolve() and load_task(path).num_demos == 1
    assert "my_grasp" in [t.name for t in s.planner.tasks]
    r2 = s.plan("mug handle", task="my_grasp", max_grasps=1)
    print("with the recorded task:", r2.reason or [(g.source, g.task, round(g.score, 3)) for g in r2.grasps])
    assert all(g.task in ("my_grasp", "") for g in r2.grasps)
    assert r2.stats["tasks_fitting"] == ["my_grasp"], "the recorded task is the one tried"
    with pytest.raises(QueryRefused, match="unknown task"):
        s.plan("mug handle", task="grasp mug by handle ")
    other = make_task("clip_task", field, [np.eye(4)])
    other.extractor_info = {"type": "clip"}
    save_task(other, tmp_path / "tasks" / "clip_task.npz")
    s.load_tasks()
    assert "clip_task" in s.skipped_tasks and "clip_task" not in [t.name for t in s.planner.tasks]
