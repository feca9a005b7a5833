"""``f3rm-ros bringup CONFIG.yaml``: run several f3rm_ros nodes in one process (no ``ros2 launch`` needed).

The bringup file names the nodes and, for each, its parameter files (ROS 2 format, the same files the
launch files pass), inline parameter overrides and topic remappings::

    namespace: /f3rm                 # every node's namespace
    nodes:
      - executable: sim_camera_node  # a program in scripts/nodes (installed to lib/f3rm_ros)
        parameters: [sim_camera_node.yaml]   # relative to the bringup file's folder (config/)
      - executable: query_node
        parameters: [query_node.yaml, {planner.num_steps: 50}]   # a mapping = inline overrides
        remappings: {"camera/image_raw": "/camera/color/image_raw"}

Every node gets the parameters of its files the way ``ros2 launch`` would give them (node-name keys
such as ``/**/query_node``), through rcl's own ``--params-file`` parsing; the nodes are spun together
on one ``MultiThreadedExecutor``. They talk to each other and to clients over DDS as usual.

With ``respawn: true`` in the file (or ``f3rm-ros bringup --respawn``) each node runs in a process of its own
instead, and one that dies (killed, crashed) is started again after ``respawn_delay_s`` (1 s; at most
``max_restarts`` times a minute), as ``respawn=True`` does in the launch files. The query node then serves its
field again by itself (``restore_last_field``) and clients reconnect: nothing else has to be restarted.
``--ready-file`` is written once every node is in the ROS graph.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Mapping

import yaml

__all__ = ["BringupError", "NodeSpec", "Bringup", "load_bringup", "node_class", "ros_arguments", "run_bringup",
           "node_arguments", "run_supervised", "NODES_DIR", "REPO_ROOT"]

REPO_ROOT = Path(__file__).resolve().parents[2]
NODES_DIR = REPO_ROOT / "scripts" / "nodes"
CONFIG_DIR = REPO_ROOT / "config"


class BringupError(ValueError):
    """The bringup file is invalid; the message names the entry."""


@dataclass
class NodeSpec:
    executable: str
    param_files: list[Path] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)
    remappings: dict[str, str] = field(default_factory=dict)


@dataclass
class Bringup:
    namespace: str
    nodes: list[NodeSpec]
    source: Path | None = None
    respawn: bool = False  # one process per node, restarted when it dies


def _module_of_executable(executable: str) -> str:
    """The module whose ``main`` the executable runs (parsed from scripts/nodes/<executable>)."""
    script = NODES_DIR / executable
    if script.is_file():
        m = re.search(r"^from\s+([\w.]+)\s+import\s+main\b", script.read_text(), re.M)
        if m:
            return m.group(1)
    return f"f3rm_ros.ros.{executable}"


def node_class(executable: str) -> type:
    """The node class an executable runs: the module's ``NODE_CLASS``, else its one rclpy Node subclass.

    Raises:
        BringupError: unknown executable or no node class found.
    """
    from rclpy.node import Node

    if not re.fullmatch(r"[A-Za-z0-9_]+", executable):
        raise BringupError(f"executable {executable!r}: only letters, digits and '_'")
    modname = _module_of_executable(executable)
    try:
        mod = importlib.import_module(modname)
    except ImportError as e:
        raise BringupError(f"executable {executable!r}: cannot import {modname}: {e}") from None
    cls = getattr(mod, "NODE_CLASS", None)
    if cls is not None:
        return cls
    found = [c for _, c in inspect.getmembers(mod, inspect.isclass)
             if issubclass(c, Node) and c.__module__ == mod.__name__]
    if len(found) != 1:
        raise BringupError(f"executable {executable!r}: module {modname} defines {len(found)} node classes "
                           f"({[c.__name__ for c in found]}); set NODE_CLASS in it")
    return found[0]


def load_bringup(path: str | Path) -> Bringup:
    """Read and check a bringup file (parameter files must exist; executables must be known)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise BringupError(f"bringup file not found: {path}") from None
    except yaml.YAMLError as e:
        raise BringupError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("nodes"), list) or not data["nodes"]:
        raise BringupError(f"{path}: expected a mapping with a non-empty 'nodes' list")
    unknown = set(data) - {"namespace", "nodes", "respawn"}
    if unknown:
        raise BringupError(f"{path}: unknown key(s) {sorted(unknown)}; valid: ['namespace', 'nodes', 'respawn']")
    if not isinstance(data.get("respawn", False), bool):
        raise BringupError(f"{path}: respawn must be true or false, got {data['respawn']!r}")
    ns = str(data.get("namespace", "/f3rm"))
    ns = "/" + ns.strip("/")
    specs = []
    for i, entry in enumerate(data["nodes"]):
        where = f"{path}: nodes[{i}]"
        if not isinstance(entry, Mapping) or "executable" not in entry:
            raise BringupError(f"{where}: needs 'executable'")
        bad = set(entry) - {"executable", "parameters", "remappings"}
        if bad:
            raise BringupError(f"{where}: unknown key(s) {sorted(bad)}; valid: executable, parameters, remappings")
        exe = str(entry["executable"])
        if not (NODES_DIR / exe).is_file():
            raise BringupError(f"{where}: no executable {exe!r} in {NODES_DIR}")
        spec = NodeSpec(exe)
        for p in entry.get("parameters") or []:
            if isinstance(p, Mapping):
                spec.overrides.update({str(k): v for k, v in p.items()})
                continue
            f = Path(str(p))
            f = f if f.is_absolute() else path.parent / f
            if not f.is_file():
                raise BringupError(f"{where}: parameter file not found: {f}")
            spec.param_files.append(f.resolve())
        remaps = entry.get("remappings") or {}
        if not isinstance(remaps, Mapping):
            raise BringupError(f"{where}: remappings must be a mapping from -> to")
        spec.remappings = {str(k): str(v) for k, v in remaps.items()}
        specs.append(spec)
    names = [s.executable for s in specs]
    if len(set(names)) != len(names):
        raise BringupError(f"{path}: a node appears twice: {names}")
    return Bringup(ns, specs, path, bool(data.get("respawn", False)))


def _override_file(spec: NodeSpec, tmpdir: Path) -> Path:
    from f3rm_ros.ros.paramfile import format_value

    lines = [f"/**/{spec.executable}:", "  ros__parameters:"]
    lines += [f"    {k}: {format_value(v)}" for k, v in spec.overrides.items()]
    out = tmpdir / f"{spec.executable}.overrides.yaml"
    out.write_text("\n".join(lines) + "\n")
    return out


def ros_arguments(bringup: Bringup, tmpdir: Path, extra_param_files: list[Path] = ()) -> list[str]:
    """The ``--ros-args`` of the process: namespace, every parameter file, per-node remappings."""
    args = ["--ros-args", "-r", f"__ns:={bringup.namespace}"]
    for spec in bringup.nodes:
        for f in spec.param_files:
            args += ["--params-file", str(f)]
        if spec.overrides:
            args += ["--params-file", str(_override_file(spec, tmpdir))]
        for src, dst in spec.remappings.items():
            args += ["-r", f"{spec.executable}:{src}:={dst}"]
    for f in extra_param_files:
        args += ["--params-file", str(f)]
    return args


def node_arguments(bringup: Bringup, spec: NodeSpec, tmpdir: Path, extra_param_files: list[Path] = ()) -> list[str]:
    """The ``--ros-args`` of one node in a process of its own (:func:`run_supervised`)."""
    args = ["--ros-args", "-r", f"__ns:={bringup.namespace}"]
    for f in spec.param_files:
        args += ["--params-file", str(f)]
    if spec.overrides:
        args += ["--params-file", str(_override_file(spec, tmpdir))]
    for src, dst in spec.remappings.items():
        args += ["-r", f"{src}:={dst}"]
    for f in extra_param_files:
        args += ["--params-file", str(f)]
    return args


def _nodes_in_graph(names: list[str], namespace: str, timeout: float) -> bool:
    """Wait until every node name is in the ROS graph under ``namespace`` (a node of this process looks)."""
    import time

    import rclpy

    with rclpy.init(args=[]):
        node = rclpy.create_node(f"bringup_supervisor_{os.getpid()}", namespace=namespace)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                seen = {(n, ns) for n, ns in node.get_node_names_and_namespaces()}
                if all((n, namespace) in seen for n in names):
                    return True
                time.sleep(0.2)
            return False
        finally:
            node.destroy_node()


def run_supervised(bringup: Bringup, extra_param_files: list[Path] = (), ready_file: str | None = None,
                   respawn_delay_s: float = 1.0, max_restarts: int = 10) -> int:
    """Run each node of ``bringup`` in a process of its own and start a node again when its process ends (after
    ``respawn_delay_s``; a node that ends ``max_restarts`` times within a minute is given up), until Ctrl-C /
    SIGTERM, which stops every node cleanly (SIGINT, then SIGKILL after 20 s).

    Returns:
        0 on a clean stop, 1 if a node was given up.
    """
    import signal
    import subprocess
    import threading
    import time

    from f3rm_ros.ros.common import stop_process

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    specs = {s.executable: s for s in bringup.nodes}
    procs: dict[str, subprocess.Popen] = {}
    ends: dict[str, list[float]] = {exe: [] for exe in specs}
    due: dict[str, float] = {}  # node -> when to start it again
    given_up: set[str] = set()
    with tempfile.TemporaryDirectory(prefix="f3rm_bringup_") as tmp:
        def start(exe: str) -> None:
            cmd = [sys.executable, "-m", _module_of_executable(exe),
                   *node_arguments(bringup, specs[exe], Path(tmp), list(extra_param_files))]
            procs[exe] = subprocess.Popen(cmd)
            print(f"[bringup] started {exe} (pid {procs[exe].pid})", flush=True)

        for exe in specs:
            start(exe)
        if ready_file:
            def ready() -> None:
                if _nodes_in_graph(list(specs), bringup.namespace, timeout=300.0) and not stop.is_set():
                    Path(ready_file).write_text("\n".join(f"{bringup.namespace}/{n}" for n in specs) + "\n")
            threading.Thread(target=ready, daemon=True).start()
        try:
            while not stop.wait(0.2):
                now = time.monotonic()
                for exe, p in list(procs.items()):
                    if p.poll() is None:
                        continue
                    del procs[exe]
                    ends[exe] = [t for t in ends[exe] if now - t < 60.0] + [now]
                    if len(ends[exe]) > max_restarts:
                        given_up.add(exe)
                        print(f"[bringup] {exe} ended {len(ends[exe])} times within a minute (last exit code "
                              f"{p.returncode}); not started again", file=sys.stderr, flush=True)
                        continue
                    print(f"[bringup] {exe} (pid {p.pid}) ended with exit code {p.returncode}; starting it again in "
                          f"{respawn_delay_s:g} s", file=sys.stderr, flush=True)
                    due[exe] = now + respawn_delay_s
                for exe, t in list(due.items()):
                    if now >= t and not stop.is_set():
                        del due[exe]
                        start(exe)
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
            for p in procs.values():
                stop_process(p)
    return 1 if given_up else 0


def run_bringup(path: str | Path, extra_param_files: list[Path] = (), num_threads: int | None = None,
                ready_file: str | None = None, respawn: bool | None = None) -> int:
    """Create every node of the bringup file in this process and spin them until Ctrl-C / SIGTERM.

    Args:
        path: the bringup YAML.
        extra_param_files: more parameter files applied after the listed ones (they win).
        num_threads: executor threads (default: each node's ``executor_threads`` or 2, at least 4 in all).
        ready_file: if given, this file is written once every node is created (for scripts and tests).
        respawn: one process per node, started again when it dies (:func:`run_supervised`); None = the file's
            ``respawn`` key.

    Returns:
        0 on a clean stop, 1 if a node could not be created (or, respawning, was given up).
    """
    import signal

    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

    bringup = load_bringup(path)
    if bringup.respawn if respawn is None else respawn:
        for spec in bringup.nodes:
            node_class(spec.executable)  # an unknown executable fails here, before any process starts
        return run_supervised(bringup, list(extra_param_files), ready_file)
    classes = [(s, node_class(s.executable)) for s in bringup.nodes]
    with tempfile.TemporaryDirectory(prefix="f3rm_bringup_") as tmp:
        args = [sys.argv[0] if sys.argv else "f3rm-ros"] + ros_arguments(bringup, Path(tmp), list(extra_param_files))
        def on_term(*_: Any) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, on_term)
        try:
            with rclpy.init(args=args):
                nodes = []
                for spec, cls in classes:
                    try:
                        nodes.append(cls())
                        if getattr(nodes[-1], "alive", None) is None:  # every node offers ~/alive (clients watch it)
                            from f3rm_ros.ros.common import AliveBeacon

                            nodes[-1].alive = AliveBeacon(nodes[-1], "ready")
                        print(f"[bringup] started {nodes[-1].get_fully_qualified_name()}", flush=True)
                    except Exception as e:
                        print(f"[bringup] cannot start {spec.executable}: {type(e).__name__}: {e}", file=sys.stderr,
                              flush=True)
                        for n in nodes:
                            n.destroy_node()
                        return 1
                threads = sum(int(getattr(n, "executor_threads", 2)) for n in nodes)
                executor = MultiThreadedExecutor(num_threads=num_threads or max(4, threads))
                for n in nodes:
                    executor.add_node(n)
                if ready_file:
                    Path(ready_file).write_text("\n".join(n.get_fully_qualified_name() for n in nodes) + "\n")
                try:
                    executor.spin()
                except (KeyboardInterrupt, ExternalShutdownException):
                    pass
                finally:
                    for n in nodes:
                        closer = getattr(n, "close", None)
                        if callable(closer):
                            try:
                                closer()
                            except Exception as e:  # pragma: no cover - best effort
                                print(f"[bringup] error closing {n.get_name()}: {e}", file=sys.stderr)
                    executor.shutdown(timeout_sec=2.0)
                    for n in nodes:
                        n.destroy_node()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
    return 0
