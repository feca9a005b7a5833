"""The edit maths of :mod:`f3rm_ros.core.edits` (issue 18) against closed forms: moved content is read from its old
place through the inverse motion, the old place is empty, edits compose and undo, bad motions are refused; renders
of the edited trained field follow the edits. No training, no ROS: seconds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from f3rm_ros.core.edits import (BoxRegion, EditedField, EditError, EditWarp, FloorFill, SceneEdit, VoxelRegion,
                                 check_rigid, region_from_selection, rigid_from_pose)
from f3rm_ros.core.fields.protocol import FoldableField, FusedQueryField, GraspField

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "field_v1.ckpt"


class Blobs:
    """An analytic foldable field: density = sum of Gaussian blobs; hidden = [x, y, z, x*y], head W, b."""

    feature_dim = 3
    device = torch.device("cpu")
    extractor_info = {"type": "test"}
    nerf_to_world = np.eye(4)

    def __init__(self, centres):
        self.c = torch.as_tensor(np.asarray(centres), dtype=torch.float32)
        g = torch.Generator().manual_seed(0)
        self.W, self.b = torch.randn(3, 4, generator=g), torch.randn(3, generator=g)

    def query_density(self, p):
        return 1000.0 * torch.exp(-((p[:, None, :] - self.c) ** 2).sum(-1) / 0.02 ** 2).sum(-1)

    def query_feature_hidden(self, p):
        return torch.cat([p, (p[:, 0] * p[:, 1])[:, None]], dim=1)

    def query_features(self, p):
        return self.query_feature_hidden(p) @ self.W.T + self.b

    @property
    def feature_head(self):
        return self.W, self.b


def rot_z(deg: float, t=(0.0, 0.0, 0.0)) -> np.ndarray:
    a = math.radians(deg)
    T = np.eye(4)
    T[:2, :2] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
    T[:3, 3] = t
    return T


def apply(T: np.ndarray, p: np.ndarray) -> np.ndarray:
    return p @ T[:3, :3].T + T[:3, 3]


BOX_A = BoxRegion.from_bounds((-0.05, -0.05, 0.0), (0.05, 0.05, 0.1))  # around the blob at (0, 0, 0.05)


def field():
    return Blobs([(0.0, 0.0, 0.05), (0.3, 0.0, 0.05)])


def test_moved_content_is_read_through_the_inverse_motion_and_the_old_place_is_empty():
    base = field()
    T = rot_z(30, (0.0, 0.2, 0.0))
    ef = EditedField(base).with_edit(SceneEdit(BOX_A, T, "blob"))
    rng = np.random.default_rng(0)
    old_pts = rng.uniform((-0.04, -0.04, 0.01), (0.04, 0.04, 0.09), (200, 3))
    new_pts = apply(T, old_pts)
    x_new = torch.as_tensor(new_pts, dtype=torch.float32)
    x_old = torch.as_tensor(old_pts, dtype=torch.float32)
    assert torch.allclose(ef.query_density(x_new), base.query_density(x_old), rtol=1e-4, atol=1e-3)
    # features are not rotated: the same vectors as at the old place
    assert torch.allclose(ef.query_features(x_new), base.query_features(x_old), atol=1e-4)
    # the old place (minus where it overlaps the new one) reads empty: density 0, the empty-space features
    gone = ~BOX_A.contains(torch.as_tensor(apply(np.linalg.inv(T), old_pts), dtype=torch.float32))
    assert gone.sum() > 100
    assert float(ef.query_density(x_old)[gone].abs().max()) == 0.0
    assert torch.allclose(ef.query_features(x_old)[gone], base.b.expand(int(gone.sum()), 3))
    assert float(ef.query_feature_hidden(x_old)[gone].abs().max()) == 0.0
    # the fold identity holds everywhere, the untouched blob is untouched
    W, b = ef.feature_head
    pts = torch.as_tensor(rng.uniform(-0.1, 0.4, (300, 3)), dtype=torch.float32)
    assert torch.allclose(ef.query_feature_hidden(pts) @ W.T + b, ef.query_features(pts), atol=1e-5)
    far = torch.tensor([[0.3, 0.0, 0.05], [0.31, 0.01, 0.04]])
    assert torch.equal(ef.query_density(far), base.query_density(far))
    # the base and the earlier edited field are unchanged
    assert float(base.query_density(torch.tensor([[0.0, 0.0, 0.05]]))) > 500
    assert EditedField(base).query_density(torch.tensor([[0.0, 0.0, 0.05]])) > 500


def test_protocols_and_gradients_follow_the_base():
    ef = EditedField(field()).with_edit(SceneEdit(BOX_A, rot_z(0, (0.1, 0.0, 0.0))))
    assert isinstance(ef, GraspField) and isinstance(ef, FoldableField)
    # the base answers density and features apart: so does the edited field (the planner asks with getattr; a
    # protocol isinstance is no test of it: Python 3.12 checks attributes statically, and the property is there)
    assert not isinstance(field(), FusedQueryField) and getattr(ef, "query_density_and_features", None) is None
    x = torch.tensor([[0.11, 0.01, 0.05]], requires_grad=True)
    ef.query_density(x).sum().backward()
    # d density / dx at the moved blob equals the base's gradient at the old place
    x0 = torch.tensor([[0.01, 0.01, 0.05]], requires_grad=True)
    field().query_density(x0).sum().backward()
    assert torch.allclose(x.grad, x0.grad, rtol=1e-4, atol=1e-3)


def test_edits_compose_and_undo():
    base = field()
    T1, T2 = rot_z(20, (0.0, 0.15, 0.0)), rot_z(-50, (0.05, -0.1, 0.0))
    # second move: the region where the thing now is (the first box, moved)
    box1 = BoxRegion(apply(T1, BOX_A.center[None])[0], BOX_A.half_extents, T1[:3, :3])
    two = EditedField(base).with_edit(SceneEdit(BOX_A, T1)).with_edit(SceneEdit(box1, T2))
    one = EditedField(base).with_edit(SceneEdit(BOX_A, T2 @ T1))
    rng = np.random.default_rng(1)
    pts = torch.as_tensor(np.concatenate([rng.uniform((-0.3, -0.3, 0.0), (0.4, 0.3, 0.12), (3000, 3)),
                                          apply(T2 @ T1, rng.uniform(-0.04, 0.04, (500, 3)) + [0, 0, 0.05])]),
                          dtype=torch.float32)
    assert torch.allclose(two.query_density(pts), one.query_density(pts), atol=1e-3)
    # features agree except in the first move's new place, which the second move emptied (one move never filled it)
    final = BOX_A.contains(torch.as_tensor(apply(np.linalg.inv(T2 @ T1), pts.numpy()), dtype=torch.float32))
    between = box1.contains(pts) & ~final
    assert between.sum() > 10 and (~between).sum() > 3000
    f2, f1 = two.query_features(pts), one.query_features(pts)
    assert torch.allclose(f2[~between], f1[~between], atol=1e-4)
    assert torch.allclose(f2[between], base.b.expand(int(between.sum()), 3))
    # where the thing was after the first move is empty now
    mid = torch.as_tensor(apply(T1, np.array([[0.0, 0.0, 0.05]])), dtype=torch.float32)
    assert float(two.query_density(mid)) == 0.0
    # undo pops the newest: the thing is back at its first new place
    back = two.undo()
    assert len(back.edits) == 1 and float(back.query_density(mid)) > 500
    assert float(back.undo().query_density(torch.tensor([[0.0, 0.0, 0.05]]))) > 500
    with pytest.raises(EditError, match="no edit to undo"):
        back.undo().undo()


def test_remove_and_moving_onto_another_thing():
    base = field()
    rm = EditedField(base).with_edit(SceneEdit(BOX_A, None, "blob"))
    assert float(rm.query_density(torch.tensor([[0.0, 0.0, 0.05]]))) == 0.0
    assert float(rm.query_density(torch.tensor([[0.3, 0.0, 0.05]]))) > 500
    assert "removed" in rm.describe()
    # a move onto the second blob: what moved there is what is served (the new place replaces its content)
    mv = EditedField(base).with_edit(SceneEdit(BOX_A, rot_z(0, (0.3, 0.0, 0.0))))
    p = torch.tensor([[0.3, 0.0, 0.05], [0.33, 0.0, 0.05]])
    assert torch.allclose(mv.query_features(p), base.query_features(p - torch.tensor([0.3, 0.0, 0.0])), atol=1e-5)


@pytest.mark.parametrize("T, match", [
    (np.full((4, 4), np.nan), "non-finite"),
    (np.diag([1.1, 1.0, 1.0, 1.0]), "not orthonormal"),
    (np.array([[1, 0.2, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]), "not orthonormal"),
    (np.diag([1.0, 1.0, -1.0, 1.0]), "reflection"),
    (np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0.5, 1.0]]), "last row"),
    (np.eye(3), "4x4"),
])
def test_bad_motions_are_refused_and_change_nothing(T, match):
    ef = EditedField(field())
    with pytest.raises(EditError, match=match):
        ef.with_edit(SceneEdit(BOX_A, T))
    assert ef.edits == ()


def test_moves_off_the_workspace_and_bad_quaternions_and_boxes():
    ef = EditedField(field())
    ws = ((-0.35, -0.3, 0.0), (0.35, 0.3, 0.3))
    ok = ef.with_edit(SceneEdit(BOX_A, rot_z(90, (0.2, 0.1, 0.0))), ws)
    assert len(ok.edits) == 1
    with pytest.raises(EditError, match="off the workspace"):
        ef.with_edit(SceneEdit(BOX_A, rot_z(0, (1.0, 0.0, 0.0))), ws)
    with pytest.raises(EditError, match="norm"):
        rigid_from_pose((0, 0, 0), (0, 0, 0, 2.0))
    with pytest.raises(EditError, match="non-finite"):
        rigid_from_pose((0, float("inf"), 0), (0, 0, 0, 1.0))
    T = rigid_from_pose((0.1, 0.2, 0.3), (0, 0, math.sin(math.pi / 8), math.cos(math.pi / 8)))
    assert np.allclose(T, rot_z(45, (0.1, 0.2, 0.3)))
    assert np.allclose(check_rigid(T), T)
    with pytest.raises(EditError, match="empty"):
        BoxRegion((0, 0, 0), (0.1, 0.0, 0.1))


def test_voxel_region_from_a_selection_keeps_the_picked_cluster_above_the_floor():
    rng = np.random.default_rng(2)
    mug = rng.uniform((-0.04, -0.04, 0.0), (0.04, 0.04, 0.1), (400, 3))
    stray = rng.uniform((0.2, 0.2, 0.0), (0.21, 0.21, 0.02), (10, 3))  # a few matches on a neighbour
    pts = np.concatenate([mug, stray])
    score = np.concatenate([np.linspace(0.7, 1.0, 400), np.full(10, 0.8)])
    reg = region_from_selection(pts, score, 0.65, voxel=0.01, dilate_m=0.01, floor_z=0.002)
    inside = reg.contains(torch.as_tensor(np.array([[0.0, 0.0, 0.05], [0.045, 0.0, 0.05], [0.205, 0.205, 0.01],
                                                    [0.0, 0.0, -0.003], [0.0, 0.0, 0.2]]), dtype=torch.float32))
    assert inside.tolist() == [True, True, False, False, False]
    with pytest.raises(EditError, match="no point reaches"):
        region_from_selection(pts, score, 1.5)
    with pytest.raises(EditError, match="empty"):
        VoxelRegion((0, 0, 0), 0.01, np.zeros((2, 2, 2), bool))


def test_renders_and_clouds_of_a_trained_field_follow_the_edits():
    from f3rm_ros.core.cameras import CameraIntrinsics
    from f3rm_ros.core.field_api import load_trained_field

    f = load_trained_field(FIXTURE)
    c2w = np.asarray(f.cameras["c2w_world_opencv"][0])
    K = f.cameras["intrinsics"][0]
    K = CameraIntrinsics(fx=K.fx / 4, fy=K.fy / 4, cx=K.cx / 4, cy=K.cy / 4, width=K.width // 4, height=K.height // 4)
    ref = f.render(c2w, K)
    # an edit far from everything the camera sees renders exactly as the plain field (the same sampler and nets)
    far = BoxRegion((1e3, 1e3, 1e3), (0.01, 0.01, 0.01))
    same = EditedField(f).with_edit(SceneEdit(far, rot_z(0, (0.01, 0.0, 0.0)))).render(c2w, K)
    for k in ("rgb", "depth", "accumulation", "features"):
        assert torch.allclose(same[k], ref[k], atol=1e-4), k
    # removing everything leaves nothing to see
    everything = BoxRegion((0, 0, 0), (1e4, 1e4, 1e4))
    gone = EditedField(f).with_edit(SceneEdit(everything, None))
    out = gone.render(c2w, K)
    assert float(out["accumulation"].max()) < 1e-6
    pts, _ = gone.point_cloud([(c2w, K)], min_accumulation=0.5)
    assert len(pts) == 0


def test_what_moved_together_stays_together():
    """A second move of a thing takes its first edit's whole moved region along when the new selection covers most
    of it (a part the query matches less, here the lid, does not stay behind as a leftover); an earlier edit the
    selection barely touches is not taken in; fraction 0 is off."""
    from f3rm_ros.core.edits import keep_together

    T = rot_z(30, (0.2, 0.0, 0.0))
    jar = VoxelRegion.from_points(np.random.default_rng(0).uniform((-0.03, -0.03, 0.0), (0.03, 0.03, 0.12), (600, 3)),
                                  0.01, 0.01, 0.0)  # the first move's region: body and lid
    first = SceneEdit(jar, T, "jar")
    body_now = apply(T, jar.sample_points())
    body_now = body_now[body_now[:, 2] < 0.08]  # the second selection misses the lid (z > 0.08)
    sel = VoxelRegion.from_points(body_now, 0.01, 0.0, 0.0)
    lid_now = torch.as_tensor(apply(T, np.array([[0.0, 0.0, 0.1], [0.02, 0.01, 0.11]])), dtype=torch.float32)
    assert not sel.contains(lid_now).any()
    whole = keep_together(sel, [first], 0.5, 0.0)
    assert whole.contains(lid_now).all() and whole.contains(torch.as_tensor(body_now, dtype=torch.float32)).all()
    assert keep_together(sel, [first], 0.0) is sel  # off
    far = SceneEdit(BOX_A, rot_z(0, (0.0, 0.3, 0.0)), "other")  # moved elsewhere: not in the selection
    assert keep_together(sel, [far], 0.5) is sel
    assert keep_together(sel, [SceneEdit(jar, None, "gone")], 0.5) is sel  # a removal moved nothing here


def test_the_old_place_floor_is_read_from_beside():
    """A floor fill: the old place's footprint, in its band about the support, reads the field at x + offset (not
    empty, not the thing's underside); above the band the old place is empty; the new place and frames that saw no
    edit read as before; a fill needs a voxel region and a sane band."""
    base = Blobs([(0.0, 0.0, 0.0), (0.0, 0.2, 0.0), (0.0, 0.0, 0.06)])  # the support here and beside; the thing
    thing = VoxelRegion.from_points(np.random.default_rng(0).uniform((-0.03, -0.03, 0.0), (0.03, 0.03, 0.1), (500, 3)),
                                    0.01, 0.01, -0.005)
    T = rot_z(40, (0.3, 0.0, 0.0))
    fill = FloorFill((0.0, 0.2, 0.0), -0.02, 0.01)
    ef = EditedField(base).with_edit(SceneEdit(thing, T, "thing", fill))
    plain = EditedField(base).with_edit(SceneEdit(thing, T, "thing"))
    rng = np.random.default_rng(1)
    band = torch.as_tensor(rng.uniform((-0.02, -0.02, -0.015), (0.02, 0.02, 0.008), (300, 3)), dtype=torch.float32)
    off = torch.as_tensor(fill.offset, dtype=torch.float32)
    assert torch.allclose(ef.query_density(band), base.query_density(band + off))
    assert torch.allclose(ef.query_features(band), base.query_features(band + off), atol=1e-5)
    inside = thing.contains(band)
    assert inside.any() and float(plain.query_density(band[inside]).abs().max()) == 0.0  # without: a hole
    above = torch.as_tensor(rng.uniform((-0.02, -0.02, 0.02), (0.02, 0.02, 0.09), (300, 3)), dtype=torch.float32)
    assert float(ef.query_density(above).abs().max()) == 0.0
    at_new = torch.as_tensor(apply(T, band.numpy().astype(np.float64)), dtype=torch.float32)
    assert torch.equal(ef.query_density(at_new), plain.query_density(at_new))
    x, _, empty = EditWarp(ef.edits)(band, None, torch.zeros(len(band), dtype=torch.long))
    assert torch.equal(x, band) and not empty.any()  # a frame captured before the edit sees the floor as it was
    g = band.clone().requires_grad_(True)
    ef.query_density(g).sum().backward()
    h = (band + off).clone().requires_grad_(True)
    base.query_density(h).sum().backward()
    assert torch.allclose(g.grad, h.grad, atol=1e-3)
    # the warp's one-lookup test of region and floor patch answers as the plain region test and band x footprint
    w = EditWarp(ef.edits)
    pts = torch.as_tensor(rng.uniform((-0.08, -0.08, -0.05), (0.08, 0.08, 0.15), (20000, 3)), dtype=torch.float32)
    in_region, in_floor = w._place(0, pts)
    assert torch.equal(in_region, thing.contains(pts)) and torch.equal(in_floor, w._floor_reference(0, pts))
    assert in_region.any() and in_floor.any() and (in_floor & ~in_region).any()
    with pytest.raises(EditError, match="needs a voxel region"):
        SceneEdit(BOX_A, T, "box", fill)
    with pytest.raises(EditError, match="bad floor fill"):
        FloorFill((0.0, 0.2, 0.0), 0.01, -0.02)
    with pytest.raises(EditError, match="bad floor fill"):
        FloorFill((np.nan, 0.2, 0.0), -0.02, 0.01)


def test_a_region_grows_into_missed_parts_and_leaves_out_only_a_neighbour_reaching_in():
    """A jar's selection (its body) grows into the parts it missed that match the query enough (a lid, a handle)
    and join it, not into a neighbour or the table; a touching neighbour reaching into the region is left out, a band
    of the jar's own that matches less (not joined to anything outside) stays."""
    from f3rm_ros.core.edits import exclude_neighbours, grow_region

    def box(x, lo, hi):
        return np.all((x >= lo) & (x <= hi), axis=1)

    parts = [  # (lo, hi, score), the first that holds a point scores it: a patch of the body (a label, away from
        # the neighbour), the body, lid, handle, the neighbour, the table
        ((0.0, -0.03, 0.05), (0.03, 0.03, 0.06), 0.2), ((-0.03, -0.03, 0.0), (0.03, 0.03, 0.10), 1.0),
        ((-0.03, -0.03, 0.10), (0.03, 0.03, 0.13), 0.6), ((0.03, -0.01, 0.04), (0.06, 0.01, 0.07), 0.8),
        ((-0.12, -0.05, 0.0), (-0.031, 0.05, 0.08), 0.1), ((-0.5, -0.5, -0.02), (0.5, 0.5, 0.0), 0.2)]

    def probe(x):
        occ, score = np.zeros(len(x), bool), np.full(len(x), -1.0)
        for lo, hi, sc in parts:
            m = box(x, lo, hi) & ~occ
            occ |= m
            score[m] = sc
        return occ, score

    body = np.random.default_rng(0).uniform((-0.025, -0.025, 0.005), (0.025, 0.025, 0.095), (800, 3))
    sel = VoxelRegion.from_points(body, 0.01, 0.0, 0.0)
    t = lambda p: torch.as_tensor(np.asarray(p, np.float64).reshape(-1, 3), dtype=torch.float32)  # noqa: E731
    lid, handle, other = t([0.0, 0.0, 0.12]), t([0.05, 0.0, 0.055]), t([-0.09, 0.0, 0.04])
    assert not sel.contains(lid).any() and not sel.contains(handle).any()
    grown = grow_region(sel, probe, 0.5, 0.04, 0.0, 0.0, 0.0)
    assert grown.contains(lid).all() and grown.contains(handle).all() and not grown.contains(other).any()
    assert not grown.contains(t([0.0, 0.0, -0.01])).any()  # nothing of the table
    assert grow_region(sel, probe, 0.5, 0.0) is sel and grow_region(sel, probe, 2.0, 0.04) is sel
    # the selection dilated into the neighbour: its voxels there go, the jar's own band stays
    wide = VoxelRegion.from_points(body, 0.01, 0.02, 0.0)
    nb_in = t([-0.04, 0.0, 0.04])
    band = t([0.015, 0.0, 0.055])
    assert wide.contains(nb_in).all() and wide.contains(band).all()
    out = exclude_neighbours(wide, probe, 0.5, True, 0.0)
    assert not out.contains(nb_in).any() and out.contains(band).all()
    assert out.contains(t(body)).sum() >= 0.95 * len(body)
    plain = exclude_neighbours(wide, probe, 0.5, False, 0.0)  # every low-matching voxel goes: the band too
    assert not plain.contains(band).any() and not plain.contains(nb_in).any()


def test_a_touching_neighbour_leaves_with_its_blurred_skin_and_its_half_of_the_gap():
    """Features blur across a contact: a box's voxels next to a can score between the two. The region of the can
    (dilated 2 cm into the box) loses the box, its blurred skin (followed one voxel in, up to halfway between the
    two scores) and the empty voxels of the gap nearer the box; the can itself stays whole. Two stray low voxels
    outside do not count as a neighbour."""
    from f3rm_ros.core.edits import exclude_neighbours

    def probe_for(gap):
        def probe(x):
            can = (np.linalg.norm(x[:, :2], axis=1) <= 0.03) & (x[:, 2] >= 0.0) & (x[:, 2] <= 0.10)
            box = (x[:, 0] >= 0.03 + gap) & (x[:, 0] <= 0.12) & (np.abs(x[:, 1]) <= 0.05) & (x[:, 2] >= 0.0) & \
                (x[:, 2] <= 0.08)
            score = np.where(can, 1.0, np.where(box, np.where(x[:, 0] < 0.03 + gap + 0.01, 0.52, 0.1), -1.0))
            return can | box, score
        return probe

    t = lambda p: torch.as_tensor(np.asarray(p, np.float64).reshape(-1, 3), dtype=torch.float32)  # noqa: E731
    rng = np.random.default_rng(1)
    r, a = 0.03 * np.sqrt(rng.random(3000)), rng.random(3000) * 2 * np.pi
    body = np.c_[r * np.cos(a), r * np.sin(a), rng.uniform(0.012, 0.1, 3000)]
    for gap in (0.0, 0.012):
        wide = VoxelRegion.from_points(body, 0.01, 0.02, 0.0)
        box_pts = np.c_[rng.uniform(0.03 + gap, 0.12, 4000), rng.uniform(-0.05, 0.05, 4000),
                        rng.uniform(0.015, 0.08, 4000)]
        assert wide.contains(t(box_pts)).sum() > 100
        out = exclude_neighbours(wide, probe_for(gap), 0.5, True, 0.0)
        assert out.contains(t(body)).float().mean() >= 0.97, gap
        # of the box, at most what shares a voxel with the can's skin
        deep = box_pts[:, 0] > 0.03 + gap + 0.01
        assert not out.contains(t(box_pts[deep])).any(), gap
    # the same can alone but for a stray pair of voxels just outside: nothing is left out
    wide = VoxelRegion.from_points(body, 0.01, 0.02, 0.0)

    def stray(x):
        can = (np.linalg.norm(x[:, :2], axis=1) <= 0.03) & (x[:, 2] >= 0.0) & (x[:, 2] <= 0.10)
        pair = (np.abs(x[:, 0] - 0.065) < 0.006) & (np.abs(x[:, 1]) < 0.011) & (np.abs(x[:, 2] - 0.05) < 0.006)
        return can | pair, np.where(can, np.where(x[:, 0] > 0.02, 0.55, 1.0), np.where(pair, 0.45, -1.0))
    kept = exclude_neighbours(wide, stray, 0.5, True, 0.0)
    assert kept.contains(t(body)).all()


def test_an_unmix_takes_the_moved_things_meaning_out_of_its_old_neighbours_only():
    """``SceneEdit.unmix``: within ``ring_m`` of the region, outside it and on what no edit moved, a feature loses its
    positive component along the direction; the moved content, the old place, points beyond the ring and features
    with a negative component are unchanged; the folded head is not offered then. ``thing_unmix`` takes the name's
    vector as its direction. Bad unmixes are refused."""
    from f3rm_ros.core.edits import Unmix
    from f3rm_ros.core.workflows.scene_edits import thing_unmix

    g = np.mgrid[-0.02:0.021:0.01, -0.02:0.021:0.01, 0.03:0.071:0.01].reshape(3, -1).T  # around the blob at the origin
    region = VoxelRegion.from_points(g, voxel=0.01, dilate_m=0.0)
    T = rot_z(0.0, (0.0, 0.3, 0.0))
    m = np.array([0.6, 0.8, 0.0])
    plain = EditedField(field(), [SceneEdit(region, T, "a")])
    ef = EditedField(field(), [SceneEdit(region, T, "a", unmix=Unmix(m, 0.03))])
    ring_pts = torch.tensor([[0.045, 0.0, 0.05], [0.0, -0.045, 0.04], [-0.04, 0.01, 0.06]])
    other = torch.tensor([[0.12, 0.0, 0.05], [0.3, 0.0, 0.05],  # beyond the ring, the other blob
                          [0.0, 0.3, 0.05], [0.01, 0.31, 0.04],  # the moved content at its new place
                          [0.0, 0.0, 0.05]])  # the old place (empty)
    f0, f1 = plain.query_features(ring_pts), ef.query_features(ring_pts)
    mt = torch.as_tensor(m, dtype=torch.float32)
    want = f0 - (f0 @ mt).clamp(min=0)[:, None] * mt
    assert torch.allclose(f1, want, atol=1e-6)
    assert (f0 @ mt).max() > 0 and not torch.allclose(f1, f0)  # something to take out, and it was
    assert torch.allclose(ef.query_features(other), plain.query_features(other))
    neg = EditedField(field(), [SceneEdit(region, T, "a", unmix=Unmix(-m, 0.03))])  # the other sign
    fn = neg.query_features(ring_pts)
    assert torch.allclose(fn, f0 - (f0 @ -mt).clamp(min=0)[:, None] * -mt, atol=1e-6)
    assert hasattr(plain, "query_feature_hidden") and not hasattr(ef, "query_feature_hidden")
    # undo drops it, a further edit keeps it
    assert not ef.undo()._unmixes
    assert ef.with_edit(SceneEdit(BOX_A, rot_z(0.0, (0.0, -0.3, 0.0)), "b")).edits[0].unmix is not None
    # thing_unmix: the name as given, the floor from the held features beyond the ring (Blobs': [x, y, z] @ W + b)
    q = torch.nn.functional.normalize(torch.tensor([1.0, -2.0, 0.5]), dim=0)
    u = thing_unmix(EditedField(field()), region, 0.03, q)
    assert u is not None and u.ring_m == 0.03 and np.allclose(u.direction, q.numpy()) and 0.0 <= u.floor < 0.95
    assert thing_unmix(EditedField(field()), region, 0.03, torch.ones(4) / 2) is None  # another dimension
    assert thing_unmix(EditedField(field()), VoxelRegion.from_points(g + 5.0, 0.01, 0.0), 0.03, q).floor == 0.0
    wide = thing_unmix(EditedField(field()), region, 0.2, q)  # the widest ring: its shell reaches 32 cm out
    assert wide is not None and wide.ring_m == 0.2
    for d, r in ((m * 2, 0.03), ([np.nan, 0, 1], 0.03), (m, 0.0), (m, 0.5)):
        with pytest.raises(EditError, match="unmix"):
            Unmix(np.asarray(d, float), r)
    with pytest.raises(EditError, match="voxel region"):
        SceneEdit(BOX_A, T, "a", unmix=Unmix(m, 0.03))
    wrong = EditedField(field(), [SceneEdit(region, T, "a", unmix=Unmix(np.array([0.0, 0.6, 0.0, 0.8]), 0.03))])
    with pytest.raises(EditError, match="4 feature dims, the field 3"):
        wrong.query_features(ring_pts)


class SharedMeaning:
    """A thing (a can, r 3 cm, 10 cm tall, at the origin) touching a neighbour (a box from x = 3 cm) on a table; the
    features share a common direction as CLIP's do (``shared`` times e0, plus e1 for the can, e2 the box, e3 the
    table; ``shared`` 0: label-like, orthogonal) and the can's meaning blurs onto what is within 1.5 cm of it
    (weight falling linearly from 1 at its surface to 0)."""

    feature_dim = 8
    device = torch.device("cpu")
    extractor_info = {"type": "test"}
    nerf_to_world = np.eye(4)

    def __init__(self, shared: float):
        self.shared = shared

    @staticmethod
    def parts(p):
        r = torch.linalg.norm(p[:, :2], dim=1)
        z_in = (p[:, 2] >= 0.0) & (p[:, 2] <= 0.1)
        can = (r <= 0.03) & z_in
        box = (p[:, 0] >= 0.03) & (p[:, 0] <= 0.1) & (p[:, 1].abs() <= 0.05) & (p[:, 2] >= 0.0) & (p[:, 2] <= 0.08)
        table = (p[:, 2] < 0.0) & (p[:, 2] >= -0.02)
        gap = torch.sqrt((r - 0.03).clamp(min=0) ** 2 + (p[:, 2] - p[:, 2].clamp(0.0, 0.1)) ** 2)
        return can, box, table, (1.0 - gap / 0.015).clamp(min=0.0)

    def query_density(self, p):
        can, box, table, _ = self.parts(p)
        return 1000.0 * (can | box | table).float()

    def query_features(self, p):
        can, box, table, blur = self.parts(p)
        f = torch.zeros(len(p), 8)
        f[:, 0] = self.shared
        f[:, 1] = torch.where(can, torch.ones_like(blur), blur)
        f[:, 2] = (box & ~can).float()
        f[:, 3] = (table & ~can & ~box).float()
        return f


@pytest.mark.parametrize("shared", [0.0, 1.2])
def test_an_unmix_takes_the_name_out_down_to_what_the_scene_answers_to_it(shared):
    """``thing_unmix``: the query's text vector less what the negatives share with it, and a floor that is the
    scene's own cosine with that (held features 10-15 cm from the region). CLIP-like features (image features share
    e0; text vectors share e7 and a little of e0, so a text vector is about as alike every image feature; the
    negatives too): the box's rim, which the can's blur reached, comes down to the table's relevancy for 'can' and
    the rest of the box keeps its feature exactly, where the raw name with no floor would take itself out of every
    box feature in the ring. Label-like features: the floor is 0 and the rim loses all of the can's name."""
    from f3rm_ros.core.edits import Unmix
    from f3rm_ros.core.grasp.language import pairwise_softmax
    from f3rm_ros.core.workflows.scene_edits import thing_unmix

    base = SharedMeaning(shared)
    rng = np.random.default_rng(4)
    r, a = 0.03 * np.sqrt(rng.random(3000)), rng.random(3000) * 2 * np.pi
    body = np.c_[r * np.cos(a), r * np.sin(a), rng.uniform(0.0, 0.1, 3000)]
    region = VoxelRegion.from_points(body, 0.01, 0.0, 0.0)
    unit = lambda *v: torch.nn.functional.normalize(torch.tensor(v, dtype=torch.float32), dim=-1)  # noqa: E731
    if shared:  # 'can', then 'object' and 'things'
        name = unit(0.5, 0.5, 0, 0, 0, 0, 0, 1.0)
        negs = unit([0.5, 0, 0, 0, 0, 0, 0.3, 1.0], [0.5, 0, 0, 0, 0, 0.3, 0, 1.0])
    else:
        name, negs = unit(0.0, 1.0, 0, 0, 0, 0, 0, 0), unit([0, 0, 0, 0, 0, 0, 1.0, 0], [0, 0, 0, 0, 0, 1.0, 0, 0])
    u = thing_unmix(EditedField(base), region, 0.03, name, negs)
    d = torch.as_tensor(u.direction)
    table, own = unit(shared, 0, 0, 1.0, 0, 0, 0, 0), unit(shared, 0.0, 1.0, 0, 0, 0, 0, 0)  # own: the box's meaning
    print(f"shared {shared}: floor {u.floor:.3f}; direction . name {float(d @ name):.3f}; the table's cosine with "
          f"the direction {float(table @ d):.3f}, the box's {float(own @ d):.3f}")
    assert u.floor == pytest.approx(max(float(table @ d), 0.0), abs=1e-4)
    assert float((negs @ d).abs().max()) < 1e-5 and float(d @ name) > 0.4  # the name, less what the negatives share
    T = rot_z(0.0, (0.0, 0.4, 0.0))
    ef = EditedField(base, [SceneEdit(region, T, "can", unmix=u)])
    bare = EditedField(base, [SceneEdit(region, T, "can", unmix=Unmix(u.direction, 0.03))])  # no floor
    x = torch.as_tensor(np.c_[rng.uniform(0.03, 0.09, 20000), rng.uniform(-0.05, 0.05, 20000),
                              rng.uniform(0.005, 0.075, 20000)], dtype=torch.float32)
    ring = u.ring(region).contains(x) & ~region.contains(x)
    _, _, _, blur = base.parts(x)
    rim, clean = ring & (blur > 0.5), ring & (blur == 0)
    assert int(rim.sum()) > 50 and int(clean.sum()) > 500
    unitf = lambda f: torch.nn.functional.normalize(f, dim=-1)  # noqa: E731
    f0, f1, fb = base.query_features(x), ef.query_features(x), bare.query_features(x)
    rel = lambda f: pairwise_softmax(unitf(f), name, negs, 0.1)  # noqa: E731 - the query's relevancy for 'can'
    scene = float(rel(table[None]))
    print(f"relevancy for 'can': the table {scene:.3f}, the rim before {float(rel(f0[rim]).min()):.3f} .. "
          f"{float(rel(f0[rim]).max()):.3f}, after {float(rel(f1[rim]).max()):.3f}")
    assert float(rel(f0[rim]).min()) > scene + 0.05  # the blur answers to the name
    assert float(rel(f1[rim]).max()) <= scene + 0.01  # no more than the table does
    assert float((unitf(f1[rim]) @ d).max()) <= u.floor + 1e-4  # taken out down to the floor
    assert float((unitf(f1[rim]) @ own).min()) > float((unitf(f0[rim]) @ own).min())  # reads more as the box
    assert torch.allclose(f1[clean], f0[clean], atol=1e-5)  # the rest of the box as it was
    far = ~u.ring(region).contains(x)
    assert torch.equal(f1[far], f0[far])
    if shared:  # the raw name with no floor would take itself out of the whole ring: 0.31 of every box feature
        raw = EditedField(base, [SceneEdit(region, T, "can", unmix=Unmix(name.numpy(), 0.03))]).query_features(x)
        assert float((unitf(f0[clean]) @ name).min()) > 0.3 and float((unitf(raw[clean]) @ name).abs().max()) < 1e-4
    else:
        assert u.floor == 0.0 and torch.allclose(f1, fb)


def test_the_cpu_warp_of_the_touched_points_alone_is_the_plain_warp():
    """``EditWarp.__call__`` on the CPU sends only the points inside the boxes an edit can touch through the stack;
    on a stack with a rotation, a floor fill, a second move of the same thing and a removal, random points (many in
    the changed places) get the plain path's read points, directions, empty flags, movers and point gradients, also
    with a prefix of the edits in force per point."""
    rng = np.random.default_rng(3)
    thing = VoxelRegion.from_points(rng.uniform((-0.03, -0.03, 0.0), (0.03, 0.03, 0.1), (500, 3)), 0.01, 0.01, -0.005)
    T1 = rot_z(40, (0.3, 0.0, 0.0))
    moved = VoxelRegion.from_points(apply(T1, thing.sample_points()), 0.01, 0.0, -0.005)
    edits = [SceneEdit(thing, T1, "thing", FloorFill((0.0, 0.2, 0.0), -0.02, 0.01)),
             SceneEdit(moved, rot_z(-25, (0.0, 0.25, 0.0)), "thing"),
             SceneEdit(BOX_A, None, "box")]
    warp = EditWarp(edits)
    boxes = warp._touched_boxes()
    inside = np.concatenate([rng.uniform(b[0] - 0.01, b[1] + 0.01, (800, 3)) for b in boxes])
    pts = np.concatenate([inside, rng.uniform(-0.6, 0.6, (3000, 3))])
    x = torch.as_tensor(pts, dtype=torch.float32)
    d = torch.nn.functional.normalize(torch.randn_like(x), dim=-1)
    assert x.shape[0] >= EditWarp.SUBSET_MIN and 0 < int(warp.touched(x).sum()) < x.shape[0]
    for active in (None, torch.as_tensor(rng.integers(0, 4, x.shape[0]))):
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        fast = warp(xa, d, active, mover=True)
        ref = warp.warp_all(xb, d, active, mover=True)
        assert torch.allclose(fast[0], ref[0], atol=1e-6) and torch.allclose(fast[1], ref[1], atol=1e-6)
        assert torch.equal(fast[2], ref[2]) and torch.equal(fast[3], ref[3])
        assert bool(ref[2].any()) and bool((ref[3] >= 0).any())  # the stack did something to these points
        w = torch.randn_like(x)
        (fast[0] * w).sum().backward()
        (ref[0] * w).sum().backward()
        assert torch.allclose(xa.grad, xb.grad, atol=1e-5)
    assert len(warp(x)) == 3 and len(EditWarp([])(x)) == 3


def test_a_full_stack_refuses_another_edit_and_says_a_refresh_would_keep_it():
    """At MAX_EDITS edits another is refused with the reason (the field unchanged); a refresh trains through its
    edits and its checkpoint carries them, so the way out is a new capture and field, and the message says so."""
    from f3rm_ros.core.edits import MAX_EDITS

    step = SceneEdit(BOX_A, rot_z(0.0, (0.0, 0.0, 0.0)), "blob")
    full = EditedField(field(), [step] * MAX_EDITS, fixed=10)
    with pytest.raises(EditError, match=f"{MAX_EDITS} edits are stacked already .*10 of them carried by the "
                                        f"refreshed checkpoint.*capture the scene anew"):
        full.with_edit(step)
    assert len(full.edits) == MAX_EDITS and len(full.undo().with_edit(step).edits) == MAX_EDITS
