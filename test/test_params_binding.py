"""ParamBinding (f3rm_ros.ros.params) on real rclpy nodes in this process: declare, describe, accept, refuse with
the reason, apply once; and the nodes that bind their parameters with it (no DDS peers needed, no mocks)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed: run scripts/setup.sh first")

from rclpy.exceptions import InvalidParameterValueException, ParameterNotDeclaredException  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from f3rm_ros.core.config import ConfigError, param  # noqa: E402
from f3rm_ros.ros.common import Refused  # noqa: E402
from f3rm_ros.ros.params import ParamBinding, bindings_of  # noqa: E402
from f3rm_ros.ros.paramfile import BUILTIN_PARAMETERS  # noqa: E402


@dataclass
class _Inner:
    lr: float = param(0.1, "learning rate", range=(0.0, 1.0))
    steps: int = param(10, "optimiser steps", range=(1, 1000))


@dataclass
class _Section:
    mode: Literal["fast", "slow"] = param("fast", "how to run")
    scale: float = param(1.0, "a scale without a range")
    inner: _Inner = param(_Inner(), "the inner settings")
    box: tuple[float, float, float] = param((0.0, 0.0, 0.0), "a box corner, metres")
    device: str | None = param(None, "torch device ('' = automatic)")
    name: str = param("x", "fixed at start", read_only=True)


@dataclass
class _Other:
    rate_hz: float = param(2.0, "a rate", range=(0.01, 100.0))


@pytest.fixture
def ctx():
    with rclpy.init():
        nodes = []

        def make(name: str = "binding_test_node", **kw):
            node = rclpy.create_node(name, **kw)
            nodes.append(node)
            return node

        yield make
        for n in nodes:
            n.destroy_node()


class _Calls:
    def __init__(self) -> None:
        self.calls: list = []

    def __call__(self, new, old) -> None:
        self.calls.append((new, old))


def _set(node, **values):
    """set_parameters of ``{name with __ for '.': value}``, one result per parameter."""
    return node.set_parameters([Parameter(k.replace("__", "."), value=v) for k, v in values.items()])


def test_declares_and_describes_the_section(ctx):
    node = ctx(parameter_overrides=[Parameter("sec.inner.steps", value=50)],
               automatically_declare_parameters_from_overrides=False)
    b = ParamBinding(node, _Section, "sec")
    assert b.config == _Section(inner=_Inner(steps=50))  # the override, the rest from the dataclass
    assert b.names == {"sec.mode", "sec.scale", "sec.inner.lr", "sec.inner.steps", "sec.box", "sec.device",
                       "sec.name"}
    assert all(node.has_parameter(n) for n in b.names)
    d = node.describe_parameter("sec.inner.lr")
    assert d.description == "learning rate"
    assert (d.floating_point_range[0].from_value, d.floating_point_range[0].to_value) == (0.0, 1.0)
    assert node.describe_parameter("sec.inner.steps").integer_range[0].to_value == 1000
    assert "one of ['fast', 'slow']" in node.describe_parameter("sec.mode").description
    assert node.describe_parameter("sec.name").read_only
    assert not node.describe_parameter("sec.scale").read_only
    assert node.get_parameter("sec.device").value == ""  # None travels as ''
    assert bindings_of(node) == [b]


def test_accepts_a_valid_change_and_calls_back_once(ctx):
    node = ctx()
    cb = _Calls()
    b = ParamBinding(node, _Section, "sec", on_change=cb)
    before = b.config
    (r,) = _set(node, sec__inner__lr=0.5)
    assert r.successful, r.reason
    assert b.config.inner.lr == 0.5 and b.config is not before
    assert len(cb.calls) == 1
    new, old = cb.calls[0]
    assert new is b.config and old is before and old.inner.lr == 0.1
    # two settings in one atomic request: one callback with both applied
    r = node.set_parameters_atomically([Parameter("sec.mode", value="slow"),
                                        Parameter("sec.box", value=[1.0, 2.0, 3.0])])
    assert r.successful, r.reason
    assert len(cb.calls) == 2
    assert b.config.mode == "slow" and b.config.box == (1.0, 2.0, 3.0)
    (r,) = _set(node, sec__device="cuda:1")
    assert r.successful and b.config.device == "cuda:1"
    (r,) = _set(node, sec__device="")
    assert r.successful and b.config.device is None
    assert len(cb.calls) == 4


@pytest.mark.parametrize("name,value,reason", [
    ("sec.inner.lr", "fast", "type"),  # rclpy: parameters are statically typed
    ("sec.inner.lr", 2.0, "range"),  # rclpy, from the descriptor's range
    ("sec.inner.steps", 0, "range"),
    ("sec.mode", "medium", "not one of ['fast', 'slow']"),  # the config dataclass (Literal)
    ("sec.scale", math.nan, "NaN is not a valid value"),  # the config dataclass (no range in the descriptor)
    ("sec.box", [1.0, 2.0], "expected 3 items"),
    ("sec.name", "y", "read-only"),
])
def test_refuses_bad_values_with_the_reason(ctx, name, value, reason):
    node = ctx()
    cb = _Calls()
    b = ParamBinding(node, _Section, "sec", on_change=cb)
    before = b.config
    old = node.get_parameter(name).value
    (r,) = node.set_parameters([Parameter(name, value=value)])
    print(name, value, "->", r.reason)
    assert not r.successful
    assert reason in r.reason
    assert b.config is before and not cb.calls
    got = node.get_parameter(name).value
    assert (list(got) if hasattr(got, "tolist") else got) == (list(old) if hasattr(old, "tolist") else old)


def test_refuses_unknown_names_under_its_prefix(ctx):
    # rclpy refuses undeclared names on an ordinary node...
    node = ctx()
    ParamBinding(node, _Section, "sec")
    with pytest.raises(ParameterNotDeclaredException):
        _set(node, sec__inner__lrr=0.5)
    # ...and the binding on a node that allows undeclared parameters, naming the valid ones
    open_node = ctx("binding_open_node", allow_undeclared_parameters=True)
    cb = _Calls()
    b = ParamBinding(open_node, _Section, "sec", on_change=cb)
    (r,) = _set(open_node, sec__inner__lrr=0.5)
    print(r.reason)
    assert not r.successful
    assert "unknown parameter(s) ['sec.inner.lrr']" in r.reason and "'inner.lr'" in r.reason
    assert not open_node.has_parameter("sec.inner.lrr") and not cb.calls
    # names outside every prefix stay the node's business
    (r,) = _set(open_node, other_thing=1)
    assert r.successful
    # a later declaration under the prefix is refused too: each setting has one home
    with pytest.raises(InvalidParameterValueException):
        open_node.declare_parameter("sec.extra", 1)
    assert b.config == _Section()


def test_check_refuses_with_its_reason_and_sections_stay_apart(ctx):
    node = ctx()
    busy = {"on": True}

    def check(new: _Section, old: _Section) -> None:
        if busy["on"] and new.mode != old.mode:
            raise Refused("mode cannot change while busy; stop first")

    cb_a, cb_b = _Calls(), _Calls()
    a = ParamBinding(node, _Section, "sec", on_change=cb_a, check=check)
    b = ParamBinding(node, _Other, on_change=cb_b)  # top-level names
    (r,) = _set(node, sec__mode="slow")
    assert not r.successful and r.reason == "mode cannot change while busy; stop first"
    (r,) = _set(node, sec__scale=3.0)  # the check lets other settings through
    assert r.successful and a.config.scale == 3.0
    (r,) = _set(node, rate_hz=5.0)
    assert r.successful and b.config.rate_hz == 5.0
    assert len(cb_a.calls) == 1 and len(cb_b.calls) == 1  # each section hears only of its own changes
    # one request over both sections: all or nothing
    r = node.set_parameters_atomically([Parameter("rate_hz", value=7.0), Parameter("sec.mode", value="slow")])
    assert not r.successful and "busy" in r.reason
    assert b.config.rate_hz == 5.0 and node.get_parameter("rate_hz").value == 5.0
    busy["on"] = False
    r = node.set_parameters_atomically([Parameter("rate_hz", value=7.0), Parameter("sec.mode", value="slow")])
    assert r.successful and b.config.rate_hz == 7.0 and a.config.mode == "slow"
    assert len(cb_a.calls) == 2 and len(cb_b.calls) == 2


def test_instance_defaults_read_only_sections_and_one_home(ctx):
    node = ctx()
    b = ParamBinding(node, _Section(scale=2.5, inner=_Inner(steps=7)), "sec", overrides={"inner.lr": 0.25})
    assert b.config == _Section(scale=2.5, inner=_Inner(lr=0.25, steps=7))
    fixed = ParamBinding(node, _Other, "fixed", read_only=True)
    assert node.describe_parameter("fixed.rate_hz").read_only
    (r,) = _set(node, fixed__rate_hz=1.0)
    assert not r.successful and "read-only" in r.reason and fixed.config.rate_hz == 2.0
    with pytest.raises(ConfigError, match="already bound"):
        ParamBinding(node, _Inner, "sec.inner")
    with pytest.raises(TypeError):
        ParamBinding(node, dict, "nope")


def test_a_failing_callback_is_logged_not_raised(ctx):
    node = ctx()

    def boom(new, old):
        raise RuntimeError("cannot rebuild")

    b = ParamBinding(node, _Other, on_change=boom)
    (r,) = _set(node, rate_hz=9.0)
    assert r.successful and b.config.rate_hz == 9.0  # the parameter is set; the node lives on
    b.unbind()
    (r,) = _set(node, rate_hz=10.0)
    assert r.successful and b.config.rate_hz == 9.0 and bindings_of(node) == []


def _unbound(node) -> list[str]:
    claimed = set().union(*(b.names for b in bindings_of(node)))
    return sorted(n for n in node._parameters if n not in claimed and n not in BUILTIN_PARAMETERS
                  and not n.startswith("qos_overrides."))


def test_sim_camera_node_binds_every_parameter(ctx):
    from f3rm_ros.ros.sim_camera_node import SimCameraNode

    with_args = SimCameraNode(namespace="/t_bind", parameter_overrides=[
        Parameter("width", value=16), Parameter("height", value=12), Parameter("trajectory.num_views", value=3)])
    try:
        assert not _unbound(with_args)
        assert with_args.settings.width == 16 and with_args.trajectory.num_views == 3
        assert len(with_args.camera) == 3
        # settings used once at start are read-only, so a change cannot be accepted and then ignored
        (r,) = _set(with_args, trajectory__num_views=5)
        assert not r.successful and "read-only" in r.reason
        (r,) = _set(with_args, render__ambient=0.5)
        assert not r.successful and "read-only" in r.reason
    finally:
        with_args.destroy_node()


def test_query_node_binds_every_parameter_and_applies_changes(ctx):
    from f3rm_ros.ros.query_node import QueryNode

    node = QueryNode(namespace="/t_bind", parameter_overrides=[Parameter("autostart", value=False),
                                                              Parameter("planner.num_steps", value=7)])
    try:
        assert not _unbound(node)
        assert node.planner_cfg.num_steps == 7
        gripper = node.gripper
        (r,) = _set(node, planner__num_steps=9)
        assert r.successful and node.planner_cfg.num_steps == 9
        (r,) = _set(node, max_negatives=3)
        assert r.successful and node.cfg.max_negatives == 3
        (r,) = _set(node, max_negatives=-1)
        assert not r.successful and "range" in r.reason and node.cfg.max_negatives == 3
        (r,) = _set(node, gripper__max_opening_m=0.06)
        assert r.successful, r.reason
        assert node.gripper is not gripper and node.gripper.config.max_opening_m == 0.06
        assert node.gripper_cfg.max_opening_m == 0.06 and gripper.config.max_opening_m == 0.08
    finally:
        node.destroy_node()


def test_capture_node_binds_every_parameter_and_checks_the_dataset(ctx, tmp_path):
    from f3rm_ros.ros.capture_node import CaptureNode

    node = CaptureNode(namespace="/t_bind", parameter_overrides=[
        Parameter("data_root", value=str(tmp_path)), Parameter("dataset_name", value="a"),
        Parameter("start_capturing", value=True)])
    try:
        assert not _unbound(node)
        assert node.session.capturing
        (r,) = _set(node, dataset_name="b")  # the node's check, through the binding
        assert not r.successful and r.reason == "dataset_name cannot change while capturing; send STOP first"
        (r,) = _set(node, min_translation_m=0.2)
        assert r.successful and node.settings.min_translation_m == 0.2 and node.session.config.min_translation_m == 0.2
        assert node.session.stop()[0]
        (r,) = _set(node, dataset_name="../escape")
        assert not r.successful and "outside" in r.reason
        (r,) = _set(node, dataset_name="b")
        assert r.successful and node.settings.dataset_name == "b"
    finally:
        node.close()
        node.destroy_node()


def test_train_node_binds_every_parameter_with_a_shared_prefix(ctx, tmp_path):
    from f3rm_ros.ros.train_node import TrainNode

    node = TrainNode(namespace="/t_bind", parameter_overrides=[
        Parameter("data_root", value=str(tmp_path / "d")), Parameter("checkpoint_root", value=str(tmp_path / "c")),
        Parameter("autostart", value=False)])
    try:
        assert not _unbound(node)
        assert node.trainer_config.progress_every == 1  # the node's own default
        # trainer.num_steps (the step budget) and trainer.* (TrainerConfig) share the prefix, one home each
        (r,) = _set(node, trainer__num_steps=5)
        assert r.successful and node.budget.num_steps == 5
        (r,) = _set(node, trainer__rays_per_batch=64)
        assert r.successful and node.trainer_config.rays_per_batch == 64
        (r,) = _set(node, features__extractor="sift")
        assert not r.successful and "sift" in r.reason and node.features_config.extractor != "sift"
    finally:
        node.destroy_node()
