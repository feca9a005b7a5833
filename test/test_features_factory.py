"""The extractor factory: configs as data, dicts, cache keys, errors; the package imports no model code."""

import subprocess
import sys

import pytest

from f3rm_ros.core.config import ConfigError, from_dict, to_dict
from f3rm_ros.core.features import (ClipConfig, FeaturesConfig, LabelFeatureConfig, create_extractor,
                                    list_extractors)
from f3rm_ros.core.features.labels import LabelFeatureExtractor

TABLE = {"1": {"object": "mug", "category": "mug", "part": None}}


def test_registry_and_config_forms():
    print("extractors:", list_extractors())
    assert list_extractors() == ["clip", "dino", "labels"]
    cfg = FeaturesConfig(extractor="labels", labels=LabelFeatureConfig(dim=16))
    forms = [cfg, cfg.labels, {"type": "labels", "dim": 16}, {"extractor": "labels", "labels": {"dim": 16}},
             to_dict(cfg)]
    exts = [create_extractor(f, label_table=TABLE) for f in forms]
    assert all(isinstance(e, LabelFeatureExtractor) and e.feature_dim == 16 for e in exts)
    keys = {str(e.cache_key()) for e in exts}
    assert len(keys) == 1
    # overrides go to the chosen extractor's config
    assert create_extractor(cfg, label_table=TABLE, patch_size=7).config.patch_size == 7
    # a cache key rebuilds the same extractor (the table travels inside it)
    again = create_extractor(exts[0].cache_key())
    assert again.cache_key() == exts[0].cache_key()


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"unknown feature extractor 'sift'.*\['clip', 'dino', 'labels'\]"):
        create_extractor({"type": "sift"})
    with pytest.raises(ConfigError, match="unknown key"):
        create_extractor({"type": "labels", "dimm": 3}, label_table=TABLE)
    with pytest.raises(ConfigError, match="not one of"):
        from_dict(FeaturesConfig, {"extractor": "sift"})
    with pytest.raises(ConfigError, match="outside the allowed range"):
        from_dict(ClipConfig, {"batch_size": 0})
    with pytest.raises(ValueError, match="labels.dataset"):
        create_extractor({"type": "labels"})
    with pytest.raises(ConfigError, match="cannot build"):
        create_extractor(42)


def test_importing_features_loads_no_model_code_or_ros():
    code = ("import sys, f3rm_ros.core.features as F; "
            "print(sorted(m for m in ('open_clip', 'timm', 'rclpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    print("heavy modules after import:", out)
    assert out == "[]"
