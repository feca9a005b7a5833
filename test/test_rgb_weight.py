"""Pixels whose colour is not trusted (``get_rgb_mask``, e.g. an old frame's shadows around a changed place in a
refresh): they stay in the ray batches for depth and features, their colour weighs nothing in the loss and in the
error map."""

import torch

from f3rm_ros.core.fields.losses import feature_mse, rgb_mse
from f3rm_ros.core.trainer import Trainer
from test_trainer import small_config, sphere_dataset


def test_weighted_rgb_and_feature_mse_are_the_means_over_the_trusted_rays_and_give_the_others_no_gradient():
    g = torch.Generator().manual_seed(0)
    pred = torch.rand(64, 3, generator=g, requires_grad=True)
    target = torch.rand(64, 3, generator=g)
    w = (torch.rand(64, generator=g) > 0.5).float()
    assert torch.allclose(rgb_mse(pred, target, torch.ones(64)), rgb_mse(pred, target))
    got = rgb_mse(pred, target, w)
    keep = w > 0
    assert torch.allclose(got, torch.mean((pred[keep] - target[keep]) ** 2))
    got.backward()
    assert torch.all(pred.grad[~keep] == 0) and torch.all(pred.grad[keep].abs().sum(-1) > 0)
    assert float(rgb_mse(pred.detach(), target, torch.zeros(64))) == 0.0
    # the feature loss weights its rays the same way
    fp = torch.rand(64, 8, generator=g, requires_grad=True)
    ft = torch.rand(64, 8, generator=g)
    assert torch.allclose(feature_mse(fp, ft, torch.ones(64)), feature_mse(fp, ft))
    got = feature_mse(fp, ft, w)
    assert torch.allclose(got, torch.mean((fp[keep] - ft[keep]) ** 2))
    got.backward()
    assert torch.all(fp.grad[~keep] == 0) and torch.all(fp.grad[keep].abs().sum(-1) > 0)


def test_untrusted_colour_stays_sampleable_and_weighs_nothing():
    torch.set_num_threads(2)
    ds, fm = sphere_dataset()
    plain = Trainer(small_config(rays_per_batch=2048), ds, fm, "cpu")
    k = 2  # the third training image: its left half's colour is not trusted
    frame = int(plain.batcher.train_indices[k])
    m = torch.ones(32, 32, dtype=torch.bool)
    m[:, :16] = False

    class Masked:  # a dataset whose one frame's left half has an untrusted colour
        def __len__(self):
            return len(ds)

        def __getattr__(self, name):
            return getattr(ds, name)

        def get_rgb_mask(self, i):
            return m.numpy() if int(i) == frame else None

    tr = Trainer(small_config(rays_per_batch=2048, error_sampling=0.5), Masked(), fm, "cpu")
    b = tr.batcher
    # the same trust set on the plain trainer's batcher afterwards (what a refresh does on its device)
    plain.batcher.distrust_colour(torch.nonzero(~m.reshape(-1)).squeeze(1) + int(plain.batcher.starts[k]))
    assert torch.equal(plain.batcher.rgb_trust, b.rgb_trust)
    plain.batcher.rgb_trust = None
    assert b.num_pixels == plain.batcher.num_pixels and b.valid is None  # every pixel is still drawn
    assert plain.batcher.rgb_trust is None and "rgb_weight" not in plain.sample_batch()
    batch = tr.sample_batch()
    flat = batch["sample"]
    cam = batch["camera_idx"]
    local = flat - b.starts[cam]
    untrusted = (cam == k) & (local % 32 < 16)
    assert untrusted.any() and torch.equal(batch["rgb_weight"], (~untrusted).float())
    assert "depth" in batch or "features" in batch
    tr.train_step()
    start = int(b.starts[k])
    left = torch.zeros(32 * 32, dtype=torch.bool)
    left.view(32, 32)[:, :16] = True
    assert torch.all(b.pixel_error[start:start + 1024][left] == 0)  # never drawn for its colour
    assert (b.pixel_error[start:start + 1024][~left] > 0).any()
