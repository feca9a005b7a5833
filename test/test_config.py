"""Typed configs: dataclass <-> dict/YAML/CLI, and the same config as ROS parameters on a real node."""

import argparse
from dataclasses import dataclass
from typing import Literal

import pytest

from f3rm_ros.core.config import (ConfigError, add_cli_args, apply_cli_args, describe, flatten, from_dict,
                                  load_yaml, param, replace, save_yaml, to_dict)


@dataclass
class Inner:
    lr: float = param(1e-2, "learning rate", range=(0.0, 1.0))
    steps: int = param(200, "optimisation steps", range=(1, 10_000))


@dataclass
class Outer:
    name: str = param("mug", "object name")
    box_min: tuple[float, float, float] = param((0.1, -0.45, 0.005), "workspace min corner, metres")
    backend: Literal["auto", "torch", "tcnn"] = param("auto", "hash-grid backend")
    device: str | None = param(None, "torch device, None = auto", read_only=True)
    negatives: list[str] = param(["object", "things"], "negative prompts")
    inner: Inner = param(Inner(), "optimiser")


def test_defaults_round_trip_through_dict_and_yaml(tmp_path):
    cfg = Outer()
    assert from_dict(Outer, to_dict(cfg)) == cfg
    save_yaml(cfg, tmp_path / "c.yaml")
    assert load_yaml(Outer, tmp_path / "c.yaml") == cfg
    assert flatten(cfg)["inner.lr"] == 1e-2
    assert [i.name for i in describe(Outer)][-2:] == ["inner.lr", "inner.steps"]


def test_unknown_keys_are_errors_that_list_the_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['colour'\].*valid keys"):
        from_dict(Outer, {"colour": "red"})
    with pytest.raises(ConfigError, match=r"inner: unknown key\(s\) \['lrr'\]"):
        from_dict(Outer, {"inner": {"lrr": 1}})


@pytest.mark.parametrize("data, message", [
    ({"inner": {"lr": 2.0}}, "outside the allowed range"),
    ({"inner": {"steps": "many"}}, "expected an integer"),
    ({"inner": {"lr": float("nan")}}, "NaN"),
    ({"backend": "cuda"}, "not one of"),
    ({"box_min": [0.0, 0.0]}, "expected 3 items"),
    ({"name": 3}, "expected a string"),
])
def test_bad_values_are_refused_with_the_reason(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data)


def test_integers_are_accepted_for_floats_and_replace_takes_dotted_keys():
    cfg = from_dict(Outer, {"inner": {"lr": 0}, "box_min": [0, 0, 1]})
    assert cfg.inner.lr == 0.0 and isinstance(cfg.inner.lr, float) and cfg.box_min == (0.0, 0.0, 1.0)
    assert replace(cfg, **{"inner.steps": 5}).inner.steps == 5
    with pytest.raises(ConfigError):
        replace(cfg, **{"inner.nope": 5})


def test_cli_flags_map_onto_the_config():
    parser = argparse.ArgumentParser()
    add_cli_args(parser, Outer)
    args = parser.parse_args(["--inner.steps", "7", "--box_min", "[1, 2, 3]"])
    cfg = apply_cli_args(Outer(), args)
    assert cfg.inner.steps == 7 and cfg.box_min == (1.0, 2.0, 3.0)
    with pytest.raises(ConfigError):
        apply_cli_args(Outer(), parser.parse_args(["--inner.steps", "0"]))


def test_the_same_config_as_ros_parameters_on_a_real_node():
    rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed: run scripts/setup.sh first")
    from rclpy.parameter import Parameter

    from f3rm_ros.ros.params import declare_config, read_config, validator

    with rclpy.init():
        node = rclpy.create_node("config_test_node", parameter_overrides=[
            Parameter("planner.inner.steps", Parameter.Type.INTEGER, 50)],
            automatically_declare_parameters_from_overrides=False)
        try:
            cfg = declare_config(node, Outer, prefix="planner")
            assert cfg.inner.steps == 50 and cfg.device is None and cfg.box_min == (0.1, -0.45, 0.005)
            desc = node.describe_parameter("planner.inner.lr")
            assert desc.description == "learning rate"
            assert desc.floating_point_range[0].to_value == 1.0
            assert node.describe_parameter("planner.device").read_only
            assert "one of" in node.describe_parameter("planner.backend").description
            node.add_on_set_parameters_callback(validator(node, {"planner": Outer}))
            bad = node.set_parameters([Parameter("planner.backend", Parameter.Type.STRING, "cuda")])[0]
            assert not bad.successful and "not one of" in bad.reason
            ok = node.set_parameters([Parameter("planner.inner.lr", Parameter.Type.DOUBLE, 0.5)])[0]
            assert ok.successful
            assert read_config(node, Outer, "planner").inner.lr == 0.5
        finally:
            node.destroy_node()


@dataclass
class _Grid:
    levels: int = param(16, "levels")
    width: int = param(2, "width")


@dataclass
class _Two:
    a: _Grid = param(_Grid(), "class defaults")
    b: _Grid = param(_Grid(levels=12, width=8), "its own defaults")


def test_partial_nested_mapping_changes_the_fields_own_default():
    cfg = from_dict(_Two, {"b": {"levels": 6}, "a": {"width": 4}})
    print(cfg)
    assert cfg.b == _Grid(levels=6, width=8)  # not _Grid(levels=6, width=2)
    assert cfg.a == _Grid(levels=16, width=4)
    assert from_dict(_Two, {}).b == _Grid(levels=12, width=8)
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(_Two, {"b": {"depth": 1}})
