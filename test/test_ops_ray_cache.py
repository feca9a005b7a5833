"""Training rays from the precomputed direction table vs generate_rays (the plain reference)."""

from __future__ import annotations

import pytest
import torch

from f3rm_ros.core.cameras import CameraIntrinsics, generate_rays, intrinsics_tensor
from f3rm_ros.core.geometry import look_at_opencv
from f3rm_ros.core.ops.ray_cache import camera_direction_table, direction_table_bytes, rays_from_direction_table


def _cameras():
    Ks = [CameraIntrinsics(fx=30.0, fy=31.0, cx=11.0, cy=7.5, width=23, height=17, k1=-0.2, k2=0.05, p1=0.01,
                           p2=-0.005, k3=0.01),
          CameraIntrinsics(fx=20.0, fy=20.0, cx=8.0, cy=8.0, width=16, height=16),
          CameraIntrinsics(fx=40.0, fy=38.0, cx=15.2, cy=9.9, width=31, height=19, k1=0.1)]
    c2w = torch.stack([torch.as_tensor(look_at_opencv([1.0 + i, -0.5, 0.7 * i], [0.0, 0.1, 0.0], [0.0, 0.0, 1.0]),
                                       dtype=torch.float32) for i in range(3)])
    return Ks, c2w


def test_direction_table_rays_match_generate_rays():
    Ks, c2w = _cameras()
    K9 = intrinsics_tensor(Ks)
    sizes = torch.tensor([[k.width, k.height] for k in Ks])
    counts = sizes[:, 0] * sizes[:, 1]
    starts = torch.cumsum(counts, 0) - counts
    table = camera_direction_table(K9, sizes, chunk=100)  # several chunks per image
    assert table.shape == (int(counts.sum()), 3)
    g = torch.Generator().manual_seed(3)
    flat = torch.randint(int(counts.sum()), (500,), generator=g)
    # the trainer's per-step reference path
    cam = torch.searchsorted(starts, flat, right=True) - 1
    local = flat - starts[cam]
    W = sizes[cam, 0]
    pix = torch.stack([local % W, torch.div(local, W, rounding_mode="floor")], -1).float() + 0.5
    o_ref, d_ref = generate_rays(K9[cam], c2w[cam], pix)
    o, d = rays_from_direction_table(table, flat, c2w[cam])
    err_d = (d - d_ref).abs().max().item()
    err_o = (o - o_ref).abs().max().item()
    print(f"direction table vs generate_rays over {flat.numel()} rays (3 cameras, 2 distorted): "
          f"max |d| err {err_d:.2e}, max |o| err {err_o:.2e}, unit-norm err {(d.norm(dim=-1) - 1).abs().max():.2e}")
    assert err_o == 0.0
    assert err_d < 1e-6
    assert direction_table_bytes(table.shape[0]) == table.numel() * 4


def test_direction_table_of_repeated_cameras_is_each_image_own_table():
    """Images of one camera share their directions (computed once): the table is exactly the images' own tables
    one after another, also where a camera comes back after another one."""
    Ks, _ = _cameras()
    order = [0, 1, 0, 2, 1, 1]
    K9 = intrinsics_tensor([Ks[i] for i in order])
    sizes = torch.tensor([[Ks[i].width, Ks[i].height] for i in order])
    table = camera_direction_table(K9, sizes, chunk=100)
    own = torch.cat([camera_direction_table(K9[k:k + 1], sizes[k:k + 1], chunk=100) for k in range(len(order))])
    assert torch.equal(table, own)


def test_direction_table_bad_shapes():
    with pytest.raises(ValueError):
        camera_direction_table(torch.zeros(2, 8), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError):
        rays_from_direction_table(torch.zeros(5, 3), torch.zeros(4, dtype=torch.long), torch.zeros(3, 4, 4))
