"""The feature-extractor interface shared by every 2D extractor (CLIP, DINO, labels).

A :class:`FeatureExtractor` turns a batch of RGB images into dense per-patch feature maps and,
when it has a text side, text into unit-length embeddings in the same space. Feature maps are
returned raw (not normalised): the feature field is trained to reproduce them as they are, and
they are normalised only when compared with text (:mod:`.similarity`).

Image arrays are ``HxWx3 uint8`` in RGB order; all images of one call must have the same size.
"""

from __future__ import annotations

import abc
from typing import Any
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["FeatureExtractor", "WeightsUnavailableError", "TextNotSupportedError", "check_images"]


class WeightsUnavailableError(RuntimeError):
    """Model weights could not be loaded; the message names the model, what was tried and the fix."""


class TextNotSupportedError(NotImplementedError):
    """The extractor has no text encoder (e.g. DINO)."""


class FeatureExtractor(abc.ABC):
    """Dense 2D features for images, plus (optionally) text embeddings in the same space.

    Attributes:
        name: short extractor kind, e.g. ``"clip"``, ``"dino"``, ``"labels"``.
        feature_dim: D, the length of every feature vector.
    """

    name: str = ""
    feature_dim: int = 0

    @abc.abstractmethod
    def cache_key(self) -> dict[str, Any]:
        """Everything that changes the output values, as a JSON-serialisable dict.

        It holds ``"type"`` and ``"settings"`` (and for label features the label table), so
        ``create_extractor(extractor.cache_key())`` rebuilds an equivalent extractor (the query side
        uses this to encode text for a field trained earlier).
        """

    @abc.abstractmethod
    def extract(self, images: Sequence[np.ndarray],  # B x [H, W, 3] uint8
                label_maps: Sequence[np.ndarray] | None = None,  # B x [H, W] uint16
                ) -> Tensor:  # [B, h, w, D] float32 on the CPU
        """Dense feature maps of a batch of images (same size), raw (not normalised)."""

    def encode_text(self, texts: Sequence[str]) -> Tensor:  # [N, D] unit length, float32, CPU
        """Unit-length text embeddings comparable with :meth:`extract`'s features."""
        raise TextNotSupportedError(f"the {self.name!r} extractor has no text encoder")

    @property
    def supports_text(self) -> bool:
        return type(self).encode_text is not FeatureExtractor.encode_text

    def grid_shape(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the feature grid for an image of ``height x width`` pixels."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, feature_dim={self.feature_dim})"


def check_images(images: Sequence[np.ndarray]) -> tuple[int, int]:
    """Validate a batch of ``HxWx3 uint8`` images of one size; return (H, W).

    Raises:
        ValueError: empty batch, wrong shape/dtype, or mixed sizes.
    """
    if len(images) == 0:
        raise ValueError("extract() needs at least one image")
    shape = None
    for i, im in enumerate(images):
        if isinstance(im, torch.Tensor):
            raise ValueError(f"image {i}: expected a numpy HxWx3 uint8 array, got a torch tensor")
        im = np.asarray(im)
        if im.ndim != 3 or im.shape[2] != 3:
            raise ValueError(f"image {i}: expected shape HxWx3 (RGB), got {im.shape}")
        if im.dtype != np.uint8:
            raise ValueError(f"image {i}: expected dtype uint8, got {im.dtype}")
        if shape is None:
            shape = im.shape[:2]
        elif im.shape[:2] != shape:
            raise ValueError(f"image {i}: size {im.shape[:2]} differs from image 0 {shape}; "
                             "extract() takes images of one size per call")
    return int(shape[0]), int(shape[1])
