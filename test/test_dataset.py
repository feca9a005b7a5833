"""Dataset reader/writer (transforms.json), downscaling, error messages, pose normalisation."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from f3rm_ros.core.cameras import CameraIntrinsics, generate_rays, project_points
from f3rm_ros.core.dataset import (
    DatasetError,
    DatasetWriter,
    load_dataset,
    normalise_poses,
    resize_labels,
    write_dataset,
)
from f3rm_ros.core.geometry import invert_transform, look_at_opencv, transform_points

FOX = Path(__file__).resolve().parents[2] / "shared" / "data" / "fox"
if not FOX.exists():
    FOX = Path("/work/shared/data/fox")


def _poses(n, rng):
    out = []
    for i in range(n):
        a = 2 * np.pi * i / n
        eye = np.array([0.8 * np.cos(a), 0.8 * np.sin(a), 0.4 + 0.1 * rng.standard_normal()])
        out.append(look_at_opencv(eye, rng.normal(0, 0.05, 3)))
    return np.stack(out)


def _images(n, w, h, rng):
    return rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)


K_SMALL = CameraIntrinsics(40.123456789, 41.5, 16.25, 12.75, 32, 24, k1=-0.1, k2=0.01, p1=1e-3, p2=-2e-3, k3=1e-4)


def test_load_fox():
    if not FOX.exists():
        pytest.skip(f"fox data not found at {FOX}")
    ds = load_dataset(FOX, downscale=4)  # frames without an image: skipped and logged (test_dataset_bad_files)
    K = ds.intrinsics[0]
    print(f"\nfox: {len(ds)} frames (skipped {len(ds.skipped)} with missing images), train {len(ds.train_indices)}, "
          f"eval {len(ds.eval_indices)}; /4 intrinsics {K}")
    assert len(ds) == 50 and len(ds.skipped) == 17
    assert len(ds.train_indices) + len(ds.eval_indices) == 50 and len(ds.eval_indices) == 7
    assert not set(ds.train_indices) & set(ds.eval_indices)
    assert (K.width, K.height) == (270, 480)
    assert K.fx == pytest.approx(1375.52 / 4, abs=1e-12) and K.fy == pytest.approx(1374.49 / 4, abs=1e-12)
    assert K.cx == pytest.approx(554.558 / 4, abs=1e-12) and K.cy == pytest.approx(965.268 / 4, abs=1e-12)
    assert (K.k1, K.k2, K.p1, K.p2) == (0.0578421, -0.0805099, -0.000980296, 0.00015575)
    assert ds.meta.get("aabb_scale") == 4 and "sharpness" in ds.frames_extra[0]
    # OpenCV c2w: the first frame's file matrix with y, z columns negated
    raw = json.loads((FOX / "transforms.json").read_text())["frames"][0]["transform_matrix"]
    assert np.array_equal(ds.c2w[0][:, 1], -np.asarray(raw)[:, 1])
    assert np.array_equal(ds.c2w[0][:, 0], np.asarray(raw)[:, 0])
    img = ds.get_image(0)
    print(f"image 0: {img.shape} {img.dtype} mean {img.mean():.1f}")
    assert img.shape == (480, 270, 3) and img.dtype == np.uint8 and 20 < img.mean() < 235
    all_images = ds.images  # eager load of every frame at /4
    assert all_images.shape == (50, 480, 270, 3) and np.array_equal(all_images[0], img)
    assert ds.images is all_images  # cached, not re-stacked
    # the cameras look at a common point (the fox): every camera's optical axis passes near the focus
    c2w_n, n2w = normalise_poses(ds.c2w)
    focus_world = n2w[:3, 3]
    d = ds.c2w[:, :3, 2]
    v = focus_world - ds.c2w[:, :3, 3]
    miss = np.linalg.norm(v - (v * d).sum(-1, keepdims=True) * d, axis=-1) / np.linalg.norm(v, axis=-1)
    print(f"focus {focus_world.round(3)}, scale {1 / n2w[0, 0]:.4f} field units per unit; optical axes miss the "
          f"focus by median {np.median(miss):.3f} rad; max |camera coord| in field {np.abs(c2w_n[:, :3, 3]).max()}")
    assert np.median(miss) < 0.15 and np.abs(c2w_n[:, :3, 3]).max() == pytest.approx(1.0)
    with pytest.raises(DatasetError, match=r"frames\[4\].*0005\.jpg.*not found"):
        load_dataset(FOX, downscale=4, missing_images="error")


def test_writer_round_trip_and_loader_exact(tmp_path):
    rng = np.random.default_rng(0)
    n = 5
    poses = _poses(n, rng)
    imgs = _images(n, K_SMALL.width, K_SMALL.height, rng)
    labels = rng.integers(0, 70000 // 2, (n, K_SMALL.height, K_SMALL.width)).astype(np.uint16)
    labels[0, 0, 0] = 65535
    w = DatasetWriter(tmp_path / "ds")
    w.set_labels_table({1: {"object": "red mug", "category": "mug", "part": None, "synonyms": ["cup"]}})
    K2 = CameraIntrinsics(30.0, 30.0, 16.0, 12.0, 32, 24)  # a second camera (per-frame intrinsics)
    for i in range(n):
        idx = w.add_frame(imgs[i], K_SMALL if i % 2 == 0 else K2, poses[i], stamp=100.0 + i * 0.1,
                          extra={"joint_positions": [0.1 * i, 0.2]}, labels=labels[i],
                          mask=(labels[i] % 2 == 0) if i == 1 else None)
        assert idx == i
    ds = load_dataset(tmp_path / "ds", eval_every=0)
    err_pose = np.abs(ds.c2w - poses).max()
    print(f"\nwriter round trip: {len(ds)} frames, max pose error {err_pose:.1e}, "
          f"images equal {all(np.array_equal(ds.get_image(i), imgs[i]) for i in range(n))}")
    assert len(ds) == n and err_pose <= 1e-9
    for i in range(n):
        assert ds.intrinsics[i] == (K_SMALL if i % 2 == 0 else K2)  # exact
        assert np.array_equal(ds.get_image(i), imgs[i])  # PNG is lossless
        assert np.array_equal(ds.get_labels(i), labels[i]) and ds.get_labels(i).dtype == np.uint16
        assert ds.stamps[i] == 100.0 + i * 0.1
        assert ds.frames_extra[i] == {"joint_positions": [0.1 * i, 0.2]}
    assert ds.get_mask(0) is None and np.array_equal(ds.get_mask(1), labels[1] % 2 == 0)
    assert ds.labels_table["1"]["object"] == "red mug" and ds.meta["world_frame"] == "world"
    assert ds.meta["camera_convention"] == "opengl" and ds.meta["units"] == "metres"
    assert len(ds.train_indices) == n and len(ds.eval_indices) == 0
    # one-shot writer, JPEG, same loader
    yy, xx = np.mgrid[0:K_SMALL.height, 0:K_SMALL.width]
    smooth = np.stack([np.stack([xx * 7 + i * 10, yy * 9, (xx + yy) * 4], -1) for i in range(n)]).astype(np.uint8)
    p = write_dataset(tmp_path / "oneshot", smooth, K_SMALL, poses, image_format="jpg", meta={"scene": "test"})
    ds2 = load_dataset(p)
    err_jpg = np.abs(ds2.images.astype(int) - smooth.astype(int)).mean()
    print(f"one-shot JPEG dataset: mean abs pixel error {err_jpg:.2f} (smooth images), eval {ds2.eval_indices}")
    assert ds2.image_paths[0].suffix == ".jpg"
    assert np.abs(ds2.c2w - poses).max() <= 1e-9 and ds2.meta["scene"] == "test" and err_jpg < 3
    with pytest.raises(ValueError, match="already holds 5 frames"):
        write_dataset(tmp_path / "oneshot", imgs, K_SMALL, poses)
    write_dataset(tmp_path / "oneshot", imgs[:2], K_SMALL, poses[:2], overwrite=True)
    assert len(load_dataset(tmp_path / "oneshot")) == 2


def test_writer_reopen_continues_and_clear(tmp_path):
    rng = np.random.default_rng(1)
    poses = _poses(6, rng)
    imgs = _images(6, K_SMALL.width, K_SMALL.height, rng)
    root = tmp_path / "cap"
    w = DatasetWriter(root)
    for i in range(3):
        w.add_frame(imgs[i], K_SMALL, poses[i])
    # an interrupted add_frame left an orphan image file behind (image written, json not yet)
    (root / "images" / "frame_00003.png").write_bytes(b"orphan")
    w2 = DatasetWriter(root)
    assert len(w2) == 3
    for i in range(3, 6):
        assert w2.add_frame(imgs[i], K_SMALL, poses[i]) == i
    names = [f["file_path"] for f in w2.frames]
    print(f"\nafter reopen: {names}")
    assert len(set(names)) == 6 and "images/frame_00003.png" not in names
    ds = load_dataset(root)
    print(repr(ds))
    assert len(ds) == 6 and all(np.array_equal(ds.get_image(i), imgs[i]) for i in range(6))
    assert np.abs(ds.c2w - poses).max() <= 1e-9
    # two threads appending at once (a capture callback and a service, say) lose nothing
    import threading

    threads = [threading.Thread(target=lambda k=k: [w2.add_frame(imgs[k], K_SMALL, poses[k]) for _ in range(4)])
               for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ds = load_dataset(root)
    assert len(ds) == 14 and len({p.name for p in ds.image_paths}) == 14
    w2.clear()
    left = sorted(p.name for p in (root / "images").iterdir())
    print(f"after clear: {len(w2)} frames, files left {left}")
    assert len(w2) == 0 and left == ["frame_00003.png"]
    assert w2.add_frame(imgs[0], K_SMALL, poses[0]) == 0
    assert len(load_dataset(root)) == 1


def test_writer_rejects_bad_input(tmp_path):
    w = DatasetWriter(tmp_path)
    img = np.zeros((24, 32, 3), np.uint8)
    bad = np.eye(4)
    bad[0, 0] = 2.0
    for args, msg in [((img.astype(np.float32), K_SMALL, np.eye(4)), "uint8"),
                      ((img[:10], K_SMALL, np.eye(4)), "intrinsics are 32x24"),
                      ((img, K_SMALL, bad), "not a rigid"),
                      ((img, K_SMALL, np.full((4, 4), np.nan)), "non-finite")]:
        with pytest.raises(ValueError, match=msg):
            w.add_frame(*args)
    with pytest.raises(ValueError, match="clash"):
        w.add_frame(img, K_SMALL, np.eye(4), extra={"transform_matrix": 1})
    with pytest.raises(ValueError, match="JSON-serialisable"):
        w.add_frame(img, K_SMALL, np.eye(4), extra={"x": object()})
    assert len(w) == 0 and not (tmp_path / "images").exists()  # nothing was written
    # a corrupt transforms.json is never overwritten by a writer reopening the folder
    w.add_frame(img, K_SMALL, np.eye(4))
    tj = tmp_path / "transforms.json"
    tj.write_text(tj.read_text()[:50])
    before = tj.read_bytes()
    with pytest.raises(DatasetError, match="not valid JSON"):
        DatasetWriter(tmp_path)
    assert tj.read_bytes() == before


def _write_small(root, rng, n=3):
    write_dataset(root, _images(n, K_SMALL.width, K_SMALL.height, rng), K_SMALL, _poses(n, rng))
    return json.loads((root / "transforms.json").read_text())


def test_clear_errors_for_bad_files(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "d"
    data = _write_small(root, rng)
    tj = root / "transforms.json"
    text = tj.read_text()
    messages = {}

    def expect(mutate, pattern):
        d = json.loads(text)
        mutate(d)
        tj.write_text(json.dumps(d))
        with pytest.raises(DatasetError, match=pattern) as e:
            load_dataset(root, missing_images="error")
        messages[pattern] = str(e.value)

    # truncated and corrupt files
    tj.write_text(text[: len(text) // 2])
    with pytest.raises(DatasetError, match=r"transforms\.json: not valid JSON \(truncated or corrupt\?\)") as e:
        load_dataset(root)
    messages["truncated"] = str(e.value)
    tj.write_bytes(b"\x00\xff\xfe garbage")
    with pytest.raises(DatasetError, match="transforms.json"):
        load_dataset(root)
    with pytest.raises(DatasetError, match="dataset file not found"):
        load_dataset(tmp_path / "nowhere")
    expect(lambda d: d["frames"][1]["transform_matrix"][0].__setitem__(0, float("nan")),
           r"frames\[1\].*transform_matrix: contains non-finite")
    expect(lambda d: d["frames"][2]["transform_matrix"][0].__setitem__(0, 3.0),
           r"frames\[2\].*transform_matrix: not a rigid transform")
    expect(lambda d: d["frames"][0].__setitem__("transform_matrix", [[1, 0], [0, 1]]),
           r"frames\[0\].*expected a 4x4")

    def no_intrinsics(d):
        for f in [d] + d["frames"]:
            f.pop("fl_x", None)
            f.pop("fl_y", None)
    expect(no_intrinsics, r"frames\[0\].*missing intrinsics")
    expect(lambda d: d["frames"][1].__setitem__("w", 64), r"frames\[1\].*image size mismatch.*32x24.*64x24")
    expect(lambda d: d["frames"][2].__setitem__("file_path", "images/nothere.png"),
           r"frames\[2\].*file_path: image file not found.*nothere")
    expect(lambda d: d["frames"][0].__setitem__("label_path", "labels/x.png"), r"frames\[0\].*label file not found")
    expect(lambda d: d.__setitem__("camera_model", "OPENCV_FISHEYE"), "OPENCV_FISHEYE.*not supported")
    expect(lambda d: d.__setitem__("frames", []), "'frames' is empty")
    for v in messages.values():
        print(f"\n  {v}")
    # a corrupt image file
    tj.write_text(text)
    (root / data["frames"][0]["file_path"]).write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="cannot read image"):
        load_dataset(root)


def test_file_path_quirks_shared_intrinsics_and_downscale(tmp_path):
    """Blender-style file: no extension, camera_angle_x only, shared intrinsics; labels resized nearest."""
    from PIL import Image

    rng = np.random.default_rng(3)
    root = tmp_path / "b"
    (root / "train").mkdir(parents=True)
    img = rng.integers(0, 256, (40, 60, 4), dtype=np.uint8)  # RGBA
    Image.fromarray(img).save(root / "train" / "r_0.png")
    lab = np.repeat(np.repeat(np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000, 20, 0)[:40], 15, 1)
    Image.fromarray(lab).save(root / "train" / "l_0.png")
    T = np.eye(4).tolist()
    (root / "transforms.json").write_text(json.dumps({
        "camera_angle_x": 0.8, "frames": [{"file_path": "./train/r_0", "transform_matrix": T,
                                            "label_path": "train/l_0.png", "rotation": 0.1}]}))
    ds = load_dataset(root, downscale=2)
    K = ds.intrinsics[0]
    fx_full = 0.5 * 60 / np.tan(0.4)
    print(f"\nblender-style: {ds.image_paths[0].name}, K {K}")
    assert ds.image_paths[0].name == "r_0.png" and (K.width, K.height) == (30, 20)
    assert K.fx == pytest.approx(fx_full / 2) and K.fy == pytest.approx(fx_full / 2) and K.cx == 15 and K.cy == 10
    got = ds.get_image(0)
    # area downscale of RGB (alpha dropped): each output pixel is the mean of a 2x2 block
    want = img[..., :3].astype(float).reshape(20, 2, 30, 2, 3).mean((1, 3))
    print(f"area downscale max error {np.abs(got - want).max():.2f}")
    assert got.shape == (20, 30, 3) and np.abs(got - want).max() <= 1.0
    labels = ds.get_labels(0)
    assert labels.shape == (20, 30) and set(np.unique(labels)) <= set(np.unique(lab))
    assert np.array_equal(labels, lab[1::2, 1::2])
    assert ds.frames_extra[0] == {"rotation": 0.1}
    assert np.array_equal(resize_labels(np.arange(6).reshape(2, 3), 6, 4),
                          np.repeat(np.repeat(np.arange(6).reshape(2, 3), 2, 0), 2, 1))


def test_downscale_keeps_rays_consistent(tmp_path):
    """A point projects to the same place (in full-res pixel units) before and after downscaling."""
    rng = np.random.default_rng(4)
    K = CameraIntrinsics(50.0, 52.0, 31.7, 23.1, 64, 48, k1=-0.2, k2=0.05)
    poses = _poses(2, rng)
    write_dataset(tmp_path, _images(2, 64, 48, rng), K, poses)
    full, half = load_dataset(tmp_path), load_dataset(tmp_path, downscale=2)
    Kh = half.intrinsics[0]
    p_world = rng.normal(0, 0.1, (50, 3))
    p_cam = transform_points(invert_transform(full.c2w[0]), p_world)
    uv_full, uv_half = project_points(full.intrinsics[0], p_cam), project_points(Kh, p_cam)
    assert np.allclose(uv_half * 2, uv_full, atol=1e-10)
    o, d = generate_rays(Kh, torch.tensor(half.c2w[0]).expand(50, 4, 4), torch.tensor(uv_half))
    off = np.linalg.norm(np.cross(p_world - o.numpy(), d.numpy()), axis=-1).max()
    print(f"\ndownscaled rays: max off-ray distance {off:.1e} m; half-res K {Kh}")
    assert off < 1e-9


def test_normalisation_maps_back_to_metres():
    rng = np.random.default_rng(5)
    poses = _poses(12, rng) + np.pad(np.array([2.0, -1.0, 0.3])[None, :, None], ((0, 0), (0, 1), (3, 0)))
    for center in ("focus", "poses", "none"):
        c2w_n, n2w = normalise_poses(poses, center=center)
        scale = 1.0 / np.cbrt(np.linalg.det(n2w[:3, :3]))
        back = n2w @ c2w_n
        back[:, :3, :3] = c2w_n[:, :3, :3]  # rotations are untouched by normalisation
        # a world point seen by camera 0 -> nerf frame -> back to metres; distances scale by `scale`
        p_world = rng.normal([2.0, -1.0, 0.3], 0.2, (20, 3))
        world_to_nerf = np.linalg.inv(n2w)
        p_nerf = transform_points(world_to_nerf, p_world)
        d_world = np.linalg.norm(p_world[1:] - p_world[:-1], axis=-1)
        d_nerf = np.linalg.norm(p_nerf[1:] - p_nerf[:-1], axis=-1)
        print(f"\n{center}: centre {n2w[:3, 3].round(3)}, scale {scale:.4f} field units/m, "
              f"max |cam coord| {np.abs(c2w_n[:, :3, 3]).max():.6f}, pose round trip "
              f"{np.abs(back - poses).max():.1e}")
        assert np.abs(c2w_n[:, :3, 3]).max() == pytest.approx(1.0, abs=1e-12)
        assert np.abs(back - poses).max() < 1e-12
        assert np.allclose(transform_points(n2w, p_nerf), p_world, atol=1e-12)
        assert np.allclose(d_nerf, d_world * scale, atol=1e-12)
        assert np.array_equal(c2w_n[:, :3, :3], poses[:, :3, :3])
        # the same physical ray, in metres and in field units, hits the same point
        K = CameraIntrinsics(40.0, 40.0, 16.0, 12.0, 32, 24)
        px = torch.tensor([[10.5, 7.5]], dtype=torch.float64)
        o_w, d_w = generate_rays(K, torch.tensor(poses[:1]), px)
        o_n, d_n = generate_rays(K, torch.tensor(c2w_n[:1]), px)
        hit_world = (o_w + 0.7 * d_w).numpy()
        hit_nerf = (o_n + 0.7 * scale * d_n).numpy()
        assert np.allclose(transform_points(n2w, hit_nerf), hit_world, atol=1e-12)
    _, n2w = normalise_poses(poses, center="focus")
    print(f"focus point {n2w[:3, 3].round(3)} (cameras look at ~[2, -1, 0.3])")
    assert np.linalg.norm(n2w[:3, 3] - [2.0, -1.0, 0.3]) < 0.1
    _, n2w = normalise_poses(poses, fixed_center=[0, 0, 0], fixed_scale=0.5)
    assert np.allclose(n2w, np.diag([2.0, 2.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="center"):
        normalise_poses(poses, center="middle")
