"""ROS parameters declared from a component's config dataclass (the single source of truth).

Every leaf setting of the dataclass becomes one parameter ``<prefix>.<dotted.name>`` with a
``ParameterDescriptor`` built from the field's metadata (description, range, read-only flag,
choices). Parameter files (``config/*.yaml``) and ``--ros-args -p`` map onto it; a value that the
config rejects (wrong type, out of range, unknown choice) is refused with the config's reason,
and the node keeps its previous value.

    cfg = declare_config(node, PlannerConfig, prefix="planner")   # -> PlannerConfig instance
    node.add_on_set_parameters_callback(validator(node, {"planner": PlannerConfig}))
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from rcl_interfaces.msg import (FloatingPointRange, IntegerRange, ParameterDescriptor,
                                ParameterType, SetParametersResult)

from f3rm_ros.core.config import ConfigError, FieldInfo, describe, from_dict, unflatten

__all__ = ["declare_config", "read_config", "validator", "parameter_type", "ConfigError"]


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


def _descriptor(name: str, info: FieldInfo, ptype: int) -> ParameterDescriptor:
    text = info.help or name
    if info.choices:
        text += f" (one of {list(info.choices)})"
    bare = _strip_optional(info.type)
    lit = typing.get_args(bare) if typing.get_origin(bare) is typing.Literal else ()
    if lit:
        text += f" (one of {list(lit)})"
    d = ParameterDescriptor(name=name, type=ptype, description=text, read_only=info.read_only)
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


def declare_config(node: Any, cls: type, prefix: str = "", overrides: dict[str, Any] | None = None) -> Any:
    """Declare one parameter per setting of ``cls`` under ``prefix`` and return the resulting config.

    Values come from the node's parameter overrides (YAML files, ``-p``) when given, else the
    dataclass defaults (``overrides`` replaces defaults, e.g. a node-specific default).

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
        node.declare_parameter(name, _to_ros(default, ptype), _descriptor(name, info, ptype))
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
