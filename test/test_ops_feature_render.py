"""Fused feature rendering through the linear head vs the per-sample reference (values + grads)."""

from __future__ import annotations

import pytest
import torch

from f3rm_ros.core.ops.feature_render import render_linear_head_fused, render_linear_head_reference


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5), (torch.bfloat16, 1.5e-2)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_render_matches_reference(dtype, tol, with_bias):
    g = torch.Generator().manual_seed(7)
    R, S, H, D = 37, 48, 64, 96
    hidden = torch.relu(torch.randn(R, S, H, generator=g, dtype=dtype)).requires_grad_(True)
    w = torch.rand(R, S, generator=g, dtype=dtype)
    w = (w / w.sum(-1, keepdim=True) * 0.9).requires_grad_(True)  # weights of a ray sum to <= 1
    lin = torch.nn.Linear(H, D, bias=with_bias).to(dtype)
    target = torch.randn(R, D, generator=g, dtype=dtype)
    results = []
    for fn in (render_linear_head_reference, render_linear_head_fused):
        for t in (hidden, w, *lin.parameters()):
            t.grad = None
        out = fn(hidden, w, lin.weight, lin.bias)
        loss = ((out.double() - target.double()) ** 2).mean()
        loss.backward()
        results.append((out.detach().to(dtype), [t.grad.clone() for t in (hidden, w, *lin.parameters())]))
    (o_ref, g_ref), (o_fus, g_fus) = results
    err = ((o_fus.double() - o_ref.double()).norm() / o_ref.double().norm()).item()
    gerrs = [((a.double() - b.double()).norm() / b.double().norm()).item() for a, b in zip(g_fus, g_ref, strict=True)]
    print(f"{dtype} bias={with_bias}: out rel err {err:.2e}; grad rel errs (hidden, weights, W[, b]) "
          + ", ".join(f"{e:.2e}" for e in gerrs))
    assert o_fus.shape == (R, D)
    assert err < tol
    assert all(e < tol * 10 for e in gerrs)


def test_fused_render_leading_dims_and_errors():
    hidden = torch.randn(2, 3, 5, 4)
    w = torch.rand(2, 3, 5)
    W, b = torch.randn(6, 4), torch.randn(6)
    a = render_linear_head_reference(hidden, w, W, b)
    f = render_linear_head_fused(hidden, w, W, b)
    print("leading dims:", tuple(f.shape), "max abs diff", (a - f).abs().max().item())
    assert f.shape == (2, 3, 6) and torch.allclose(a, f, atol=1e-5)
    with pytest.raises(ValueError, match="weights"):
        render_linear_head_fused(hidden, w[..., :4], W, b)
    with pytest.raises(ValueError, match="weight must be"):
        render_linear_head_fused(hidden, w, torch.randn(6, 5), b)
