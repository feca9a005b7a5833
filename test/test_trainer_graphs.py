"""The CUDA-graph training step (trainer ``cuda_graphs``) against the plain eager step.

On the CPU: the pieces the graph path changes are compared with the plain path on random inputs
(annealing exponent from a device tensor in the proposal sampler; the graph body run eagerly through
``CudaGraphStep.run`` vs the plain step), and the config switch. On CUDA: capture + replay of both
graphs against the eager step from the same seed (skipped, with the reason printed, on the CPU).
"""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from f3rm_ros.core.config import from_dict
from f3rm_ros.core.dataset import PosedImageDataset
from f3rm_ros.core.cameras import CameraIntrinsics
from f3rm_ros.core.fields.sampler import ProposalSampler, ProposalSamplerConfig
from f3rm_ros.core.geometry import look_at_opencv
from f3rm_ros.core.trainer import Trainer, TrainerConfig

TINY_MODEL = {
    "rgb": {"grid": {"num_levels": 4, "log2_hashmap_size": 12, "max_res": 64}, "appearance_embedding_dim": 4,
            "geo_hidden_dim": 16, "color_hidden_dim": 16},
    "proposal_1": {"grid": {"num_levels": 2, "log2_hashmap_size": 10, "max_res": 32}},
    "proposal_2": {"grid": {"num_levels": 2, "log2_hashmap_size": 10, "max_res": 64}},
    "feature": {"grid": {"num_levels": 2, "log2_hashmap_size": 10, "max_res": 32, "features_per_level": 4},
                "hidden_dim": 16},
    "sampler": {"num_proposal_samples": [16, 8], "num_samples": 8},
}


def tiny_config(**kw) -> TrainerConfig:
    base = {"rays_per_batch": 64, "eval_every": 0, "checkpoint_every": 0, "model": TINY_MODEL}
    base.update(kw)
    return from_dict(TrainerConfig, base)


def tiny_dataset(n=6, w=16, h=12, dim=6, seed=0):
    """Cameras on a ring looking at the origin, smooth random images and feature maps."""
    rng = np.random.default_rng(seed)
    K = CameraIntrinsics(fx=14.0, fy=14.0, cx=w / 2, cy=h / 2, width=w, height=h)
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    imgs, c2ws = [], []
    for i in range(n):
        a = 2 * math.pi * i / n
        c2ws.append(look_at_opencv(np.array([2.0 * math.cos(a), 2.0 * math.sin(a), 0.6]), [0, 0, 0]))
        ph = rng.uniform(0, 6, 3)
        img = 0.5 + 0.4 * np.sin(5 * xx[..., None] + 3 * yy[..., None] + ph)
        imgs.append((img * 255).round().astype(np.uint8))
    ds = PosedImageDataset(root=Path("/nonexistent-tiny"), image_paths=[Path(f"v{i}.png") for i in range(n)],
                           intrinsics=[K] * n, c2w=np.stack(c2ws), train_indices=np.arange(1, n),
                           eval_indices=np.array([0]), _cache={i: im for i, im in enumerate(imgs)})
    feats = torch.tensor(rng.normal(size=(n, 3, 4, dim)), dtype=torch.float32)
    return ds, feats


def test_sampler_anneal_tensor_equals_float():
    """The annealing exponent from a 0-dim tensor gives the plain sampler's edges and weights."""
    torch.manual_seed(0)
    R = 257
    o = torch.randn(R, 3) * 0.3
    d = torch.nn.functional.normalize(torch.randn(R, 3), dim=-1)
    c = torch.randn(4, 3)

    def density(p):  # smooth positive density with a few bumps
        return 3.0 * torch.exp(-((p[..., None, :] - c) ** 2).sum(-1) * 4).sum(-1) + 0.01

    worst = 0.0
    for step in (0, 7, 150, 999, 5000):
        res = []
        for use_tensor in (False, True):
            s = ProposalSampler(ProposalSamplerConfig(num_proposal_samples=(64, 32), num_samples=24))
            if use_tensor:
                s.anneal_tensor = torch.tensor(s.anneal(step), dtype=torch.float32)
            g = torch.Generator().manual_seed(step)
            res.append(s(o, d, [density, density], training=True, step=step, generator=g))
        (s0, t0, p0), (s1, t1, p1) = res
        err = max((s0 - s1).abs().max().item(),
                  *((a[1] - b[1]).abs().max().item() for a, b in zip(p0, p1, strict=True)))
        worst = max(worst, err)
        assert torch.allclose(t0, t1, rtol=1e-4, atol=1e-5)
    print(f"sampler, anneal as tensor vs float: max |diff| of s edges / proposal weights {worst:.2e}")
    assert worst < 1e-4
    s = ProposalSampler(ProposalSamplerConfig())
    s.anneal_tensor = torch.tensor(0.0)  # eval ignores the override (exponent 1)
    g = torch.Generator().manual_seed(1)
    se, te, _ = s(o, d, [density, density], training=False, generator=g)
    s.anneal_tensor = None
    se2, te2, _ = s(o, d, [density, density], training=False, generator=torch.Generator().manual_seed(1))
    assert torch.equal(se, se2)


def test_appearance_check_still_raises_eagerly():
    from f3rm_ros.core.hashgrid import HashGridConfig
    from f3rm_ros.core.fields.rgb_field import RGBField, RGBFieldConfig

    f = RGBField(RGBFieldConfig(grid=HashGridConfig(num_levels=2, log2_hashmap_size=8, backend="torch"),
                                appearance_embedding_dim=4), num_images=3)
    with pytest.raises(ValueError, match="out of range"):
        f.appearance_for(torch.tensor([0, 3]), 2)
    print("appearance_for still rejects index 3 of 3 images outside a capture")


def test_cuda_graphs_switch_on_cpu():
    ds, feats = tiny_dataset()
    tr = Trainer(tiny_config(), ds, feats)
    print("auto on the CPU:", tr.cuda_graphs_reason)
    assert not tr.cuda_graphs_active and "not CUDA" in tr.cuda_graphs_reason
    with pytest.raises(ValueError, match="cuda_graphs: on"):
        Trainer(tiny_config(cuda_graphs="on"), ds, feats)
    with pytest.raises(ValueError):
        tiny_config(cuda_graphs="sometimes")


@pytest.mark.parametrize("error_sampling", [0.0, 0.5])
def test_graph_body_equals_plain_step_cpu(error_sampling):
    """The graph step run eagerly (no capture off CUDA: anneal + lr from device tensors, packed losses)
    follows the plain step from the same seed: same losses and parameters up to rounding (also with the
    error map, whose draw and update are part of the graph body)."""
    torch.set_num_threads(1)
    ds, feats = tiny_dataset()
    plain = Trainer(tiny_config(error_sampling=error_sampling), ds, feats)
    graph = Trainer(tiny_config(error_sampling=error_sampling), ds, feats)
    graph.graphs.activate()  # what auto would do on CUDA; off CUDA the graph step runs the body eagerly
    worst = 0.0
    updates = []
    for _ in range(14):  # covers proposal-update steps and non-update steps (from step 10 on)
        lp = plain.train_step()
        lg = graph.train_step()
        updates.append(plain.model.sampler.steps_since_update == 0)
        assert list(lg) == list(lp)
        for k in lp:
            worst = max(worst, abs(lg[k] - lp[k]) / max(abs(lp[k]), 1e-12))
    pp = torch.cat([p.detach().flatten() for p in plain.model.parameters()])
    pg = torch.cat([p.detach().flatten() for p in graph.model.parameters()])
    perr = ((pp - pg).norm() / pp.norm()).item()
    print(f"graph body (eager, CPU) vs plain step over 14 steps (update steps {updates}): "
          f"max rel. loss diff {worst:.2e}, rel. param diff {perr:.2e}; lr tensor {graph.graphs.lr_t.item():.6g}")
    assert True in updates and False in updates
    assert worst < 1e-4 and perr < 1e-5
    assert graph.step == plain.step == 14
    cfg = graph.config  # the lr tensor held the lr of the last step (13)
    lr13 = cfg.lr * (cfg.lr_final / cfg.lr) ** (13 / cfg.lr_decay_steps)
    assert math.isclose(graph.graphs.lr_t.item(), lr13, rel_tol=1e-6)


@pytest.mark.parametrize("error_sampling", [0.0, 0.5])
def test_cuda_graphs_match_eager_step(error_sampling):
    """Captured + replayed steps follow the eager step from the same seed (same random rays: the
    trainer's generator is registered with the graphs), both graphs get captured, resume works; also with
    the error map (its draw and update are captured too)."""
    if not torch.cuda.is_available():
        why = "no CUDA device here: CUDA graph capture needs one (runs on the GPU machine)"
        print(why)
        pytest.skip(why)
    ds, feats = tiny_dataset()
    eager = Trainer(tiny_config(cuda_graphs="off", error_sampling=error_sampling), ds, feats, device="cuda")
    graph = Trainer(tiny_config(cuda_graphs="on", error_sampling=error_sampling), ds, feats, device="cuda")
    assert graph.cuda_graphs_active, graph.cuda_graphs_reason
    n = 40
    le = [eager.train_step() for _ in range(n)]
    lg = [graph.train_step() for _ in range(n)]
    rel = [abs(a["total"] - b["total"]) / abs(a["total"]) for a, b in zip(le, lg, strict=True)]
    print(f"graphs captured: {sorted(graph.graphs.captured)}, replays {graph.graphs.replays}/{n}; "
          f"rel. diff of the total loss, steps 0-9: {max(rel[:10]):.2e}, steps 10-39: {max(rel[10:]):.2e}; "
          f"last totals eager {le[-1]['total']:.5f} graphs {lg[-1]['total']:.5f}")
    assert sorted(graph.graphs.captured) == [False, True]
    assert graph.graphs.replays == n - 4  # 2 eager warm-up steps per graph
    assert all(math.isfinite(v) for d in lg for v in d.values())
    assert max(rel[:10]) < 1e-2  # same rays and maths (only fp16/atomic-order rounding differs)
    assert max(rel[10:]) < 0.1
    ck = graph.state_dict()
    assert ck["optimizer"]["param_groups"][0]["capturable"] is False
    assert isinstance(ck["optimizer"]["param_groups"][0]["lr"], float)
    graph.load_state(ck)  # drops the graphs; the next steps warm up and capture again
    more = [graph.train_step() for _ in range(6)]
    print(f"after load_state: graphs {sorted(graph.graphs.captured)}, total loss {more[-1]['total']:.5f}")
    assert graph.graphs.captured and all(math.isfinite(d["total"]) for d in more)


def test_failed_capture_falls_back_to_the_eager_step():
    """``cuda_graphs: auto``: a step body that cannot be captured (here: a host sync inside it) ends in the eager
    step from then on, with the AMP scaler and the optimiser reset (``reset_amp_step_state``) so training goes on;
    ``on`` raises instead."""
    if not torch.cuda.is_available():
        why = "no CUDA device here: CUDA graph capture needs one (runs on the GPU machine)"
        print(why)
        pytest.skip(why)
    ds, feats = tiny_dataset()
    results = {}
    for mode in ("auto", "on"):
        tr = Trainer(tiny_config(cuda_graphs=mode), ds, feats, device="cuda")
        assert tr.cuda_graphs_active, tr.cuda_graphs_reason
        body = tr._forward_backward

        def syncing_body(update, graph_safe=False, body=body):
            out = body(update, graph_safe)
            if torch.cuda.is_current_stream_capturing():
                out["total"].item()  # a host sync: not allowed while capturing
            return out

        tr._forward_backward = syncing_body
        if mode == "on":
            with pytest.raises(RuntimeError):
                for _ in range(4):
                    tr.train_step()
            continue
        scale0 = None
        for i in range(12):
            if i == 2:
                scale0 = tr.scaler.get_scale()  # before the capture (steps 0-1 warm up)
            results[i] = tr.train_step()
        print(f"auto: {tr.cuda_graphs_reason}; scale {scale0} -> {tr.scaler.get_scale()}; "
              f"totals {[round(r['total'], 5) for r in results.values()]}")
        assert not tr.cuda_graphs_active and "capture failed" in tr.cuda_graphs_reason
        assert not tr.graphs.captured and tr.model.sampler.anneal_tensor is None
        assert all(math.isfinite(v) for r in results.values() for v in r.values())
        assert tr.scaler.get_scale() >= scale0 / 2  # not reset to the initial scale, at most one backoff
