"""Settings of every feature extractor (one dataclass each) and the top-level choice between them.

Defaults are the F3RM reference (f3rm-method.md section 1) unless a comment says why not.
"""

from __future__ import annotations

from dataclasses import dataclass

from f3rm_ros.core.config import param

__all__ = ["ClipConfig", "DinoConfig", "LabelFeatureConfig", "FeaturesConfig", "EXTRACTOR_TYPES"]

EXTRACTOR_TYPES = ("clip", "dino", "labels")
_PRECISIONS = ("auto", "fp32", "fp16", "bf16")


@dataclass
class ClipConfig:
    """Dense CLIP ("MaskCLIP") features from an open_clip ViT."""

    model_name: str = param("ViT-L-14-336", "open_clip model name (any ViT; see open_clip.list_models())")
    pretrained: str = param("openai", "open_clip pretrained tag; also gives the preprocessing mean/std "
                                      "and QuickGELU setting of those weights")
    checkpoint_path: str = param("", "local weights file (open_clip state dict, .bin/.pt/.safetensors) "
                                     "used instead of downloading the tag; '' = use the tag")
    allow_download: bool = param(True, "let open_clip download the tag's weights if they are not cached "
                                       "(false: only the local cache is looked at, failing fast offline)")
    weights_cache_dir: str = param("", "download cache for weights ('' = open_clip/huggingface default)")
    random_weights: bool = param(False, "random weights instead of pretrained ones (tests, benchmarks)")
    random_seed: int = param(0, "seed of the random weights", range=(0, 2**31 - 1))
    image_size: int = param(0, "short side images are resized to; 0 = the model's input size (336)",
                            range=(0, 8192))
    quick_gelu: str = param("auto", "QuickGELU activation: auto = as the pretrained tag says (OpenAI: yes)",
                            choices=("auto", "true", "false"))
    device: str = param("auto", "torch device: auto, cpu, cuda, cuda:1, ...")
    precision: str = param("auto", "weights/compute precision; auto = fp16 on CUDA, fp32 on the CPU",
                           choices=_PRECISIONS)
    batch_size: int = param(8, "images per forward pass (bounds GPU memory)", range=(1, 4096))
    text_cache_size: int = param(256, "text embeddings kept in the LRU cache", range=(0, 1_000_000))


@dataclass
class DinoConfig:
    """DINO ViT-S/8 last-layer keys from a timm model (optional extractor, no text side)."""

    model_name: str = param("vit_small_patch8_224.dino", "timm model name (a ViT with .patch_embed/.blocks)")
    checkpoint_path: str = param("", "local weights file (timm state dict, .pth/.bin/.safetensors); "
                                     "'' = timm's pretrained weights for model_name")
    allow_download: bool = param(True, "let timm download the weights if they are not cached")
    random_weights: bool = param(False, "random weights instead of pretrained ones (tests, benchmarks)")
    random_seed: int = param(0, "seed of the random weights", range=(0, 2**31 - 1))
    image_size: int = param(224, "short side images are resized to", range=(8, 8192))
    stride: int = param(4, "patch-embedding stride in pixels (patch size 8; 4 = overlapping patches)",
                        range=(1, 64))
    device: str = param("auto", "torch device: auto, cpu, cuda, ...")
    precision: str = param("auto", "auto = fp16 on CUDA, fp32 on the CPU", choices=_PRECISIONS)
    batch_size: int = param(8, "images per forward pass", range=(1, 4096))


@dataclass
class LabelFeatureConfig:
    """Features made from per-pixel labels of the synthetic world (no foundation model needed).

    Every label concept (category, object instance, category part, background) gets a fixed unit
    vector; a pixel's feature is the weighted sum of its concepts' vectors, a patch's feature the
    mean over its pixels. See :mod:`f3rm_ros.core.features.labels`.
    """

    dim: int = param(64, "feature dimension D (CLIP's is 768; 64 keeps CPU training cheap)",
                     range=(8, 4096))
    patch_size: int = param(14, "patch size in pixels (14 as CLIP ViT-L/14): grid = floor(H/p) x floor(W/p)",
                            range=(1, 512))
    image_size: int = param(0, "short side label maps are resized to (nearest) before patching, "
                               "as CLIP resizes images; 0 = native resolution", range=(0, 8192))
    seed: int = param(0, "seed mixed into every concept vector", range=(0, 2**31 - 1))
    category_weight: float = param(1.0, "weight of the category vector in an object pixel", range=(0.0, 100.0))
    object_weight: float = param(1.0, "weight of the instance vector in an object pixel", range=(0.0, 100.0))
    part_weight: float = param(1.0, "weight of the part vector in a part pixel", range=(0.0, 100.0))
    background_weight: float = param(1.0, "length of the background feature (label 0)", range=(0.0, 100.0))
    dataset: str = param("", "dataset folder or transforms.json whose f3rm_labels table defines the labels "
                             "('' = the table is passed in code)")


@dataclass
class FeaturesConfig:
    """Which 2D feature extractor to use, and the settings of each."""

    extractor: str = param("clip", "feature extractor: clip (reference), dino, labels (synthetic world)",
                           choices=EXTRACTOR_TYPES)
    clip: ClipConfig = param(ClipConfig(), "dense CLIP settings")
    dino: DinoConfig = param(DinoConfig(), "DINO settings")
    labels: LabelFeatureConfig = param(LabelFeatureConfig(), "label-feature settings")
