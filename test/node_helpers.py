"""Shared helpers of the test_node_*.py tests (real rclpy over DDS; no mocks)."""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from collections.abc import Callable

import rclpy
from rclpy.executors import MultiThreadedExecutor

from f3rm_ros.ros.common import stop_process  # noqa: F401 - re-exported for the node tests

ROOT = Path(__file__).resolve().parents[1]


def wait_for(pred: Callable[[], Any], timeout: float, what: str = "condition", poll: float = 0.05) -> Any:
    """Poll ``pred`` until it returns something truthy; raise AssertionError naming ``what`` on timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = pred()
        if v:
            return v
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Spinner:
    """Spins nodes on a MultiThreadedExecutor in a background thread (inside an rclpy context)."""

    def __init__(self, *nodes: Any, threads: int = 4) -> None:
        self.executor = MultiThreadedExecutor(num_threads=threads)
        for n in nodes:
            self.executor.add_node(n)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # context shut down
            pass

    def add(self, node: Any) -> None:
        self.executor.add_node(node)

    def stop(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.thread.join(timeout=5.0)


def ros_args(params: dict[str, Any], namespace: str) -> list[str]:
    out = ["--ros-args", "-r", f"__ns:={namespace}"]
    for k, v in params.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        out += ["-p", f"{k}:={v}"]
    return out


@contextlib.contextmanager
def logs_on_failure(*log_paths: Path, lines: int = 25):
    """On an exception inside the block, print the last ``lines`` lines of each node log (the nodes run in their own
    processes, so their logs are otherwise lost when a check fails on a CI machine), then re-raise."""
    try:
        yield
    except BaseException:
        for path in log_paths:
            try:
                tail = Path(path).read_text(errors="replace").splitlines()[-lines:]
            except OSError as e:
                tail = [f"(unreadable: {e})"]
            print(f"--- last {len(tail)} lines of {Path(path).name} ---\n" + "\n".join(tail))
        raise


def node_logs_on_failure(*names: str):
    """Decorator of a test taking ``tmp_path``: on failure, print the tails of these node logs under ``tmp_path``."""
    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with logs_on_failure(*(Path(kwargs["tmp_path"]) / n for n in names)):
                return fn(*args, **kwargs)
        return wrapper
    return deco


def start_node(module: str, namespace: str, params: dict[str, Any], log_path: Path) -> subprocess.Popen:
    """Run ``python -m f3rm_ros.ros.<module>`` with parameters, output to ``log_path``."""
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    log = open(log_path, "w")
    return subprocess.Popen([sys.executable, "-m", f"f3rm_ros.ros.{module}", *ros_args(params, namespace)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))


def call_service(node: Any, srv_type: Any, name: str, request: Any, timeout: float = 20.0) -> Any:
    """Call a service from ``node`` (spun elsewhere) and wait for the answer.

    The client is made once per node and service and kept for the node's later calls, as ``f3rm_ros.ros.client``
    does: a client made just before its call races the server's discovery of its response reader, and Fast DDS
    drops a response whose reader the server has not matched within 100 ms (ros2/rmw_fastrtps#390, #467), which a
    2-core machine busy rendering and training can miss (a CaptureControl answer lost that way timed a test out)."""
    clients = node.__dict__.setdefault("_f3rm_test_clients", {})
    client = clients.get((srv_type, name))
    fresh = client is None
    if fresh:
        client = clients[(srv_type, name)] = node.create_client(srv_type, name)
    if not client.wait_for_service(timeout_sec=timeout):
        raise AssertionError(f"service {name} did not appear within {timeout} s")
    if fresh:
        from f3rm_ros.ros.client import MATCH_SETTLE_S  # noqa: PLC0415 - the client's own settle time

        time.sleep(MATCH_SETTLE_S)  # the server's side of the matching (its response writer to this client's reader)
    fut = client.call_async(request)
    wait_for(fut.done, timeout, f"answer of {name}")
    return fut.result()


def context() -> Any:
    """``rclpy.init()`` as a context manager (one per test)."""
    return rclpy.init()
