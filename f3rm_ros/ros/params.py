"""ROS parameters declared from a component's config dataclass (the single source of truth).

Every leaf setting of the dataclass becomes one parameter ``<prefix>.<dotted.name>`` with a
``ParameterDescriptor`` built from the field's metadata (description, range, read-only flag,
choices). Parameter files (``config/*.yaml``) and ``--ros-args -p`` map onto it; a value that the
config rejects (wrong type, out of range, unknown choice) is refused with the config's reason,
and the node keeps its previous value.

Every node binds its config sections the same way, with :class:`ParamBinding` (declare, validate,
apply)::

    self.planner = ParamBinding(self, PlannerConfig, "planner", on_change=self._planner_changed)
    self.planner.config                     # the current PlannerConfig, replaced on each accepted change

The functions below are its parts (and stay usable alone)::

    cfg = declare_config(node, PlannerConfig, prefix="planner")   # -> PlannerConfig instance
    node.add_on_set_parameters_callback(validator(node, {"planner": PlannerConfig}))
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                ParameterType, SetParametersResult)

from f3rm_ros.core.config import ConfigError, FieldInfo, describe, flatten, from_dict, unflatten
from f3rm_ros.ros.common import Refused

__all__ = ["ParamBinding", "bindings_of", "declare_config", "read_config", "validator", "parameter_type",
           "ConfigError"]

C = TypeVar("C")


def _base_type(tp: Any) -> Any:
    """Strip Optional[...] and resolve Literal[...] to the type of its values."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        rest = [a for a in args if a is not type(None)]
        return _base_type(rest[0]) if len(rest) == 1 else str
    if origin is typing.Literal:
        return type(args[0])
    return tp


def parameter_type(info: FieldInfo) -> int:
    """The rcl ParameterType for a config field."""
    tp = _base_type(info.type)
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        item = _base_type(args[0]) if args else float
        return {bool: ParameterType.PARAMETER_BOOL_ARRAY, int: ParameterType.PARAMETER_INTEGER_ARRAY,
                float: ParameterType.PARAMETER_DOUBLE_ARRAY,
                str: ParameterType.PARAMETER_STRING_ARRAY}.get(item, ParameterType.PARAMETER_DOUBLE_ARRAY)
    return {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
            float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
            Path: ParameterType.PARAMETER_STRING}.get(tp, ParameterType.PARAMETER_STRING)


def _to_ros(value: Any, ptype: int) -> Any:
    if value is None:
        return "" if ptype == ParameterType.PARAMETER_STRING else value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    if ptype == ParameterType.PARAMETER_DOUBLE and isinstance(value, int):
        return float(value)
    if ptype == ParameterType.PARAMETER_DOUBLE_ARRAY:
        return [float(v) for v in value]
    return value


def _from_ros(value: Any, info: FieldInfo) -> Any:
    optional = type(None) in typing.get_args(info.type)
    if optional and value == "":
        return None
    if hasattr(value, "tolist"):  # array.array from rclpy
        value = value.tolist()
    return value


def _descriptor(name: str, info: FieldInfo, ptype: int, read_only: bool = False) -> ParameterDescriptor:
    text = info.help or name
    if info.choices:
        text += f" (one of {list(info.choices)})"
    bare = _strip_optional(info.type)
    lit = typing.get_args(bare) if typing.get_origin(bare) is typing.Literal else ()
    if lit:
        text += f" (one of {list(lit)})"
    d = ParameterDescriptor(name=name, type=ptype, description=text, read_only=info.read_only or read_only)
    if info.range is not None:
        lo, hi = info.range
        if ptype == ParameterType.PARAMETER_INTEGER:
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(min(hi, 2**63 - 1)), step=0)]
        elif ptype == ParameterType.PARAMETER_DOUBLE:
            d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    return d


def _strip_optional(tp: Any) -> Any:
    args = typing.get_args(tp)
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else tp
    return tp


def declare_config(node: Any, cls: type, prefix: str = "", overrides: Mapping[str, Any] | None = None,
                   read_only: bool = False) -> Any:
    """Declare one parameter per setting of ``cls`` under ``prefix`` and return the resulting config.

    Values come from the node's parameter overrides (YAML files, ``-p``) when given, else the
    dataclass defaults (``overrides`` replaces defaults, e.g. a node-specific default). ``read_only``
    declares every parameter read-only (settings used once at start), besides those marked so in the config.

    Raises:
        ConfigError: an override has the wrong type or is out of range (names the parameter).
    """
    pre = f"{prefix}." if prefix else ""
    overrides = overrides or {}
    for info in describe(cls):
        name = pre + info.name
        if info.default is dataclasses.MISSING:
            raise ConfigError(f"{cls.__name__}.{info.name} has no default; every parameter needs one")
        ptype = parameter_type(info)
        default = overrides.get(info.name, info.default)
        node.declare_parameter(name, _to_ros(default, ptype), _descriptor(name, info, ptype, read_only))
    return read_config(node, cls, prefix)


def read_config(node: Any, cls: type, prefix: str = "", changed: dict[str, Any] | None = None) -> Any:
    """Build ``cls`` from the node's current parameter values (plus pending ``changed`` ones)."""
    pre = f"{prefix}." if prefix else ""
    flat = {}
    for info in describe(cls):
        name = pre + info.name
        value = changed[name] if changed and name in changed else node.get_parameter(name).value
        flat[info.name] = _from_ros(value, info)
    return from_dict(cls, unflatten(flat), where=prefix or cls.__name__)


def validator(node: Any, sections: dict[str, type]):
    """An on-set-parameters callback that refuses values the config would reject, with the reason."""

    def callback(params: list) -> SetParametersResult:
        changed = {p.name: p.value for p in params}
        for prefix, cls in sections.items():
            pre = f"{prefix}." if prefix else ""
            if not any(k.startswith(pre) for k in changed):
                continue
            try:
                read_config(node, cls, prefix, changed)
            except (ConfigError, ValueError, TypeError) as e:
                return SetParametersResult(successful=False, reason=str(e))
        return SetParametersResult(successful=True)

    return callback


# --- one way to bind a config section ---------------------------------------------------------------

_REGISTRY = "_f3rm_param_bindings"  # the node attribute listing its bindings


def bindings_of(node: Any) -> list[ParamBinding]:
    """The :class:`ParamBinding` objects of ``node``, in the order they were made."""
    return list(getattr(node, _REGISTRY, ()))


def _claimed(node: Any, name: str) -> bool:
    return any(name in b.names for b in getattr(node, _REGISTRY, ()))


class ParamBinding(Generic[C]):
    """A config dataclass bound to a node's parameters: declared, validated, applied; the same in every node.

    On construction every leaf setting of the config becomes the parameter ``<prefix>.<dotted.name>``
    (:func:`declare_config`: descriptor with the field's help text, numeric range, choices and read-only
    flag; the value from the node's parameter overrides, else the default). Afterwards a set-parameters
    request (``ros2 param set``, ``set_parameters``, a parameter file loaded at run time) that touches
    the section is

    1. refused with the reason when the config dataclass rejects the result (wrong type, out of range,
       not one of the choices: :func:`f3rm_ros.core.config.from_dict`'s message), when it names a
       parameter under ``<prefix>.`` that no binding of the node declares (an unknown key; rclpy already
       refuses undeclared names unless the node allows them), or when ``check(new, old)`` raises
       :class:`~f3rm_ros.ros.common.Refused` (or a ValueError) with the reason; rclpy itself
       refuses read-only parameters and values of another parameter type;
    2. else applied: :attr:`config` is replaced by the new config object and ``on_change(new, old)`` is
       called once per accepted request (once per parameter for ``set_parameters``, once for
       ``set_parameters_atomically``). An exception in ``on_change`` is logged, never raised into the
       executor (the parameter is set by then).

    Several bindings may share a node (and even a prefix, as long as their names differ)::

        self.planner = ParamBinding(self, PlannerConfig, "planner", on_change=self._planner_changed)
        self.planner.config            # the current PlannerConfig

    Args:
        node: the rclpy node (plain or lifecycle).
        config: the config dataclass, or an instance of it whose values become the defaults.
        prefix: parameter name prefix ("" = top-level names).
        on_change: ``(new config, old config) -> None`` after an accepted change (called in the
            executor thread that served the request; take the node's own lock there if it needs one).
        check: ``(new config, old config) -> None``; raise :class:`~f3rm_ros.ros.common.Refused` (or a
            ValueError) with the reason to refuse a change the config itself allows (e.g. not while capturing).
        read_only: declare every parameter of the section read-only (settings used once at start).
        overrides: ``{dotted name: default}`` replacing the dataclass defaults (after ``config``'s values).

    Raises:
        ConfigError: a parameter override has the wrong type or is out of range (names the parameter).
    """

    def __init__(self, node: Any, config: type[C] | C, prefix: str = "", *,
                 on_change: Callable[[C, C], None] | None = None, check: Callable[[C, C], None] | None = None,
                 read_only: bool = False, overrides: Mapping[str, Any] | None = None) -> None:
        if dataclasses.is_dataclass(config) and not isinstance(config, type):
            cls: type = type(config)
            defaults = {**flatten(config), **dict(overrides or {})}
        elif isinstance(config, type) and dataclasses.is_dataclass(config):
            cls, defaults = config, dict(overrides or {})
        else:
            raise TypeError(f"ParamBinding needs a config dataclass or an instance of one, got {config!r}")
        self.node, self.cls, self.prefix = node, cls, prefix
        self.on_change, self.check = on_change, check
        self._pre = f"{prefix}." if prefix else ""
        self.names = {self._pre + info.name for info in describe(cls)}
        taken = sorted(n for n in self.names if _claimed(node, n))
        if taken:
            raise ConfigError(f"{cls.__name__}: parameters {taken} are already bound by another section")
        # registered before declaring: the other sections' validators must not take these names for unknown ones
        registry = getattr(node, _REGISTRY, None)
        if registry is None:
            registry = []
            setattr(node, _REGISTRY, registry)
        registry.append(self)
        try:
            self.config: C = declare_config(node, cls, prefix, overrides=defaults, read_only=read_only)
        except Exception:
            registry.remove(self)
            raise
        node.add_on_set_parameters_callback(self.validate)
        node.add_post_set_parameters_callback(self._apply)

    def __repr__(self) -> str:
        return f"ParamBinding({self.cls.__name__}, prefix={self.prefix!r}, {len(self.names)} parameters)"

    def unknown(self, names: Iterable[str]) -> list[str]:
        """The names under this binding's prefix that no binding of the node declares."""
        if not self._pre:
            return []
        return sorted(n for n in names if n.startswith(self._pre) and not _claimed(self.node, n))

    def validate(self, params: list) -> SetParametersResult:
        """The on-set-parameters callback: accept, or refuse with the reason (nothing is changed here)."""
        unknown = self.unknown(p.name for p in params)
        if unknown:
            valid = sorted(n[len(self._pre):] for n in self.names)
            return SetParametersResult(successful=False, reason=(
                f"unknown parameter(s) {unknown}: {self.cls.__name__} has no such setting; valid names under "
                f"{self._pre!r} are {valid}"))
        mine = {p.name: p.value for p in params if p.name in self.names}
        if not mine:
            return SetParametersResult(successful=True)
        try:
            new = read_config(self.node, self.cls, self.prefix, mine)
            if self.check is not None:
                self.check(new, self.config)
        except (Refused, ValueError, TypeError) as e:  # ConfigError and PathRefused included
            return SetParametersResult(successful=False, reason=str(e))
        return SetParametersResult(successful=True)

    def _apply(self, params: list) -> None:
        if not any(p.name in self.names for p in params):
            return
        try:
            new = read_config(self.node, self.cls, self.prefix)
        except (ConfigError, ValueError, TypeError) as e:  # validate() accepted it, so this is a bug: say it
            self.node.get_logger().error(f"{self!r}: accepted parameters do not make a config: {e}")
            return
        old, self.config = self.config, new
        if self.on_change is None:
            return
        try:
            self.on_change(new, old)
        except Exception as e:  # the parameter is set; the node lives on and says what went wrong
            self.node.get_logger().error(f"applying {self.cls.__name__} parameters failed: {type(e).__name__}: {e}")

    def unbind(self) -> None:
        """Stop validating and applying (the parameters stay declared)."""
        self.node.remove_on_set_parameters_callback(self.validate)
        self.node.remove_post_set_parameters_callback(self._apply)
        registry = getattr(self.node, _REGISTRY, [])
        if self in registry:
            registry.remove(self)
