"""Refreshing a field after the scene changed (issue 18): the capture session's APPEND (same viewpoints kept
again, each new frame with its scene_version), which old frames see a changed place (projection), and fine-tuning a
checkpoint on the new frames plus the old ones that still agree, in the checkpoint's own field frame; a dataset that
does not match the field is refused. Tiny fields, seconds."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from f3rm_ros.core.cameras import CameraIntrinsics
from f3rm_ros.core.capture import CaptureConfig, CaptureSession
from f3rm_ros.core.config import replace
from f3rm_ros.core.dataset import load_dataset
from f3rm_ros.core.geometry import look_at_opencv
from f3rm_ros.core.workflows.refresh import RefreshConfig

NS = 1_000_000_000
K = CameraIntrinsics(fx=30.0, fy=30.0, cx=16.0, cy=12.0, width=32, height=24)


def test_capture_append_keeps_the_same_views_again_with_a_scene_version(tmp_path):
    s = CaptureSession(CaptureConfig(data_root=str(tmp_path), dataset_name="scan", pose_wait_s=0.5,
                                     blur_threshold=1.0))
    try:
        assert s.open_dataset("scan")
        assert s.append()[0] is False  # nothing to append to yet
        assert s.start()[0]
        s.add_camera_info(K)
        poses = [look_at_opencv([0.5 * np.cos(a), 0.5 * np.sin(a), 0.4], [0, 0, 0]) for a in (0.0, 0.8)]
        rng = np.random.default_rng(0)

        def frame(t: int, pose: np.ndarray) -> None:
            s.add_pose(t * NS, pose)
            s.add_image(t * NS, rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))

        frame(1, poses[0])
        frame(2, poses[1])
        frame(3, poses[0])  # the same view again: not a keyframe in the same session
        assert s.write_queue.wait_idle(10.0) and s.kept_total == 2
        assert s.stop()[0]
        ok, msg = s.append()
        assert ok and "scene version 1" in msg, msg
        assert s.append()[0] is False  # refused while capturing
        frame(4, poses[0])  # the same viewpoints are worth taking again after the scene changed
        frame(5, poses[1])
        assert s.stop()[0]
        ok, msg = s.append()
        frame(6, poses[0])
        assert s.stop()[0] and "scene version 2" in msg
        s.add_pose(7 * NS, poses[1])  # not capturing any more: not kept
        s.add_image(7 * NS, rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    finally:
        s.close()
    frames = json.loads((tmp_path / "scan" / "transforms.json").read_text())["frames"]
    assert [f.get("scene_version", 0) for f in frames] == [0, 0, 1, 1, 2]


def test_frames_seeing_projects_points_into_each_camera():
    from types import SimpleNamespace

    from f3rm_ros.core.workflows.refresh import frames_seeing

    c2w = np.stack([look_at_opencv([0.5, 0, 0.3], [0, 0, 0]), look_at_opencv([0.5, 0, 0.3], [1.0, 0, 0.3]),
                    look_at_opencv([-0.5, 0, 0.3], [0, 0, 0])])
    ds = SimpleNamespace(c2w=c2w, intrinsics=[K] * 3, __len__=lambda: 3)
    sees = frames_seeing(ds, np.array([[0.0, 0.0, 0.0]]), frames=[0, 1, 2])
    assert sees.tolist() == [True, False, True]  # the second camera looks away
    assert frames_seeing(ds, np.array([[0.0, 3.0, 0.0]]), frames=[0, 1, 2]).tolist() == [False, False, False]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny trained field of mug_bowl_box (as test_node_query makes it) and its dataset with 4 appended views of
    the scene after the bowl moved (scene_version 1)."""
    from f3rm_ros.core.dataset import DatasetWriter
    from f3rm_ros.core.sim.camera import SimCamera
    from f3rm_ros.core.sim.moves import move_object
    from f3rm_ros.core.sim.render import intrinsics_from_fov
    from f3rm_ros.core.sim.scene import resolve_scene
    from f3rm_ros.core.sim.trajectory import TrajectoryConfig, scan_poses
    from test_node_query import make_checkpoint

    root = tmp_path_factory.mktemp("refresh")
    ck = make_checkpoint(root / "run", "field.ckpt", steps=3)
    data = root / "run" / "data"
    T = np.eye(4)
    T[:3, 3] = (-0.2, 0.2, 0.0)
    moved = move_object(resolve_scene("mug_bowl_box"), "bowl", T)
    cam = SimCamera(moved, intrinsics_from_fov(32, 24, 42.5), scan_poses(TrajectoryConfig(num_views=4, seed=5)))
    w = DatasetWriter(data)
    for i in range(len(cam)):
        fr = cam.capture(i)
        w.add_frame(fr.image, fr.intrinsics, fr.T_world_cam, extra={"scene_version": 1}, labels=fr.label)
    return ck, data, T


def test_refresh_fine_tunes_in_the_field_frame_and_drops_frames_that_see_the_change(tiny, tmp_path):
    import torch

    from f3rm_ros.core.checkpoint import load_checkpoint
    from f3rm_ros.core.features import create_extractor
    from f3rm_ros.core.field_api import load_trained_field
    from f3rm_ros.core.workflows.refresh import boxes_points, refresh_field

    torch.set_num_threads(1)
    ck, data, T = tiny
    ds = load_dataset(data, eval_every=0)
    assert len(ds) == 12
    ex = create_extractor({"extractor": "labels", "labels": {"dataset": str(data), "patch_size": 4}})
    old_box = [0.06, -0.16, 0.0, 0.22, 0.0, 0.08]  # around the bowl's old place
    new_box = [-0.14, 0.04, 0.0, 0.02, 0.2, 0.08]
    seen = []
    res = refresh_field(ck, ds, range(8, 12), boxes_points(old_box + new_box), 4, features=ex,
                        out_path=tmp_path / "refreshed.ckpt", on_progress=seen.append)
    print(res)
    assert res.step == 4 and not res.stopped and seen and seen[-1].step == 4
    # every old view of this scan sees the bowl's places: each is kept with those pixels masked out
    assert res.frames_new == 4 and res.frames_old_kept == 8 and res.frames_old_masked == 8
    dropped = refresh_field(ck, ds, range(8, 12), boxes_points(old_box + new_box), 1, features=ex, old_frames="drop")
    assert dropped.frames_old_dropped == 8 and dropped.frames_old_kept == 0
    a, b = load_checkpoint(ck), load_checkpoint(res.checkpoint)
    assert np.allclose(a["nerf_to_world"], b["nerf_to_world"])  # the same field frame: edits and poses still hold
    f = load_trained_field(res.checkpoint)
    assert f.feature_dim == load_trained_field(ck).feature_dim
    # stop at once: a checkpoint of step 0 is still written
    r0 = refresh_field(ck, ds, range(8, 12), None, 4, features=ex, should_stop=lambda: True, keep_trainer=True)
    assert r0.stopped and r0.frames_old_dropped == 0
    assert len(r0.trainer.train_indices) == 4 * 4 + 8  # by default each new frame is drawn as often as 4 old ones


def test_changed_mask_covers_the_projection():
    from f3rm_ros.core.workflows.refresh import changed_mask

    c2w = look_at_opencv([0.5, 0, 0.3], [0, 0, 0])
    m = changed_mask(c2w, K, np.array([[0.0, 0.0, 0.0]]), 0.01, margin_px=1)
    assert m[12, 16] or m[11, 15]
    assert 0 < m.sum() < 50 and not m[0, 0]


def test_a_refresh_on_another_dataset_or_without_new_frames_is_refused(tiny, tmp_path):
    from f3rm_ros.core.workflows.refresh import refresh_scene
    from f3rm_ros.core.workflows.train_scene import TrainSceneRequest

    ck, data, _ = tiny
    (ck.parent / "run.json").write_text(json.dumps({"data_dir": str(data.resolve())}))
    other = tmp_path / "other"
    other.mkdir()
    (other / "transforms.json").write_text((data / "transforms.json").read_text())
    for sub in ("images", "labels"):
        (other / sub).symlink_to(data / sub)
    with pytest.raises(ValueError, match="was trained on"):
        refresh_scene(TrainSceneRequest(other, num_steps=1, features="labels"), ck)
    js = json.loads((data / "transforms.json").read_text())
    for f in js["frames"]:
        f.pop("scene_version", None)
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "transforms.json").write_text(json.dumps(js))
    for sub in ("images", "labels"):
        (plain / sub).symlink_to(data / sub)
    (ck.parent / "run.json").write_text(json.dumps({"data_dir": str(plain.resolve())}))
    with pytest.raises(ValueError, match="no appended frames"):
        refresh_scene(TrainSceneRequest(plain, num_steps=1, features="labels"), ck)
    (ck.parent / "run.json").unlink()


def test_disagreeing_pixels_keep_the_rays_that_see_through_the_old_place():
    """A camera looks down the x axis at a wall 1 m away; the thing's old place is a small cube half-way, its new
    place another cube off the axis. A pixel whose measured surface is the thing (depth at the old place) disagrees,
    one that saw the wall through the old place does not (it carves the old place), one whose ray now meets the new
    place before its surface disagrees, and the rest of the image agrees."""
    from f3rm_ros.core.workflows.refresh import changed_mask, disagreeing_pixels

    c2w = look_at_opencv([0.0, 0.0, 0.0], [1.0, 0.0, 0.0])
    g = np.arange(-0.02, 0.021, 0.01)
    cube = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    old, new = cube + [0.5, 0.0, 0.0], cube + [0.5, 0.0, 0.12]  # new: above the axis (image rows above the centre)
    depth = np.full((K.height, K.width), 1.0)
    depth[12, 16] = 0.49  # the thing's front face at the image centre
    bad = disagreeing_pixels(c2w, K, depth, old, new, 0.01, margin_m=0.02, margin_px=0)
    assert bad[12, 16]
    assert not bad[11, 15]  # the wall seen through the (now empty) old place
    rows = np.nonzero(bad[:, 16])[0]
    assert len(rows) > 1 and rows.min() < 12  # the new place stands in front of the wall above the centre
    assert not bad[0, 0] and not bad[23, 31]
    # the projection alone masks every pixel of the old place, the wall behind it included
    assert changed_mask(c2w, K, np.concatenate([old, new]), 0.01, margin_px=0)[11, 15]
    # nothing measured (0) behind the new place: the ray now ends on the thing
    depth[rows.min(), 16] = 0.0
    assert disagreeing_pixels(c2w, K, depth, None, new, 0.01, margin_px=0)[rows.min(), 16]


def test_edit_places_split_old_new_and_known_empty():
    from f3rm_ros.core.edits import SceneEdit, VoxelRegion
    from f3rm_ros.core.workflows.refresh import bake_points, edit_places

    occ = np.ones((6, 6, 8), dtype=bool)  # 6 x 6 x 8 cm, bottom at z = -0.005 (the region reaches into the table)
    region = VoxelRegion((0.0, 0.0, -0.005), 0.01, occ)
    T = np.eye(4)
    T[:3, 3] = (0.03, 0.0, 0.0)  # half-way over: the overlap is not empty after the move
    old, new, clear = edit_places([SceneEdit(region, T, "box")])
    assert len(old) == len(new) == occ.sum() and np.allclose(new - old, [0.03, 0, 0])
    assert len(clear) and clear[:, 2].min() >= old[:, 2].min() + 0.02 - 1e-9  # the table under it stays
    assert clear[:, 0].max() < 0.03  # nothing where the thing stands now
    assert clear[:, 0].min() > 0.01 - 1e-9  # the skin voxels (maybe a neighbour's) are not cleared
    b = bake_points([SceneEdit(region, T, "box")])
    assert len(b) and b[:, 2].min() >= old[:, 2].min() + 0.02 - 1e-9
    _, none_new, clear_r = edit_places([SceneEdit(region, None, "box")])
    assert len(none_new) == 0 and len(clear_r) > len(clear)


def test_refresh_with_depth_aware_masks_and_the_edit_as_teacher(tiny, tmp_path):
    """The changed places given apart and a teacher field: the refresh adds its clear / bake terms to every step."""
    import torch

    from f3rm_ros.core.edits import BoxRegion, EditedField, SceneEdit
    from f3rm_ros.core.features import create_extractor
    from f3rm_ros.core.field_api import load_trained_field
    from f3rm_ros.core.workflows.refresh import bake_points, edit_places, refresh_field

    torch.set_num_threads(1)
    ck, data, T = tiny
    ds = load_dataset(data, eval_every=0)
    ex = create_extractor({"extractor": "labels", "labels": {"dataset": str(data), "patch_size": 4}})
    edit = SceneEdit(BoxRegion.from_bounds((0.06, -0.16, 0.0), (0.22, 0.0, 0.08)), T, "bowl")
    teacher = EditedField(load_trained_field(ck), [edit])
    old, new, clear = edit_places([edit])
    res = refresh_field(ck, ds, range(8, 12), np.concatenate([old, new]), 3, features=ex, changed_old=old,
                        changed_new=new, clear_points=clear, teacher=teacher, bake_points=bake_points([edit]),
                        config=RefreshConfig(new_repeat=2), out_path=tmp_path / "r.ckpt")
    assert res.step == 3 and res.frames_new == 4 and res.frames_old_kept == 8
    assert "clear" in res.losses and "bake" in res.losses and np.isfinite(res.losses["bake"])
    assert load_trained_field(res.checkpoint).feature_dim == load_trained_field(ck).feature_dim


def test_teach_frames_puts_the_edited_render_on_exactly_the_contradicted_pixels(tiny):
    """``render_pixels`` is ``render`` at those pixels; ``teach_frames`` writes it (colour, depth where the render is
    opaque, each touched patch's feature) on the pixels in ``bad`` only, into copies."""
    import torch

    from f3rm_ros.core.edits import BoxRegion, EditedField, SceneEdit
    from f3rm_ros.core.features import create_extractor, extract_dataset_features
    from f3rm_ros.core.field_api import load_trained_field
    from f3rm_ros.core.workflows.refresh import teach_frames

    torch.set_num_threads(1)
    ck, data, T = tiny
    ds = load_dataset(data, eval_every=0)
    teacher = EditedField(load_trained_field(ck), [SceneEdit(BoxRegion.from_bounds((0.06, -0.16, 0.0),
                                                                                   (0.22, 0.0, 0.08)), T, "bowl")])
    full = teacher.render(ds.c2w[0], ds.intrinsics[0], with_features=True)
    rng = np.random.default_rng(0)
    H, W = full["rgb"].shape[:2]
    bad = rng.random((H, W)) < 0.2
    ys, xs = np.nonzero(bad)
    part = teacher.render_pixels(ds.c2w[0], ds.intrinsics[0], np.stack([xs + 0.5, ys + 0.5], 1))
    for k in ("rgb", "z_depth", "accumulation", "features"):
        torch.testing.assert_close(part[k], full[k][torch.as_tensor(ys), torch.as_tensor(xs)], atol=1e-4, rtol=1e-4)
    one = teacher.render_pixels(ds.c2w[3], ds.intrinsics[3], np.array([[3.5, 7.5], [10.5, 2.5]]))
    both = teacher.render_pixel_sets([(ds.c2w[0], ds.intrinsics[0], np.stack([xs + 0.5, ys + 0.5], 1)),
                                      (ds.c2w[3], ds.intrinsics[3], np.array([[3.5, 7.5], [10.5, 2.5]]))], chunk=64)
    for k in part:  # several cameras in one batch of rays (chunked across them) = each alone
        torch.testing.assert_close(both[0][k], part[k], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(both[1][k], one[k], atol=1e-4, rtol=1e-4)
    ex = create_extractor({"extractor": "labels", "labels": {"dataset": str(data), "patch_size": 4}})
    maps = extract_dataset_features(ex, ds)
    before = maps.clone()
    d0 = rng.uniform(0.2, 1.0, (H, W)).astype(np.float32)  # a depth image (the tiny capture has none)
    with_depth = SimpleNamespace(c2w=ds.c2w, intrinsics=ds.intrinsics, get_image=ds.get_image, has_depth=True,
                                 get_depth=lambda i: d0 if i == 0 else None)
    images, depths, new_maps = teach_frames(teacher, with_depth, {0: bad}, maps)
    assert torch.equal(maps, before)  # the caller's maps are not touched
    img0 = np.array(ds.get_image(0))
    assert set(images) == {0} and np.array_equal(images[0][~bad], img0[~bad])
    want = (full["rgb"].clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    assert np.abs(images[0][bad].astype(int) - want[bad].astype(int)).max() <= 1
    acc = full["accumulation"].numpy()
    assert set(depths) == {0} and np.array_equal(depths[0][~bad], d0[~bad])
    opaque = bad & (acc >= 0.5)
    assert opaque.any()
    np.testing.assert_allclose(depths[0][opaque], full["z_depth"].numpy()[opaque], atol=1e-4)
    assert np.all(depths[0][bad & (acc < 0.5)] == 0)
    h, w = maps.shape[1:3]
    touched = np.zeros((h, w), bool)
    touched[ys * h // H, xs * w // W] = True
    assert torch.equal(new_maps[0][torch.as_tensor(~touched)], maps[0][torch.as_tensor(~touched)])
    assert torch.equal(new_maps[1:], maps[1:]) and not torch.equal(new_maps[0], maps[0])


def test_refresh_taught_by_the_edit_keeps_every_old_frame(tiny, tmp_path):
    import torch

    from f3rm_ros.core.edits import BoxRegion, EditedField, SceneEdit
    from f3rm_ros.core.features import create_extractor
    from f3rm_ros.core.field_api import load_trained_field
    from f3rm_ros.core.workflows.refresh import edit_places, refresh_field

    torch.set_num_threads(1)
    ck, data, T = tiny
    ds = load_dataset(data, eval_every=0)
    ex = create_extractor({"extractor": "labels", "labels": {"dataset": str(data), "patch_size": 4}})
    edit = SceneEdit(BoxRegion.from_bounds((0.06, -0.16, 0.0), (0.22, 0.0, 0.08)), T, "bowl")
    old, new, _ = edit_places([edit])
    with pytest.raises(ValueError, match="teacher"):
        refresh_field(ck, ds, range(8, 12), np.concatenate([old, new]), 2, features=ex, old_frames="teach")
    res = refresh_field(ck, ds, range(8, 12), np.concatenate([old, new]), 2, features=ex, changed_old=old,
                        changed_new=new, old_frames="teach", teacher=EditedField(load_trained_field(ck), [edit]),
                        out_path=tmp_path / "t.ckpt")
    assert res.step == 2 and res.frames_old_kept == 8 and res.frames_old_dropped == 0 and res.frames_old_masked > 0


def test_refresh_fine_tunes_at_a_fraction_of_the_training_rate(tiny):
    """A fresh Adam moves every touched parameter by about the learning rate: the refresh scales the checkpoint's
    rates (RefreshConfig.lr_scale) unless overrides set lr; a non-positive scale is refused (and out of the config's
    range)."""
    import torch

    from f3rm_ros.core.checkpoint import load_checkpoint
    from f3rm_ros.core.features import create_extractor
    from f3rm_ros.core.config import ConfigError
    from f3rm_ros.core.workflows.refresh import refresh_field

    torch.set_num_threads(1)
    ck, data, _ = tiny
    ds = load_dataset(data, eval_every=0)
    ex = create_extractor({"extractor": "labels", "labels": {"dataset": str(data), "patch_size": 4}})
    lr = float(load_checkpoint(ck)["config"]["lr"])
    default = RefreshConfig().lr_scale
    for kw, want in (({}, default * lr), ({"config": RefreshConfig(lr_scale=0.5)}, 0.5 * lr),
                     ({"overrides": {"lr": 0.003}}, 0.003)):
        tr = refresh_field(ck, ds, range(8, 12), None, 1, features=ex, keep_trainer=True, **kw).trainer
        assert tr.config.lr == pytest.approx(want)
        assert tr.optimizer.param_groups[0]["initial_lr"] == pytest.approx(want)
    with pytest.raises(ValueError, match="lr_scale"):
        refresh_field(ck, ds, range(8, 12), None, 1, features=ex, config=RefreshConfig(lr_scale=0.0))
    with pytest.raises(ConfigError, match="lr_scale"):
        replace(RefreshConfig(), lr_scale=0.0)


def test_render_rays_through_the_edits_warp(tiny):
    """``FieldModel.render_rays(warp=FieldWarp)``: an image that saw none of the edits renders (and back-propagates)
    exactly as the field without a warp; the field-frame warp reads the base where the world-frame edited field does
    (same density at the warped points, zero in the old place)."""
    import torch

    from f3rm_ros.core.edits import BoxRegion, EditedField, EditWarp, SceneEdit
    from f3rm_ros.core.field_api import load_trained_field

    torch.manual_seed(0)
    ck, _, T = tiny
    field = load_trained_field(ck)
    model = field.model.eval().requires_grad_(True)  # loaded for queries: frozen
    edit = SceneEdit(BoxRegion.from_bounds((0.06, -0.16, 0.0), (0.22, 0.0, 0.08)), T, "bowl")
    R = 64
    o = torch.randn(R, 3) * 0.1 + torch.tensor([0.0, 0.0, 0.6])
    d = torch.nn.functional.normalize(torch.randn(R, 3) * 0.3 + torch.tensor([0.0, 0.0, -1.0]), dim=-1)
    cam = torch.zeros(R, dtype=torch.long)
    fw0 = EditWarp([edit]).in_field(field.nerf_to_world, [0])  # image 0 saw no edit

    def run(warp):
        model.zero_grad(set_to_none=True)
        out = model.render_rays(o, d, cam, training=False, warp=warp)
        (out["rgb"].sum() + out["features"].sum()).backward()
        return out, [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain, g_plain = run(None)
    warped, g_warped = run(fw0)
    for k in ("rgb", "depth", "accumulation", "features"):
        assert torch.equal(plain[k], warped[k]), k
    assert len(g_plain) == len(g_warped) and all(torch.equal(a, b) for a, b in zip(g_plain, g_warped, strict=True))
    # every edit in force: the warp in the field frame agrees with the edited field in the world frame
    ed = EditedField(field, [edit])
    fw = EditWarp([edit]).in_field(field.nerf_to_world)
    inside = edit.region.center + (np.random.default_rng(0).random((200, 3)) * 1.8 - 0.9) * edit.region.half_extents
    new_place = torch.as_tensor(inside @ T[:3, :3].T + T[:3, 3], dtype=torch.float32)  # off the faces: no rounding
    old_place = torch.as_tensor(inside, dtype=torch.float32)
    with torch.no_grad():
        for xw in (new_place, old_place):
            pn = field.world_to_nerf(xw)[:, None, :]
            p2, _, empty = fw(pn, torch.zeros(len(xw), 3) + torch.tensor([0.0, 0.0, 1.0]))
            via = field.query_density(field.nerf_to_world_points(p2[:, 0]))
            via = torch.where(empty[:, 0], torch.zeros_like(via), via)
            assert torch.allclose(via, ed.query_density(xw), rtol=1e-4, atol=1e-4)
        assert bool(fw(field.world_to_nerf(old_place)[:, None, :], torch.zeros(len(old_place), 3))[2].all())


def test_refresh_through_the_edits_keeps_them_in_the_checkpoint(tiny, tmp_path):
    """``refresh_field(live_edits=...)``: every old frame stays whole and is trained through the edits it saw (none),
    the new ones through all; the checkpoint carries the edits and loads as an EditedField whose edits cannot be
    undone; the query server's own edits are kept apart on top; bad counts are refused."""
    import torch

    from f3rm_ros.core.checkpoint import load_checkpoint
    from f3rm_ros.core.edit_store import checkpoint_live_edits, keep_field_edits, load_edit_stack, restore_field_edits
    from f3rm_ros.core.edits import BoxRegion, EditedField, EditError, FieldWarp, SceneEdit
    from f3rm_ros.core.features import create_extractor
    from f3rm_ros.core.field_api import load_trained_field
    from f3rm_ros.core.workflows.refresh import refresh_field

    torch.set_num_threads(1)
    ck, data, T = tiny
    ds = load_dataset(data, eval_every=0)
    ex = create_extractor({"extractor": "labels", "labels": {"dataset": str(data), "patch_size": 4}})
    edit = SceneEdit(BoxRegion.from_bounds((0.06, -0.16, 0.0), (0.22, 0.0, 0.08)), T, "bowl")
    counts = [0] * 8 + [1] * 4
    res = refresh_field(ck, ds, range(8, 12), None, 2, features=ex, live_edits=[edit], frame_edits=counts,
                        config=RefreshConfig(new_repeat=2), keep_trainer=True,
                        out_path=tmp_path / "thr" / "field.ckpt")
    assert res.step == 2 and res.frames_new == 4 and res.frames_old_kept == 8 and res.frames_old_masked == 0
    assert isinstance(res.trainer.ray_warp, FieldWarp)
    assert res.trainer.ray_warp._active.tolist() == [1] * 8 + [0] * 8  # new frames twice, then the old ones
    edits, versions = checkpoint_live_edits(load_checkpoint(res.checkpoint))
    assert len(edits) == 1 and np.allclose(edits[0].T_world_new_old, T) and versions == {0: 0, 1: 1}
    f = load_trained_field(res.checkpoint)
    assert isinstance(f, EditedField) and f.fixed == 1 and len(f.edits) == 1
    with pytest.raises(EditError, match="came with its checkpoint"):
        f.undo()
    mine = f.with_edit(SceneEdit(BoxRegion.from_bounds((-0.3, -0.3, 0.0), (-0.2, -0.2, 0.1)), None, "box"))
    assert mine.fixed == 1 and len(mine.undo().edits) == 1
    path, why = keep_field_edits(mine, res.checkpoint)
    assert not why and len(load_edit_stack(path, res.checkpoint).edits) == 1  # only the server's own edit is saved
    back, n, why = restore_field_edits(load_trained_field(res.checkpoint), res.checkpoint)
    assert not why and n == 1 and back.fixed == 1 and [e.label for e in back.edits] == ["bowl", "box"]
    # an old frame of unknown edits is dropped; bad counts and a teacher are refused
    r2 = refresh_field(ck, ds, range(8, 12), None, 1, features=ex, live_edits=[edit], frame_edits=[-1] * 8 + [1] * 4)
    assert r2.frames_old_kept == 0 and r2.frames_old_dropped == 8
    for bad, match in (({"frame_edits": [0] * 11}, "one count"), ({"frame_edits": [0] * 8 + [2] * 4}, "one count"),
                       ({"frame_edits": [0] * 8 + [-1] * 4}, "new frame"),
                       ({"teacher": EditedField(load_trained_field(ck), [edit])}, "no teacher")):
        with pytest.raises(ValueError, match=match):
            refresh_field(ck, ds, range(8, 12), None, 1, features=ex, live_edits=[edit], **bad)


def test_near_changed_pixels_are_the_surfaces_around_a_changed_place():
    """A camera 1 m above a table looking down: the pixels whose surface lies within near_m of a changed place are
    left out, except what ``keep`` spares; no depth (0) is never left out."""
    from f3rm_ros.core.workflows.refresh import near_changed_pixels

    Kd = CameraIntrinsics(fx=50.0, fy=50.0, cx=16.0, cy=12.0, width=32, height=24)
    c2w = look_at_opencv([0.0, 0.0, 1.0], [0.0, 0.0, 0.0], up=[0.0, 1.0, 0.0])
    depth = np.ones((24, 32), np.float32)
    depth[0, 0] = 0.0
    place = np.array([[0.1, 0.0, 0.0]])
    m = near_changed_pixels(c2w, Kd, depth, place, 0.05)
    # back-project every pixel to the table and measure: the mask is exactly the disc of 5 cm around the place
    v, u = np.mgrid[0:24, 0:32]
    cam = np.stack([(u + 0.5 - 16.0) / 50.0, (v + 0.5 - 12.0) / 50.0, np.ones_like(u, dtype=float)], -1)
    world = cam @ c2w[:3, :3].T + c2w[:3, 3]
    want = np.linalg.norm(world - place[0], axis=-1) <= 0.05
    want[0, 0] = False
    assert m.sum() > 10 and np.array_equal(m, want)
    spared = near_changed_pixels(c2w, Kd, depth, place, 0.05, keep=lambda x: x[:, 0] > 0.1)
    assert np.array_equal(spared, want & ~(world[..., 0] > 0.1)) and spared.sum() < m.sum()
    assert not near_changed_pixels(c2w, Kd, depth, place, 0.0).any()
    assert not near_changed_pixels(c2w, Kd, depth, np.zeros((0, 3)), 0.05).any()


def test_near_changed_places_leave_out_their_colour(tiny, tmp_path):
    """``near_m`` through the edits: an old frame's pixels around the changed places keep training depth and features
    (every pixel sampleable, their colour weighs 0); which pixels, found on the trainer's device from its depth targets,
    are the ones the plain reference (:func:`near_changed_pixels` on the frame's depth image) marks, up to pixels whose
    surface lies within 0.1 mm of the ``near_m`` line (float32 targets); the new frames are whole; ``near_moved`` False
    spares the moved thing's own colour; ``near_features`` leaves the same pixels' features out; 0 = off."""
    import torch
    from scipy.spatial import cKDTree

    from f3rm_ros.core.edits import BoxRegion, SceneEdit
    from f3rm_ros.core.features import create_extractor
    from f3rm_ros.core.workflows.refresh import changed_points, near_changed_pixels, refresh_field

    torch.set_num_threads(1)
    ck, data, T = tiny
    from f3rm_ros.core.sim.moves import move_object
    from f3rm_ros.core.sim.render import Renderer
    from f3rm_ros.core.sim.scene import resolve_scene

    base = load_dataset(data, eval_every=0)
    scene = resolve_scene("mug_bowl_box")
    worlds = [Renderer(scene)] * 8 + [Renderer(move_object(scene, "bowl", T))] * 4
    # the fixture's frames with the simulator's depth of the scene each one saw (a subset keeps them)
    class WithDepth:
        has_depth = True

        def __init__(self, ds, worlds):
            self.ds, self.worlds = ds, worlds

        def __len__(self):
            return len(self.ds)

        def __getattr__(self, name):
            return getattr(self.ds, name)

        def get_depth(self, i):
            return self.worlds[i].render(self.ds.intrinsics[i], self.ds.c2w[i]).depth

        def subset(self, idx):
            return WithDepth(self.ds.subset(idx), [self.worlds[int(i)] for i in idx])

    ds = WithDepth(base, worlds)
    ex = create_extractor({"extractor": "labels", "labels": {"dataset": str(data), "patch_size": 4}})
    edit = SceneEdit(BoxRegion.from_bounds((0.06, -0.16, 0.0), (0.22, 0.0, 0.08)), T, "bowl")
    cfg = RefreshConfig(new_repeat=1, near_m=0.08)
    kw = dict(features=ex, live_edits=[edit], frame_edits=[0] * 8 + [1] * 4, keep_trainer=True)
    places = changed_points([edit], 0.01)
    tree = cKDTree(places)

    def check(res, keep):
        b, tr = res.trainer.batcher, res.trainer
        assert b.valid is None and b.num_pixels == b.pixels.shape[0]
        order = [8, 9, 10, 11] + list(range(8))  # the new frames first, then the old ones
        marked = 0
        for k, j in enumerate(tr.train_indices):
            i = order[int(j)]
            W, H = int(b.sizes[k, 0]), int(b.sizes[k, 1])
            got = ~b.rgb_trust[int(b.starts[k]):int(b.starts[k]) + W * H].reshape(H, W).cpu().numpy()
            if i >= 8:
                assert not got.any(), i
                continue
            depth = ds.get_depth(i)
            want = near_changed_pixels(ds.c2w[i], ds.intrinsics[i], depth, places, 0.08, keep)
            v, u = np.nonzero(got != want)
            if len(v):  # only at an edge: the reference's float64 surface against the float32 targets
                K = ds.intrinsics[i]
                z = depth[v, u]
                cam = np.stack([(u + 0.5 - K.cx) / K.fx * z, (v + 0.5 - K.cy) / K.fy * z, z], 1)
                x = cam @ ds.c2w[i][:3, :3].T + ds.c2w[i][:3, 3]
                at_line = np.abs(tree.query(x)[0] - 0.08) < 1e-4
                at_box = np.zeros(len(x), bool) if keep is None else \
                    np.any([keep(x + d) != keep(x) for d in np.vstack([np.eye(3), -np.eye(3)]) * 1e-4], axis=0)
                assert np.all(at_line | at_box), (i, x[~(at_line | at_box)])
                assert len(v) <= 0.01 * max(1, want.sum()) + 5
            marked += int(want.sum())
        assert 0 < int((~b.rgb_trust).sum()) and marked > 0
        assert res.frames_old_masked == sum(1 for k in range(4, 12) if
                                            (~b.rgb_trust[int(b.starts[k]):int(b.starts[k]) + int(b.sizes[k].prod())]
                                             ).any())
        return b

    def in_box(x):
        return edit.region.contains(torch.as_tensor(x, dtype=torch.float32)).numpy()

    spared = check(refresh_field(ck, ds, range(8, 12), None, 1, config=replace(cfg, near_moved=False), **kw), in_box)
    # near_m alone (the moved thing too, by default): the bowl's own colour at its old place is left out too
    moved = check(refresh_field(ck, ds, range(8, 12), None, 1, config=cfg, **kw), None)
    assert not moved.rgb_trust[~spared.rgb_trust].any()
    assert int((~moved.rgb_trust).sum()) > int((~spared.rgb_trust).sum())
    assert moved.feature_trust is None  # the features stay unless asked
    both = refresh_field(ck, ds, range(8, 12), None, 1, config=replace(cfg, near_features=True), **kw).trainer.batcher
    assert torch.equal(both.rgb_trust, moved.rgb_trust) and torch.equal(both.feature_trust, both.rgb_trust)
    assert "feature_weight" in both.sample()
    off = replace(cfg, near_m=0.0)  # 0 = off (REFRESH_CPU)
    assert refresh_field(ck, ds, range(8, 12), None, 1, config=off, **kw).trainer.batcher.rgb_trust is None


def test_near_places_answers_as_the_plain_tree_query_over_every_pixel():
    """NearPlaces looks only at the pixels the places' cells project onto: on random cameras, depths and places
    (cameras looking at them and past them, places behind a camera) it marks exactly what a tree query of every
    pixel's surface marks; so does its tensor way (:meth:`NearPlaces.near`, on the CPU and on CUDA when there is one)
    on those pixels' points."""
    import torch
    from scipy.spatial import cKDTree

    from f3rm_ros.core.workflows.refresh import NearPlaces

    rng = np.random.default_rng(0)
    Kd = CameraIntrinsics(fx=40.0, fy=40.0, cx=20.0, cy=15.0, width=40, height=30)
    v, u = np.mgrid[0:30, 0:40]
    marked = 0
    for trial in range(12):
        places = rng.uniform(-0.3, 0.3, (int(rng.integers(1, 200)), 3)) * [1, 1, 0.3]
        eye = rng.uniform(-1, 1, 3) * [1, 1, 0.5] + [0, 0, 0.8]
        if trial % 3 == 0:  # a camera among the places: some of their cells lie behind it
            eye = rng.uniform(-0.2, 0.2, 3) * [1, 1, 0.3]
        c2w = look_at_opencv(eye, rng.uniform(-0.4, 0.4, 3) * [1, 1, 0] + [0.5, 0, 0], up=[0.0, 0.0, 1.0])
        depth = rng.uniform(0.2, 2.0, (30, 40)) * (rng.uniform(size=(30, 40)) > 0.1)
        near_m = float(rng.uniform(0.01, 0.2))
        got = NearPlaces(places, near_m).pixels(c2w, Kd, depth)
        cam = np.stack([(u + 0.5 - 20.0) / 40.0 * depth, (v + 0.5 - 15.0) / 40.0 * depth, depth], -1)
        world = cam @ c2w[:3, :3].T + c2w[:3, 3]
        dist, _ = cKDTree(places).query(world.reshape(-1, 3), distance_upper_bound=near_m)
        want = (np.isfinite(dist).reshape(30, 40)) & (depth > 0)
        assert np.array_equal(got, want), trial
        # the tensor way (what a refresh asks on the trainer's device): the points of every pixel with a depth
        pts = torch.from_numpy(world.reshape(-1, 3)[(depth > 0).reshape(-1)])
        assert np.array_equal(NearPlaces(places, near_m).near(pts).numpy(), want[depth > 0]), trial
        if torch.cuda.is_available():
            assert np.array_equal(NearPlaces(places, near_m).near(pts.cuda()).cpu().numpy(), want[depth > 0])
        marked += int(want.any())
    assert marked >= 10


def test_a_refresh_through_the_edits_gives_each_moved_thing_its_own_colour(tiny, tmp_path):
    """``RefreshConfig.colour_voxel_m``: the refresh makes a zero colour grid for the moving edit over the field
    positions the thing is read from, trains it (the new views see the moved bowl), saves it in the checkpoint, and
    the loaded field renders through it; a second refresh with one more edit keeps the first grid as it was and adds
    one for the new edit; 0 makes none."""
    import torch

    from f3rm_ros.core.edits import BoxRegion, SceneEdit
    from f3rm_ros.core.features import create_extractor
    from f3rm_ros.core.field_api import load_trained_field
    from f3rm_ros.core.workflows.refresh import refresh_field

    torch.set_num_threads(1)
    ck, data, T = tiny
    ds = load_dataset(data, eval_every=0)
    ex = create_extractor({"extractor": "labels", "labels": {"dataset": str(data), "patch_size": 4}})
    edit = SceneEdit(BoxRegion.from_bounds((0.06, -0.16, 0.0), (0.22, 0.0, 0.08)), T, "bowl")
    kw = dict(features=ex, live_edits=[edit], frame_edits=[0] * 8 + [1] * 4, keep_trainer=True)
    res = refresh_field(ck, ds, range(8, 12), None, 4, config=RefreshConfig(colour_voxel_m=0.02, colour_lr=0.05),
                        out_path=tmp_path / "c" / "field.ckpt", **kw)
    mc = res.trainer.model.moved_colour
    assert mc is not None and list(mc.grids) == ["0"]
    g = mc.grids["0"]
    field = load_trained_field(res.checkpoint)
    corners = torch.as_tensor(field.base.world_to_nerf(torch.as_tensor(edit.region.corners(), dtype=torch.float32)))
    assert bool((g.box[0] <= corners.min(0).values).all() and (g.box[1] >= corners.max(0).values).all())
    assert float(g.value.detach().abs().max()) > 0  # trained
    assert abs(float(g.gain) - 0.05 / (1e-2 * RefreshConfig().lr_scale)) < 1e-4
    loaded = field.base.model.moved_colour
    assert loaded is not None and torch.equal(loaded.grids["0"].value.cpu(), g.value.detach().cpu())
    # a second refresh with one more edit: the first grid kept, a zero one for the new edit
    box = SceneEdit(BoxRegion.from_bounds((-0.3, -0.3, 0.0), (-0.2, -0.2, 0.1)), np.eye(4), "box")
    r2 = refresh_field(res.checkpoint, ds, range(8, 12), None, 0, features=ex, live_edits=[edit, box],
                       frame_edits=[0] * 8 + [2] * 4, keep_trainer=True,
                       config=RefreshConfig(colour_voxel_m=0.02, colour_lr=0.05))
    m2 = r2.trainer.model.moved_colour
    assert sorted(m2.grids) == ["0", "1"] and float(m2.grids["1"].value.abs().max()) == 0
    # the residual as trained (its gain follows the rate of the refreshed checkpoint's config)
    assert torch.allclose((m2.grids["0"].gain * m2.grids["0"].value).detach().cpu(), (g.gain * g.value).detach().cpu(),
                          atol=1e-6)
    off = refresh_field(ck, ds, range(8, 12), None, 1, config=RefreshConfig(colour_voxel_m=0.0), **kw)
    assert off.trainer.model.moved_colour is None


def test_refresh_options_keep_fill_fill_colour_and_adam_moments(tiny, tmp_path):
    """``keep_fill`` False: the refresh trains and saves the edits without their floor fills (default: kept);
    ``fill_colour_voxel_m``: the fill's patch gets a colour grid, trained, saved and served with the field;
    ``adam_moments``: Adam starts from the checkpoint's moments (a query-only file finds them in the run's
    ``checkpoints/`` of the same step) and the refreshed checkpoint keeps its own; a file with none starts afresh."""
    import shutil

    import torch

    from f3rm_ros.core.checkpoint import load_checkpoint
    from f3rm_ros.core.edit_store import checkpoint_live_edits
    from f3rm_ros.core.edits import FloorFill, SceneEdit, VoxelRegion
    from f3rm_ros.core.features import create_extractor
    from f3rm_ros.core.field_api import load_trained_field
    from f3rm_ros.core.workflows.refresh import refresh_field, training_state

    torch.set_num_threads(1)
    ck, data, T = tiny
    ds = load_dataset(data, eval_every=0)
    ex = create_extractor({"extractor": "labels", "labels": {"dataset": str(data), "patch_size": 4}})
    occ = np.zeros((16, 16, 8), bool)
    occ[2:14, 2:14, 1:7] = True
    edit = SceneEdit(VoxelRegion((0.06, -0.16, 0.0), 0.01, occ), T, "bowl",
                     fill=FloorFill(np.array([0.0, 0.2, 0.0]), -0.01, 0.012))
    kw = dict(features=ex, live_edits=[edit], frame_edits=[0] * 8 + [1] * 4)
    kept = refresh_field(ck, ds, range(8, 12), None, 1, out_path=tmp_path / "a.ckpt", **kw)
    dropped = refresh_field(ck, ds, range(8, 12), None, 1, out_path=tmp_path / "b.ckpt",
                            config=RefreshConfig(keep_fill=False, adam_moments=True), **kw)
    (e_kept,), _ = checkpoint_live_edits(load_checkpoint(kept.checkpoint))
    (e_dropped,), _ = checkpoint_live_edits(load_checkpoint(dropped.checkpoint))
    assert e_kept.fill is not None and e_dropped.fill is None
    assert np.allclose(e_dropped.T_world_new_old, T) and np.array_equal(e_dropped.region.occ, occ)
    # the fill's own colour grid (fill_colour_voxel_m): trained, saved and loaded with the field
    graded = refresh_field(ck, ds, range(8, 12), None, 2, out_path=tmp_path / "c.ckpt",
                           config=RefreshConfig(fill_colour_voxel_m=0.01), **kw)
    state = load_checkpoint(graded.checkpoint)["model"]
    assert [k for k in state if k.startswith("moved_colour.")] == ["moved_colour.grids.-2.value",
                                                                   "moved_colour.grids.-2.box",
                                                                   "moved_colour.grids.-2.gain"]
    assert float(state["moved_colour.grids.-2.value"].abs().max()) > 0  # the new views trained it
    served = load_trained_field(graded.checkpoint)
    assert served.base.model.moved_colour is not None and list(served.base.model.moved_colour.grids) == ["-2"]
    # the moments: from the checkpoint itself; the refreshed one keeps its own, the default writes none
    assert kept.moments == 0 and "optimizer" not in load_checkpoint(kept.checkpoint)
    n_params = len(list(load_checkpoint(ck)["optimizer"]["state"]))
    assert 0 < dropped.moments <= n_params and "optimizer" in load_checkpoint(dropped.checkpoint)
    again = refresh_field(dropped.checkpoint, ds, range(8, 12), None, 1, config=RefreshConfig(adam_moments=True), **kw)
    assert again.moments >= dropped.moments
    # a refreshed field with a colour grid, refreshed again: the grid takes its own moments (step count goes on)
    cfg_g = RefreshConfig(fill_colour_voxel_m=0.01, adam_moments=True)
    g1 = refresh_field(ck, ds, range(8, 12), None, 2, out_path=tmp_path / "g1.ckpt", config=cfg_g, **kw)
    g2 = refresh_field(g1.checkpoint, ds, range(8, 12), None, 1, config=cfg_g, keep_trainer=True, **kw)
    grid = g2.trainer.model.moved_colour.grids["-2"].value
    assert float(g2.trainer.optimizer.state[grid]["step"]) == 3.0  # 2 steps of the first refresh, 1 of this one
    # a checkpoint refreshed through edits carries its optimiser now, but is not resumed as a plain field
    from f3rm_ros.core.checkpoint import CheckpointError, check_resumable, model_config

    c = load_checkpoint(dropped.checkpoint)
    with pytest.raises(CheckpointError, match="refreshed through scene edits"):
        check_resumable(c, int(c["num_train_images"]), int(c["feature_dim"]), model_config(c))
    # a run's query-only field.ckpt: the moments of the same step in checkpoints/ beside it, else none
    full = load_checkpoint(ck)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({k: v for k, v in full.items() if k not in ("optimizer",)}, run / "field.ckpt")
    assert training_state(run / "field.ckpt", {k: v for k, v in full.items() if k != "optimizer"}) is None
    shutil.copy(ck, run / "checkpoints" / f"step-{int(full['step']):07d}.ckpt")
    st = training_state(run / "field.ckpt", {k: v for k, v in full.items() if k != "optimizer"})
    assert st is not None and len(st["state"]) == n_params
    (run / "checkpoints" / f"step-{int(full['step']):07d}.ckpt").write_bytes(b"not a checkpoint")
    assert training_state(run / "field.ckpt", {k: v for k, v in full.items() if k != "optimizer"}) is None
