"""Training rays from a table of precomputed camera-frame directions (one per training pixel).

:func:`f3rm_ros.core.cameras.generate_rays` undistorts every pixel with 10 Newton steps (about 500
small element-wise kernels per call). For a training batch that is the same work every step for
the same fixed set of pixels, so the trainer can compute the unit camera-frame direction of every
training pixel once (:func:`camera_direction_table`, OpenCV camera convention: x right, y down,
z forward) and per step only gather and rotate (:func:`rays_from_direction_table`): three kernels
instead of ~500, same result (the per-pixel math is the one of ``generate_rays``; only the order in
which it is done changes). The table costs 12 bytes per pixel (78 MB for 50 images of 270x480).

:func:`rays_from_direction_table` is tested against ``generate_rays`` (the plain reference).
"""

from __future__ import annotations

import torch
from torch import Tensor

from f3rm_ros.core.cameras import generate_rays

__all__ = ["camera_direction_table", "rays_from_direction_table", "direction_table_bytes"]


def direction_table_bytes(num_pixels: int) -> int:
    """Bytes of a direction table over ``num_pixels`` pixels (fp32 x 3)."""
    return int(num_pixels) * 3 * 4


def camera_direction_table(intrinsics: Tensor,  # [N, 9] packed (cameras.intrinsics_tensor)
                           sizes: Tensor,  # [N, 2] long, (width, height) per image
                           chunk: int = 1 << 20) -> Tensor:  # [P, 3]
    """Unit camera-frame (OpenCV) direction through the centre of every pixel of every image.

    Pixels are flattened image after image, row-major within an image (pixel (x, y) of image k at
    ``start_k + y * W_k + x``, ``start_k`` the sum of the earlier images' pixel counts), i.e. the
    layout of the trainer's flattened pixel buffer.

    Args:
        intrinsics: packed intrinsics per image (fx, fy, cx, cy, k1, k2, p1, p2, k3), float32.
        sizes: image sizes (width, height), on the same device.
        chunk: pixels per ``generate_rays`` call (bounds the temporary memory).
    Returns:
        directions [P, 3] float32 (unit length), P = sum of W*H, on the intrinsics' device.
    """
    if intrinsics.dim() != 2 or intrinsics.shape[-1] != 9 or sizes.shape != (intrinsics.shape[0], 2):
        raise ValueError(f"intrinsics must be [N, 9] and sizes [N, 2], got {tuple(intrinsics.shape)} and "
                         f"{tuple(sizes.shape)}")
    dev = intrinsics.device
    eye = torch.eye(4, dtype=torch.float32, device=dev)
    parts, seen = [], {}
    keys = [(*row, W, H) for row, (W, H) in zip(intrinsics.tolist(), sizes.tolist(), strict=True)]
    for k, key in enumerate(keys):
        if key in seen:  # the same camera (a robot's one camera: every image): the same directions
            parts.extend(seen[key])
            continue
        W, H = int(sizes[k, 0]), int(sizes[k, 1])
        n = W * H
        seen[key] = []
        for s in range(0, n, chunk):
            flat = torch.arange(s, min(n, s + chunk), device=dev)
            pix = torch.stack([flat % W, torch.div(flat, W, rounding_mode="floor")], -1).float() + 0.5
            _, d = generate_rays(intrinsics[k].expand(flat.shape[0], -1), eye.expand(flat.shape[0], 4, 4), pix)
            seen[key].append(d)
        parts.extend(seen[key])
    if not parts:
        return torch.zeros(0, 3, dtype=torch.float32, device=dev)
    return torch.cat(parts)


def rays_from_direction_table(table: Tensor,  # [P, 3] from camera_direction_table
                              flat: Tensor,  # [B] long, flattened pixel index
                              c2w_opencv: Tensor  # [B, 4, 4] (or [B, 3, 4]) camera-to-world of each ray
                              ) -> tuple[Tensor, Tensor]:
    """Rays through the table's pixels ``flat`` for the given camera poses (OpenCV convention).

    Same as ``generate_rays(K[cam], c2w, pixel centres)`` for those pixels.

    Returns:
        origins [B, 3] (camera centres), directions [B, 3] (unit), in the poses' frame.
    """
    if flat.dim() != 1 or c2w_opencv.shape[0] != flat.shape[0] or c2w_opencv.shape[-2:] not in ((4, 4), (3, 4)):
        raise ValueError(f"flat must be [B] and c2w [B, 4, 4]; got {tuple(flat.shape)} and {tuple(c2w_opencv.shape)}")
    d_cam = table[flat]
    c2w = c2w_opencv.to(dtype=table.dtype)
    directions = (c2w[..., :3, :3] @ d_cam[..., None])[..., 0]
    origins = c2w[..., :3, 3].expand_as(directions)
    return origins, directions
