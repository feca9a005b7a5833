"""Dense CLIP features ("MaskCLIP") on open_clip's own ViT modules, and CLIP text embeddings.

Pipeline (f3rm-method.md section 1), for a batch of same-size RGB images:

1. short side resized to the model's input size (336 for ViT-L-14-336; bicubic, antialiased, no
   centre crop), CLIP mean/std normalisation (taken from the pretrained tag's table entry);
2. patch embedding (``visual.conv1``; a remainder smaller than a patch is dropped), class token,
   the positional embedding bicubic-interpolated from the square training grid to the image's
   patch grid, ``ln_pre``;
3. every transformer block but the last, unchanged;
4. last block, value path only: ``out_proj(v_proj(ln_1(x)))`` (no attention mixing, no residual,
   no MLP; the block's layer scale ``ls_1`` is applied too, an identity for OpenAI/LAION ViTs);
5. class token dropped, ``ln_post``, ``@ proj`` -> ``[B, H/p, W/p, D]`` (1280x720 -> 24x42x768).

Weights come from an open_clip pretrained tag (downloaded and cached by open_clip when online), a
local checkpoint file, or - only when ``random_weights`` is set - a seeded random init. When
weights cannot be loaded, :class:`WeightsUnavailableError` says which model, which tag or file was
tried and how to provide a checkpoint file.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from f3rm_ros.core.config import to_dict
from f3rm_ros.core.device import resolve_device
from f3rm_ros.core.features.base import FeatureExtractor, WeightsUnavailableError, check_images
from f3rm_ros.core.features.configs import ClipConfig
from f3rm_ros.core.features.preprocess import (CLIP_MEAN, CLIP_STD, images_to_tensor, normalize,
                                               resize_short_side, resized_size)
from f3rm_ros.core.features.text import TextEmbeddingCache

__all__ = [
    "ClipExtractor",
    "load_open_clip_model",
    "maskclip_dense_features",
    "interpolate_positional_embedding",
    "resolve_precision",
    "file_identity",
]

log = logging.getLogger(__name__)

_CACHE_VERSION = 1


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """``auto`` -> fp16 on CUDA, fp32 elsewhere; else the named dtype."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in table:
        raise ValueError(f"precision must be one of {['auto', *table]}, got {precision!r}")
    return table[precision]


def file_identity(path: str | Path) -> dict[str, Any]:
    """``{"path", "size", "mtime_ns"}`` of a file (what cache keys record about input files)."""
    st = os.stat(path)
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _how_to_provide(model_name: str, tag: str, tag_cfg: dict) -> str:
    sources = []
    if tag_cfg.get("hf_hub"):
        sources.append(f"huggingface.co/{tag_cfg['hf_hub'].rstrip('/')}")
    if tag_cfg.get("url"):
        sources.append(tag_cfg["url"])
    src = f" (open_clip gets them from {' or '.join(sources)})" if sources else ""
    return (f"To provide the weights offline, download the open_clip checkpoint of {model_name!r} tag "
            f"{tag!r}{src} on a machine with internet, copy the file here and set "
            f"clip.checkpoint_path to it (a .bin/.pt/.safetensors open_clip state dict); or run once "
            f"online with clip.allow_download=true so open_clip caches them. For tests and timing only, "
            f"clip.random_weights=true uses random weights.")


def _tag_weights_file(model_name: str, tag: str, tag_cfg: dict, cache_dir: str | None,
                      allow_download: bool) -> str:
    """Path of the tag's weights file: downloaded (if allowed) or from the local cache."""
    import open_clip

    if allow_download:
        try:
            path = open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir)
        except Exception as e:  # network errors, missing hub package, ...
            raise WeightsUnavailableError(
                f"CLIP weights for model {model_name!r}, pretrained tag {tag!r} could not be downloaded "
                f"({type(e).__name__}: {str(e)[:300]}). " + _how_to_provide(model_name, tag, tag_cfg)) from e
        if path:
            return path
    else:  # look in the local caches only (fast offline failure)
        hub = tag_cfg.get("hf_hub", "")
        if hub:
            repo, filename = os.path.split(hub)  # "org/repo/" -> ("org/repo", "")
            names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
            try:
                from huggingface_hub import hf_hub_download
            except ImportError:
                names = []
            for fname in names:
                try:
                    return hf_hub_download(repo, fname, cache_dir=cache_dir, local_files_only=True)
                except Exception:
                    continue
        url = tag_cfg.get("url", "")
        if url:
            cached = Path(cache_dir or os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
            if cached.is_file():
                return str(cached)
    raise WeightsUnavailableError(
        f"CLIP weights for model {model_name!r}, pretrained tag {tag!r} are not in the local cache"
        + ("" if allow_download else " and clip.allow_download is false") + ". "
        + _how_to_provide(model_name, tag, tag_cfg))


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init_warning(active: bool):
    """Hide open_clip's "Model initialized randomly" warning when weights are loaded right after."""
    flt = _DropRandomInitWarning()
    root = logging.getLogger()
    if active:
        root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def load_open_clip_model(cfg: ClipConfig) -> tuple[nn.Module, dict[str, Any]]:
    """Build the open_clip model of ``cfg`` with its weights (CPU, fp32, eval mode).

    Returns:
        (model, info) where info has ``weights`` (how they were obtained: tag file, checkpoint file
        identity or random seed), ``mean``/``std`` and the resolved ``quick_gelu``.

    Raises:
        ValueError: unknown model name or pretrained tag (the message lists the valid ones).
        WeightsUnavailableError: the weights could not be loaded (names model, tag/file, the fix).
    """
    import open_clip

    name = cfg.model_name
    if name not in open_clip.list_models():
        vits = [m for m in open_clip.list_models() if m.startswith("ViT")]
        raise ValueError(f"unknown open_clip model {name!r}; ViT models are: {vits}")
    tag_cfg = open_clip.get_pretrained_cfg(name, cfg.pretrained) if cfg.pretrained else {}
    if cfg.pretrained and not tag_cfg and not cfg.random_weights and not cfg.checkpoint_path:
        raise ValueError(f"unknown pretrained tag {cfg.pretrained!r} for {name!r}; known tags: "
                         f"{open_clip.list_pretrained_tags_by_model(name)}")
    quick_gelu = {"true": True, "false": False}.get(cfg.quick_gelu, bool(tag_cfg.get("quick_gelu", False)))
    info: dict[str, Any] = {"mean": list(tag_cfg.get("mean", CLIP_MEAN)),
                            "std": list(tag_cfg.get("std", CLIP_STD)), "quick_gelu": quick_gelu}

    weights_file = None
    if cfg.random_weights:
        info["weights"] = {"random_seed": cfg.random_seed}
    elif cfg.checkpoint_path:
        p = Path(cfg.checkpoint_path).expanduser()
        if not p.is_file():
            raise WeightsUnavailableError(
                f"CLIP checkpoint file for model {name!r} not found: {str(p)!r} (clip.checkpoint_path). "
                + _how_to_provide(name, cfg.pretrained, tag_cfg))
        weights_file = str(p)
        info["weights"] = {"file": file_identity(p)}
    else:
        if not cfg.pretrained:
            raise WeightsUnavailableError(
                f"no weights configured for CLIP model {name!r}: set clip.pretrained (a tag, e.g. 'openai'), "
                f"clip.checkpoint_path (a local file) or, for tests only, clip.random_weights=true")
        weights_file = _tag_weights_file(name, cfg.pretrained, tag_cfg, cfg.weights_cache_dir or None,
                                         cfg.allow_download)
        info["weights"] = {"tag": cfg.pretrained}

    with torch.random.fork_rng(devices=[]), _quiet_random_init_warning(weights_file is not None):
        torch.manual_seed(cfg.random_seed)
        model = open_clip.create_model(name, pretrained=None, force_quick_gelu=quick_gelu, device="cpu")
    if weights_file is None:
        log.info("CLIP %s uses RANDOM weights (clip.random_weights=true, seed %d)", name, cfg.random_seed)
    if weights_file is not None:
        try:
            open_clip.load_checkpoint(model, weights_file, strict=True)
        except Exception as e:
            raise WeightsUnavailableError(
                f"could not load CLIP weights for model {name!r} from {weights_file!r} "
                f"({type(e).__name__}: {str(e)[:400]}). Is it an open_clip checkpoint of this architecture? "
                + _how_to_provide(name, cfg.pretrained, tag_cfg)) from e
    return model.eval(), info


def interpolate_positional_embedding(pos: Tensor,  # [1 + G0h*G0w, C] (class token first)
                                     grid0: tuple[int, int], grid: tuple[int, int]) -> Tensor:
    """Bicubic interpolation of a ViT positional embedding to another patch grid: [1 + gh*gw, C]."""
    if tuple(grid0) == tuple(grid):
        return pos
    cls, patches = pos[:1], pos[1:]
    c = patches.shape[-1]
    p = patches.float().reshape(1, grid0[0], grid0[1], c).permute(0, 3, 1, 2)
    p = F.interpolate(p, size=tuple(grid), mode="bicubic", align_corners=False)
    p = p.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], c).to(pos.dtype)
    return torch.cat([cls, p], dim=0)


def _check_maskclip_model(visual: nn.Module, model_name: str = "") -> None:
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    if not isinstance(visual, VisionTransformer):
        raise ValueError(f"MaskCLIP needs an open_clip VisionTransformer; {model_name or 'the model'} has "
                         f"{type(visual).__name__} as its image tower")
    last = visual.transformer.resblocks[-1]
    if not isinstance(last, ResidualAttentionBlock) or getattr(last.attn, "in_proj_weight", None) is None:
        raise ValueError(f"MaskCLIP needs standard attention blocks (nn.MultiheadAttention with a packed "
                         f"in_proj); {model_name or 'the model'} uses {type(last).__name__}")
    if visual.attn_pool is not None:
        raise ValueError(f"MaskCLIP does not support attentional pooling ({model_name})")


def maskclip_dense_features(visual: nn.Module,  # open_clip VisionTransformer
                            x: Tensor,  # [B, 3, H, W] normalised, in the model's dtype
                            pos_cache: dict | None = None) -> Tensor:  # [B, H//p, W//p, D]
    """MaskCLIP dense features (steps 2-5 of the module docstring) with ``visual``'s modules."""
    b = x.shape[0]
    tokens = visual.conv1(x)  # [B, C, gh, gw]
    gh, gw = tokens.shape[-2:]
    tokens = tokens.flatten(2).transpose(1, 2)  # [B, gh*gw, C]
    cls = visual.class_embedding.to(tokens.dtype).view(1, 1, -1).expand(b, 1, -1)
    tokens = torch.cat([cls, tokens], dim=1)
    key = (gh, gw, tokens.dtype, tokens.device)
    pos = pos_cache.get(key) if pos_cache is not None else None
    if pos is None:
        pos = interpolate_positional_embedding(visual.positional_embedding, visual.grid_size, (gh, gw))
        pos = pos.to(tokens.dtype)
        if pos_cache is not None:
            pos_cache[key] = pos
    tokens = visual.patch_dropout(tokens + pos)
    tokens = visual.ln_pre(tokens)
    tr = visual.transformer
    if not tr.batch_first:
        tokens = tokens.transpose(0, 1)
    for blk in tr.resblocks[:-1]:
        tokens = blk(tokens)
    if not tr.batch_first:
        tokens = tokens.transpose(0, 1)
    last = tr.resblocks[-1]
    width = tokens.shape[-1]
    attn = last.attn
    w_v = attn.in_proj_weight[2 * width:]
    b_v = attn.in_proj_bias[2 * width:] if attn.in_proj_bias is not None else None
    v = F.linear(last.ln_1(tokens[:, 1:]), w_v, b_v)  # value path; the class token is dropped
    out = last.ls_1(attn.out_proj(v))
    out = visual.ln_post(out) @ visual.proj  # [B, gh*gw, D]
    return out.reshape(b, gh, gw, -1)


class ClipExtractor(FeatureExtractor):
    """Dense CLIP (MaskCLIP) image features and CLIP text embeddings; see the module docstring.

    Args:
        config: :class:`ClipConfig`.
        model: an already built open_clip model to use instead of loading one (its weights are
            taken as they are; ``config.random_weights``/tag/file then only describe them).
    """

    name = "clip"

    def __init__(self, config: ClipConfig | None = None, model: nn.Module | None = None):
        import open_clip

        self.config = cfg = config or ClipConfig()
        if model is None:
            model, info = load_open_clip_model(cfg)
        else:
            tag_cfg = open_clip.get_pretrained_cfg(cfg.model_name, cfg.pretrained) if cfg.pretrained else {}
            info = {"mean": list(tag_cfg.get("mean", CLIP_MEAN)), "std": list(tag_cfg.get("std", CLIP_STD)),
                    "quick_gelu": None, "weights": {"provided_model": True}}
        _check_maskclip_model(model.visual, cfg.model_name)
        self.info = info
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_precision(cfg.precision, self.device)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        visual = self.model.visual
        self.patch_size = tuple(visual.patch_size)
        self.input_size = min(visual.image_size) if isinstance(visual.image_size, tuple) else visual.image_size
        self.short_side = cfg.image_size or self.input_size
        self.feature_dim = int(visual.proj.shape[1])
        self._pos_cache: dict = {}
        self._tokenizer = None
        self._text_cache = TextEmbeddingCache(self._encode_text_uncached, cfg.text_cache_size)

    # -- images ---------------------------------------------------------------------------------
    def grid_shape(self, height: int, width: int) -> tuple[int, int]:
        h, w = resized_size(height, width, self.short_side)
        return h // self.patch_size[0], w // self.patch_size[1]

    def preprocess(self, images: Sequence[np.ndarray]) -> Tensor:  # [B, 3, H', W'] model dtype
        x = images_to_tensor(images, self.device)
        x = resize_short_side(x, self.short_side)
        return normalize(x, self.info["mean"], self.info["std"]).to(self.dtype)

    @torch.inference_mode()
    def extract(self, images: Sequence[np.ndarray],
                label_maps: Sequence[np.ndarray] | None = None) -> Tensor:  # [B, h, w, D] float32 CPU
        """MaskCLIP features of ``images`` (``label_maps`` is ignored), ``batch_size`` at a time."""
        check_images(images)
        outs = []
        bs = self.config.batch_size
        for i in range(0, len(images), bs):
            x = self.preprocess(images[i:i + bs])
            outs.append(maskclip_dense_features(self.model.visual, x, self._pos_cache).float().cpu())
        return torch.cat(outs, dim=0)

    # -- text -----------------------------------------------------------------------------------
    def _encode_text_uncached(self, texts: list[str]) -> Tensor:
        import open_clip

        if self._tokenizer is None:
            self._tokenizer = open_clip.get_tokenizer(self.config.model_name)
        with torch.inference_mode():
            tokens = self._tokenizer(texts).to(self.device)
            emb = self.model.encode_text(tokens).float()
        return F.normalize(emb, dim=-1).cpu()

    def encode_text(self, texts: Sequence[str]) -> Tensor:  # [N, D] unit length
        return self._text_cache(texts).clone()

    # -- identity -------------------------------------------------------------------------------
    def cache_key(self) -> dict[str, Any]:
        settings = to_dict(self.config)
        for k in ("device", "batch_size", "text_cache_size", "allow_download", "weights_cache_dir"):
            settings.pop(k)  # these do not change the values
        settings["precision"] = {torch.float16: "fp16", torch.float32: "fp32",
                                 torch.bfloat16: "bf16"}[self.dtype]
        return {"type": self.name, "version": _CACHE_VERSION, "settings": settings,
                "resolved": {"weights": self.info["weights"], "short_side": self.short_side,
                             "mean": self.info["mean"], "std": self.info["std"],
                             "feature_dim": self.feature_dim}}
