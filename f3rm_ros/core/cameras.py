"""Pinhole cameras with OpenCV radial-tangential distortion, point projection and ray generation.

Conventions (used by every function here):

* **Camera frame: OpenCV** (+x right, +y down, +z forward). Camera-to-world matrices passed to
  this module are OpenCV ``T_world_cam``. The OpenGL convention of ``transforms.json`` is converted
  at the file boundary only (:mod:`f3rm_ros.core.dataset`, via :mod:`f3rm_ros.core.geometry`).
* **Pixel coordinates** are continuous, in pixels: the image's top-left *corner* is (0, 0), +u right,
  +v down, and the centre of pixel (column i, row j) is (i + 0.5, j + 0.5). ``cx, cy`` are in the
  same coordinates (as nerfstudio / COLMAP / instant-ngp), so ``u = fx * x_d + cx`` with ``x_d`` the
  distorted normalised coordinate. OpenCV functions and ROS ``sensor_msgs/CameraInfo`` put pixel
  centres at integers instead: their ``cx, cy`` are ours minus 0.5. Convert with
  :meth:`CameraIntrinsics.from_opencv` / :meth:`CameraIntrinsics.to_opencv`.
* **Normalised coordinates** ``(x, y) = (X / Z, Y / Z)`` of a camera-frame point.
* **Distortion** is OpenCV's 5-parameter model (k1, k2, p1, p2, k3)::

      r2 = x^2 + y^2,  radial = 1 + k1 r2 + k2 r2^2 + k3 r2^3
      x_d = x radial + 2 p1 x y + p2 (r2 + 2 x^2)
      y_d = y radial + p1 (r2 + 2 y^2) + 2 p2 x y

  :func:`undistort` inverts it with Newton's method (closed-form 2x2 Jacobian); the fixed-point
  iteration OpenCV uses is kept beside it as :func:`undistort_fixed_point` (reference, tested).

The distortion functions work on numpy arrays and torch tensors alike (elementwise arithmetic
only), and their parameters may be floats or arrays/tensors broadcastable to ``xy[..., 0]``, so a
batch of rays from different cameras is handled in one call.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CameraIntrinsics",
    "INTRINSICS_TENSOR_FIELDS",
    "distort",
    "undistort",
    "undistort_fixed_point",
    "project_points",
    "intrinsics_tensor",
    "generate_rays",
    "generate_rays_reference",
    "pixel_centres",
    "image_rays",
]

# Column order of the packed per-camera parameter tensor used for batched ray generation.
INTRINSICS_TENSOR_FIELDS = ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3")


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics in pixels plus OpenCV distortion; see the module docstring for conventions.

    Attributes:
        fx, fy: focal lengths in pixels.
        cx, cy: principal point in pixels (top-left image corner = (0, 0)).
        width, height: image size in pixels.
        k1, k2, p1, p2, k3: OpenCV radial-tangential distortion (all 0 = pinhole).
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    k1: float = 0.0
    k2: float = 0.0
    p1: float = 0.0
    p2: float = 0.0
    k3: float = 0.0

    def __post_init__(self) -> None:
        for name in ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) \
                    or not math.isfinite(float(v)):
                raise ValueError(f"CameraIntrinsics.{name} must be a finite number, got {v!r}")
            object.__setattr__(self, name, float(v))
        for name in ("width", "height"):
            v = getattr(self, name)
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"CameraIntrinsics.{name} must be a positive integer, got {v!r}")
            object.__setattr__(self, name, int(v))
        if self.fx <= 0 or self.fy <= 0:
            raise ValueError(f"CameraIntrinsics focal lengths must be > 0, got fx={self.fx}, fy={self.fy}")

    # ----------------------------------------------------------------------------------- helpers
    @property
    def distortion(self) -> tuple[float, float, float, float, float]:
        """(k1, k2, p1, p2, k3), OpenCV's order."""
        return (self.k1, self.k2, self.p1, self.p2, self.k3)

    @property
    def has_distortion(self) -> bool:
        return any(d != 0.0 for d in self.distortion)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return (self.width, self.height)

    def K(self) -> np.ndarray:  # noqa: N802 - the usual name
        """3x3 camera matrix in this module's pixel convention (pixel centres at +0.5)."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @classmethod
    def from_opencv(cls, K: Any, width: int, height: int, dist: Sequence[float] = ()) -> CameraIntrinsics:
        """From an OpenCV / ROS ``CameraInfo`` camera matrix (pixel centres at integers).

        Args:
            K: 3x3 camera matrix (or the 9 numbers of ``CameraInfo.k``, row-major).
            width, height: image size in pixels.
            dist: OpenCV distortion ``(k1, k2, p1, p2[, k3, ...])``; coefficients past k3 (rational
                model) must be zero.

        The principal point is shifted by +0.5 px into this module's convention.
        """
        K = np.asarray(K, dtype=np.float64).reshape(3, 3)
        d = [float(x) for x in dist]
        if any(x != 0.0 for x in d[5:]):
            raise ValueError(f"only k1 k2 p1 p2 k3 are supported; higher coefficients {d[5:]} must be zero")
        d = (d + [0.0] * 5)[:5]
        return cls(fx=K[0, 0], fy=K[1, 1], cx=K[0, 2] + 0.5, cy=K[1, 2] + 0.5, width=width, height=height,
                   k1=d[0], k2=d[1], p1=d[2], p2=d[3], k3=d[4])

    def to_opencv(self) -> tuple[np.ndarray, np.ndarray]:
        """(3x3 camera matrix with integer pixel centres, distortion [k1, k2, p1, p2, k3]) for OpenCV / ROS."""
        K = self.K()
        K[0, 2] -= 0.5
        K[1, 2] -= 0.5
        return K, np.array(self.distortion)

    def to_tensor(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """Packed parameters ``[9]`` in the order of :data:`INTRINSICS_TENSOR_FIELDS`."""
        return torch.tensor([getattr(self, f) for f in INTRINSICS_TENSOR_FIELDS], device=device, dtype=dtype)

    def resized(self, width: int, height: int) -> CameraIntrinsics:
        """The same camera for an image resampled to ``width x height`` (whole image, no crop).

        Focal lengths and principal point scale by ``width / self.width`` and ``height / self.height``
        (exact for area/bilinear resizing with the pixel-centre-at-+0.5 convention); distortion is
        unchanged (it acts on normalised coordinates).
        """
        sx = width / self.width
        sy = height / self.height
        return dataclasses.replace(self, fx=self.fx * sx, fy=self.fy * sy, cx=self.cx * sx, cy=self.cy * sy,
                                   width=int(width), height=int(height))

    def scaled(self, factor: float) -> CameraIntrinsics:
        """Intrinsics for the image scaled by ``factor`` (0.25 = downscale by 4).

        The new size is ``round(width * factor) x round(height * factor)`` and the pixel parameters
        are scaled by the exact ratio of new to old size (see :meth:`resized`).
        """
        if not (factor > 0 and math.isfinite(factor)):
            raise ValueError(f"scale factor must be finite and > 0, got {factor!r}")
        w = max(1, int(round(self.width * factor)))
        h = max(1, int(round(self.height * factor)))
        return self.resized(w, h)

    def project(self, points_cam: Any) -> Any:
        """See :func:`project_points`."""
        return project_points(self, points_cam)

    def to_dict(self) -> dict[str, float | int]:
        """transforms.json keys: ``fl_x fl_y cx cy w h k1 k2 p1 p2 k3``."""
        return {"fl_x": self.fx, "fl_y": self.fy, "cx": self.cx, "cy": self.cy, "w": self.width,
                "h": self.height, "k1": self.k1, "k2": self.k2, "p1": self.p1, "p2": self.p2, "k3": self.k3}


# ------------------------------------------------------------------------------------- distortion
def _is_torch(x: Any) -> bool:
    return isinstance(x, Tensor)


def _stack_last(a: Any, b: Any) -> Any:
    return torch.stack([a, b], dim=-1) if _is_torch(a) else np.stack([a, b], axis=-1)


def _params(coeffs: Any, like: Any) -> tuple[Any, Any, Any, Any, Any]:
    """(k1, k2, p1, p2, k3) from a CameraIntrinsics, a 4/5-sequence, or a [..., 5] array/tensor."""
    if isinstance(coeffs, CameraIntrinsics):
        return coeffs.distortion
    if _is_torch(coeffs) or isinstance(coeffs, np.ndarray):
        if coeffs.shape[-1] not in (4, 5):
            raise ValueError(f"distortion coefficients must have 4 or 5 entries in the last axis, got shape "
                             f"{tuple(coeffs.shape)}")
        if _is_torch(like) and not _is_torch(coeffs):
            coeffs = torch.as_tensor(coeffs, dtype=like.dtype, device=like.device)
        ks = [coeffs[..., i] for i in range(coeffs.shape[-1])]
        if len(ks) == 4:
            ks.append(0.0)
        return tuple(ks)  # type: ignore[return-value]
    coeffs = [float(c) for c in coeffs]
    if len(coeffs) not in (4, 5):
        raise ValueError(f"distortion coefficients must be (k1, k2, p1, p2[, k3]), got {coeffs}")
    if len(coeffs) == 4:
        coeffs.append(0.0)
    return tuple(coeffs)  # type: ignore[return-value]


def _check_xy(xy: Any) -> None:
    if xy.shape[-1] != 2:
        raise ValueError(f"xy must have shape [..., 2], got {tuple(xy.shape)}")


def distort(xy: Any, coeffs: Any) -> Any:
    """Apply OpenCV radial-tangential distortion to normalised coordinates.

    Args:
        xy: undistorted normalised coordinates, numpy array or tensor  # [..., 2]
        coeffs: a :class:`CameraIntrinsics`, ``(k1, k2, p1, p2[, k3])``, or an array/tensor
            ``[..., 4 or 5]`` broadcastable to ``xy[..., 0]``.

    Returns:
        distorted normalised coordinates, same type/shape as ``xy``  # [..., 2]
    """
    _check_xy(xy)
    k1, k2, p1, p2, k3 = _params(coeffs, xy)
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return _stack_last(xd, yd)


def undistort(xy_distorted: Any, coeffs: Any, iterations: int = 10, eps: float = 1e-12) -> Any:
    """Invert :func:`distort` by Newton's method on normalised coordinates.

    Starts at the distorted point and takes ``iterations`` Newton steps with the analytic 2x2
    Jacobian (no early exit, so batched torch code has no host syncs). For real lens models
    (distortion monotonic over the image) 10 steps reach float64 round-off; the round trip is
    tested. Where the Jacobian is singular the step is skipped.

    Args:
        xy_distorted: distorted normalised coordinates, numpy array or tensor  # [..., 2]
        coeffs: as for :func:`distort`.
        iterations: number of Newton steps.

    Returns:
        undistorted normalised coordinates  # [..., 2]
    """
    _check_xy(xy_distorted)
    k1, k2, p1, p2, k3 = _params(coeffs, xy_distorted)
    xd, yd = xy_distorted[..., 0], xy_distorted[..., 1]
    x, y = xd, yd
    for _ in range(iterations):
        r2 = x * x + y * y
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        # d radial / d r2
        dradial = k1 + r2 * (2 * k2 + r2 * 3 * k3)
        fx = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x) - xd
        fy = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y - yd
        # Jacobian of (distorted x, distorted y) w.r.t. (x, y); d r2/dx = 2x, d r2/dy = 2y
        jxx = radial + 2 * x * x * dradial + 2 * p1 * y + 6 * p2 * x
        jxy = 2 * x * y * dradial + 2 * p1 * x + 2 * p2 * y
        jyx = 2 * x * y * dradial + 2 * p1 * x + 2 * p2 * y
        jyy = radial + 2 * y * y * dradial + 6 * p1 * y + 2 * p2 * x
        det = jxx * jyy - jxy * jyx
        ok = abs(det) > eps
        if _is_torch(det):
            safe = torch.where(ok, det, torch.ones_like(det))
            dx = torch.where(ok, (jyy * fx - jxy * fy) / safe, torch.zeros_like(det))
            dy = torch.where(ok, (jxx * fy - jyx * fx) / safe, torch.zeros_like(det))
        else:
            safe = np.where(ok, det, 1.0)
            dx = np.where(ok, (jyy * fx - jxy * fy) / safe, 0.0)
            dy = np.where(ok, (jxx * fy - jyx * fx) / safe, 0.0)
        x = x - dx
        y = y - dy
    return _stack_last(x, y)


def undistort_fixed_point(xy_distorted: Any, coeffs: Any, iterations: int = 100) -> Any:
    """Reference for :func:`undistort`: OpenCV's fixed-point iteration ``x = (x_d - tangential) / radial``.

    Slower to converge (hence many iterations) but independent of the Jacobian; used by the tests.
    Shapes and types as for :func:`undistort`.
    """
    _check_xy(xy_distorted)
    k1, k2, p1, p2, k3 = _params(coeffs, xy_distorted)
    xd, yd = xy_distorted[..., 0], xy_distorted[..., 1]
    x, y = xd, yd
    for _ in range(iterations):
        r2 = x * x + y * y
        radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
        dx = 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        dy = p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        x = (xd - dx) / radial
        y = (yd - dy) / radial
    return _stack_last(x, y)


# ------------------------------------------------------------------------------------- projection
def project_points(intrinsics: CameraIntrinsics, points_cam: Any) -> Any:
    """Project camera-frame points (OpenCV convention) to pixel coordinates, with distortion.

    Args:
        intrinsics: the camera.
        points_cam: points in the OpenCV camera frame, metres, numpy or torch  # [..., 3]

    Returns:
        pixel coordinates ``(u, v)`` (top-left corner (0, 0), pixel centres at +0.5)  # [..., 2]
        Points with ``Z <= 0`` (behind the camera) give meaningless pixels; callers check ``Z``.
    """
    if points_cam.shape[-1] != 3:
        raise ValueError(f"points_cam must have shape [..., 3], got {tuple(points_cam.shape)}")
    z = points_cam[..., 2]
    xy = _stack_last(points_cam[..., 0] / z, points_cam[..., 1] / z)
    if intrinsics.has_distortion:
        xy = distort(xy, intrinsics)
    u = intrinsics.fx * xy[..., 0] + intrinsics.cx
    v = intrinsics.fy * xy[..., 1] + intrinsics.cy
    return _stack_last(u, v)


# --------------------------------------------------------------------------------- ray generation
def intrinsics_tensor(intrinsics: CameraIntrinsics | Sequence[CameraIntrinsics],
                      device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Pack one camera ``[9]`` or a list of cameras ``[N, 9]`` (order :data:`INTRINSICS_TENSOR_FIELDS`).

    Index the ``[N, 9]`` tensor by each ray's image index to generate rays for mixed cameras.
    """
    if isinstance(intrinsics, CameraIntrinsics):
        return intrinsics.to_tensor(device, dtype)
    rows = [[getattr(k, f) for f in INTRINSICS_TENSOR_FIELDS] for k in intrinsics]
    return torch.tensor(rows, device=device, dtype=dtype).reshape(-1, len(INTRINSICS_TENSOR_FIELDS))


def _as_param_tensor(intrinsics: CameraIntrinsics | Tensor, like: Tensor) -> Tensor:
    if isinstance(intrinsics, CameraIntrinsics):
        return intrinsics.to_tensor(like.device, like.dtype)
    if not _is_torch(intrinsics) or intrinsics.shape[-1] != len(INTRINSICS_TENSOR_FIELDS):
        raise ValueError("intrinsics must be a CameraIntrinsics or a tensor [..., 9] from intrinsics_tensor(), "
                         f"got {type(intrinsics).__name__} {tuple(getattr(intrinsics, 'shape', ()))}")
    return intrinsics.to(device=like.device, dtype=like.dtype)


def generate_rays(intrinsics: CameraIntrinsics | Tensor, c2w_opencv: Tensor, pixel_xy: Tensor,
                  undistort_iterations: int = 10) -> tuple[Tensor, Tensor]:
    """World-frame rays through pixels (undistorting them), for OpenCV camera-to-world poses.

    Args:
        intrinsics: one camera, or per-ray packed parameters from :func:`intrinsics_tensor`  # [9] or [B, 9]
        c2w_opencv: camera-to-world, OpenCV convention (may be in the normalised field frame:
            rays come out in whatever frame the pose is in)  # [B, 4, 4] or [B, 3, 4] or [4, 4]
        pixel_xy: continuous pixel coordinates; the centre of pixel (i, j) is (i + 0.5, j + 0.5)  # [B, 2]
        undistort_iterations: Newton steps of :func:`undistort`.

    Returns:
        origins  # [B, 3]  (camera centres)
        directions  # [B, 3]  unit length, world frame
    """
    if pixel_xy.ndim != 2 or pixel_xy.shape[-1] != 2:
        raise ValueError(f"pixel_xy must have shape [B, 2], got {tuple(pixel_xy.shape)}")
    if c2w_opencv.shape[-2:] not in ((4, 4), (3, 4)):
        raise ValueError(f"c2w_opencv must have shape [B, 4, 4] or [B, 3, 4], got {tuple(c2w_opencv.shape)}")
    if not pixel_xy.is_floating_point():
        raise ValueError("pixel_xy must be a float tensor (pixel centres are at +0.5)")
    params = _as_param_tensor(intrinsics, pixel_xy)
    fx, fy, cx, cy = params[..., 0], params[..., 1], params[..., 2], params[..., 3]
    xy = torch.stack([(pixel_xy[..., 0] - cx) / fx, (pixel_xy[..., 1] - cy) / fy], dim=-1)
    dist = params[..., 4:9]
    if isinstance(intrinsics, CameraIntrinsics):
        if intrinsics.has_distortion:
            xy = undistort(xy, intrinsics, iterations=undistort_iterations)
    else:
        xy = undistort(xy, dist, iterations=undistort_iterations)
    d_cam = torch.cat([xy, torch.ones_like(xy[..., :1])], dim=-1)
    d_cam = d_cam / torch.linalg.norm(d_cam, dim=-1, keepdim=True)
    c2w = c2w_opencv.to(dtype=pixel_xy.dtype, device=pixel_xy.device)
    R = c2w[..., :3, :3]
    t = c2w[..., :3, 3]
    directions = (R @ d_cam[..., None])[..., 0]
    origins = t.expand_as(directions)
    return origins, directions


def generate_rays_reference(intrinsics: CameraIntrinsics, c2w_opencv: np.ndarray,
                            pixel_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference for :func:`generate_rays`: float64 numpy, one ray at a time, fixed-point undistortion.

    Args:
        intrinsics: one camera.
        c2w_opencv: camera-to-world, OpenCV convention  # [4, 4]
        pixel_xy: pixel coordinates  # [B, 2]

    Returns:
        origins  # [B, 3]
        directions  # [B, 3] unit
    """
    c2w = np.asarray(c2w_opencv, dtype=np.float64)
    origins, dirs = [], []
    for u, v in np.asarray(pixel_xy, dtype=np.float64):
        xy = np.array([(u - intrinsics.cx) / intrinsics.fx, (v - intrinsics.cy) / intrinsics.fy])
        xy = undistort_fixed_point(xy, intrinsics, iterations=200)
        d = np.array([xy[0], xy[1], 1.0])
        d = c2w[:3, :3] @ (d / np.linalg.norm(d))
        origins.append(c2w[:3, 3].copy())
        dirs.append(d)
    return np.array(origins).reshape(-1, 3), np.array(dirs).reshape(-1, 3)


def pixel_centres(width: int, height: int, device: torch.device | str | None = None,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """Centres of all pixels, row-major  # [height, width, 2] as (u, v) = (i + 0.5, j + 0.5)."""
    v, u = torch.meshgrid(torch.arange(height, device=device, dtype=dtype) + 0.5,
                          torch.arange(width, device=device, dtype=dtype) + 0.5, indexing="ij")
    return torch.stack([u, v], dim=-1)


def image_rays(intrinsics: CameraIntrinsics, c2w_opencv: Tensor | np.ndarray,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
               ) -> tuple[Tensor, Tensor]:
    """Rays through every pixel centre of one camera (OpenCV camera-to-world ``[4, 4]``).

    Returns:
        origins  # [H, W, 3]
        directions  # [H, W, 3] unit, in the pose's frame
    """
    c2w = torch.as_tensor(np.asarray(c2w_opencv) if not _is_torch(c2w_opencv) else c2w_opencv,
                          dtype=dtype, device=device)
    px = pixel_centres(intrinsics.width, intrinsics.height, device, dtype).reshape(-1, 2)
    o, d = generate_rays(intrinsics, c2w.expand(px.shape[0], *c2w.shape[-2:]), px)
    shape = (intrinsics.height, intrinsics.width, 3)
    return o.reshape(shape), d.reshape(shape)
