"""Hash grid: the vectorised torch reference against a per-point Python loop (dense and hashed levels), and the
per-level CPU path against the reference."""

import pytest
import torch

from f3rm_ros.core.hashgrid import grid_resolutions, hash_grid_encode_loop, hash_grid_encode_torch


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
    lvl, t, f = (table.grad != 0).nonzero()[0].tolist()
    eps = 1e-3
    with torch.no_grad():
        tp = table.clone()
        tp[lvl, t, f] += eps
        tm = table.clone()
        tm[lvl, t, f] -= eps
        fd = (hash_grid_encode_torch(x, tp, [4, 9, 30]).square().sum()
              - hash_grid_encode_torch(x, tm, [4, 9, 30]).square().sum()) / (2 * eps)
    print(f"grad {table.grad[lvl, t, f].item():.6e} vs finite difference {fd.item():.6e}")
    assert abs(table.grad[lvl, t, f].item() - fd.item()) < 1e-3 * max(1.0, abs(fd.item()))
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


@pytest.mark.parametrize("L,T,F,dtype,base,mx", [
    (4, 2**10, 2, torch.float32, 4, 40),  # dense and hashed levels, power-of-two table
    (3, 1000, 4, torch.float32, 2, 30),  # table size not a power of two (mod T)
    (5, 2**12, 8, torch.float16, 2, 64),  # fp16 table
    (2, 2**12, 2, torch.bfloat16, 1024, 2048),  # bf16, fine hashed levels
    (1, 2**9, 1, torch.float32, 16, 16),  # one level, one feature
])
def test_levels_path_matches_reference(L, T, F, dtype, base, mx):
    """hash_grid_encode_levels (the CPU path) against hash_grid_encode_torch: outputs, table and point gradients."""
    from f3rm_ros.core.hashgrid import hash_grid_encode_levels

    gen = torch.Generator().manual_seed(L * 1000 + F)
    res = grid_resolutions(L, base, mx)
    x = torch.rand(400, 3, generator=gen) * 1.2 - 0.1  # some coordinates outside [0, 1]
    x[:3] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.5, 1.0, 0.0]])
    table = (torch.rand(L, T, F, generator=gen) * 2 - 1).to(dtype)
    g = torch.randn(400, L * F, generator=gen).to(dtype)
    out = {}
    for name, fn in (("reference", hash_grid_encode_torch), ("levels", hash_grid_encode_levels)):
        xt, tt = x.clone().requires_grad_(True), table.clone().requires_grad_(True)
        y = fn(xt, tt, res)
        y.backward(g)
        out[name] = (y.detach().float(), tt.grad.float(), xt.grad)
    (y0, gt0, gx0), (y1, gt1, gx1) = out["reference"], out["levels"]
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    ey, et = (y1 - y0).abs().max().item(), (gt1 - gt0).abs().max().item()
    ex = ((gx1 - gx0).abs().max() / gx0.abs().max().clamp_min(1e-12)).item()
    print(f"L={L} T={T} F={F} {dtype}: out err {ey:.2e}, table grad err {et:.2e}, points grad rel err {ex:.2e}")
    assert out["levels"][0].shape == (400, L * F) and gx0.abs().max() > 0 and gt0.abs().max() > 0
    assert ey <= tol * max(1.0, y0.abs().max().item())
    assert et <= tol * max(1.0, gt0.abs().max().item())
    assert ex <= max(tol, 1e-5)


def test_points_gradient_is_zero_at_the_cube_bounds_on_every_torch():
    """The reference and the CPU path pass the points gradient strictly inside (0, 1) only: 0 at x == 0 and
    x == 1 as beyond them (the Triton kernel's convention). torch.clamp's own backward is 1 at the bounds up
    to torch 2.13 and 0 from 2.14, so the encoding must not lean on it (the GPU machine runs torch 2.11)."""
    from f3rm_ros.core.hashgrid import hash_grid_encode_levels
    from f3rm_ros.core.hashgrid.reference import clamp_unit

    x = torch.tensor([0.0, 0.5, 1.0, 1.2, -0.1, float("nan")], requires_grad=True)
    y = clamp_unit(x)
    y[:5].sum().backward()
    print(f"torch {torch.__version__}: clamp_unit grad {x.grad.tolist()}")
    assert torch.equal(y[:5].detach(), x[:5].detach().clamp(0.0, 1.0)) and y[5].isnan()
    assert x.grad[:5].tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]

    gen = torch.Generator().manual_seed(3)
    res = grid_resolutions(3, 4, 40)  # dense and hashed levels with T = 2**10
    table = torch.rand(3, 2**10, 2, generator=gen) * 2 - 1
    pts = torch.tensor([[0.0, 0.3, 1.0], [1.0, 0.0, 0.7], [0.25, 0.5, 0.75]])
    g = torch.randn(3, 6, generator=gen)
    for name, fn in (("reference", hash_grid_encode_torch), ("levels", hash_grid_encode_levels)):
        p = pts.clone().requires_grad_(True)
        fn(p, table, res).backward(g)
        print(f"{name} points grad {p.grad.tolist()}")
        on_bound = (pts == 0.0) | (pts == 1.0)
        assert (p.grad[on_bound] == 0).all() and (p.grad[~on_bound] != 0).all()
