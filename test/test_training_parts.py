"""The parts the trainer is made of, alone: ``render_camera`` with the field as a function, and resetting the
AMP state an interrupted step leaves behind (``training.graphs.reset_amp_step_state``, used when a CUDA graph
capture fails)."""

import math

import numpy as np
import pytest
import torch

from f3rm_ros.core.cameras import CameraIntrinsics, image_rays
from f3rm_ros.core.fields.camera_render import render_camera
from f3rm_ros.core.geometry import look_at_opencv
from f3rm_ros.core.training.graphs import CudaGraphStep, cuda_graphs_decision, reset_amp_step_state


def test_render_camera_takes_the_field_as_a_function():
    """An analytic field (the plane z = 0, coloured by position) rendered through ``render_camera``: depth is the
    ray distance to the plane, colours and features what the function returns, chunks joined in pixel order."""
    K = CameraIntrinsics(fx=20.0, fy=22.0, cx=9.5, cy=7.0, width=19, height=13, k1=0.05)
    c2w = torch.tensor(look_at_opencv(np.array([0.3, -0.8, 1.2]), [0.0, 0.0, 0.0]), dtype=torch.float32)
    calls = []

    def plane(o, d):  # rays -> what a field renders
        calls.append(o.shape[0])
        t = -o[:, 2] / d[:, 2]
        p = o + t[:, None] * d
        return {"rgb": torch.sigmoid(p), "depth": t, "accumulation": torch.ones_like(t), "features": p[:, :2] * 2}

    out = render_camera(plane, K, c2w, chunk=50)
    o, d = image_rays(K, c2w)
    t = -o[..., 2] / d[..., 2]
    print(f"{len(calls)} chunks {calls[:3]}..., depth {out['depth'].min():.3f}-{out['depth'].max():.3f}")
    assert calls == [50] * (247 // 50) + [247 % 50]
    assert out["rgb"].shape == (13, 19, 3) and out["depth"].shape == out["accumulation"].shape == (13, 19)
    assert torch.allclose(out["depth"], t, atol=1e-5) and torch.allclose(out["directions"], d, atol=1e-6)
    assert torch.allclose(out["features"], (o + t[..., None] * d)[..., :2] * 2, atol=1e-5)
    seen = {}
    kept = render_camera(plane, K, c2w, chunk=64, feature_sink=lambda f, first: seen.setdefault(first, f.shape))
    assert "features" not in kept and sorted(seen) == [0, 64, 128, 192] and seen[192] == (55, 2)


def test_reset_amp_step_state_forgets_the_interrupted_step_and_keeps_the_scale():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([p], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1)
    for _ in range(2):  # two full steps: the scale grows and the growth tracker counts
        scaler.scale((p * 2).sum()).backward()
        scaler.step(opt)
        scaler.update()
    scale, tracker = scaler.get_scale(), scaler.state_dict()["_growth_tracker"]
    scaler.scale((p * 2).sum()).backward()
    scaler.unscale_(opt)  # ... and a step interrupted after the unscale (as a failed capture leaves it)
    opt.grad_scale, opt.found_inf = torch.ones(()), torch.zeros(())  # what GradScaler.step sets on fused optimisers
    with pytest.raises(RuntimeError, match="unscale_"):
        scaler.unscale_(opt)  # not reset: the scaler refuses the next step's unscale
    reset_amp_step_state(scaler, opt)
    assert not hasattr(opt, "grad_scale") and not hasattr(opt, "found_inf")
    assert scaler.get_scale() == scale and scaler.state_dict()["_growth_tracker"] == tracker
    opt.zero_grad()
    scaler.scale((p * 2).sum()).backward()
    scaler.step(opt)  # a whole step runs again
    scaler.update()
    print(f"scale {scale} kept; after the next step {scaler.get_scale()}")
    assert math.isfinite(p.sum().item())
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    reset_amp_step_state(disabled, opt)  # nothing to reset


def test_graph_step_off_cuda_runs_the_body_with_the_device_scalars():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(2))], lr=0.25)
    active, reason = cuda_graphs_decision("auto", torch.device("cpu"), {"rgb": "triton"})
    assert not active and "not CUDA" in reason
    with pytest.raises(ValueError, match="cuda_graphs: on"):
        cuda_graphs_decision("on", torch.device("cpu"), {})
    g = CudaGraphStep(torch.device("cpu"), torch.Generator(), "auto", active, reason, lr=0.25)
    assert not g.active and g.lr_t is None
    g.activate()
    out = g.run(True, lambda: g.anneal_t * 10 + g.lr_t, opt, torch.amp.GradScaler("cpu", enabled=False), 0.5)
    assert out.item() == 5.25 and not g.captured and g.replays == 0
