"""A pick-and-place sequence in the synthetic world with field edits (issue 18), on the analytic oracle field of a
built-in scene (no training, CPU, ~30 s): query the bowl, its top grasp passes the ground-truth check; the simulator
moves the bowl (the world changes: a checker built on the moved scene judges), the session's field is edited with the
same motion (the region from the "bowl" query); the next query's top grasp passes at the new place and a query
limited to the old place finds no bowl; a second move composes, an undo goes back one step, a removal empties it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from f3rm_ros.core.edits import EditError
from f3rm_ros.core.grasp.config import PlannerConfig
from f3rm_ros.core.grasp.evaluate import judge
from f3rm_ros.core.grasp.session import QueryConfig, QuerySession
from f3rm_ros.core.presets import PLANNER_CPU
from f3rm_ros.core.sim.grasp_check import GraspChecker
from f3rm_ros.core.sim.moves import footprint, free_place, move_object
from f3rm_ros.core.sim.scene import resolve_scene
from f3rm_ros.core.workflows.scene_edits import EditRequest, edit_field, session_with_field

WS = ((-0.35, -0.3, 0.005), (0.35, 0.3, 0.3))
# geometric grasps only and fewer seeds: a query in ~4 s on 2 cores (the demonstrations' optimisation takes ~30 s)
FAST = {**PLANNER_CPU, "sources": "geometric", "geometric_max_seeds": 64, "geometric_max_candidates": 256,
        "geometric_verify": 16}


@pytest.fixture(scope="module")
def world():
    from f3rm_ros.core.features.configs import LabelFeatureConfig
    from f3rm_ros.core.features.labels import LabelFeatureExtractor
    from f3rm_ros.core.grasp.oracle import OracleField

    torch.set_num_threads(2)
    scene = resolve_scene("mug_bowl_box")
    table, _ = scene.label_table()
    ex = LabelFeatureExtractor(LabelFeatureConfig(), table=table)
    field = OracleField.from_extractor(scene, ex, resolution=0.004)
    s = QuerySession(QueryConfig(tasks_dir="", use_default_tasks=False),
                     PlannerConfig(workspace_min_m=WS[0], workspace_max_m=WS[1], **FAST))
    s.load_tasks()
    s.use_field(field, ex)
    return scene, s


def fresh(s: QuerySession) -> QuerySession:
    return QuerySession(s.config, s.planner_config, s.task_config, s.gripper)


def old_place_box(scene, name: str) -> tuple[tuple, tuple]:
    c, r = footprint(scene, name)
    return (c[0] - r, c[1] - r, WS[0][2]), (c[0] + r, c[1] + r, 0.2)


def test_pick_and_place_with_edits(world):
    scene, s = world
    obj = "bowl"
    r0 = s.plan(obj)
    ok, why = judge(GraspChecker(scene), r0, (obj,), None)
    assert ok, why
    _, radius = footprint(scene, obj)
    rng = np.random.default_rng(3)
    T1 = free_place(scene, obj, rng, min_shift_m=2 * radius + 0.03)
    scene1 = move_object(scene, obj, T1)
    assert np.allclose(scene.object(obj).T_world_obj, resolve_scene("mug_bowl_box").object(obj).T_world_obj)
    out = edit_field(s, EditRequest(text=obj, T_world_new_old=T1))
    assert out.seconds < 2.0, out.seconds  # target 0.2 s; generous here (shared CPU)
    print(out.message, f"{out.seconds:.3f} s")
    # the old place's floor is read from a free patch of the table beside it, at the table's height (z = 0)
    fill = out.field.edits[-1].fill
    assert fill is not None and fill.z_lo < 0.0 < fill.z_hi and fill.z_hi < 0.02, fill.describe()
    patch = out.region.footprint() + fill.offset[:2]
    for o in scene.objects:  # nothing stands on the patch (ground truth)
        c, r = footprint(scene, o.name)
        assert np.min(np.linalg.norm(patch - c, axis=1)) > r, (o.name, fill.describe())
    floor = torch.as_tensor(np.c_[out.region.footprint(), np.full(len(patch), -0.002)], dtype=torch.float32)
    assert torch.equal(out.field.query_density(floor),
                       s.field.query_density(floor + torch.as_tensor(fill.offset, dtype=torch.float32)))
    s1 = session_with_field(s, out.field, fresh(s))
    assert s.field is not s1.field and len(s1.field.edits) == 1  # the old session still plans on the old field
    r1 = s1.plan(obj)
    ok, why = judge(GraspChecker(scene1), r1, (obj,), None)
    assert ok, f"after the edit: {why}"
    old = s1.plan(obj, workspace=old_place_box(scene, obj))
    assert not old.found, f"a grasp at the bowl's old place: {old.grasps[0].T_world_gripper[:3, 3]}"
    # the moved bowl's ground truth fails at the old pose: the check is not vacuous
    ok_old, _ = judge(GraspChecker(scene1), r0, (obj,), None)
    assert not ok_old

    # a second move of the bowl composes with the first
    T2 = free_place(scene1, obj, rng, min_shift_m=2 * radius + 0.03)
    scene2 = move_object(scene1, obj, T2)
    s2 = session_with_field(s1, edit_field(s1, EditRequest(text=obj, T_world_new_old=T2)).field, fresh(s1))
    r2 = s2.plan(obj)
    ok, why = judge(GraspChecker(scene2), r2, (obj,), None)
    assert ok, f"after the second edit: {why}"
    assert not s2.plan(obj, workspace=old_place_box(scene1, obj)).found

    # undo goes back to the first move; a removal leaves nothing to grasp
    back = session_with_field(s2, edit_field(s2, EditRequest(undo=True)).field, fresh(s2))
    assert len(back.field.edits) == 1
    gone = session_with_field(s2, edit_field(s2, EditRequest(text=obj, removed=True)).field, fresh(s2))
    assert not gone.plan(obj).found


def test_bad_edit_requests_change_nothing(world):
    scene, s = world
    field = s.field
    bad = [(EditRequest(text="teapot", T_world_new_old=np.eye(4)), "not found"),
           (EditRequest(text="bowl", T_world_new_old=np.diag([2.0, 1, 1, 1])), "not rigid"),
           (EditRequest(text="bowl", T_world_new_old=np.full((4, 4), np.nan)), "non-finite"),
           (EditRequest(text="bowl", T_world_new_old=np.array([[1, 0, 0, 2.0], [0, 1, 0, 0], [0, 0, 1, 0],
                                                               [0, 0, 0, 1]])), "off the workspace"),
           (EditRequest(text="bowl"), "motion"),
           (EditRequest(box=((0, 0, 0), (0, 0.1, 0.1)), removed=True), "empty"),
           (EditRequest(undo=True), "no edit to undo")]
    for req, match in bad:
        with pytest.raises(EditError, match=match):
            edit_field(s, req)
        assert s.field is field
    empty = QuerySession()
    with pytest.raises(EditError, match="no field is loaded"):
        edit_field(empty, EditRequest(text="bowl", removed=True))


def test_an_edit_carries_the_names_unmix_by_default(world):
    """``edit.unmix_ring_m`` > 0 (0.03, the default): the query's edit carries an Unmix of the query's text vector
    less the negatives' share, its floor from the field before the edit (``thing_unmix``; ~0 on label features);
    0: none."""
    from f3rm_ros.core.config import replace
    from f3rm_ros.core.edits import EditedField
    from f3rm_ros.core.grasp.language import encode_texts
    from f3rm_ros.core.workflows.scene_edits import EditConfig, thing_unmix

    scene, s = world
    T = np.eye(4)
    T[:3, 3] = (0.0, 0.08, 0.0)
    assert edit_field(s, EditRequest(text="bowl", T_world_new_old=T), replace(EditConfig(), unmix_ring_m=0.0)) \
        .field.edits[-1].unmix is None
    assert EditConfig().unmix_ring_m == 0.03
    out = edit_field(s, EditRequest(text="bowl", T_world_new_old=T))
    u = out.field.edits[-1].unmix
    emb = encode_texts(s.encoder, ["bowl", *s.planner_config.negatives], s.planner.device)
    want = thing_unmix(EditedField(s.field), out.region, 0.03, emb[0], emb[1:])
    assert u is not None and want is not None and u.ring_m == 0.03 and u.floor == pytest.approx(want.floor)
    assert np.allclose(u.direction, want.direction, atol=1e-6)
    assert np.allclose(u.direction, emb[0].cpu().numpy(), atol=1e-4)  # label negatives share nothing with a name
    print(f"the bowl's unmix floor on the label field: {u.floor:.3f}")
    assert u.floor < 0.05  # label features: nothing else answers to the name
