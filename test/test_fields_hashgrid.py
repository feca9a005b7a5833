"""Hash grid: the vectorised torch reference against a per-point Python loop (dense and hashed levels)."""

import torch

from f3rm_ros.core.fields.hashgrid import grid_resolutions, hash_grid_encode_loop, hash_grid_encode_torch


def test_grid_resolutions_reference_defaults():
    r = grid_resolutions(16, 16, 2048)
    print("rgb grid resolutions", r)
    assert r[0] == 16 and r[-1] == 2048 and len(r) == 16 and r == sorted(r)
    f = grid_resolutions(12, 16, 128)
    print("feature grid resolutions", f)
    assert f[0] == 16 and f[-1] == 128


def test_hash_grid_torch_matches_loop():
    g = torch.Generator().manual_seed(0)
    # T = 2**12 = 4096: level R=4 is dense ((5)^3=125 <= 4096), R=15 dense (4096 <= 4096), R>=16 hashed
    res = [4, 15, 16, 37, 200]
    table = torch.rand(len(res), 2**12, 3, generator=g) * 2 - 1
    x = torch.rand(300, 3, generator=g) * 1.2 - 0.1  # some outside [0,1] -> clamped
    x[0] = torch.tensor([1.0, 1.0, 1.0])
    x[1] = torch.tensor([0.0, 0.5, 1.0])
    out = hash_grid_encode_torch(x, table, res)
    ref = hash_grid_encode_loop(x, table, res)
    err = (out.double() - ref.double()).abs().max().item()
    print(f"hash grid torch vs loop: max abs err {err:.3e}, shape {tuple(out.shape)}")
    assert out.shape == (300, len(res) * 3)
    assert err < 1e-4  # fp32 pos*R vs fp64 loop; a wrong index would give O(1) errors


def test_hash_grid_gradients_and_dtype():
    g = torch.Generator().manual_seed(1)
    table = (torch.rand(3, 512, 2, generator=g) * 2e-4 - 1e-4).requires_grad_(True)
    x = torch.rand(64, 3, generator=g)
    out = hash_grid_encode_torch(x, table, [4, 9, 30])
    out.square().sum().backward()
    nz = int((table.grad != 0).sum())
    print("hash grid nonzero table grads", nz)
    assert nz > 0
    # finite-difference check of one table entry that got gradient
    l, t, f = (table.grad != 0).nonzero()[0].tolist()
    eps = 1e-3
    with torch.no_grad():
        tp = table.clone(); tp[l, t, f] += eps
        tm = table.clone(); tm[l, t, f] -= eps
        fd = (hash_grid_encode_torch(x, tp, [4, 9, 30]).square().sum()
              - hash_grid_encode_torch(x, tm, [4, 9, 30]).square().sum()) / (2 * eps)
    print(f"grad {table.grad[l, t, f].item():.6e} vs finite difference {fd.item():.6e}")
    assert abs(table.grad[l, t, f].item() - fd.item()) < 1e-3 * max(1.0, abs(fd.item()))
    half = hash_grid_encode_torch(x, table.detach().half(), [4, 9, 30])
    assert half.dtype == torch.float16


def test_hash_grid_non_power_of_two_table_matches_loop():
    g = torch.Generator().manual_seed(3)
    res = [3, 20, 90]
    table = torch.rand(3, 1000, 2, generator=g)  # T = 1000: modulo path; R=3 dense (64 <= 1000)
    x = torch.rand(200, 3, generator=g)
    err = (hash_grid_encode_torch(x, table, res).double() - hash_grid_encode_loop(x, table, res).double()).abs().max()
    print(f"hash grid T=1000 torch vs loop: max abs err {err.item():.3e}")
    assert err < 1e-4
