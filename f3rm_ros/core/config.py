"""Typed configuration: one dataclass per component is the single source of truth for its settings.

Every setting is a dataclass field with the reference default. Declare it with :func:`param` so it
carries a description and, where it makes sense, a numeric range and a read-only flag::

    @dataclass
    class SamplerConfig:
        num_samples: int = param(48, "samples per ray after proposal sampling", range=(1, 1024))
        near_m: float = param(0.05, "near plane, metres")

ROS parameters (``f3rm_ros.ros.params``), YAML files and CLI flags all map onto these dataclasses
through the functions here; an unknown key is an error that lists the valid ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar
from collections.abc import Mapping

T = TypeVar("T")

__all__ = [
    "ConfigError",
    "param",
    "describe",
    "from_dict",
    "to_dict",
    "replace",
    "flatten",
    "unflatten",
    "load_yaml",
    "save_yaml",
    "add_cli_args",
    "apply_cli_args",
]


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the key and the reason."""


def param(default: Any, help: str, *, range: tuple[float, float] | None = None,  # noqa: A002
          read_only: bool = False, choices: tuple[Any, ...] | None = None) -> Any:
    """A dataclass field with a description (and optional range/choices/read-only flag).

    Mutable defaults (lists, dicts, dataclass instances) are wrapped in a default factory.
    """
    meta = {"help": help, "range": range, "read_only": read_only, "choices": choices}
    if isinstance(default, (list, dict, set)) or dataclasses.is_dataclass(default):
        import copy

        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    """What :func:`describe` tells about one (flattened) setting."""

    name: str
    type: Any
    default: Any
    help: str
    range: tuple[float, float] | None
    read_only: bool
    choices: tuple[Any, ...] | None


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def describe(cls: type, prefix: str = "") -> list[FieldInfo]:
    """All leaf settings of a config dataclass, flattened with dotted names, in declaration order."""
    out: list[FieldInfo] = []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        name = prefix + f.name
        if dataclasses.is_dataclass(tp):
            out.extend(describe(tp, name + "."))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = dataclasses.MISSING
        out.append(FieldInfo(name, tp, default, f.metadata.get("help", ""), f.metadata.get("range"),
                             bool(f.metadata.get("read_only", False)), f.metadata.get("choices")))
    return out


def _check_value(name: str, tp: Any, value: Any, meta: Mapping[str, Any]) -> Any:
    """Coerce ``value`` to ``tp`` where that is lossless; raise ConfigError otherwise."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_value(name, a, value, meta)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{name}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{name}: {value!r} is not one of {list(args)}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list, got {type(value).__name__} {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{name}: expected {len(args)} items, got {len(value)}")
            items = [_check_value(f"{name}[{i}]", a, v, {}) for i, (a, v) in enumerate(zip(args, value, strict=True))]
        else:
            item_tp = args[0] if args else Any
            items = [_check_value(f"{name}[{i}]", item_tp, v, {}) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(f"{name}: expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        value = float(value)
        if math.isnan(value):
            raise ConfigError(f"{name}: NaN is not a valid value")
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
    elif tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{name}: expected a path, got {value!r}")
        value = Path(value)
    rng = meta.get("range")
    if rng is not None and isinstance(value, (int, float)):
        lo, hi = rng
        if not (lo <= value <= hi):
            raise ConfigError(f"{name}: {value!r} is outside the allowed range [{lo}, {hi}]")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{name}: {value!r} is not one of {list(choices)}")
    return value


def _field_default(f: dataclasses.Field) -> Any:
    """The default value of a dataclass field (calling its factory), or None if it has none."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _merge(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied, nested mappings merged key by key."""
    out = dict(base)
    for k, v in changes.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def from_dict(cls: type[T], data: Mapping[str, Any] | None, *, where: str = "") -> T:
    """Build ``cls`` from a (nested) mapping; missing keys keep their defaults.

    Raises:
        ConfigError: for an unknown key (the message lists the valid keys), a value of the wrong
            type, NaN, or a value outside its declared range or choices.
    """
    data = dict(data or {})
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where or cls.__name__}: unknown key(s) {unknown}; valid keys are {sorted(fields)}")
    kwargs = {}
    for key, value in data.items():
        tp = hints[key]
        name = f"{where}.{key}" if where else key
        if dataclasses.is_dataclass(tp):
            if dataclasses.is_dataclass(value):
                value = to_dict(value)
            if not isinstance(value, Mapping):
                raise ConfigError(f"{name}: expected a mapping of {tp.__name__} settings, got {value!r}")
            # a partial mapping changes the field's own default (e.g. the feature field's 12x8 grid), not
            # the defaults of the nested class
            base = _field_default(fields[key])
            kwargs[key] = from_dict(tp, _merge(to_dict(base), value) if base is not None else value, where=name)
        else:
            kwargs[key] = _check_value(name, tp, value, fields[key].metadata)
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """A nested plain-Python dict of a config dataclass (tuples become lists, Paths strings)."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(obj)


def replace(obj: T, **changes: Any) -> T:
    """Like :func:`dataclasses.replace` but validated, and accepting dotted keys for nested configs."""
    merged = flatten(obj)
    for key, value in changes.items():
        key = key.replace("__", ".")
        if key not in merged:
            raise ConfigError(f"{type(obj).__name__}: unknown key {key!r}; valid keys are {sorted(merged)}")
        merged[key] = value
    return from_dict(type(obj), unflatten(merged))


def flatten(obj: Any) -> dict[str, Any]:
    """``{"a.b": value}`` for every leaf setting of a config dataclass instance."""
    out: dict[str, Any] = {}

    def walk(v: Any, prefix: str) -> None:
        for f in dataclasses.fields(v):
            x = getattr(v, f.name)
            if dataclasses.is_dataclass(x):
                walk(x, prefix + f.name + ".")
            else:
                out[prefix + f.name] = x

    walk(obj, "")
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten` (on plain dicts)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def load_yaml(cls: type[T], path: str | Path, *, section: str | None = None) -> T:
    """Read a config from a YAML file (optionally one top-level section of it)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if section is not None:
        data = data.get(section, {})
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return from_dict(cls, data, where=str(path) + (f":{section}" if section else ""))


def save_yaml(obj: Any, path: str | Path) -> None:
    """Write a config as YAML, atomically."""
    import yaml

    from f3rm_ros.core.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(obj), sort_keys=False))


def add_cli_args(parser: argparse.ArgumentParser, cls: type, prefix: str = "") -> None:
    """Add ``--section.key VALUE`` flags for every setting of ``cls`` (values parsed as YAML)."""
    group = parser.add_argument_group(f"{cls.__name__} settings")
    for info in describe(cls):
        default = info.default if info.default is not dataclasses.MISSING else None
        group.add_argument(f"--{prefix}{info.name}", dest=f"cfg:{prefix}{info.name}", default=None,
                           metavar="VALUE", help=f"{info.help} (default: {default!r})")


def apply_cli_args(base: T, args: argparse.Namespace, prefix: str = "") -> T:
    """Return ``base`` with the values of the flags added by :func:`add_cli_args` that were given."""
    import yaml

    changes = {}
    for key, value in vars(args).items():
        if key.startswith(f"cfg:{prefix}") and value is not None:
            changes[key[len("cfg:") + len(prefix):]] = yaml.safe_load(value)
    return replace(base, **changes) if changes else base
