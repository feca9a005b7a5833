"""YAML values that remember their file and line, for error messages like ``scene.yaml:12: ...``.

:func:`load_yaml_nodes` parses a file into a tree of :class:`YNode`; the typed getters
(:meth:`YNode.number`, :meth:`YNode.vector`, ...) raise :class:`SceneError` naming the file, the
1-based line, the dotted path of the value and the problem.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any
from collections.abc import Iterator

import yaml

__all__ = ["SceneError", "YNode", "load_yaml_nodes", "load_yaml_text"]


class SceneError(ValueError):
    """A scene file is invalid; the message starts with ``file:line:`` and names the setting."""


class YNode:
    """One YAML node with its location. ``path`` is the dotted path from the root (``objects[2].pose``)."""

    def __init__(self, node: yaml.Node, loader: yaml.SafeLoader, file: str, path: str):
        self._node = node
        self._loader = loader
        self.file = file
        self.path = path

    # ------------------------------------------------------------------------------------ basics
    @property
    def line(self) -> int:
        """1-based line number where this value starts."""
        return self._node.start_mark.line + 1

    def error(self, message: str) -> SceneError:
        where = f"{self.path}: " if self.path else ""
        return SceneError(f"{self.file}:{self.line}: {where}{message}")

    @property
    def is_mapping(self) -> bool:
        return isinstance(self._node, yaml.MappingNode)

    @property
    def is_sequence(self) -> bool:
        return isinstance(self._node, yaml.SequenceNode)

    def _child_path(self, key: str | int) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else str(key)

    # --------------------------------------------------------------------------------- mappings
    def mapping(self, allowed: tuple[str, ...] | list[str] | None = None,
                required: tuple[str, ...] | list[str] = ()) -> dict[str, YNode]:
        """Children of a mapping by key; unknown, duplicate or missing keys are errors."""
        if not self.is_mapping:
            raise self.error(f"expected a mapping, got {self._describe()}")
        out: dict[str, YNode] = {}
        for knode, vnode in self._node.value:
            key = self._loader.construct_object(knode, deep=True)
            if not isinstance(key, str):
                raise SceneError(f"{self.file}:{knode.start_mark.line + 1}: {self.path}: "
                                 f"keys must be strings, got {key!r}")
            if key in out:
                raise SceneError(f"{self.file}:{knode.start_mark.line + 1}: {self._child_path(key)}: duplicate key")
            if allowed is not None and key not in allowed:
                raise SceneError(f"{self.file}:{knode.start_mark.line + 1}: {self._child_path(key)}: unknown key "
                                 f"{key!r}; valid keys are {sorted(allowed)}")
            out[key] = YNode(vnode, self._loader, self.file, self._child_path(key))
        missing = [k for k in required if k not in out]
        if missing:
            raise self.error(f"missing required key(s) {missing}")
        return out

    def sequence(self) -> list[YNode]:
        if not self.is_sequence:
            raise self.error(f"expected a list, got {self._describe()}")
        return [YNode(n, self._loader, self.file, self._child_path(i)) for i, n in enumerate(self._node.value)]

    def __iter__(self) -> Iterator[YNode]:
        return iter(self.sequence())

    # ---------------------------------------------------------------------------------- scalars
    def value(self) -> Any:
        """The plain Python value (deep)."""
        return self._loader.construct_object(self._node, deep=True)

    def _describe(self) -> str:
        if self.is_mapping:
            return "a mapping"
        if self.is_sequence:
            return "a list"
        return repr(self.value())

    def number(self, lo: float | None = None, hi: float | None = None) -> float:
        """A finite number within [lo, hi]."""
        v = self.value() if not (self.is_mapping or self.is_sequence) else None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.error(f"expected a number, got {self._describe()}")
        v = float(v)
        if not math.isfinite(v):
            raise self.error(f"expected a finite number, got {v!r}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise self.error(f"{v!r} is outside the allowed range [{lo}, {hi}]")
        return v

    def integer(self, lo: int | None = None, hi: int | None = None) -> int:
        v = self.number(lo, hi)
        if not float(v).is_integer():
            raise self.error(f"expected an integer, got {v!r}")
        return int(v)

    def string(self) -> str:
        v = self.value() if not (self.is_mapping or self.is_sequence) else None
        if not isinstance(v, str) or not v.strip():
            raise self.error(f"expected a non-empty string, got {self._describe()}")
        return v

    def boolean(self) -> bool:
        v = self.value() if not (self.is_mapping or self.is_sequence) else None
        if not isinstance(v, bool):
            raise self.error(f"expected true or false, got {self._describe()}")
        return v

    def vector(self, n: int, lo: float | None = None, hi: float | None = None) -> list[float]:
        """A list of exactly ``n`` finite numbers."""
        items = self.sequence()
        if len(items) != n:
            raise self.error(f"expected {n} numbers, got {len(items)}")
        return [it.number(lo, hi) for it in items]

    def strings(self) -> list[str]:
        return [it.string() for it in self.sequence()]

    def integers(self, lo: int | None = None, hi: int | None = None) -> list[int]:
        return [it.integer(lo, hi) for it in self.sequence()]


def load_yaml_text(text: str, file: str) -> YNode:
    """Parse YAML text into a :class:`YNode` tree (``file`` is used in messages)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f"{mark.line + 1}:" if mark is not None else ""
        raise SceneError(f"{file}:{line} not valid YAML: {getattr(e, 'problem', e)}") from None
    if node is None:
        raise SceneError(f"{file}:1: the file is empty")
    return YNode(node, loader, file, "")


def load_yaml_nodes(path: str | Path) -> YNode:
    """Read and parse a YAML file into a :class:`YNode` tree."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SceneError(f"{path}: file not found") from None
    return load_yaml_text(text, str(path))
