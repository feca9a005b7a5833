"""The edit stack saved beside its field (issue 18; core/edit_store.py) and the refresh that uses it
(core/workflows/edit_refresh.py): a stack of box / voxel moves and a removal comes back from its file answering every
query as before; a file that is not a stack, is malformed, belongs to another checkpoint or to a rewritten one is
refused with the reason and restores nothing; a refresh with edits distrusts their old and new places, keeps them in
its run folder, and the next refresh of the refreshed field takes them first. No ROS; seconds."""

from __future__ import annotations

import base64
import json
import math
import os

import numpy as np
import pytest
import torch

from f3rm_ros.core.edit_store import (EditStoreError, edit_stack_path, keep_field_edits, load_edit_stack,
                                      restore_field_edits, save_edit_stack)
from f3rm_ros.core.edits import BoxRegion, EditedField, FloorFill, SceneEdit, Unmix, VoxelRegion


class Blobs:
    """An analytic field: density = sum of Gaussian blobs; features = [x, y, z]."""

    feature_dim = 3
    device = torch.device("cpu")

    def __init__(self, centres):
        self.c = torch.as_tensor(np.asarray(centres), dtype=torch.float32)

    def query_density(self, p):
        return 1000.0 * torch.exp(-((p[:, None, :] - self.c) ** 2).sum(-1) / 0.02 ** 2).sum(-1)

    def query_features(self, p):
        return p.clone()


def rot_z(deg: float, t=(0.0, 0.0, 0.0)) -> np.ndarray:
    a = math.radians(deg)
    T = np.eye(4)
    T[:2, :2] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
    T[:3, 3] = t
    return T


def _edits():
    pts = np.random.default_rng(0).uniform((0.25, -0.03, 0.0), (0.33, 0.03, 0.08), (300, 3))
    voxels = VoxelRegion.from_points(pts, 0.01, 0.01, floor_z=0.0)
    return (SceneEdit(BoxRegion.from_bounds((-0.05, -0.05, 0.0), (0.05, 0.05, 0.1)), rot_z(30, (0.0, 0.2, 0.0)),
                      "mug"),
            SceneEdit(voxels, rot_z(-90, (-0.1, -0.2, 0.0)), "bowl", FloorFill((0.0, 0.12, 0.0), -0.02, 0.01),
                      Unmix(np.array([0.6, 0.0, 0.8]), 0.03, 0.25)),
            SceneEdit(BoxRegion((0.0, -0.3, 0.05), (0.04, 0.04, 0.05), rot_z(20)[:3, :3]), None, "box"))


@pytest.fixture
def ckpt(tmp_path):
    p = tmp_path / "run" / "field.ckpt"
    p.parent.mkdir()
    p.write_bytes(b"a checkpoint")
    return p


def test_a_saved_stack_comes_back_answering_as_before(ckpt):
    base = Blobs([(0.0, 0.0, 0.05), (0.3, 0.0, 0.05), (0.0, -0.3, 0.05)])
    edited = EditedField(base, _edits())
    path = edit_stack_path(ckpt, "/f3rm/query_node")
    assert path == ckpt.with_name("field.ckpt.f3rm.query_node.edits.json")
    assert save_edit_stack(path, ckpt, edited.edits) == path
    assert [p.name for p in ckpt.parent.iterdir() if p.name.startswith(".")] == []  # no temporary left behind
    saved = load_edit_stack(path, ckpt)
    assert saved.checkpoint == ckpt.resolve() and saved.saved and len(saved.edits) == 3
    back = EditedField(base, saved.edits)
    assert [e.label for e in back.edits] == ["mug", "bowl", "box"] and back.edits[2].removed
    assert np.array_equal(back.edits[1].region.occ, edited.edits[1].region.occ)
    assert np.array_equal(back.edits[1].fill.offset, edited.edits[1].fill.offset)
    assert (back.edits[1].fill.z_lo, back.edits[1].fill.z_hi) == (-0.02, 0.01)
    assert back.edits[0].fill is None and back.edits[0].unmix is None
    assert np.array_equal(back.edits[1].unmix.direction, edited.edits[1].unmix.direction)
    assert (back.edits[1].unmix.ring_m, back.edits[1].unmix.floor) == (0.03, 0.25)
    x = torch.as_tensor(np.random.default_rng(1).uniform((-0.4, -0.4, 0.0), (0.4, 0.4, 0.12), (5000, 3)),
                        dtype=torch.float32)
    d0, d1 = edited.query_density(x), back.query_density(x)
    print(f"{int((d0 > 1).sum())} occupied of {len(x)} points; max density difference {float((d0 - d1).abs().max())}")
    assert torch.equal(d0, d1) and torch.equal(edited.query_features(x), back.query_features(x))
    field, n, why = restore_field_edits(base, ckpt, "/f3rm/query_node")
    assert n == 3 and why == "" and isinstance(field, EditedField) and field.base is base


def test_keep_field_edits_saves_and_removes(ckpt):
    base = Blobs([(0.0, 0.0, 0.05)])
    path, why = keep_field_edits(EditedField(base, _edits()[:1]), ckpt, "q")
    assert why == "" and path == edit_stack_path(ckpt, "q") and path.is_file()
    assert keep_field_edits(EditedField(base, ()), ckpt, "q") == (None, "") and not path.exists()  # undo to none
    path, why = keep_field_edits(EditedField(base, _edits()[:1]), None, "q")
    assert path is None and "not loaded from a checkpoint" in why
    field, n, why = restore_field_edits(base, ckpt, "q")  # nothing saved: the plain field
    assert field is base and n == 0 and why == ""


def _bad(path, mutate) -> str:
    data = json.loads(path.read_text())
    mutate(data)
    path.write_text(json.dumps(data))
    with pytest.raises(EditStoreError) as e:
        load_edit_stack(path)
    return str(e.value)


def test_bad_stacks_are_refused_with_the_reason(ckpt, tmp_path):
    path = save_edit_stack(tmp_path / "s.json", ckpt, _edits())
    good = path.read_text()
    cases = {
        "not an edit stack": lambda d: d.update(format="f3rm_ros.run"),
        "version 9": lambda d: d.update(version=9),
        "is not rigid": lambda d: d["edits"][0]["T_world_new_old"][0].__setitem__(0, 2.0),
        "non-finite": lambda d: d["edits"][0]["T_world_new_old"][0].__setitem__(3, float("nan")),
        "a removal has no motion": lambda d: d["edits"][2].update(T_world_new_old=np.eye(4).tolist()),
        "is not base64": lambda d: d["edits"][1]["region"].update(occ="***"),
        "bytes, its shape": lambda d: d["edits"][1]["region"].update(occ=base64.b64encode(b"\xff").decode()),
        "at most 64000000": lambda d: d["edits"][1]["region"].update(shape=[1000, 1000, 1000]),
        "region is empty": lambda d: d["edits"][1]["region"].update(
            occ=base64.b64encode(bytes(len(base64.b64decode(d["edits"][1]["region"]["occ"])))).decode()),
        "box is empty": lambda d: d["edits"][0]["region"].update(half_extents=[0.0, 0.1, 0.1]),
        "type must be": lambda d: d["edits"][0]["region"].update(type="sphere"),
        "bad floor fill": lambda d: d["edits"][1]["fill"].update(z_hi=-0.03),
        "fill.offset must have shape": lambda d: d["edits"][1]["fill"].update(offset=[0.0, 0.1]),
        "needs a voxel region": lambda d: d["edits"][0].update(fill=d["edits"][1]["fill"]),
        "bad unmix ring": lambda d: d["edits"][1]["unmix"].update(ring_m=0.0),
        "bad unmix floor": lambda d: d["edits"][1]["unmix"].update(floor=1.0),
        "unmix.floor has non-finite": lambda d: d["edits"][1]["unmix"].update(floor=float("nan")),
        "unmix.direction must be": lambda d: d["edits"][1]["unmix"].update(direction="up"),
        "bad unmix direction": lambda d: d["edits"][1]["unmix"].update(direction=[1.0, 1.0, 0.0]),
        "names no checkpoint": lambda d: d.pop("checkpoint"),
        "was rewritten": lambda d: d.update(checkpoint_size=1),
    }
    for expect, mutate in cases.items():
        path.write_text(good)
        why = _bad(path, mutate)
        print(f"{expect!r}: {why}")
        assert expect in why and str(path) in why
    path.write_text("{ not json")
    with pytest.raises(EditStoreError, match="unreadable"):
        load_edit_stack(path)
    path.write_text(good)
    other = tmp_path / "other.ckpt"
    other.write_bytes(b"x")
    with pytest.raises(EditStoreError, match="were made on .*field.ckpt, not on .*other.ckpt"):
        load_edit_stack(path, other)
    # the checkpoint rewritten after the edits were saved: they may not describe it any more
    ckpt.write_bytes(b"a retrained field")
    os.utime(ckpt, ns=(1, 1))
    with pytest.raises(EditStoreError, match="was rewritten"):
        load_edit_stack(path, ckpt)
    base = Blobs([(0.0, 0.0, 0.05)])
    path2 = save_edit_stack(edit_stack_path(ckpt), ckpt, _edits())
    path2.write_text("garbage")
    field, n, why = restore_field_edits(base, ckpt)
    assert field is base and n == 0 and "unreadable" in why and path2.read_text() == "garbage"


def test_refresh_inputs_and_baked_history(tmp_path):
    """The refresh with edits on a tiny trained field (as test_refresh makes it): its old frames distrust the edits'
    places, the run folder keeps the edits, and a refresh of the refreshed field takes them before its own."""
    from f3rm_ros.core.dataset import DatasetWriter
    from f3rm_ros.core.sim.camera import SimCamera
    from f3rm_ros.core.sim.moves import move_object
    from f3rm_ros.core.sim.render import intrinsics_from_fov
    from f3rm_ros.core.sim.scene import resolve_scene
    from f3rm_ros.core.sim.trajectory import TrajectoryConfig, scan_poses
    from f3rm_ros.core.workflows.edit_refresh import BAKED_EDITS_NAME, baked_edits, changed_places, refresh_with_edits
    from f3rm_ros.core.workflows.refresh import boxes_points, changed_points, edit_places
    from f3rm_ros.core.workflows.train_scene import TrainSceneRequest
    from test_node_query import make_checkpoint

    torch.set_num_threads(1)
    ck = make_checkpoint(tmp_path / "run", "field.ckpt", steps=3)
    data = tmp_path / "run" / "data"
    T = np.eye(4)
    T[:3, 3] = (-0.2, 0.2, 0.0)
    cam = SimCamera(move_object(resolve_scene("mug_bowl_box"), "bowl", T), intrinsics_from_fov(32, 24, 42.5),
                    scan_poses(TrajectoryConfig(num_views=3, seed=5)))
    w = DatasetWriter(data)
    for i in range(len(cam)):
        fr = cam.capture(i)
        w.add_frame(fr.image, fr.intrinsics, fr.T_world_cam, extra={"scene_version": 1}, labels=fr.label)
    bowl = SceneEdit(BoxRegion.from_bounds((0.06, -0.16, 0.0), (0.22, 0.0, 0.08)), T, "bowl")
    features = {"extractor": "labels", "labels": {"dataset": str(data), "patch_size": 4}}

    def run(src, edits, name, boxes=(), through=False):
        req = TrainSceneRequest(data, num_steps=2, features=features, device="cpu", run_dir=tmp_path / name,
                                command="test")
        res = refresh_with_edits(req, src, edits, boxes, edits_path="x.json", through=through)
        return res, json.loads((tmp_path / name / "run.json").read_text())

    # what refresh_field is told: the edits' old and new places apart (depth-aware masks), the boxes too
    places = changed_places((bowl,), [0.3, 0.3, 0.0, 0.32, 0.32, 0.02])
    old, new, _ = edit_places((bowl,))
    assert np.array_equal(places["changed_old"], old) and np.array_equal(places["changed_new"], new)
    assert len(places["changed"]) == len(changed_points((bowl,))) + len(boxes_points([0.3, 0.3, 0, 0.32, 0.32, 0.02]))
    assert changed_places(()) == {"changed": None, "changed_old": None, "changed_new": None}
    with pytest.raises(ValueError, match="6 per box"):
        changed_places((bowl,), [1.0, 2.0])
    res, info = run(ck, (bowl,), "r1")
    print("first refresh:", info["edits"], info["result"])
    assert res.step == 2 and res.field == tmp_path / "r1" / "field.ckpt"
    # every old view of this scan sees the bowl's old or new place: kept with those pixels left out
    assert info["result"]["frames_old_masked"] == 8 and info["result"]["frames_new"] == 3
    assert info["edits"] == {"given": 1, "baked_before": 0, "file": "x.json",
                             "baked": str(tmp_path / "r1" / BAKED_EDITS_NAME), "through": False, "live_before": 0,
                             "live": 0}
    assert [e.label for e in baked_edits(res.field)] == ["bowl"] and baked_edits(ck) == ()
    none, info0 = run(ck, (), "r0")
    assert info0["result"]["frames_old_masked"] == 0 and not (tmp_path / "r0" / BAKED_EDITS_NAME).exists()
    # the next move, refreshed from the refreshed field: the first move's places still count for the first frames
    mug = SceneEdit(BoxRegion.from_bounds((-0.12, 0.06, 0.0), (0.0, 0.18, 0.1)), None, "mug")
    res2, info2 = run(res.field, (mug,), "r2")
    assert info2["edits"]["baked_before"] == 1 and [e.label for e in baked_edits(res2.field)] == ["bowl", "mug"]
    with pytest.raises(ValueError, match="cannot be refreshed through"):  # baked edits are not live any more
        run(res2.field, (), "r2t", through=True)
    (tmp_path / "r2" / BAKED_EDITS_NAME).write_text("{}")
    with pytest.raises(EditStoreError, match="not an edit stack"):
        run(res2.field, (), "r3")
    # through the edits (the default with edits alone): the field keeps them, each version's count on record
    from f3rm_ros.core.checkpoint import load_checkpoint
    from f3rm_ros.core.edit_store import checkpoint_live_edits

    t1, ti1 = run(ck, (bowl,), "t1", through=None)
    assert ti1["edits"]["through"] and ti1["edits"]["live"] == 1 and not (tmp_path / "t1" / BAKED_EDITS_NAME).exists()
    assert ti1["result"]["frames_old_kept"] == 8 and ti1["result"]["frames_old_masked"] == 0
    assert checkpoint_live_edits(load_checkpoint(t1.field))[1] == {0: 0, 1: 1}
    with pytest.raises(ValueError, match="live edit"):  # boxes alone would lose the bowl's edit
        run(t1.field, (), "t1b", boxes=[0.3, 0.3, 0.0, 0.32, 0.32, 0.02])
    # the next move on the refreshed field (its frames: version 2 = a copy of version 1's, through both edits)
    for i in range(len(cam)):
        fr = cam.capture(i)
        w.add_frame(fr.image, fr.intrinsics, fr.T_world_cam, extra={"scene_version": 2}, labels=fr.label)
    t2, ti2 = run(t1.field, (mug,), "t2", through=None)
    edits2, versions2 = checkpoint_live_edits(load_checkpoint(t2.field))
    assert [e.label for e in edits2] == ["bowl", "mug"] and versions2 == {0: 0, 1: 1, 2: 2}
    assert ti2["edits"]["live_before"] == 1 and ti2["result"]["frames_old_kept"] == 11


def test_edits_made_while_a_refresh_ran_are_carried_over():
    """The refreshed field carries the edits the refresh went through; the served field's later ones go on top of it;
    a field that carries other edits, or has edits of its own already (restored), takes nothing."""
    from types import SimpleNamespace

    from f3rm_ros.core.edit_store import carry_over_edits, edits_from_json, edits_to_json

    def shift(x: float) -> np.ndarray:
        T = np.eye(4)
        T[0, 3] = x
        return T

    base = SimpleNamespace(feature_dim=0)
    a = SceneEdit(BoxRegion.from_bounds((0.0, 0.0, 0.0), (0.1, 0.1, 0.1)), shift(0.2), "a")
    b = SceneEdit(BoxRegion.from_bounds((0.3, 0.0, 0.0), (0.4, 0.1, 0.1)), None, "b")
    c = SceneEdit(BoxRegion.from_bounds((-0.3, 0.0, 0.0), (-0.2, 0.1, 0.1)), shift(-0.1), "c")
    served = EditedField(base, [a, b, c])  # the refresh went through a; b and c were made while it ran
    refreshed = EditedField(base, edits_from_json(edits_to_json([a])), fixed=1)  # as loaded from its checkpoint
    out, n = carry_over_edits(served, refreshed)
    assert n == 2 and out.fixed == 1 and [e.label for e in out.edits] == ["a", "b", "c"]
    assert carry_over_edits(served, EditedField(base, [c], fixed=1))[1] == 0  # it carries other edits
    assert carry_over_edits(served, EditedField(refreshed, [c]))[1] == 0  # edits of its own already
    assert carry_over_edits(base, refreshed)[1] == 0 and carry_over_edits(served, base)[1] == 0
