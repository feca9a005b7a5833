"""One factory for every extractor: configs are data, the registry maps a type name to (config, builder).

``create_extractor`` accepts
  * a :class:`FeaturesConfig` (uses its ``extractor`` choice),
  * one extractor's config (:class:`ClipConfig`, :class:`DinoConfig`, :class:`LabelFeatureConfig`),
  * a plain mapping: ``{"type": "clip", **settings}``, a FeaturesConfig dict
    (``{"extractor": "labels", "labels": {...}}``), or an extractor's ``cache_key()`` /
    ``extractor_info`` (``{"type", "settings", ...}``; a label table inside is used), so a field
    trained earlier can rebuild the text encoder it was distilled for.
Keyword ``overrides`` (e.g. ``device="cuda"``) replace settings of the chosen extractor's config.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from collections.abc import Callable, Mapping

from f3rm_ros.core.config import ConfigError, from_dict, replace
from f3rm_ros.core.features.base import FeatureExtractor
from f3rm_ros.core.features.configs import ClipConfig, DinoConfig, FeaturesConfig, LabelFeatureConfig

__all__ = ["create_extractor", "create_extractor_for_dataset", "list_extractors", "register_extractor",
           "config_class"]


def _build_clip(cfg: ClipConfig, **_: Any) -> FeatureExtractor:
    from f3rm_ros.core.features.clip import ClipExtractor

    return ClipExtractor(cfg)


def _build_dino(cfg: DinoConfig, **_: Any) -> FeatureExtractor:
    from f3rm_ros.core.features.dino import DinoExtractor

    return DinoExtractor(cfg)


def _build_labels(cfg: LabelFeatureConfig, label_table: Mapping | None = None, **_: Any) -> FeatureExtractor:
    from f3rm_ros.core.features.labels import LabelFeatureExtractor

    return LabelFeatureExtractor(cfg, label_table)


_REGISTRY: dict[str, tuple[type, Callable[..., FeatureExtractor]]] = {
    "clip": (ClipConfig, _build_clip),
    "dino": (DinoConfig, _build_dino),
    "labels": (LabelFeatureConfig, _build_labels),
}


def list_extractors() -> list[str]:
    """Names of the registered extractor types."""
    return sorted(_REGISTRY)


def register_extractor(name: str, config_cls: type, build: Callable[..., FeatureExtractor]) -> None:
    """Add an extractor type: ``build(config, label_table=None) -> FeatureExtractor``."""
    if not dataclasses.is_dataclass(config_cls):
        raise ValueError(f"config_cls must be a dataclass, got {config_cls!r}")
    _REGISTRY[name] = (config_cls, build)


def config_class(name: str) -> type:
    if name not in _REGISTRY:
        raise ValueError(f"unknown feature extractor {name!r}; known: {list_extractors()}")
    return _REGISTRY[name][0]


def create_extractor(config: Any, *, label_table: Mapping | None = None, **overrides: Any) -> FeatureExtractor:
    """Build a feature extractor from a config, a mapping or a cache key (see the module docstring).

    Raises:
        ValueError / ConfigError: unknown extractor type or setting (the message lists the valid ones).
        WeightsUnavailableError: the model's weights could not be loaded.
    """
    kind, cfg = _resolve(config)
    table = label_table
    if table is None and isinstance(config, Mapping):
        table = config.get("label_table")
    if overrides:
        cfg = replace(cfg, **overrides)
    return _REGISTRY[kind][1](cfg, label_table=table)


def create_extractor_for_dataset(config: Any, dataset: Any, **overrides: Any) -> FeatureExtractor:
    """:func:`create_extractor`, taking the label table of ``dataset`` for label features.

    Args:
        config: as for :func:`create_extractor`.
        dataset: a ``PosedImageDataset`` (its ``labels_table``) or a dataset folder/``transforms.json``.

    Raises:
        ValueError: label features were asked for and the dataset has no ``f3rm_labels`` table.
    """
    kind, _ = _resolve(config)
    table = None
    if kind == "labels" and not (isinstance(config, Mapping) and config.get("label_table")):
        if isinstance(dataset, (str, bytes)) or hasattr(dataset, "__fspath__"):
            from f3rm_ros.core.features.labels import load_label_table

            table = load_label_table(dataset)
        else:
            table = getattr(dataset, "labels_table", None)
            if not table:
                raise ValueError(f"label features need the dataset's f3rm_labels table; {dataset!r} has none "
                                 "(only synthetic-world datasets carry labels)")
    return create_extractor(config, label_table=table, **overrides)


def _resolve(config: Any) -> tuple[str, Any]:
    if isinstance(config, FeaturesConfig):
        return config.extractor, getattr(config, config.extractor)
    for name, (cls, _) in _REGISTRY.items():
        if type(config) is cls:
            return name, config
    if isinstance(config, Mapping):
        if "type" in config:
            kind = config["type"]
            cls = config_class(kind)
            if "settings" in config:  # a cache key / extractor_info
                settings = config["settings"]
            else:
                settings = {k: v for k, v in config.items() if k not in ("type", "label_table")}
            return kind, from_dict(cls, settings, where=f"features.{kind}")
        if "extractor" in config or set(config) <= {f.name for f in dataclasses.fields(FeaturesConfig)}:
            full = from_dict(FeaturesConfig, config, where="features")
            return full.extractor, getattr(full, full.extractor)
    raise ConfigError(f"cannot build a feature extractor from {type(config).__name__} {config!r}; pass a "
                      f"FeaturesConfig, one of {[c.__name__ for c, _ in _REGISTRY.values()]}, or a mapping "
                      f"with 'type' (one of {list_extractors()})")
