"""Unit tests of the grasp planner's pieces (fast: analytic fields, no open3d, no training)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from f3rm_ros.core.features.configs import LabelFeatureConfig
from f3rm_ros.core.features.labels import LabelFeatureExtractor
from f3rm_ros.core.geometry import quat_to_matrix
from f3rm_ros.core.gripper import Gripper
from f3rm_ros.core.grasp import (ExtractorMismatchError, GraspPlanner, PlannerConfig, Task, TaskConfig,
                                 TaskFormatError, load_default_tasks, load_task, make_task, retrieve_task,
                                 save_task, task_embedding)
from f3rm_ros.core.grasp.collision import (gripper_corner_points, gripper_shell_points, in_collision,
                                           in_collision_reference)
from f3rm_ros.core.grasp.demos import gripper_pose
from f3rm_ros.core.grasp.language import is_negative_only
from f3rm_ros.core.grasp.proposals import (quat_to_matrix_torch, random_quaternions, remove_statistical_outliers,
                                           remove_statistical_outliers_reference, surface_voxels,
                                           surface_voxels_reference, voxel_downsample, voxel_downsample_reference)
from f3rm_ros.core.grasp.optimize import lift_above_floor
from f3rm_ros.core.grasp.task import adapt_task, check_extractor

TABLE = {"1": {"object": "table", "category": "table", "part": None},
         "2": {"object": "ball", "category": "ball", "part": None, "synonyms": ["sphere"]}}


class BallField:
    """Analytic field: a ball of radius r on the table plane z = 0 (the table is z < 0), label features."""

    def __init__(self, extractor=None, centre=(0.3, 0.0, 0.03), r=0.03, features=True):
        self.c = torch.tensor(centre, dtype=torch.float32)
        self.r = r
        self.device = torch.device("cpu")
        self.nerf_to_world = np.eye(4)
        self.ex = extractor
        if features:
            self.extractor_info = extractor.cache_key()
            self.feature_dim = extractor.feature_dim
            self.vec = torch.tensor(extractor.id_vectors, dtype=torch.float32)
        else:
            self.extractor_info = {}
            self.feature_dim = 0

    def sdf_ball(self, p):
        return (p - self.c).norm(dim=-1) - self.r

    def query_density(self, p):
        sdf = torch.minimum(self.sdf_ball(p), p[:, 2])  # ball or table (z < 0)
        return 2000.0 * torch.sigmoid(-sdf / 0.001)

    def query_features(self, p):
        w = torch.sigmoid(-(self.sdf_ball(p) - p[:, 2]) / 0.002)[:, None]  # nearer the ball than the table
        return w * self.vec[2] + (1 - w) * self.vec[1]


@pytest.fixture(scope="module")
def extractor():
    return LabelFeatureExtractor(LabelFeatureConfig(), table=TABLE)


def test_surface_voxels_match_reference():
    rng = np.random.default_rng(0)
    a = rng.random((9, 8, 7)).astype(np.float32)
    fast = surface_voxels(torch.from_numpy(a), 0.5).numpy()
    ref = surface_voxels_reference(a, 0.5)
    print("surface voxels", fast.sum(), "of", (a >= 0.5).sum(), "occupied")
    assert fast.sum() > 0 and np.array_equal(fast, ref)


def test_voxel_downsample_and_outliers_match_reference():
    rng = np.random.default_rng(1)
    pts = np.concatenate([rng.random((400, 3)) * 0.1, [[1.0, 1.0, 1.0], [1.01, 1.0, 1.0]]])
    fast = voxel_downsample(torch.from_numpy(pts), 0.02).numpy()
    ref = voxel_downsample_reference(pts, 0.02)
    print("downsampled", len(pts), "->", len(fast))
    assert fast.shape == ref.shape and np.allclose(fast, ref, atol=1e-12)
    keep = remove_statistical_outliers(torch.from_numpy(pts), 50, 4.0).numpy()
    keep_ref = remove_statistical_outliers_reference(pts, 50, 4.0)
    print("outliers removed", (~keep).sum(), "reference", (~keep_ref).sum())
    assert np.array_equal(keep, keep_ref) and not keep[-1] and not keep[-2] and keep[:400].all()


def test_quaternions_and_gripper_pose():
    q = random_quaternions(64, torch.Generator().manual_seed(0))
    R = quat_to_matrix_torch(q).numpy()
    err = np.abs(R - quat_to_matrix(q.numpy())).max()
    print("quat->matrix max error vs geometry.quat_to_matrix", err)
    assert err < 1e-5
    T = gripper_pose([0.1, 0.2, 0.3], [0, 0, -1], [1, 1, 0])
    assert np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3)) and np.linalg.det(T[:3, :3]) > 0
    assert np.allclose(T[:3, 2], [0, 0, 1]) and np.allclose(T[:3, 1], np.array([1, 1, 0]) / np.sqrt(2))
    with pytest.raises(ValueError):
        gripper_pose([0, 0, 0], [0, 0, 1], [0, 0, 2])


def test_collision_chunked_matches_reference(extractor):
    f = BallField(extractor)
    pts = torch.as_tensor(gripper_shell_points(Gripper(), 0.0075), dtype=torch.float32)
    n = 40
    q = random_quaternions(n, torch.Generator().manual_seed(2))
    t = f.c + torch.randn(n, 3, generator=torch.Generator().manual_seed(3)) * 0.05
    fast = in_collision(f, quat_to_matrix_torch(q), t, pts, 0.0075, 0.2, 10, chunk_points=5000)
    ref = in_collision_reference(f, quat_to_matrix_torch(q), t, pts, 0.0075, 0.2, 10)
    print("shell points", len(pts), "collisions", int(fast.sum()), "of", n)
    assert torch.equal(fast, ref) and 0 < int(fast.sum()) < n


def _ball_task(field, name="grasp ball from above"):
    c = field.c.numpy()
    demos = [gripper_pose(c + [0, 0, 0.01], [0, 0, -1], [0, 1, 0]),
             gripper_pose(c + [0, 0, 0.01], [0, 0, -1], [1, 0, 0])]
    return make_task(name, field, demos, TaskConfig(num_query_points=50), metadata={"object": "ball"})


def test_task_roundtrip_embedding_and_extractor_check(tmp_path, extractor):
    f = BallField(extractor)
    task = _ball_task(f)
    p = save_task(task, tmp_path / "ball.npz")
    back = load_task(p)
    assert back.name == task.name and np.array_equal(back.demo_features, task.demo_features)
    assert back.extractor_info == json.loads(json.dumps(task.extractor_info))
    emb = task_embedding(back)
    print("task embedding", tuple(emb.shape), "norm", float(emb.norm()))
    assert emb.shape == (50, extractor.feature_dim) and float(emb.norm()) > 0
    assert [x.name for x in tmp_path.iterdir()] == ["ball.npz"]  # atomic write left no temp file
    # the trainer stores {"name", "feature_dim", **cache_key()} in checkpoints: the same extractor
    ckpt_info = {"name": "labels", "feature_dim": extractor.feature_dim, **extractor.cache_key()}
    assert adapt_task(back, ckpt_info) is back
    # another extractor setting -> refused with a clear message
    other = LabelFeatureExtractor(LabelFeatureConfig(seed=7), table=TABLE)
    with pytest.raises(ExtractorMismatchError, match="settings"):
        GraspPlanner(BallField(other), other, [back])
    clip_like = dict(type="clip", settings={"model": "ViT-L-14-336"})
    with pytest.raises(ExtractorMismatchError, match="'labels' but the field was distilled from 'clip'"):
        adapt_task(back, clip_like)
    with pytest.raises(TaskFormatError):
        load_task(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(TaskFormatError):
        load_task(tmp_path / "bad.npz")


def test_label_task_adapts_to_another_label_table(extractor):
    """A label task recorded with one table is re-expressed exactly in another table's basis."""
    f = BallField(extractor)
    task = _ball_task(f)
    table2 = dict(TABLE)
    table2["3"] = {"object": "red mug", "category": "mug", "part": "handle"}
    ex2 = LabelFeatureExtractor(LabelFeatureConfig(), table=table2)
    f2 = BallField(ex2)
    direct = _ball_task(f2)
    adapted = adapt_task(task, ex2.cache_key())
    err = np.abs(adapted.demo_features - direct.demo_features).max()
    print("adapted vs recorded-in-new-table max abs diff", err)
    assert err < 1e-4 and adapted is not task


def test_retrieval_picks_matching_task(extractor):
    f = BallField(extractor)
    ball = _ball_task(f)
    table_task = make_task("touch table", f, [gripper_pose([0.0, 0.2, 0.0], [0, 0, -1], [0, 1, 0])] * 2,
                           TaskConfig(num_query_points=50))
    for text, want in (("ball", 0), ("sphere", 0), ("table", 1)):
        idx, sims = retrieve_task(extractor.encode_text([text])[0], [ball, table_task])
        print("retrieval", text, "->", [ball.name, table_task.name][idx], sims.numpy().round(3))
        assert idx == want


def test_negative_only_text():
    negs = ("object", "things", "stuff", "texture")
    for t, want in (("object", True), ("stuff and things", True), ("Objects", True), ("mug", False),
                    ("object mug", False), ("", False)):
        assert is_negative_only(t, negs) == want, t


def test_not_found_reasons_and_a_ball_grasp(extractor):
    f = BallField(extractor)
    cfg = PlannerConfig(workspace_min_m=(0.15, -0.15, 0.005), workspace_max_m=(0.45, 0.15, 0.2), num_steps=30,
                        rotations_per_voxel=4, min_poses=256)
    pl = GraspPlanner(f, extractor, [_ball_task(f)], config=cfg)
    cases = {"": "empty query", "   ": "empty query", "stuff": "names no object", "banana": "not found"}
    for text, want in cases.items():
        r = pl.plan(text)
        print(repr(text), "->", r.reason)
        assert not r.found and want in r.reason
    r = GraspPlanner(BallField(extractor, features=False), None, [], config=cfg).plan("ball")
    print("no features ->", r.reason)
    assert not r.found and "no feature field" in r.reason
    r = pl.plan("ball", workspace=((0.6, 0.3, 0.05), (0.7, 0.4, 0.1)))
    print("empty workspace ->", r.reason)
    assert not r.found and "no surface" in r.reason
    r = pl.plan("ball")
    print("ball ->", r.task, r.stats.get("masked"), r.timing, "score", r.best.score if r.found else None)
    assert r.found and r.task == "grasp ball from above"
    T = r.best.T_world_gripper
    dist = np.linalg.norm(T[:3, 3] - f.c.numpy())
    print("best grasp origin distance to the ball centre", dist, "approach z-axis", T[:3, 2])
    assert dist < 0.03 and np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-5)
    assert [g.rank for g in r.grasps] == list(range(len(r.grasps)))
    assert np.allclose(r.best.T_world_tool, T)  # identity tool transform by default
    assert all(a.score >= b.score for a, b in zip(r.grasps, r.grasps[1:], strict=False))
    pts, sim = pl.similarity_map("ball")
    near = np.linalg.norm(pts - f.c.numpy(), axis=1) < f.r + 0.01
    print("similarity map: ball", sim[near].mean(), "elsewhere", sim[~near].mean())
    assert sim[near].mean() > 0.9 and sim[~near].mean() < 0.6


def test_default_tasks_load():
    tasks = load_default_tasks()
    print("default tasks", [t.name for t in tasks])
    assert len(tasks) >= 5 and all(t.extractor_info.get("type") == "labels" for t in tasks)
    assert all(isinstance(t, Task) and t.num_demos == 2 for t in tasks)


class SkinTableField(BallField):
    """BallField whose table is only a 4 mm dense skin under z = 0 (empty below), as a trained field's
    table: nothing under the visible table top is ever learnt."""

    def query_density(self, p):
        skin = torch.maximum(p[:, 2], -0.004 - p[:, 2])  # < 0 inside -0.004 < z < 0
        sdf = torch.minimum(self.sdf_ball(p), skin)
        return 2000.0 * torch.sigmoid(-sdf / 0.001)


def test_floor_counts_as_occupied_in_collision(extractor):
    """A palm pushed through a skin-only table reads as free without a floor, collides with one."""
    f = SkinTableField(extractor)
    g = Gripper()
    pts = torch.as_tensor(gripper_shell_points(g, 0.0075), dtype=torch.float32)
    # approach from above, origin 25 cm under the table top: fingers, palm and wrist wholly under the skin
    T_under = gripper_pose([0.0, 0.2, -0.25], [0, 0, -1], [0, 1, 0])
    T_above = gripper_pose([0.0, 0.2, 0.05], [0, 0, -1], [0, 1, 0])
    R = torch.as_tensor(np.stack([T_under[:3, :3], T_above[:3, :3]]), dtype=torch.float32)
    t = torch.as_tensor(np.stack([T_under[:3, 3], T_above[:3, 3]]), dtype=torch.float32)
    no_floor = in_collision(f, R, t, pts, 0.0075, 0.2, 10, 4096)
    with_floor = in_collision(f, R, t, pts, 0.0075, 0.2, 10, 4096, floor_z=0.0)
    ref = in_collision_reference(f, R, t, pts, 0.0075, 0.2, 10, floor_z=0.0)
    print("under the table: no floor", no_floor.tolist(), "floor z=0", with_floor.tolist(), "reference", ref.tolist())
    assert no_floor.tolist() == [False, False] and with_floor.tolist() == [True, False] and torch.equal(ref, with_floor)


def test_lift_keeps_gripper_above_floor():
    g = Gripper()
    corners = torch.as_tensor(gripper_corner_points(g), dtype=torch.float32)
    shell = torch.as_tensor(gripper_shell_points(g, 0.004, include_fingers=True), dtype=torch.float32)
    q = random_quaternions(64, torch.Generator().manual_seed(5))
    t = torch.randn(64, 3, generator=torch.Generator().manual_seed(6)) * 0.05
    R = quat_to_matrix_torch(q)
    low_before = (torch.einsum("nij,mj->nmi", R, shell)[..., 2] + t[:, None, 2]).amin(dim=1)
    lift = lift_above_floor(t, q * 0.1, corners, 0.01)
    low_after = (torch.einsum("nij,mj->nmi", R, shell)[..., 2] + t[:, None, 2]).amin(dim=1)
    print("lowest gripper point before", float(low_before.min()), "after", float(low_after.min()),
          "poses lifted", int((lift > 0).sum()), "max lift", float(lift.max()))
    assert bool((low_after >= 0.01).all()) and int((lift > 0).sum()) > 0
    assert torch.equal(lift > 0, low_before < 0.01)  # only poses that were below move
    corner_low = (torch.einsum("nij,mj->nmi", R, corners)[..., 2] + t[:, None, 2]).amin(dim=1)
    assert float((corner_low - 0.01)[lift > 0].max()) < 2e-4  # lifted just above the floor


def test_planner_floor_and_proposal_cap(extractor):
    """On a skin-only table: no returned grasp dips under the floor; max_proposals caps the proposals."""
    f = SkinTableField(extractor)
    base = dict(workspace_min_m=(0.15, -0.15, 0.005), workspace_max_m=(0.45, 0.15, 0.2), num_steps=20,
                rotations_per_voxel=4, min_poses=256, max_grasps=0)
    g = Gripper()
    shell = gripper_shell_points(g, 0.004, include_fingers=True)
    r = GraspPlanner(f, extractor, [_ball_task(f)], config=PlannerConfig(**base)).plan("ball")
    lows = [float((shell @ x.T_world_gripper[:3, :3].T + x.T_world_gripper[:3, 3])[:, 2].min()) for x in r.grasps]
    print("floor 0.005: grasps", len(lows), "lowest gripper point", min(lows) if lows else None, r.stats)
    assert r.found and min(lows) >= 0.005
    capped = GraspPlanner(f, extractor, [_ball_task(f)], config=PlannerConfig(**base, max_proposals=40)).plan("ball")
    print("max_proposals 40:", capped.stats["proposals_all"], "->", capped.stats["proposals"], capped.reason)
    assert capped.stats["proposals_all"] > 40 and capped.stats["proposals"] == 40


def test_resolution_settings_do_not_block_tasks(extractor):
    """Label tasks work with fields made with another patch/image size; a real feature-space change is refused."""
    f = BallField(extractor)
    task = _ball_task(f)
    for kw in (dict(patch_size=8), dict(image_size=240), dict(patch_size=20, image_size=120)):
        other = LabelFeatureExtractor(LabelFeatureConfig(**kw), table=TABLE)
        assert adapt_task(task, other.cache_key()) is task
    clip_a = dict(type="clip", version=1, settings={"model_name": "ViT-L-14-336", "image_size": 0, "precision": "fp16"},
                  resolved={"weights": "openai", "short_side": 336, "feature_dim": 768})
    clip_b = dict(clip_a, settings=dict(clip_a["settings"], image_size=480, precision="fp32"),
                  resolved=dict(clip_a["resolved"], short_side=480))
    task_clip = Task(name="t", query_points=task.query_points, demo_poses=task.demo_poses,
                     demo_features=task.demo_features, demo_density=task.demo_density, extractor_info=clip_a)
    check_extractor(task_clip, clip_b)  # same model at another resolution/precision: accepted
    other = LabelFeatureExtractor(LabelFeatureConfig(dim=32), table=TABLE)
    with pytest.raises(ExtractorMismatchError) as e:
        adapt_task(task, other.cache_key())
    print("refused:", e.value)
    assert "settings.dim" in str(e.value) and "Record the task again" in str(e.value)
    with pytest.raises(ExtractorMismatchError, match="resolved.weights"):
        check_extractor(task_clip, dict(clip_b, resolved=dict(clip_b["resolved"], weights="laion2b")))


def test_explain_failures_says_too_wide_only_without_any_pair():
    from collections import Counter

    from f3rm_ros.core.grasp.verify import explain_failures

    counts = Counter({"no_contact": 5, "collision": 2})
    claim = "it is wider than the gripper opens"
    assert claim in explain_failures(counts, 7, too_wide=90, seeds=100, pairs=0)
    assert claim in explain_failures(Counter(), 0, too_wide=90, seeds=100, pairs=0)
    # a flat thing on the table: no opposite face along its top's normal, but chords gave pairs
    flat = explain_failures(counts, 7, too_wide=90, seeds=100, pairs=12)
    assert claim not in flat and "nothing between the fingers" in flat
    assert claim not in explain_failures(counts, 7, too_wide=10, seeds=100, pairs=0)
    assert explain_failures(Counter(), 0) == "no candidate grasp could be formed"
