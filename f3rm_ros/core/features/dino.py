"""DINO ViT-S/8 dense features: the keys of the last attention layer (optional extractor, no text).

F3RM's DINO option (f3rm-method.md section 1): ViT-S/8, short side 224, patch-embedding stride 4
(overlapping 8x8 patches), last-layer keys, 384-dim. Built on a timm ``VisionTransformer``:
patch embedding with the configured stride, class token, positional embedding bicubic-interpolated
to the patch grid, every block but the last, then ``norm1`` and the key third of ``attn.qkv`` of
the last block (all heads concatenated). Grid: ``(H' - 8) // stride + 1`` per axis after resizing.

Weights: timm's pretrained weights for ``model_name`` (downloaded and cached by timm when online),
a local checkpoint file, or - only with ``random_weights`` - a seeded random init.
"""

from __future__ import annotations

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
from f3rm_ros.core.features.clip import file_identity, interpolate_positional_embedding, resolve_precision
from f3rm_ros.core.features.configs import DinoConfig
from f3rm_ros.core.features.preprocess import (IMAGENET_MEAN, IMAGENET_STD, images_to_tensor, normalize,
                                               resize_short_side, resized_size)

__all__ = ["DinoExtractor", "load_timm_vit", "dino_last_layer_keys", "has_timm"]

_CACHE_VERSION = 1


def has_timm() -> bool:
    """True when the optional ``timm`` package can be imported."""
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


def _how_to_provide(cfg: DinoConfig, hub_id: str) -> str:
    src = f" (timm gets them from huggingface.co/{hub_id})" if hub_id else ""
    return (f"To provide the weights offline, download the timm weights of {cfg.model_name!r}{src} on a machine "
            f"with internet, copy the file (model.safetensors or a .pth state dict) here and set "
            f"dino.checkpoint_path to it; or run once online with dino.allow_download=true. For tests and "
            f"timing only, dino.random_weights=true uses random weights.")


def load_timm_vit(cfg: DinoConfig) -> tuple[nn.Module, dict[str, Any]]:
    """Build the timm ViT of ``cfg`` with its weights (CPU, fp32, eval).

    Raises:
        ImportError: timm is not installed (pip install timm).
        ValueError: unknown timm model name.
        WeightsUnavailableError: the weights could not be loaded (names model, source and the fix).
    """
    if not has_timm():
        raise ImportError("the DINO extractor needs the optional package timm (pip install timm)")
    import timm

    if not timm.is_model(cfg.model_name):
        raise ValueError(f"unknown timm model {cfg.model_name!r}; DINO ViTs: {timm.list_models('*dino*')}")
    from timm.models import get_pretrained_cfg

    pcfg = get_pretrained_cfg(cfg.model_name)
    hub_id = (getattr(pcfg, "hf_hub_id", None) or "") if pcfg is not None else ""
    path = None  # weights are located before the model is built, so a failure is fast
    if cfg.random_weights:
        info = {"weights": {"random_seed": cfg.random_seed}}
    elif cfg.checkpoint_path:
        path = Path(cfg.checkpoint_path).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(f"DINO checkpoint file for model {cfg.model_name!r} not found: "
                                          f"{str(path)!r} (dino.checkpoint_path). " + _how_to_provide(cfg, hub_id))
        info = {"weights": {"file": file_identity(path)}}
    else:
        if not hub_id:
            raise WeightsUnavailableError(f"timm has no pretrained weights for {cfg.model_name!r}; set "
                                          f"dino.checkpoint_path. " + _how_to_provide(cfg, hub_id))
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(hub_id, "model.safetensors", local_files_only=not cfg.allow_download))
        except Exception as e:
            raise WeightsUnavailableError(
                f"DINO weights for model {cfg.model_name!r} (timm pretrained, hub {hub_id!r}) could not be "
                + ("downloaded" if cfg.allow_download else "found in the local cache (dino.allow_download "
                   "is false)") + f" ({type(e).__name__}: {str(e)[:200]}). " + _how_to_provide(cfg, hub_id)
            ) from e
        info = {"weights": {"timm_pretrained": cfg.model_name}}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.random_seed)
        model = timm.create_model(cfg.model_name, pretrained=False, num_classes=0)
    if path is not None:
        try:
            from timm.models import load_state_dict

            result = model.load_state_dict(load_state_dict(str(path)), strict=False)
            if result.missing_keys:
                raise ValueError(f"missing keys {result.missing_keys[:5]} (a checkpoint of another model?)")
        except Exception as e:
            raise WeightsUnavailableError(f"could not load DINO weights for {cfg.model_name!r} from {str(path)!r} "
                                          f"({type(e).__name__}: {str(e)[:300]}). "
                                          + _how_to_provide(cfg, hub_id)) from e
    return model.eval(), info


def dino_last_layer_keys(vit: nn.Module,  # timm VisionTransformer
                         x: Tensor,  # [B, 3, H, W] normalised, model dtype
                         stride: int) -> Tensor:  # [B, gh, gw, C]
    """Last-layer attention keys of a timm ViT with patch-embedding ``stride`` (module docstring)."""
    pe = vit.patch_embed
    proj = pe.proj
    tokens = F.conv2d(x, proj.weight, proj.bias, stride=stride)  # [B, C, gh, gw]
    b, c, gh, gw = tokens.shape
    tokens = tokens.flatten(2).transpose(1, 2)
    tokens = pe.norm(tokens)
    grid0 = tuple(pe.grid_size)
    pos = vit.pos_embed[0]  # [1 + G0h*G0w, C] (class token first)
    if getattr(vit, "no_embed_class", False) or getattr(vit, "num_prefix_tokens", 1) != 1:
        raise ValueError("dino_last_layer_keys supports ViTs with one class token and a class positional embedding")
    pos = interpolate_positional_embedding(pos, grid0, (gh, gw)).to(tokens.dtype)
    cls = vit.cls_token.to(tokens.dtype).expand(b, -1, -1)
    tokens = torch.cat([cls, tokens], dim=1) + pos[None]
    tokens = vit.norm_pre(vit.patch_drop(vit.pos_drop(tokens)))
    for blk in vit.blocks[:-1]:
        tokens = blk(tokens)
    last = vit.blocks[-1]
    qkv = last.attn.qkv(last.norm1(tokens[:, 1:]))  # [B, N, 3C]
    return qkv[..., c:2 * c].reshape(b, gh, gw, c)


class DinoExtractor(FeatureExtractor):
    """DINO dense features (image side only); see the module docstring."""

    name = "dino"

    def __init__(self, config: DinoConfig | None = None, model: nn.Module | None = None):
        self.config = cfg = config or DinoConfig()
        if model is None:
            model, info = load_timm_vit(cfg)
        else:
            info = {"weights": {"provided_model": True}}
        self.info = info
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_precision(cfg.precision, self.device)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.patch = int(self.model.patch_embed.proj.kernel_size[0])
        self.feature_dim = int(self.model.embed_dim)
        mean = (getattr(self.model, "pretrained_cfg", None) or {}).get("mean", IMAGENET_MEAN)
        std = (getattr(self.model, "pretrained_cfg", None) or {}).get("std", IMAGENET_STD)
        self.mean, self.std = list(mean), list(std)

    def grid_shape(self, height: int, width: int) -> tuple[int, int]:
        h, w = resized_size(height, width, self.config.image_size)
        s = self.config.stride
        return (h - self.patch) // s + 1, (w - self.patch) // s + 1

    @torch.inference_mode()
    def extract(self, images: Sequence[np.ndarray],
                label_maps: Sequence[np.ndarray] | None = None) -> Tensor:  # [B, h, w, C] float32 CPU
        check_images(images)
        outs = []
        bs = self.config.batch_size
        for i in range(0, len(images), bs):
            x = images_to_tensor(images[i:i + bs], self.device)
            x = normalize(resize_short_side(x, self.config.image_size), self.mean, self.std).to(self.dtype)
            outs.append(dino_last_layer_keys(self.model, x, self.config.stride).float().cpu())
        return torch.cat(outs, dim=0)

    def cache_key(self) -> dict[str, Any]:
        settings = to_dict(self.config)
        for k in ("device", "batch_size", "allow_download"):
            settings.pop(k)
        settings["precision"] = {torch.float16: "fp16", torch.float32: "fp32", torch.bfloat16: "bf16"}[self.dtype]
        return {"type": self.name, "version": _CACHE_VERSION, "settings": settings,
                "resolved": {"weights": self.info["weights"], "mean": self.mean, "std": self.std,
                             "feature_dim": self.feature_dim}}
