"""ROS 2 parameter files: read them flat, and write a documented one from a node's declared parameters.

A parameter file maps node-name patterns (``/**/query_node``, ``/f3rm/query_node``, ``/**``) to
``{ros__parameters: {...}}``; nested mappings are dotted names (``planner: {num_steps: 10}`` is
``planner.num_steps``). :func:`write_param_file` makes the file that documents every parameter of a
node from its ``ParameterDescriptor`` (the config dataclass help text), so the file and the code
cannot drift apart (``f3rm-ros params query_node``).
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any
from collections.abc import Mapping

import yaml

__all__ = ["read_param_file", "flatten_params", "node_key_matches", "format_value", "describe_node_parameters",
           "write_param_file"]

# parameters every rclpy node has; not ours to document
BUILTIN_PARAMETERS = {"use_sim_time", "start_type_description_service", "qos_overrides"}


def flatten_params(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c.d": 2}`` -> ``{"a.b": 1, "c.d": 2}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_params(v, key + "."))
        else:
            out[key] = v
    return out


def read_param_file(path: str | Path) -> dict[str, dict[str, Any]]:
    """``{node pattern: {dotted parameter name: value}}`` of a ROS 2 parameter file.

    Raises:
        ValueError: not a mapping of node patterns to ``ros__parameters``.
    """
    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: a parameter file is a mapping of node names to ros__parameters")
    out = {}
    for key, body in data.items():
        if not isinstance(body, Mapping) or "ros__parameters" not in body:
            raise ValueError(f"{path}: entry {key!r} has no ros__parameters")
        out[str(key)] = flatten_params(body["ros__parameters"] or {})
    return out


def node_key_matches(key: str, fully_qualified_name: str) -> bool:
    """Does a parameter-file node key (``/**/query_node``, ``/**``, ``/f3rm/query_node``) match the node?"""
    import fnmatch

    if key in ("/**", "/*", "**"):
        return True
    key = key if key.startswith("/") else "/" + key
    if key.startswith("/**/"):
        return fully_qualified_name.endswith("/" + key[4:]) or fnmatch.fnmatch(fully_qualified_name, "*/" + key[4:])
    return fnmatch.fnmatch(fully_qualified_name, key.replace("**", "*"))


def format_value(v: Any) -> str:
    """A YAML scalar/list the rcl parser reads with the right type (doubles always with a '.')."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isinf(v):
            return ".inf" if v > 0 else "-.inf"
        r = repr(v)
        if "e" in r or "E" in r:
            mant, exp = r.lower().split("e")
            if "." not in mant:
                mant += ".0"
            return f"{mant}e{int(exp)}"
        return r if "." in r else r + ".0"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(format_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as a parameter value")


def describe_node_parameters(node: Any) -> list[tuple[str, Any, Any]]:
    """``(name, current value, ParameterDescriptor)`` of every parameter the node declared (built-ins left out)."""
    out = []
    for name in list(node._parameters):  # declaration order
        if name in BUILTIN_PARAMETERS or name.startswith("qos_overrides."):
            continue
        p = node.get_parameter(name)
        out.append((name, p.value, node.describe_parameter(name)))
    return out


def _value(v: Any) -> Any:
    if hasattr(v, "tolist"):
        return v.tolist()
    return v


def write_param_file(node: Any, header: str = "", key: str | None = None, width: int = 110,
                     values: Mapping[str, Any] | None = None) -> str:
    """The text of a parameter file documenting every declared parameter of ``node`` with its value.

    ``values`` replaces the written value of the named parameters (e.g. the default of one overridden
    to build the node). Empty arrays cannot be typed by the parser, so they are written as a comment.
    """
    values = dict(values or {})
    key = key or f"/**/{node.get_name()}"
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines += [f"{key}:", "  ros__parameters:"]
    group = None
    for name, value, d in describe_node_parameters(node):
        top = name.split(".")[0] if "." in name else ""
        if top != group:
            lines.append("")
            lines.append(f"    # --- {top}.*" if top else "    # --- node settings")
            group = top
        text = d.description or "(no description)"
        if d.read_only:
            text += " [read-only: fixed at start]"
        if d.floating_point_range:
            r = d.floating_point_range[0]
            text += f" (range {r.from_value:g} .. {r.to_value:g})"
        if d.integer_range:
            r = d.integer_range[0]
            text += f" (range {r.from_value} .. {r.to_value})"
        for chunk in textwrap.wrap(text, width - 6):
            lines.append(f"    # {chunk}")
        v = _value(values.get(name, value))
        if isinstance(v, (list, tuple)) and len(v) == 0:
            lines.append(f"    # {name}: []   (empty list: the default; give values to set it)")
        else:
            lines.append(f"    {name}: {format_value(v)}")
    return "\n".join(lines) + "\n"
