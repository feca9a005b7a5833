"""Dense CLIP (MaskCLIP) on open_clip: equality with a step-by-step computation, grid shapes,
checkpoint loading, offline errors, text embeddings. Random weights (no CLIP weights exist here)."""

import copy
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip", reason="open_clip is not installed")
import torchvision.transforms.functional as TF  # noqa: E402

from f3rm_ros.core.features import ClipConfig, WeightsUnavailableError, create_extractor  # noqa: E402
from f3rm_ros.core.features.clip import ClipExtractor  # noqa: E402

CLIP_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
CLIP_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def vitb16_file(tmp_path_factory):
    """A ViT-B-16 with random weights (seed 123), saved as a local checkpoint file. QuickGELU as the
    OpenAI weights (the config's default tag 'openai' makes the extractor build it that way)."""
    torch.manual_seed(123)
    model = open_clip.create_model("ViT-B-16", pretrained=None, force_quick_gelu=True).eval()
    path = tmp_path_factory.mktemp("weights") / "vitb16_random.pt"
    torch.save(model.state_dict(), path)
    yield model, path
    path.unlink(missing_ok=True)  # 600 MB: do not leave it in pytest's kept temp folders


@pytest.fixture(scope="module")
def extractor_b16(vitb16_file):
    _, path = vitb16_file
    # random_seed differs from the file's seed: equal outputs prove the file was loaded
    return ClipExtractor(ClipConfig(model_name="ViT-B-16", checkpoint_path=str(path), random_seed=7,
                                    device="cpu", batch_size=2))


def _step_by_step(model, images: list, short: int = 224) -> torch.Tensor:
    """MaskCLIP by hand with the model's own modules (independent of f3rm_ros' code path):
    torchvision resize, open_clip's forward_intermediates for blocks 0..L-2 on a copy of the tower
    whose positional embedding is interpolated here, then the last block's attention module with an
    identity attention mask (each token attends only to itself = the value path), ln_post, proj.
    ``images``: same-size HxWx3 uint8 arrays."""
    visual = copy.deepcopy(model.visual)
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    x = TF.resize(x, short, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    x = (x - CLIP_MEAN) / CLIP_STD
    p = visual.patch_size[0]
    gh, gw = x.shape[-2] // p, x.shape[-1] // p
    g0 = visual.grid_size
    pos = visual.positional_embedding.data
    if (gh, gw) != tuple(g0):
        grid = pos[1:].reshape(1, g0[0], g0[1], -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(gh * gw, -1)])
        visual.positional_embedding = torch.nn.Parameter(pos)
    x = x[..., :gh * p, :gw * p]
    layers = len(visual.transformer.resblocks)
    out = visual.forward_intermediates(x, indices=[layers - 2], intermediates_only=True, output_fmt="NLC",
                                       output_extra_tokens=True)
    tokens = torch.cat([out["image_intermediates_prefix"][0], out["image_intermediates"][0]], dim=1)
    last = visual.transformer.resblocks[-1]
    n = tokens.shape[1]
    eye_mask = torch.full((n, n), float("-inf"))
    eye_mask.fill_diagonal_(0.0)
    y = last.attention(last.ln_1(tokens), attn_mask=eye_mask)[:, 1:]
    y = visual.ln_post(y) @ visual.proj
    return y.reshape(len(images), gh, gw, -1)


@torch.no_grad()
def test_maskclip_equals_step_by_step_square(vitb16_file, extractor_b16):
    model, _ = vitb16_file
    sd_file, sd_ext = model.state_dict(), extractor_b16.model.state_dict()
    assert all(torch.equal(sd_file[k], sd_ext[k]) for k in sd_file), "checkpoint file was not loaded"
    img = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    got = extractor_b16.extract([img])
    ref = _step_by_step(model, [img])
    err = (got - ref).abs().max().item()
    print(f"ViT-B-16 224x224: grid {tuple(got.shape)}, max |diff| {err:.2e}, |ref| max {ref.abs().max():.3f}")
    assert got.shape == (1, 14, 14, 512)
    assert err < 1e-4


@torch.no_grad()
def test_maskclip_equals_step_by_step_non_square_batch(vitb16_file, extractor_b16):
    model, _ = vitb16_file
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (180, 330, 3), dtype=np.uint8) for _ in range(3)]  # 3 images, batch_size 2
    got = extractor_b16.extract(imgs)
    assert got.shape == (3, 14, 25, 512) and extractor_b16.grid_shape(180, 330) == (14, 25)  # 224x410
    ref = _step_by_step(model, imgs)
    errs = [(got[i] - ref[i]).abs().max().item() for i in range(len(imgs))]
    print(f"ViT-B-16 330x180 -> 410x224: grid {tuple(got.shape)}, max |diff| per image {errs}")
    assert max(errs) < 1e-4
    # not a trivial output: patches differ and images differ
    assert got[0].std(dim=(0, 1)).mean() > 1e-3 and (got[0] - got[1]).abs().max() > 1e-3


def test_vit_l_14_336_grid_for_1280x720_full_depth_on_meta():
    """The real ViT-L-14-336 config, all 24 blocks, run on the meta device (shapes only, no memory or
    compute): 1280x720 -> 597x336 -> 24 x 42 x 768 through the extractor's own preprocessing and
    MaskCLIP code."""
    from open_clip.factory import get_model_config
    from open_clip.model import CLIP

    from f3rm_ros.core.features.clip import maskclip_dense_features

    with torch.device("meta"):
        model = CLIP(**get_model_config("ViT-L-14-336"), quick_gelu=True)
    ext = ClipExtractor(ClipConfig(device="meta", random_weights=True), model=model)
    img = np.zeros((720, 1280, 3), dtype=np.uint8)
    x = ext.preprocess([img])
    feats = maskclip_dense_features(ext.model.visual, x)
    print(f"meta ViT-L-14-336: {len(ext.model.visual.transformer.resblocks)} blocks, input {tuple(x.shape)}, "
          f"output {tuple(feats.shape)}")
    assert len(ext.model.visual.transformer.resblocks) == 24
    assert tuple(x.shape) == (1, 3, 336, 597)
    assert tuple(feats.shape) == (1, 24, 42, 768)
    assert ext.grid_shape(720, 1280) == (24, 42) and ext.feature_dim == 768


def test_vit_l_14_336_short_real_run_1280x720():
    """A real CPU run of ViT-L-14-336 (random weights) cut to 2 vision blocks to fit the CI budget:
    patch size, widths, positional-embedding interpolation and projection are the real ones."""
    from open_clip.factory import get_model_config

    cfg = get_model_config("ViT-L-14-336")
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-L-14-336", pretrained=None, force_quick_gelu=True,
                                   vision_cfg={**cfg["vision_cfg"], "layers": 2})
    ext = ClipExtractor(ClipConfig(random_weights=True, device="cpu"), model=model)
    img = np.random.default_rng(2).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    t1 = time.perf_counter()
    feats = ext.extract([img])
    t2 = time.perf_counter()
    print(f"ViT-L-14-336 (2 blocks): build {t1 - t0:.1f} s, extract {t2 - t1:.1f} s, {tuple(feats.shape)}, "
          f"std {feats.std():.3f}")
    assert feats.shape == (1, 24, 42, 768) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all() and feats.std() > 0


def test_text_embeddings_unit_length_and_cached(extractor_b16):
    texts = ["mug", "red mug", "mug handle", "banana", "mug"]
    emb = extractor_b16.encode_text(texts)
    norms = emb.norm(dim=-1)
    print("norms", [round(v, 6) for v in norms.tolist()], "cache hits/misses",
          extractor_b16._text_cache.hits, extractor_b16._text_cache.misses)
    assert emb.shape == (5, 512)
    assert torch.allclose(norms, torch.ones(5), atol=1e-5)
    assert torch.equal(emb[0], emb[4])
    assert not torch.allclose(emb[0], emb[1])
    hits = extractor_b16._text_cache.hits
    again = extractor_b16.encode_text(["banana"])
    assert extractor_b16._text_cache.hits == hits + 1 and torch.equal(again[0], emb[3])
    # same result as the model's own normalised encode_text
    tok = open_clip.get_tokenizer("ViT-B-16")(["red mug"])
    with torch.no_grad():
        ref = extractor_b16.model.encode_text(tok, normalize=True)[0]
    assert torch.allclose(ref, emb[1], atol=1e-5)


def test_offline_failures_are_clear(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as e:
        ClipExtractor(ClipConfig(allow_download=False))
    msg = str(e.value)
    print(f"({time.perf_counter() - t0:.2f} s) {msg}")
    for must in ("ViT-L-14-336", "'openai'", "checkpoint_path", "random_weights"):
        assert must in msg
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(WeightsUnavailableError) as e:
        ClipExtractor(ClipConfig(model_name="ViT-B-16", checkpoint_path=str(missing)))
    print(e.value)
    assert str(missing) in str(e.value) and "ViT-B-16" in str(e.value)
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError, match="garbage.pt"):
        ClipExtractor(ClipConfig(model_name="ViT-B-16", checkpoint_path=str(bad)))
    with pytest.raises(ValueError, match="unknown open_clip model"):
        ClipExtractor(ClipConfig(model_name="ViT-Q-99", random_weights=True))
    with pytest.raises(ValueError, match="unknown pretrained tag"):
        ClipExtractor(ClipConfig(model_name="ViT-B-16", pretrained="no-such-tag"))


def test_cache_key_settings_and_rebuild(tmp_path):
    """cache_key() holds what changes the values (not device/batch size) and rebuilds the extractor
    (checkpoint file loaded again). ViT-S-32 keeps it cheap."""
    torch.manual_seed(11)
    model = open_clip.create_model("ViT-S-32", pretrained=None).eval()
    path = tmp_path / "vits32_random.pt"
    torch.save(model.state_dict(), path)
    ext = ClipExtractor(ClipConfig(model_name="ViT-S-32", pretrained="", checkpoint_path=str(path), device="cpu"))
    key = ext.cache_key()
    print(key["settings"], key["resolved"]["weights"])
    assert key["type"] == "clip" and key["settings"]["precision"] == "fp32"
    assert key["resolved"]["weights"]["file"]["path"].endswith("vits32_random.pt")
    assert "device" not in key["settings"] and "batch_size" not in key["settings"]
    rebuilt = create_extractor(key, device="cpu")
    img = np.random.default_rng(3).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    assert torch.equal(rebuilt.extract([img]), ext.extract([img]))
    assert torch.equal(rebuilt.encode_text(["mug"]), ext.encode_text(["mug"]))
    path.unlink()


@torch.no_grad()
def test_half_precision_path_matches_fp32(vitb16_file, extractor_b16):
    """The fp16 path (the default on CUDA) run on the CPU: same features up to rounding."""
    model, _ = vitb16_file
    half = ClipExtractor(ClipConfig(model_name="ViT-B-16", random_weights=True, device="cpu", precision="fp16"),
                         model=copy.deepcopy(model))
    img = np.random.default_rng(4).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    f16, f32 = half.extract([img]), extractor_b16.extract([img])
    cos = torch.nn.functional.cosine_similarity(f16, f32, dim=-1)
    print(f"fp16 vs fp32 per-patch cosine: min {cos.min():.6f}; fp16 text norm {half.encode_text(['mug']).norm():.6f}")
    assert f16.dtype == torch.float32 and cos.min() > 0.999
    assert half.cache_key()["settings"]["precision"] == "fp16"
