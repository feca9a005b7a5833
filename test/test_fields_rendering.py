"""Volume rendering, sampling and losses against brute-force references."""

import torch

from f3rm_ros.core.config import from_dict
from f3rm_ros.core.fields.losses import (distortion_loss, distortion_loss_reference, interlevel_loss,
                                         outer_weights)
from f3rm_ros.core.fields.rendering import (render_accumulation, render_depth, render_rgb, render_weights,
                                            render_weights_reference)
from f3rm_ros.core.fields.sampler import (ProposalSampler, ProposalSamplerConfig, pdf_s_edges, s_to_t, spacing_fn,
                                          spacing_inv)


def _edges(R, S, g):
    return torch.sort(torch.rand(R, S + 1, generator=g) * 5, dim=-1).values


def test_weights_nonnegative_sum_le_one_and_match_loop():
    g = torch.Generator().manual_seed(0)
    t = _edges(64, 32, g)
    sigma = torch.rand(64, 32, generator=g) ** 4 * 50  # spiky densities, some ~0
    sigma[0] = 0
    sigma[1] = 0
    sigma[1, 5] = 1e6  # empty space, then an opaque wall
    w = render_weights(sigma, t)
    ref = render_weights_reference(sigma, t)
    acc = render_accumulation(w)
    err = (w.double() - ref).abs().max().item()
    print(f"weights: min {w.min().item():.3e}, max accumulation {acc.max().item():.6f}, "
          f"vs loop max err {err:.2e}, ray0 acc {acc[0].item()}, ray1 acc {acc[1].item():.6f}")
    assert (w >= 0).all() and (acc <= 1 + 1e-6).all() and err < 1e-5
    assert acc[0] == 0 and abs(acc[1].item() - 1) < 1e-5 and w[1, 6:].abs().max() < 1e-6
    rgb = torch.rand(64, 32, 3, generator=g)
    out = render_rgb(w, rgb, "last_sample")
    exp = (w[..., None] * rgb).sum(1) + rgb[:, -1] * (1 - acc)[:, None]
    assert torch.allclose(out, exp, atol=1e-6)
    assert torch.allclose(render_rgb(w, rgb, "black"), (w[..., None] * rgb).sum(1), atol=1e-6)
    d = render_depth(w, t)
    assert torch.allclose(d[1], 0.5 * (t[1, 5] + t[1, 6]), atol=1e-4)


def test_distortion_loss_matches_quadratic_reference():
    g = torch.Generator().manual_seed(1)
    s = torch.sort(torch.rand(16, 25, generator=g), dim=-1).values
    w = torch.rand(16, 24, generator=g)
    w = w / w.sum(-1, keepdim=True) * 0.9
    a, b = distortion_loss(s, w).item(), distortion_loss_reference(s, w).item()
    print(f"distortion O(N) {a:.8f} vs O(N^2) {b:.8f}")
    assert abs(a - b) < 1e-6 * max(1, abs(b))


def test_outer_weights_and_interlevel_brute_force():
    g = torch.Generator().manual_seed(2)
    R = 8
    s = torch.sort(torch.rand(R, 11, generator=g), -1).values
    s_env = torch.sort(torch.cat([torch.zeros(R, 1), torch.rand(R, 19, generator=g), torch.ones(R, 1)], -1), -1).values
    w_env = torch.rand(R, 20, generator=g)
    out = outer_weights(s, s_env, w_env)
    ref = torch.zeros_like(out)
    for r in range(R):
        for i in range(10):
            for j in range(20):  # envelope intervals overlapping [s_i, s_i+1]
                if s_env[r, j] <= s[r, i + 1] and s_env[r, j + 1] > s[r, i]:
                    ref[r, i] += w_env[r, j]
    err = (out - ref).abs().max().item()
    print(f"outer weights vs brute force max err {err:.2e}")
    assert err < 1e-5
    # a proposal that bounds the weights gives zero loss; one that does not gives a positive loss
    w = torch.rand(R, 10, generator=g) * 0.1
    zero = interlevel_loss(s, w, [(s, w + 0.01)]).item()
    pos = interlevel_loss(s, w, [(s, w * 0.1)]).item()
    print(f"interlevel loss bounded {zero:.3e}, not bounded {pos:.3e}")
    assert zero == 0.0 and pos > 0


def test_spacing_and_pdf_sampling():
    t = torch.tensor([0.05, 0.5, 1.0, 3.0, 100.0, 1000.0])
    assert torch.allclose(spacing_inv(spacing_fn(t)), t, rtol=1e-4)
    s = torch.tensor([0.0, 1.0])
    assert torch.allclose(s_to_t(s, 0.05, 1000.0), torch.tensor([0.05, 1000.0]), rtol=1e-4)
    # all weight in one interval -> almost all new samples land in it
    edges = torch.linspace(0, 1, 11).expand(4, -1).contiguous()
    w = torch.zeros(4, 10)
    w[:, 3] = 1.0
    new = pdf_s_edges(edges, w, 32, jitter=False, padding=0.01)
    inside = ((new >= 0.3) & (new <= 0.4)).float().mean().item()
    print(f"pdf sampling: fraction of edges in the weighted interval {inside:.3f}")
    assert inside > 0.85 and (new[:, 1:] >= new[:, :-1]).all()


def test_proposal_sampler_shapes_and_monotone_edges():
    cfg = from_dict(ProposalSamplerConfig, {"num_proposal_samples": [32, 16], "num_samples": 8})
    sampler = ProposalSampler(cfg)
    o = torch.zeros(5, 3)
    d = torch.nn.functional.normalize(torch.randn(5, 3), dim=-1)

    def blob(p):  # a solid sphere of radius 0.5 around (0,0,0)+d*2
        return 100.0 * (torch.linalg.norm(p - 2 * d[:, None, :], dim=-1) < 0.5).float()

    g = torch.Generator().manual_seed(0)
    s, t, props = sampler(o, d, [blob, blob], training=True, step=2000, generator=g)
    print("final t edges ray 0:", [round(v, 3) for v in t[0].tolist()])
    assert s.shape == (5, 9) and t.shape == (5, 9) and len(props) == 2
    assert (t[:, 1:] >= t[:, :-1]).all()
    mid = 0.5 * (t[:, 1:] + t[:, :-1])
    near_blob = ((mid > 1.3) & (mid < 2.7)).float().mean().item()
    print(f"fraction of final samples near the surface {near_blob:.2f}")
    assert near_blob > 0.5
