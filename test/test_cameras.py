"""Cameras: distortion round trip, projection vs ray generation, conventions, scaling."""

import numpy as np
import pytest
import torch

from f3rm_ros.core.cameras import (
    CameraIntrinsics,
    distort,
    generate_rays,
    generate_rays_reference,
    image_rays,
    intrinsics_tensor,
    pixel_centres,
    project_points,
    undistort,
    undistort_fixed_point,
)
from f3rm_ros.core.geometry import (
    c2w_opencv_to_opengl,
    c2w_opengl_to_opencv,
    invert_transform,
    look_at_opencv,
    transform_points,
)

# the real fox capture's camera (OpenCV k1 k2 p1 p2)
FOX = CameraIntrinsics(1375.52, 1374.49, 554.558, 965.268, 1080, 1920,
                       k1=0.0578421, k2=-0.0805099, p1=-0.000980296, p2=0.00015575)
STRONG = CameraIntrinsics(500.0, 480.0, 320.5, 241.0, 640, 480, k1=-0.28, k2=0.07, p1=0.001, p2=-0.0015, k3=0.01)


def _image_xy(K, n, rng):
    """Normalised distorted coordinates covering the whole image (corners included)."""
    uv = rng.uniform([0, 0], [K.width, K.height], (n, 2))
    uv[:4] = [[0, 0], [K.width, 0], [0, K.height], [K.width, K.height]]
    return np.stack([(uv[:, 0] - K.cx) / K.fx, (uv[:, 1] - K.cy) / K.fy], -1)


@pytest.mark.parametrize("K", [FOX, STRONG], ids=["fox", "strong"])
def test_distort_undistort_round_trip(K):
    rng = np.random.default_rng(0)
    xd = _image_xy(K, 5000, rng)
    x = undistort(xd, K)
    err_np = np.abs(distort(x, K) - xd).max()
    x_ref = undistort_fixed_point(xd, K, iterations=500)
    err_ref = np.abs(x - x_ref).max()
    # torch float64 and float32 give the same answer
    xt = undistort(torch.tensor(xd), K)
    err_t64 = (xt - torch.tensor(x)).abs().max().item()
    xt32 = undistort(torch.tensor(xd, dtype=torch.float32), K)
    err_t32 = (xt32.double() - torch.tensor(x)).abs().max().item()
    # the other direction: undistort(distort(x)) = x
    xu = rng.uniform(-0.4, 0.4, (2000, 2))
    err_inv = np.abs(undistort(distort(xu, K), K) - xu).max()
    print(f"\n{K.k1=}: |distort(undistort(xd))-xd|={err_np:.2e} newton-vs-fixed-point={err_ref:.2e} "
          f"torch64={err_t64:.2e} torch32={err_t32:.2e} |undistort(distort(x))-x|={err_inv:.2e}")
    assert err_np < 1e-12 and err_ref < 1e-10 and err_t64 < 1e-12 and err_t32 < 1e-5 and err_inv < 1e-12
    # distortion is not the identity for these cameras (the test would be vacuous otherwise)
    assert np.abs(distort(xu, K) - xu).max() > 1e-3


def test_distort_matches_opencv_formula_pointwise():
    k1, k2, p1, p2, k3 = STRONG.distortion
    for x, y in [(0.1, -0.2), (-0.5, 0.3), (0.0, 0.0)]:
        r2 = x * x + y * y
        rad = 1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3
        want = (x * rad + 2 * p1 * x * y + p2 * (r2 + 2 * x * x), y * rad + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y)
        got = distort(np.array([x, y]), STRONG)
        assert np.allclose(got, want, atol=1e-15), (got, want)


def test_per_ray_coefficients_broadcast():
    rng = np.random.default_rng(1)
    xd = torch.tensor(rng.uniform(-0.5, 0.5, (6, 2)))
    coeffs = torch.tensor([list(FOX.distortion)] * 3 + [list(STRONG.distortion)] * 3, dtype=torch.float64)
    batched = undistort(xd, coeffs)
    single = torch.cat([undistort(xd[:3], FOX), undistort(xd[3:], STRONG)])
    print(f"\nbatched vs single-camera undistort: {(batched - single).abs().max().item():.2e}")
    assert torch.allclose(batched, single, atol=1e-14)


@pytest.mark.parametrize("K", [FOX, STRONG, CameraIntrinsics(300.0, 300.0, 160.0, 120.0, 320, 240)],
                         ids=["fox", "strong", "pinhole"])
def test_projected_point_lies_on_its_pixels_ray(K):
    """A world point projected to a pixel lies on the ray generated for that pixel."""
    rng = np.random.default_rng(2)
    c2w = look_at_opencv([0.6, -0.4, 0.5], [0.0, 0.1, 0.05])
    # points seen by the camera, spread across the image
    n = 500
    xd = _image_xy(K, n, rng)
    depth = rng.uniform(0.2, 3.0, n)
    x = undistort(xd, K)
    p_cam = np.concatenate([x * depth[:, None], depth[:, None]], -1)
    p_world = transform_points(c2w, p_cam)
    # project (independent path: world -> camera -> distort -> pixels)
    uv = project_points(K, transform_points(invert_transform(c2w), p_world))
    o, d = generate_rays(K, torch.tensor(c2w).expand(n, 4, 4), torch.tensor(uv))
    o, d = o.numpy(), d.numpy()
    v = p_world - o
    t = (v * d).sum(-1)
    off_ray = np.linalg.norm(v - t[:, None] * d, axis=-1)
    norm_err = np.abs(np.linalg.norm(d, axis=-1) - 1).max()
    print(f"\n{K.k1=}: max distance of points from their pixel's ray {off_ray.max():.2e} m "
          f"(depth up to 3 m), |d|-1 {norm_err:.1e}")
    assert off_ray.max() < 1e-9 and (t > 0).all() and norm_err < 1e-12
    # float32 path is accurate to sub-micrometre per metre
    o32, d32 = generate_rays(K, torch.tensor(c2w, dtype=torch.float32).expand(n, 4, 4),
                             torch.tensor(uv, dtype=torch.float32))
    off32 = np.linalg.norm(np.cross(p_world - o32.double().numpy(), d32.double().numpy()), axis=-1).max()
    print(f"float32 rays: max off-ray distance {off32:.2e} m")
    assert off32 < 1e-5


def test_generate_rays_matches_reference_and_mixed_cameras():
    rng = np.random.default_rng(3)
    c2w_a = look_at_opencv([1.0, 0.0, 0.5], [0, 0, 0])
    c2w_b = look_at_opencv([0.0, 1.0, 0.8], [0, 0, 0.1])
    small = FOX.scaled(0.25)
    uv_a = rng.uniform([0, 0], [small.width, small.height], (40, 2))
    uv_b = rng.uniform([0, 0], [STRONG.width, STRONG.height], (40, 2))
    oa_ref, da_ref = generate_rays_reference(small, c2w_a, uv_a)
    ob_ref, db_ref = generate_rays_reference(STRONG, c2w_b, uv_b)
    # one batched call over two different cameras, per-ray packed intrinsics
    table = intrinsics_tensor([small, STRONG], dtype=torch.float64)
    cam = torch.tensor([0] * 40 + [1] * 40)
    poses = torch.tensor(np.stack([c2w_a, c2w_b]))[cam]
    o, d = generate_rays(table[cam], poses, torch.tensor(np.concatenate([uv_a, uv_b])))
    err_o = np.abs(o.numpy() - np.concatenate([oa_ref, ob_ref])).max()
    err_d = np.abs(d.numpy() - np.concatenate([da_ref, db_ref])).max()
    print(f"\nbatched mixed-camera rays vs per-ray reference: origins {err_o:.2e}, directions {err_d:.2e}")
    assert err_o < 1e-12 and err_d < 1e-10


def test_opencv_opengl_conventions():
    # camera at (0, -2, 0.5) looking along world +y, image up = world +z; OpenCV axes as columns
    c2w_cv = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, -2.0], [0.0, -1.0, 0.0, 0.5], [0.0, 0.0, 0.0, 1.0]])
    c2w_gl = c2w_opencv_to_opengl(c2w_cv)
    assert np.array_equal(c2w_opengl_to_opencv(c2w_gl), c2w_cv)
    fwd_cv = c2w_cv[:3, 2]      # OpenCV looks along +z
    fwd_gl = -c2w_gl[:3, 2]     # OpenGL looks along -z
    up_gl = c2w_gl[:3, 1]       # OpenGL +y is up
    print(f"\nforward cv {fwd_cv} gl {fwd_gl}; up (gl +y) {up_gl}; right (gl +x) {c2w_gl[:3, 0]}")
    assert np.array_equal(fwd_cv, [0, 1, 0]) and np.array_equal(fwd_gl, [0, 1, 0])
    assert np.array_equal(up_gl, [0, 0, 1]) and np.array_equal(c2w_gl[:3, 0], c2w_cv[:3, 0])
    K = CameraIntrinsics(100.0, 100.0, 50.0, 40.0, 100, 80)
    # the centre pixel's ray points forward; the top-left pixel's ray points left and up
    _, d = generate_rays(K, torch.tensor(c2w_cv)[None].expand(2, 4, 4),
                         torch.tensor([[50.0, 40.0], [0.5, 0.5]], dtype=torch.float64))
    print(f"centre ray {d[0].numpy().round(4)}, top-left ray {d[1].numpy().round(4)}")
    assert np.allclose(d[0].numpy(), [0, 1, 0], atol=1e-12)
    assert d[1, 0] < 0 and d[1, 2] > 0
    # a point above and right of the optical axis appears above and right of the image centre
    uv = project_points(K, transform_points(invert_transform(c2w_cv), np.array([0.3, 0.0, 0.7])))
    print(f"point up-right -> pixel {uv.round(2)} (centre 50, 40)")
    assert uv[0] > 50.0 and uv[1] < 40.0


def test_scaled_intrinsics_consistent_with_projection():
    small = FOX.scaled(0.25)
    print(f"\nfox /4: {small}")
    assert (small.width, small.height) == (270, 480)
    assert small.fx == FOX.fx / 4 and small.cx == FOX.cx / 4 and small.k1 == FOX.k1
    rng = np.random.default_rng(4)
    p = np.concatenate([rng.uniform(-0.3, 0.3, (100, 2)), rng.uniform(1, 2, (100, 1))], -1)
    assert np.allclose(project_points(small, p), project_points(FOX, p) / 4, atol=1e-9)
    # pixel centres convention and full-image rays
    pc = pixel_centres(3, 2)
    assert pc.shape == (2, 3, 2) and pc[0, 0].tolist() == [0.5, 0.5] and pc[1, 2].tolist() == [2.5, 1.5]
    o, d = image_rays(CameraIntrinsics(10.0, 10.0, 2.0, 1.5, 4, 3), np.eye(4))
    assert o.shape == (3, 4, 3) and d.shape == (3, 4, 3)
    with pytest.raises(ValueError, match="fx"):
        CameraIntrinsics(float("nan"), 1.0, 0.0, 0.0, 4, 4)
    with pytest.raises(ValueError, match="width"):
        CameraIntrinsics(1.0, 1.0, 0.0, 0.0, 0, 4)


def test_opencv_pixel_convention_and_cv2_if_installed():
    """OpenCV/ROS put pixel centres at integers: from_opencv/to_opencv shift cx, cy by 0.5."""
    Kcv, d = STRONG.to_opencv()
    assert Kcv[0, 2] == STRONG.cx - 0.5 and CameraIntrinsics.from_opencv(Kcv, 640, 480, d) == STRONG
    assert CameraIntrinsics.from_opencv(Kcv.ravel().tolist(), 640, 480, list(d) + [0.0, 0.0, 0.0]) == STRONG
    with pytest.raises(ValueError, match="higher coefficients"):
        CameraIntrinsics.from_opencv(Kcv, 640, 480, list(d) + [0.1])
    try:
        import cv2
    except ImportError:
        pytest.skip("cv2 (opencv-python) is not installed: the cross-check against OpenCV itself is skipped; "
                    "the convention checks above ran")
    rng = np.random.default_rng(5)
    p = np.concatenate([rng.uniform(-0.3, 0.3, (200, 2)), rng.uniform(0.8, 2, (200, 1))], -1)
    uv_cv = cv2.projectPoints(p, np.zeros(3), np.zeros(3), Kcv, d)[0][:, 0]
    err_p = np.abs(project_points(STRONG, p) - (uv_cv + 0.5)).max()
    uv = project_points(STRONG, p)
    und = cv2.undistortPoints((uv - 0.5)[:, None], Kcv, d, None, None,
                              criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 200, 1e-16))[:, 0]
    xd = np.stack([(uv[:, 0] - STRONG.cx) / STRONG.fx, (uv[:, 1] - STRONG.cy) / STRONG.fy], -1)
    err_u = np.abs(undistort(xd, STRONG) - und).max()
    print(f"\nvs OpenCV {cv2.__version__}: projectPoints {err_p:.1e} px, undistortPoints {err_u:.1e}")
    assert err_p < 1e-9 and err_u < 1e-12
