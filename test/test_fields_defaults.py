"""The default configs are the reference settings (nerfacto + F3RM), and the default model builds."""

import torch

from f3rm_ros.core.hashgrid import grid_resolutions
from f3rm_ros.core.fields.model import FieldModel
from f3rm_ros.core.trainer import TrainerConfig


def test_reference_defaults():
    c = TrainerConfig()
    m = c.model
    assert (m.rgb.grid.num_levels, m.rgb.grid.features_per_level, m.rgb.grid.log2_hashmap_size,
            m.rgb.grid.base_res, m.rgb.grid.max_res) == (16, 2, 19, 16, 2048)
    assert (m.rgb.geo_hidden_dim, m.rgb.geo_feat_dim, m.rgb.color_hidden_dim, m.rgb.sh_degree,
            m.rgb.appearance_embedding_dim) == (64, 15, 64, 4, 32)
    for p, max_res in ((m.proposal_1, 128), (m.proposal_2, 256)):
        assert (p.grid.num_levels, p.grid.log2_hashmap_size, p.grid.max_res, p.hidden_dim) == (5, 17, max_res, 16)
    f = m.feature
    assert (f.grid.num_levels, f.grid.features_per_level, f.grid.log2_hashmap_size, f.grid.base_res,
            f.grid.max_res, f.use_pe, f.pe_num_frequencies, f.hidden_dim, f.num_hidden_layers) == \
        (12, 8, 19, 16, 128, True, 6, 64, 2)
    s = m.sampler
    assert (tuple(s.num_proposal_samples), s.num_samples, s.near, s.far) == ((256, 96), 48, 0.05, 1000.0)
    assert (c.rays_per_batch, c.lr, c.adam_eps, c.lr_final, c.lr_decay_steps) == (4096, 1e-2, 1e-15, 1e-4, 200000)
    assert (c.losses.interlevel_mult, c.losses.distortion_mult, c.losses.feature_mult) == (1.0, 0.002, 1e-3)
    print("feature grid per-level scale", grid_resolutions(12, 16, 128))


def test_default_model_builds_with_reference_sizes():
    torch.manual_seed(0)
    model = FieldModel(TrainerConfig().model, num_images=50, feature_dim=768, device="cpu")
    ff = model.feature_field
    mlp_in = ff.trunk[0].in_features
    n_rgb = sum(p.numel() for p in model.rgb_field.parameters())
    n_feat = sum(p.numel() for p in ff.parameters())
    n_prop = sum(p.numel() for p in model.proposal_nets.parameters())
    print(f"params: rgb field {n_rgb / 1e6:.2f}M, feature field {n_feat / 1e6:.2f}M, proposals {n_prop / 1e6:.2f}M; "
          f"feature MLP {mlp_in} -> 64 -> 64 -> {ff.head.out_features}; colour MLP in "
          f"{model.rgb_field.color_mlp[0].in_features}")
    assert mlp_in == 96 + 36 and ff.head.out_features == 768
    assert model.rgb_field.color_mlp[0].in_features == 15 + 25 + 32
    assert model.rgb_field.grid.table.shape == (16, 2**19, 2) and ff.grid.table.shape == (12, 2**19, 8)
    o = torch.zeros(4, 3)
    d = torch.nn.functional.normalize(torch.randn(4, 3), dim=-1)
    with torch.no_grad():
        out = model.render_rays(o, d, None)
    assert out["weights"].shape == (4, 48) and out["features"].shape == (4, 768)
