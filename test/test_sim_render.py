"""Renderer: depth, back-projection and labels against a plain ray-mesh reference; dataset export; camera."""

import time

import numpy as np
import pytest

from f3rm_ros.core.config import from_dict
from f3rm_ros.core.sim.camera import SimCamera
from f3rm_ros.core.sim.render import Renderer, intrinsics_from_fov, pixel_rays, ray_mesh_intersect_reference
from f3rm_ros.core.sim.scene import resolve_scene
from f3rm_ros.core.sim.trajectory import TrajectoryConfig, look_at_cv, scan_poses


@pytest.fixture(scope="module")
def scene():
    return resolve_scene("mug_bowl_box")


@pytest.fixture(scope="module")
def renderer(scene):
    return Renderer(scene)


def _world_mesh(scene):
    V, T, ent, tri = [], [], [], []
    nv = 0
    for i, e in enumerate(scene.entities):
        V.append(e.world_vertices())
        T.append(e.mesh.triangles + nv)
        ent.append(np.full(len(e.mesh.triangles), i))
        tri.append(np.arange(len(e.mesh.triangles)))
        nv += len(e.mesh.vertices)
    return np.concatenate(V), np.concatenate(T), np.concatenate(ent), np.concatenate(tri)


def test_look_at_cv_up_is_up():
    T = look_at_cv([0.5, 0.0, 0.5], [0.0, 0.0, 0.0])
    print("camera axes (x right, y down, z forward) in world:\n", np.round(T[:3, :3], 3))
    assert T[:3, 1] @ np.array([0, 0, 1.0]) < 0  # image down = world down-ish
    assert np.allclose(T[:3, 0], [0, 1, 0], atol=1e-9)  # looking along -x (z up): right is +y
    assert np.linalg.det(T[:3, :3]) == pytest.approx(1.0)


def test_depth_and_labels_match_reference(scene, renderer):
    K = intrinsics_from_fov(64, 48, 42.5)
    poses = scan_poses(TrajectoryConfig(num_views=4, seed=3))
    V, T, ent_of, tri_of = _world_mesh(scene)
    table, tri_labels = scene.label_table()
    rng = np.random.default_rng(0)
    max_depth_err = 0.0
    n_checked = 0
    for c2w in poses[:2]:
        out = renderer.render(K, c2w)
        o, d = pixel_rays(K, c2w)
        sel = rng.choice(len(o), 120, replace=False)
        t_ref, tri_ref = ray_mesh_intersect_reference(o[sel], d[sel], V, T)
        depth = out.depth.reshape(-1)[sel]
        hit_ref = np.isfinite(t_ref)
        assert np.array_equal(hit_ref, depth > 0)
        # depth (z-depth, since d has camera z = 1) vs reference ray parameter
        err = np.abs(depth[hit_ref] - t_ref[hit_ref])
        max_depth_err = max(max_depth_err, float(err.max()))
        # labels / entity / part of the triangle the reference hits
        e_ref = ent_of[tri_ref[hit_ref]]
        tr_ref = tri_of[tri_ref[hit_ref]]
        lab_ref = np.array([tri_labels[e][t] for e, t in zip(e_ref, tr_ref, strict=True)])
        lab = out.label.reshape(-1)[sel][hit_ref]
        ent = out.entity.reshape(-1)[sel][hit_ref]
        agree = np.mean(lab == lab_ref)
        assert np.mean(ent == e_ref) >= 0.98 and agree >= 0.98  # ties on shared edges may differ
        n_checked += hit_ref.sum()
        assert set(np.unique(out.label).tolist()) - {0} <= {int(k) for k in table}
    print(f"checked {n_checked} pixels: max |depth - reference| = {max_depth_err * 1000:.4f} mm")
    assert max_depth_err < 1e-4


def test_backprojected_points_lie_on_mesh(scene, renderer):
    import open3d as o3d

    K = intrinsics_from_fov(80, 60, 50.0)
    c2w = look_at_cv([0.45, 0.3, 0.4], [0.0, 0.0, 0.03])
    out = renderer.render(K, c2w)
    v, u = np.nonzero(out.depth > 0)
    z = out.depth[v, u].astype(np.float64)
    x = (u + 0.5 - K.cx) / K.fx * z
    y = (v + 0.5 - K.cy) / K.fy * z
    p_cam = np.stack([x, y, z], 1)
    p_w = p_cam @ c2w[:3, :3].T + c2w[:3, 3]
    V, T, _, _ = _world_mesh(scene)
    rc = o3d.t.geometry.RaycastingScene()
    rc.add_triangles(o3d.core.Tensor(V.astype(np.float32)), o3d.core.Tensor(T.astype(np.uint32)))
    dist = rc.compute_distance(o3d.core.Tensor(p_w.astype(np.float32))).numpy()
    print(f"{len(dist)} back-projected pixels: max distance to the mesh {dist.max() * 1000:.4f} mm, "
          f"objects seen {np.unique(out.entity).tolist()}")
    assert dist.max() < 1e-4
    # normals are unit and face the camera
    n = out.normals[v, u]
    assert np.allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-5)
    assert np.all(np.einsum("ij,ij->i", n, c2w[:3, 3] - p_w) > 0)


def test_render_time_640x480(renderer):
    K = intrinsics_from_fov(640, 480, 42.5)
    poses = scan_poses(TrajectoryConfig(num_views=3, seed=1))
    renderer.render(K, poses[0])  # warm-up
    times = []
    for c2w in poses:
        t0 = time.perf_counter()
        out = renderer.render(K, c2w)
        times.append(time.perf_counter() - t0)
    frac_obj = np.mean(out.entity > 0)
    print(f"render time per 640x480 image (shadows on): {np.mean(times):.3f} s "
          f"(min {min(times):.3f}); object pixels {frac_obj:.1%}")
    assert out.rgb.shape == (480, 640, 3) and out.rgb.dtype == np.uint8
    assert out.rgb.std() > 10  # not a blank image


def test_dataset_export_roundtrip(tmp_path, scene):
    from f3rm_ros.core.dataset import load_dataset
    from f3rm_ros.core.sim.export import SimDatasetConfig, render_dataset

    cfg = from_dict(SimDatasetConfig, {"width": 96, "height": 72, "trajectory": {"num_views": 5},
                                       "pose_noise_deg": 0.0})
    res = render_dataset(scene, tmp_path / "ds", cfg)
    ds = load_dataset(tmp_path / "ds")
    print(f"dataset: {len(ds)} frames, {res['render_s_per_image']:.3f} s/image at 96x72, "
          f"{len(ds.labels_table)} labels")
    assert len(ds) == 5 and ds.has_labels
    table, _ = scene.label_table()
    assert ds.labels_table == table
    poses = scan_poses(cfg.trajectory)
    assert np.allclose(ds.c2w, poses, atol=1e-6)  # OpenCV poses survive the OpenGL file format
    lab = ds.get_labels(0)
    assert lab.dtype == np.uint16 and set(np.unique(lab).tolist()) - {0} <= {int(k) for k in table}
    with pytest.raises(FileExistsError):
        render_dataset(scene, tmp_path / "ds", cfg)


def test_sim_camera_frames(scene, renderer):
    K = intrinsics_from_fov(32, 24, 42.5)
    poses = scan_poses(TrajectoryConfig(num_views=3))
    cam = SimCamera(scene, K, poses, rate_hz=4.0, start_time=10.0, pose_noise_deg=1.0, pose_noise_m=0.005,
                    renderer=renderer)
    frames = list(cam)
    stamps = [f.timestamp for f in frames]
    dev = [np.linalg.norm(f.T_world_cam[:3, 3] - f.T_world_cam_true[:3, 3]) for f in frames]
    print("timestamps", stamps, "pose noise (m)", np.round(dev, 4))
    assert stamps == [10.0, 10.25, 10.5]
    assert all(0 < x < 0.05 for x in dev)
    assert np.allclose(frames[1].T_world_cam_true, poses[1])
    assert frames[0].image.shape == (24, 32, 3)


def test_trajectory_arcs():
    cfg = TrajectoryConfig(num_views=12, num_arcs=3, radius_m=0.5, min_height_m=0.2, max_height_m=0.6,
                           azimuth_range_deg=(-90.0, 90.0), position_jitter_m=0.0, target_jitter_m=0.0,
                           roll_jitter_deg=0.0)
    P = scan_poses(cfg)
    heights = np.round(P[:, 2, 3], 6)
    radii = np.linalg.norm(P[:, :2, 3] - np.array(cfg.target[:2]), axis=1)
    az = np.degrees(np.arctan2(P[:, 1, 3], P[:, 0, 3]))
    fwd_err = [np.linalg.norm(T[:3, 2] - (np.array(cfg.target) - T[:3, 3]) / np.linalg.norm(
        np.array(cfg.target) - T[:3, 3])) for T in P]
    print("heights", sorted(set(heights.tolist())), "radius", radii.min(), radii.max(), "azimuth", az.min(), az.max())
    assert sorted(set(heights.tolist())) == [0.2, 0.4, 0.6]
    assert np.allclose(radii, 0.5) and az.min() >= -90 - 1e-6 and az.max() <= 90 + 1e-6
    assert max(fwd_err) < 1e-9  # every camera looks at the target
    assert np.all(P[:, :3, 1] @ np.array([0, 0, 1.0]) < 0)  # image "down" points down in the world


def test_hit_barycentrics(scene, renderer):
    K = intrinsics_from_fov(40, 30, 42.5)
    o, d = pixel_rays(K, look_at_cv([0.4, -0.3, 0.35], [0, 0, 0.03]))
    h = renderer.cast(o, d)
    i = np.nonzero(h.hit)[0]
    p = o[i] + h.t[i, None] * d[i]
    err = []
    for k, j in enumerate(i):
        e = scene.entities[h.entity[j]]
        tv = e.world_vertices()[e.mesh.triangles[h.triangle[j]]]
        u, v = h.uv[j]
        err.append(np.linalg.norm((1 - u - v) * tv[0] + u * tv[1] + v * tv[2] - p[k]))
    print(f"{len(i)} hits: max |barycentric point - hit point| {max(err) * 1000:.5f} mm")
    assert max(err) < 1e-5
