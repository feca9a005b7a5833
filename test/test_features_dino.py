"""DINO (timm ViT-S/8) last-layer keys: equality with the keys of timm's own forward, grid for
stride 4, offline errors. Random weights (no DINO weights exist here)."""

import time

import numpy as np
import pytest
import torch

from f3rm_ros.core.features import DinoConfig, TextNotSupportedError, WeightsUnavailableError, create_extractor
from f3rm_ros.core.features.dino import DinoExtractor, has_timm

pytestmark = pytest.mark.skipif(not has_timm(), reason="timm (optional DINO dependency) is not installed")


@pytest.fixture(scope="module")
def dino_model():
    import timm

    torch.manual_seed(5)
    return timm.create_model("vit_small_patch8_224.dino", pretrained=False, num_classes=0).eval()


@torch.no_grad()
def test_keys_equal_timm_forward_at_native_stride(dino_model, tmp_path):
    path = tmp_path / "dino_random.pth"
    torch.save(dino_model.state_dict(), path)
    ext = DinoExtractor(DinoConfig(checkpoint_path=str(path), stride=8, device="cpu", random_seed=99))
    img = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    got = ext.extract([img])
    # reference: timm's own forward with a hook on the last block's qkv projection
    captured = {}
    hook = dino_model.blocks[-1].attn.qkv.register_forward_hook(lambda m, i, o: captured.setdefault("qkv", o))
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    dino_model((x - mean) / std)
    hook.remove()
    c = 384
    ref = captured["qkv"][0, 1:, c:2 * c].reshape(1, 28, 28, c)
    err = (got - ref).abs().max().item()
    print(f"DINO 224x224 stride 8: {tuple(got.shape)}, max |diff| vs timm forward {err:.2e}")
    assert got.shape == (1, 28, 28, 384) and err < 1e-4
    path.unlink()


@torch.no_grad()
def test_stride4_grid_and_no_text(dino_model):
    # short side 64 instead of 224 keeps the CPU test small; the grid rule is the same
    ext = DinoExtractor(DinoConfig(device="cpu", random_weights=True, image_size=64), model=dino_model)
    img = np.random.default_rng(1).integers(0, 256, (120, 160, 3), dtype=np.uint8)  # -> 85x64
    t0 = time.perf_counter()
    got = ext.extract([img])
    print(f"stride 4, 160x120 -> 85x64: {tuple(got.shape)} in {time.perf_counter() - t0:.2f} s")
    assert got.shape == (1, 15, 20, 384) and ext.grid_shape(120, 160) == (15, 20)  # (64-8)/4+1, (85-8)/4+1
    assert DinoExtractor(DinoConfig(device="cpu"), model=dino_model).grid_shape(720, 1280) == (55, 98)
    assert not ext.supports_text
    with pytest.raises(TextNotSupportedError):
        ext.encode_text(["mug"])


def test_offline_errors(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as e:
        create_extractor({"type": "dino", "allow_download": False})
    print(f"({time.perf_counter() - t0:.2f} s) {e.value}")
    for must in ("vit_small_patch8_224.dino", "checkpoint_path", "random_weights"):
        assert must in str(e.value)
    with pytest.raises(WeightsUnavailableError, match="not found"):
        DinoExtractor(DinoConfig(checkpoint_path=str(tmp_path / "missing.pth")))
