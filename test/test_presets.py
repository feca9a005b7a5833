"""Training presets: names combine, keys are real TrainerConfig settings, the CLI takes them."""

import pytest

from f3rm_ros.core.config import flatten
from f3rm_ros.core.presets import TRAINER_PRESETS, trainer_config, trainer_preset
from f3rm_ros.core.trainer import TrainerConfig


def test_every_preset_builds_a_config_and_changes_what_it_says():
    ref = flatten(TrainerConfig())
    for name, settings in TRAINER_PRESETS.items():
        cfg = flatten(trainer_config(name))
        changed = {k for k in ref if cfg[k] != ref[k]}
        print(f"{name}: {sorted(changed)}")
        assert changed == {k for k, v in settings.items()
                           if (list(ref[k]) if isinstance(ref[k], tuple) else ref[k]) != v}


def test_presets_combine_later_wins_and_unknown_names_are_errors():
    both = trainer_config("small+synthetic", seed=3)
    assert both.model.sampler.num_samples == 16 and both.model.sampler.far == 5.0 and both.seed == 3
    assert trainer_preset("small", prefix="trainer.")["trainer.model.sampler.num_samples"] == 16
    with pytest.raises(ValueError, match="unknown trainer preset 'tiny'.*known: reference, small, synthetic, depth"):
        trainer_preset("small+tiny")
    with pytest.raises(ValueError):
        trainer_config("small", **{"model.sampler.not_a_setting": 1})


def test_train_cli_preset_with_config_file_and_flags_on_top(tmp_path):
    from f3rm_ros.cli.train import _flat_mapping, build_parser

    args = build_parser().parse_args(["data", "--preset", "small+synthetic", "--model.sampler.far", "7"])
    assert args.preset == "small+synthetic"
    assert _flat_mapping({"model": {"sampler": {"near": 0.3}}, "seed": 2}) == {"model.sampler.near": 0.3, "seed": 2}
