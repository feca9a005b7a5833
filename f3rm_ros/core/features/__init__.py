"""2D feature extractors: dense CLIP (MaskCLIP), DINO, and label features for the synthetic world.

Public API (the interface is :class:`~f3rm_ros.core.features.base.FeatureExtractor`)::

    extractor = create_extractor(FeaturesConfig(extractor="clip"))   # or a dict / cache key
    feats = extractor.extract(images)                  # [B, h, w, D] raw features
    text = extractor.encode_text(["mug"])              # [1, D] unit length
    rel = pairwise_softmax_similarity(feats, text[0], extractor.encode_text(list(DEFAULT_NEGATIVES)))
    maps = extract_dataset_features(extractor, dataset, cache_dir)   # cached on disk

Modules: ``base`` (interface, errors), ``configs`` (settings), ``factory``, ``clip``, ``dino``,
``labels``, ``text``, ``similarity``, ``preprocess``, ``cache``, ``extraction``. Model code
(open_clip, timm) is imported only when such an extractor is built.
"""

from f3rm_ros.core.features.base import FeatureExtractor, TextNotSupportedError, WeightsUnavailableError
from f3rm_ros.core.features.configs import ClipConfig, DinoConfig, FeaturesConfig, LabelFeatureConfig
from f3rm_ros.core.features.extraction import extract_dataset_features
from f3rm_ros.core.features.factory import (create_extractor, create_extractor_for_dataset, list_extractors,
                                           register_extractor)
from f3rm_ros.core.features.similarity import (DEFAULT_NEGATIVES, cosine_similarity, normalize_features,
                                               pairwise_softmax_similarity,
                                               pairwise_softmax_similarity_reference)

__all__ = [
    "FeatureExtractor",
    "WeightsUnavailableError",
    "TextNotSupportedError",
    "ClipConfig",
    "DinoConfig",
    "LabelFeatureConfig",
    "FeaturesConfig",
    "create_extractor",
    "create_extractor_for_dataset",
    "list_extractors",
    "register_extractor",
    "extract_dataset_features",
    "DEFAULT_NEGATIVES",
    "cosine_similarity",
    "normalize_features",
    "pairwise_softmax_similarity",
    "pairwise_softmax_similarity_reference",
]
