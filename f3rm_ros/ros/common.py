"""Helpers shared by every f3rm_ros node: root-confined paths, diagnostics, the ``main()`` runner.

* :class:`Refused`: the one way a node refuses a request with a reason (raise it anywhere below a
  service, action or topic callback; the callback answers ``success=false`` with the message, and the
  node lives on). :class:`PathRefused` is the refusal of a path.
* :func:`resolve_under_root` / :func:`resolve_under_roots`: a path from a request (service, action
  goal, topic) is resolved (symlinks and ``..`` included) and refused with a :class:`PathRefused`
  reason unless it lies inside one of the node's configured roots, so a request can never make a
  node read or write arbitrary files.
* :class:`DiagnosticsPublisher`: publishes the node's status as ``diagnostic_msgs/DiagnosticArray``
  on ``/diagnostics`` at a steady rate (1 Hz by default).
* :class:`AliveBeacon`: the node's ``~/alive`` topic (``std_msgs/String``, its readiness: "starting",
  "ready", ...), offered with DDS liveliness AUTOMATIC and a lease of :data:`ALIVE_LEASE_S`: the middleware
  (not the executor) asserts it while the process lives, so a client waiting on the node learns within about
  a second that it was killed (:class:`~f3rm_ros.ros.client.F3RMClient` raises ``ServerGone``), long before
  DDS discovery drops a dead participant (~20 s).
* :data:`NOT_READY` / :data:`BUSY`: the first words of a refusal that will go away by itself (the node is
  still starting; its queue for expensive work is full): the client raises ``NotReady`` / ``Busy`` for them.
* :func:`run_node` (alias :func:`spin_node`): the body of every node's ``main()``: ``rclpy.init``
  as a context manager, a ``MultiThreadedExecutor``, clean exit on Ctrl-C / external shutdown.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any
from collections.abc import Callable, Iterable, Mapping, Sequence

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.qos import DurabilityPolicy, HistoryPolicy, LivelinessPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

__all__ = [
    "Refused",
    "PathRefused",
    "resolve_under_root",
    "resolve_under_roots",
    "expand_root",
    "DiagnosticsPublisher",
    "OK",
    "WARN",
    "ERROR",
    "STALE",
    "run_node",
    "spin_node",
    "AliveBeacon",
    "ALIVE_LEASE_S",
    "ALIVE_QOS",
    "NOT_READY",
    "BUSY",
    "ReadWriteLock",
    "release_free_memory",
]

# --- liveliness and temporary refusals -------------------------------------------------------------

ALIVE_LEASE_S = 1.0
"""Liveliness lease of every node's ``~/alive`` topic, seconds. Client and node must use the same value: a
DDS reader detects a lost writer only after its *own* requested lease, and refuses a writer offering more."""

ALIVE_QOS = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.TRANSIENT_LOCAL, liveliness=LivelinessPolicy.AUTOMATIC,
                       liveliness_lease_duration=Duration(seconds=ALIVE_LEASE_S))

NOT_READY = "not ready yet"
BUSY = "busy"


class AliveBeacon:
    """Publishes the node's readiness on ``~/alive`` (transient-local, liveliness AUTOMATIC, lease
    :data:`ALIVE_LEASE_S`); see the module docstring. :meth:`set` publishes a new state ("starting", "ready",
    "inactive", "loading ...") only when it changed."""

    def __init__(self, node: Any, state: str = "starting") -> None:
        self.node = node
        self.publisher = node.create_publisher(String, "~/alive", ALIVE_QOS)
        self.state = ""
        self._lock = threading.Lock()
        self.set(state)

    def set(self, state: str) -> None:
        with self._lock:
            if state == self.state:
                return
            self.state = state
            try:
                self.publisher.publish(String(data=state))
            except Exception:  # noqa: BLE001 - context shutting down
                pass


def _level(v: Any) -> int:
    """A diagnostic level as an int (the message constants are 1-byte ``bytes``)."""
    if isinstance(v, (bytes, bytearray)):
        return int(v[0])
    return int(v)


OK = _level(DiagnosticStatus.OK)
WARN = _level(DiagnosticStatus.WARN)
ERROR = _level(DiagnosticStatus.ERROR)
STALE = _level(DiagnosticStatus.STALE)


# --- refusals --------------------------------------------------------------------------------------

class Refused(Exception):
    """A request is refused; the message is the reason given to the client.

    A node's request handler raises it (also from helpers it calls) and its callback turns it into the
    response's ``success=false`` + ``message``; any other exception is an internal error, also answered,
    never raised into the executor. :class:`~f3rm_ros.ros.params.ParamBinding` takes it from a
    ``check`` as the reason a parameter change is refused.
    """


class PathRefused(Refused, ValueError):
    """A requested path is empty, malformed or outside every allowed root; the message says why."""


# --- memory -------------------------------------------------------------------------------------------

_LIBC: Any = None


def release_free_memory() -> bool:
    """Give the heap memory freed by the C allocator back to the OS (glibc ``malloc_trim``; False elsewhere).

    A node that serves expensive requests on several executor threads (the query node) leaves freed memory in
    one glibc arena per thread; without this its RSS climbs for a long while before it levels off."""
    global _LIBC
    try:
        if _LIBC is None:
            import ctypes
            import ctypes.util

            _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(_LIBC.malloc_trim(0))
    except (OSError, AttributeError):
        _LIBC = False
        return False


# --- a readers-writer lock ------------------------------------------------------------------------

class ReadWriteLock:
    """Many readers or one writer. A waiting writer holds back new ordinary readers (so it is not starved by a
    stream of long reads), but not ``urgent`` ones: short reads (a similarity query) never queue behind a writer
    that waits for a long read (a grasp query) to end; they only wait while a writer holds the lock.

        with lock.read():          # or lock.read(urgent=True), lock.write()
            ...
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    def read(self, urgent: bool = False) -> _Held:
        with self._cond:
            while self._writer or (self._writers_waiting and not urgent):
                self._cond.wait()
            self._readers += 1
        return _Held(self._release_read)

    def write(self) -> _Held:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        return _Held(self._release_write)

    def _release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            self._cond.notify_all()

    def _release_write(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()


class _Held:
    """A held lock as a context manager (released on exit)."""

    def __init__(self, release: Callable[[], None]) -> None:
        self._release = release

    def __enter__(self) -> _Held:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._release()


# --- paths -----------------------------------------------------------------------------------------


def expand_root(root: str | os.PathLike) -> Path:
    """A configured root (``~`` and environment variables expanded) as an absolute, resolved path."""
    text = os.path.expandvars(os.path.expanduser(str(root)))
    if not text:
        raise PathRefused("the configured root is empty")
    return Path(text).resolve()


def resolve_under_root(path: str | os.PathLike, root: str | os.PathLike, what: str = "path",
                       must_exist: bool = False) -> Path:
    """Resolve ``path`` and check that it lies inside ``root`` (after following symlinks).

    A relative ``path`` is taken relative to ``root``. The root itself counts as inside.

    Args:
        path: the path from the request.
        root: the node's configured root folder.
        what: what the path is, for the refusal message ("dataset path", "checkpoint", ...).
        must_exist: refuse a path that does not exist.

    Returns:
        The absolute, resolved path.

    Raises:
        PathRefused: empty path, NUL byte, outside the root (also via a symlink or ``..``), or missing
            when ``must_exist``.
    """
    return resolve_under_roots(path, [root], what=what, must_exist=must_exist)


def resolve_under_roots(path: str | os.PathLike, roots: Sequence[str | os.PathLike], what: str = "path",
                        must_exist: bool = False) -> Path:
    """As :func:`resolve_under_root` with several allowed roots (a relative path uses the first)."""
    text = os.fspath(path)
    if not isinstance(text, str) or not text.strip():
        raise PathRefused(f"{what} is empty")
    if "\x00" in text:
        raise PathRefused(f"{what} contains a NUL byte")
    if not roots:
        raise PathRefused(f"{what} refused: no root folder is configured")
    resolved_roots = [expand_root(r) for r in roots]
    p = Path(os.path.expanduser(text))
    if not p.is_absolute():
        p = resolved_roots[0] / p
    try:
        real = p.resolve()  # follows every symlink that exists, collapses ".."
    except (OSError, RuntimeError) as e:  # symlink loop
        raise PathRefused(f"{what} {text!r} cannot be resolved: {e}") from None
    if not any(real == r or real.is_relative_to(r) for r in resolved_roots):
        allowed = ", ".join(str(r) for r in resolved_roots)
        via = f" (resolves to {real})" if str(real) != text else ""
        raise PathRefused(f"{what} {text!r}{via} is outside the allowed root folder(s) {allowed}; "
                          "requests may only name files under the node's configured roots")
    if must_exist and not real.exists():
        raise PathRefused(f"{what} {text!r} does not exist")
    return real


# --- diagnostics -----------------------------------------------------------------------------------

StatusFn = Callable[[], "tuple[int, str, Mapping[str, Any]]"]


class DiagnosticsPublisher:
    """Publishes one ``DiagnosticStatus`` for a node on ``/diagnostics`` every ``period_s`` seconds.

    The status comes from ``status_fn() -> (level, message, values)`` when given (called on the
    timer; an exception in it is reported as an ERROR status, never raised), else from the last
    :meth:`set` call. ``level`` is one of OK/WARN/ERROR/STALE; ``values`` become key/value pairs.

    Args:
        node: the node (plain or lifecycle; the publisher is a plain one, active in every state).
        status_fn: optional callable giving the current status.
        period_s: publishing period, seconds.
        name: status name (default: ``"<fully qualified node name>"``).
        hardware_id: ``hardware_id`` field (e.g. the device used).
        callback_group: callback group of the timer.
    """

    def __init__(self, node: Any, status_fn: StatusFn | None = None, period_s: float = 1.0, name: str | None = None,
                 hardware_id: str = "", callback_group: Any = None) -> None:
        if not period_s > 0:
            raise ValueError(f"period_s must be > 0, got {period_s!r}")
        self.node = node
        self.status_fn = status_fn
        self.name = name or node.get_fully_qualified_name()
        self.hardware_id = hardware_id
        self._lock = threading.Lock()
        self._state: tuple[int, str, dict[str, Any]] = (OK, "starting", {})
        self.publisher = node.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.timer = node.create_timer(period_s, self.publish, callback_group=callback_group)
        self.count = 0

    def set(self, level: int, message: str, values: Mapping[str, Any] | None = None) -> None:
        """Set the status published from now on (used when no ``status_fn`` is given)."""
        with self._lock:
            self._state = (_level(level), str(message), dict(values or {}))

    def current(self) -> tuple[int, str, dict[str, Any]]:
        """The status that would be published now."""
        if self.status_fn is None:
            with self._lock:
                return self._state
        try:
            level, message, values = self.status_fn()
            return _level(level), str(message), dict(values or {})
        except Exception as e:  # a diagnostics bug must never take the node down
            return ERROR, f"status callback failed: {type(e).__name__}: {e}", {}

    def make_message(self) -> DiagnosticArray:
        level, message, values = self.current()
        st = DiagnosticStatus(level=bytes([level]), name=self.name, message=message, hardware_id=self.hardware_id)
        st.values = [KeyValue(key=str(k), value=_fmt(v)) for k, v in values.items()]
        arr = DiagnosticArray(status=[st])
        arr.header.stamp = self.node.get_clock().now().to_msg()
        return arr

    def publish(self) -> None:
        """Publish the current status now (also called by the timer)."""
        try:
            self.publisher.publish(self.make_message())
            self.count += 1
        except Exception as e:  # context shutting down
            self.node.get_logger().warning(f"diagnostics not published: {type(e).__name__}: {e}",
                                           throttle_duration_sec=10.0)

    def destroy(self) -> None:
        self.node.destroy_timer(self.timer)
        self.node.destroy_publisher(self.publisher)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


# --- main ------------------------------------------------------------------------------------------

def run_node(node_factory: Callable[[], Any], args: Iterable[str] | None = None, num_threads: int | None = None) -> int:
    """Create a node and spin it on a ``MultiThreadedExecutor`` until Ctrl-C or shutdown.

    The body of every node's ``main()``::

        def main(args=None):
            return run_node(CaptureNode, args)

    Args:
        node_factory: callable returning the node (a class works); called after ``rclpy.init``.
        args: command line (``--ros-args ...``); None = ``sys.argv``.
        num_threads: executor threads (None = the node's ``executor_threads`` if it has one, else rclpy's
            default).

    Returns:
        Process exit code: 0 on a clean stop, 1 if the node could not be created (reason logged).
    """
    args = list(sys.argv if args is None else args)
    code = 0
    try:
        with rclpy.init(args=args):
            try:
                node = node_factory()
            except Exception as e:  # a bad parameter file etc.: say why, exit non-zero
                print(f"[f3rm_ros] cannot start node: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                return 1
            if getattr(node, "alive", None) is None:  # every node offers ~/alive (clients watch it)
                node.alive = AliveBeacon(node, "ready")
            # a node that needs more threads than the default (one per request it may hold) says so
            executor = MultiThreadedExecutor(num_threads=num_threads or getattr(node, "executor_threads", None))
            executor.add_node(node)
            try:
                executor.spin()
            except (KeyboardInterrupt, ExternalShutdownException):
                pass
            except Exception:
                # SIGINT's handler can shut the context down while the executor builds its next wait set
                # (rclpy then raises RCLError "the given context is not valid"): that is a clean stop too
                if rclpy.ok():
                    raise
            finally:
                closer = getattr(node, "close", None)
                if callable(closer):
                    try:
                        closer()
                    except Exception as e:  # pragma: no cover - best effort on shutdown
                        print(f"[f3rm_ros] error while closing the node: {e}", file=sys.stderr)
                executor.shutdown(timeout_sec=1.0)
                node.destroy_node()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    return code


def spin_node(node_cls: Callable[[], Any], args: Iterable[str] | None = None) -> int:
    """Alias of :func:`run_node` (an older name of it)."""
    return run_node(node_cls, args)


def stop_process(proc: subprocess.Popen, sig: int | None = None, timeout: float = 20.0) -> int | None:
    """Stop a child process running nodes (SIGINT by default, so they shut down cleanly) and wait for it;
    kill it if it has not exited within ``timeout`` seconds. Returns its exit code."""
    import signal

    if proc.poll() is None:
        proc.send_signal(signal.SIGINT if sig is None else sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    return proc.returncode

