"""Depth images in datasets and depth supervision in the trainer (optional; F3RM itself has none)."""

import json
import logging
import math

import numpy as np
import pytest
import torch
from PIL import Image

from f3rm_ros.core.cameras import image_rays
from f3rm_ros.core.dataset import DatasetError, load_dataset
from f3rm_ros.core.fields.losses import depth_loss

from test_trainer import small_config, sphere_dataset


def _write(root, frames, **top):
    root.mkdir(parents=True, exist_ok=True)
    data = {"fl_x": 20.0, "fl_y": 20.0, "cx": 8.0, "cy": 6.0, "w": 16, "h": 12, "frames": frames, **top}
    (root / "transforms.json").write_text(json.dumps(data))


def test_dataset_reads_depth_ours_and_nerfstudio_keys(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    z_units = rng.integers(0, 3000, (12, 16)).astype(np.uint16)
    z_units[0, 0] = 0  # no measurement
    Image.fromarray(z_units).save(tmp_path / "a_depth.png")
    T = np.eye(4).tolist()
    _write(tmp_path / "ours", [{"file_path": "../a.png", "transform_matrix": T, "depth_path": "../a_depth.png",
                                "depth_scale": 0.002}])
    _write(tmp_path / "ns", [{"file_path": "../a.png", "transform_matrix": T, "depth_file_path": "../a_depth.png"},
                             {"file_path": "../a.png", "transform_matrix": T}], depth_unit_scale_factor=0.0005)
    ours = load_dataset(tmp_path / "ours", eval_every=0)
    assert ours.has_depth
    d = ours.get_depth(0)
    assert d.dtype == np.float32 and d.shape == (12, 16) and d[0, 0] == 0.0
    assert np.allclose(d, z_units * 0.002, rtol=1e-6)
    ns = load_dataset(tmp_path / "ns", eval_every=0)
    assert np.allclose(ns.get_depth(0), z_units * 0.0005, rtol=1e-6) and ns.get_depth(1) is None
    half = load_dataset(tmp_path / "ours", eval_every=0, downscale=2)
    assert np.array_equal(half.get_depth(0), (z_units * np.float32(0.002)).astype(np.float32)[::2, ::2]) or \
        np.allclose(half.get_depth(0), z_units[1::2, 1::2] * 0.002)  # nearest: the pixel under each centre
    # bad depth entries are errors naming the frame, raised when the depth is read
    _write(tmp_path / "bad", [{"file_path": "../a.png", "transform_matrix": T, "depth_path": "nope.png"}])
    with pytest.raises(DatasetError, match="depth file not found"):
        load_dataset(tmp_path / "bad", eval_every=0).get_depth(0)
    _write(tmp_path / "neg", [{"file_path": "../a.png", "transform_matrix": T, "depth_path": "../a_depth.png",
                               "depth_scale": -1}])
    with pytest.raises(DatasetError, match="depth_scale must be > 0"):
        load_dataset(tmp_path / "neg", eval_every=0).get_depth(0)
    plain = load_dataset(tmp_path / "ns", eval_every=0).subset([1])
    assert not plain.has_depth


def test_depth_loss_by_hand():
    t = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]])  # intervals [0,1] [1,2] [2,3] [3,4], mids 0.5..3.5
    on_surface = torch.tensor([[0.0, 0.0, 1.0, 0.0]])  # all weight in [2, 3]: mean depth 2.5
    lid = torch.tensor([[0.5, 0.0, 0.0, 0.5]])  # half in front, half behind: mean depth 2.0
    target, ok = torch.tensor([2.5]), torch.tensor([1.0])
    assert float(depth_loss(on_surface, t, target, ok, margin=0.1)) == pytest.approx(0.0)
    # |2.0 - 2.5| + the 0.5 weight of [0, 1] (ends before 2.4)
    assert float(depth_loss(lid, t, target, ok, margin=0.1)) == pytest.approx(0.5 + 0.5)
    # an interval ending inside the margin is not free space: [1, 2] ends at 2 > 2.5 - 0.6
    near = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    assert float(depth_loss(near, t, target, ok, margin=0.6)) == pytest.approx(1.0)
    # rays without a measurement do not count, in the sum or the mean
    w2, t2 = torch.cat([on_surface, lid]), torch.cat([t, t])
    got = depth_loss(w2, t2, torch.tensor([2.5, 7.0]), torch.tensor([1.0, 0.0]), margin=0.1)
    assert float(got) == pytest.approx(0.0)
    assert float(depth_loss(w2, t2, torch.zeros(2), torch.zeros(2), margin=0.1)) == 0.0


def _sphere_with_depth(tmp_path, radius=0.6):
    """The trainer tests' sphere, with z-depth PNGs (0.1 mm units) from the exact ray-sphere hits."""
    ds, feats = sphere_dataset(radius=radius)
    extras = []
    for i in range(len(ds)):
        K = ds.intrinsics[i]
        o, d = image_rays(K, torch.tensor(ds.c2w[i]), dtype=torch.float64)
        o, d = o.reshape(-1, 3).numpy(), d.reshape(-1, 3).numpy()
        b = (o * d).sum(-1)
        disc = b * b - ((o * o).sum(-1) - radius**2)
        t = np.where(disc > 0, -b - np.sqrt(np.maximum(disc, 0)), 0.0)
        z = t * (d @ ds.c2w[i][:3, 2])  # distance along the unit ray -> along the optical axis
        Image.fromarray(np.round(z * 1e4).astype(np.uint16).reshape(K.height, K.width)).save(tmp_path / f"d{i}.png")
        extras.append({"depth_path": f"d{i}.png", "depth_scale": 1e-4})
    ds.root, ds.frames_extra = tmp_path, extras
    return ds, feats


def test_trainer_depth_targets_are_ray_distances_in_field_units(tmp_path):
    from f3rm_ros.core.trainer import Trainer

    ds, _ = _sphere_with_depth(tmp_path)
    tr = Trainer(small_config(**{"losses": {"depth_mult": 0.1}}), ds, None, "cpu")
    assert "depth" in tr.loss_names()
    k = 0  # first training image: its pixels come first in the trainer's flat buffer
    i = int(ds.train_indices[k])
    K = ds.intrinsics[i]
    o, d = image_rays(K, torch.tensor(tr.c2w_nerf[i]), dtype=torch.float64)  # field frame, unit directions
    o, d = o.reshape(-1, 3).numpy(), d.reshape(-1, 3).numpy()
    r = 0.6 * tr.field_units_per_metre
    centre = -tr.nerf_to_world[:3, 3] * tr.field_units_per_metre  # the world origin in the field frame
    oc = o - centre
    b = (oc * d).sum(-1)
    disc = b * b - ((oc * oc).sum(-1) - r**2)
    hit = disc > 1e-3
    t = -b - np.sqrt(np.maximum(disc, 0))
    got = tr.batcher.depth_t[: K.width * K.height].numpy()
    valid = tr.batcher.depth_valid[: K.width * K.height].numpy()
    assert np.array_equal(valid[hit], np.ones(hit.sum())) and hit.sum() > 50
    err_m = np.abs(got[hit] - t[hit]).max() / tr.field_units_per_metre
    print(f"\ndepth targets: max error {err_m * 1000:.3f} mm over {hit.sum()} hit pixels (0.1 mm PNG units)")
    assert err_m < 2e-4
    batch = tr.sample_batch()
    assert batch["depth"].shape == batch["depth_valid"].shape == (512,)
    # without the precomputed direction table (it did not fit): the same targets, one image at a time
    tr2 = Trainer(small_config(ray_table_max_mb=0, **{"losses": {"depth_mult": 0.1}}), ds, None, "cpu")
    assert tr2.batcher.dirs_table is None and torch.equal(tr2.batcher.depth_valid, tr.batcher.depth_valid)
    assert torch.allclose(tr2.batcher.depth_t, tr.batcher.depth_t, atol=1e-6)


def test_depth_supervision_trains_and_reports_depth_error(tmp_path):
    """On the black-background sphere the small fields trained from colour alone miss the geometry
    (see-through, surface painted far away); the depth images fix that."""
    from f3rm_ros.core.trainer import Trainer

    ds, _ = _sphere_with_depth(tmp_path)
    evs = {}
    for mult in (0.0, 0.1):
        tr = Trainer(small_config(seed=3, **{"losses": {"depth_mult": mult}}), ds, None, "cpu")
        res = tr.train(300)
        evs[mult] = ev = tr.evaluate(save_images=False)
        print(f"\nsphere, 300 steps, depth_mult {mult}: PSNR {ev['psnr']:.2f} dB, median depth error "
              f"{1000 * ev['depth_median_error_m']:.1f} mm, losses {res.losses}")
    assert math.isfinite(res.losses["depth"]) and "depth" not in tr.loss_names()[:3]
    assert evs[0.1]["depth_median_error_m"] < 0.03 and evs[0.1]["psnr"] > 18
    assert evs[0.1]["depth_median_error_m"] < 0.2 * evs[0.0]["depth_median_error_m"]


def test_depth_mult_without_depth_images_warns_and_trains_without(caplog):
    from f3rm_ros.core.trainer import Trainer

    ds, _ = sphere_dataset()
    with caplog.at_level(logging.WARNING, logger="f3rm_ros.core.training"):
        tr = Trainer(small_config(**{"losses": {"depth_mult": 0.1}}), ds, None, "cpu")
    assert "no depth images" in caplog.text
    assert "depth" not in tr.loss_names() and "depth" not in tr.train_step()
    assert "depth_median_error_m" not in tr.evaluate(save_images=False)


def test_writer_stores_depth_and_clear_removes_it(tmp_path):
    from f3rm_ros.core.cameras import CameraIntrinsics
    from f3rm_ros.core.dataset import DatasetWriter

    K = CameraIntrinsics(fx=20.0, fy=20.0, cx=8.0, cy=6.0, width=16, height=12)
    rng = np.random.default_rng(1)
    z = rng.uniform(0.2, 3.0, (12, 16))
    z[0, 0] = np.nan
    w = DatasetWriter(tmp_path / "ds")
    w.add_frame(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), K, np.eye(4), depth_m=z)
    w.add_frame(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), K, np.eye(4))  # depth is per frame
    with pytest.raises(ValueError, match="depth_m must have shape"):
        w.add_frame(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), K, np.eye(4), depth_m=np.ones((6, 8)))
    with pytest.raises(ValueError, match="clash"):
        w.add_frame(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), K, np.eye(4), depth_m=z,
                    extra={"depth_scale": 1.0})
    ds = load_dataset(tmp_path / "ds", eval_every=0)
    assert ds.has_depth and ds.get_depth(1) is None and ds.frames_extra[0]["depth_path"] == "depth/frame_00000.png"
    d = ds.get_depth(0)
    assert d[0, 0] == 0.0 and np.abs(d - z)[1:].max() <= 0.0005 + 1e-6
    (tmp_path / "ds" / "depth" / "frame_00007.png").write_bytes(b"orphan of a crash")
    assert DatasetWriter(tmp_path / "ds")._next_number == 8  # never reused
    w.clear()
    assert not (tmp_path / "ds" / "depth" / "frame_00000.png").exists()
