"""The folded task loss (the field's linear feature head folded into the loss, no [poses x points x D]
tensors) against the reference ``pose_losses`` on a real (randomly initialised) field model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from f3rm_ros.core.config import replace
from f3rm_ros.core.field_api import TrainedField
from f3rm_ros.core.fields.model import FieldModel
from f3rm_ros.core.grasp.optimize import (FoldedTaskLoss, LanguageGuidance, OptimizeSettings, StaticPoseOptimizer,
                                          optimize_poses, pose_losses)
from f3rm_ros.core.grasp.proposals import random_quaternions
from f3rm_ros.core.trainer import TrainerConfig

D = 192  # wider than the hidden layer (64), as CLIP features (768) are


def _field(seed: int = 0, bias: bool = True) -> TrainedField:
    torch.manual_seed(seed)
    cfg = replace(TrainerConfig().model, **{"rgb.grid.num_levels": 4, "rgb.grid.log2_hashmap_size": 12,
                                            "feature.grid.num_levels": 3, "feature.grid.log2_hashmap_size": 12,
                                            "rgb.grid.backend": "torch", "feature.grid.backend": "torch"})
    model = FieldModel(cfg, num_images=2, feature_dim=D, device="cpu")
    with torch.no_grad():  # a dense, varied field: density well above 0 around the origin, large tables
        for grid in (model.rgb_field.grid, model.feature_field.grid):
            grid.table.uniform_(-1.0, 1.0)
        if not bias:
            model.feature_field.head.bias = None
    # nerf_to_world: scale 0.5 m per unit, a rotation and an offset (the field frame differs from the world)
    c, s = np.cos(0.3), np.sin(0.3)
    T = np.eye(4)
    T[:3, :3] = 0.5 * np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    T[:3, 3] = [0.1, -0.05, 0.02]
    return TrainedField(model, T)


def _inputs(n: int = 64, q: int = 30, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, 3, generator=g) * 0.1
    t[:4] += 50.0  # far outside the scene box: contracted to the edge, alpha may be ~0
    p = random_quaternions(n, g, "cpu") * 0.1
    qp = torch.randn(q, 3, generator=g) * 0.02
    emb = torch.randn(q, D, generator=g)
    text = torch.nn.functional.normalize(torch.randn(D, generator=g), dim=0)
    return t, p, qp, emb, text


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_guidance", [True, False])
def test_folded_loss_and_gradients_match_reference(bias, with_guidance):
    field = _field(bias=bias)
    t, p, qp, emb, text = _inputs()
    guid = LanguageGuidance(text, -0.2, 0.4) if with_guidance else None
    folded = FoldedTaskLoss.build(field, emb, guid)
    assert folded is not None
    out = {}
    for name, fl in (("reference", None), ("folded", folded)):
        tt, pp = t.clone().requires_grad_(True), p.clone().requires_grad_(True)
        loss = pose_losses(field, tt, pp, qp, emb, guid, 0.01, fl)
        gt, gp = torch.autograd.grad(loss.sum(), [tt, pp])
        out[name] = (loss.detach(), gt, gp)
    (lr, gtr, gpr), (lf, gtf, gpf) = out["reference"], out["folded"]
    el = (lf - lr).abs().max().item()
    et = ((gtf - gtr).norm() / gtr.norm()).item()
    ep = ((gpf - gpr).norm() / gpr.norm()).item()
    print(f"bias={bias} guidance={with_guidance}: losses {lr.min():.3f}..{lr.max():.3f}, max |diff| {el:.2e}; "
          f"gradient rel err t {et:.2e}, p {ep:.2e}")
    assert lr.std() > 1e-3 and gtr.norm() > 0  # a loss that varies over the poses, real gradients
    assert el < 1e-5 and et < 1e-4 and ep < 1e-4


def test_optimisers_with_folded_head_match_reference():
    field = _field()
    t, p, qp, emb, text = _inputs(n=40)
    q0 = p / p.norm(dim=-1, keepdim=True)
    guid = LanguageGuidance(text, -0.2, 0.4)
    base = OptimizeSettings(num_steps=6, prune_after_step=2, min_poses=30, chunk_points=30 * 16)
    ref = optimize_poses(field, t, q0, qp, emb, guid, replace(base, fold_head=False))
    fol = optimize_poses(field, t, q0, qp, emb, guid, base)
    sta = StaticPoseOptimizer(field, qp, emb, guid, base).run(t, q0)
    assert not ref[3]["folded"] and fol[3]["folded"] and sta[3]["folded"]
    for name, r in (("plain folded", fol), ("static folded", sta)):
        dl = (torch.sort(r[2]).values - torch.sort(ref[2]).values).abs().max().item()
        dt = (torch.sort(r[0].sum(1)).values - torch.sort(ref[0].sum(1)).values).abs().max().item()
        print(f"{name} vs reference: {len(r[2])} survivors, max |sorted loss diff| {dl:.2e}, translation sums {dt:.2e}")
        # per evaluation the two agree to ~1e-8 (test above); Adam's first steps are ~lr * sign(gradient), so
        # components whose gradient is ~0 may step either way: poses differ by up to a few lr (2e-3)
        assert len(r[2]) == len(ref[2]) and dl < 1e-3 and dt < 1e-2
    dl = (torch.sort(sta[2]).values - torch.sort(fol[2]).values).abs().max().item()
    print(f"static folded vs plain folded: max |sorted loss diff| {dl:.2e}")
    assert dl < 1e-3


def test_fields_without_a_head_use_the_reference():
    class Plain:
        feature_dim = D
        device = torch.device("cpu")

        def query_density(self, p):
            return torch.ones(p.shape[0])

        def query_features(self, p):
            return torch.ones(p.shape[0], D)

    assert FoldedTaskLoss.build(Plain(), torch.ones(3, D), None) is None
    narrow = _field()  # features no wider than the hidden layer: folding saves nothing, the reference runs
    narrow.model.feature_field.head = torch.nn.Linear(64, 64)
    assert FoldedTaskLoss.build(narrow, torch.ones(3, 64), None) is None
    with pytest.raises(ValueError, match="dimension"):
        FoldedTaskLoss.build(_field(), torch.ones(3, D + 1), None)
