"""Two hosts on one machine: a robot host and a GPU host in two Linux network namespaces joined by a veth pair.

What ``test/test_two_hosts.py`` and ``benchmarks/bench_two_hosts.py`` run the suite on: each "host" is a
network namespace with its own loopback and one end of a veth link (``10.77.0.1`` robot, ``10.77.0.2`` GPU), so
DDS between them can only go over that link: no localhost, and no shared-memory transport either (Fast DDS is
limited to UDPv4 with ``FASTDDS_BUILTIN_TRANSPORTS=UDPv4``, and every process gets a private ``/dev/shm``).
Discovery is either multicast on the link (``ROS_AUTOMATIC_DISCOVERY_RANGE=SUBNET``) or, for networks without
multicast, the peer list of the other host (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST`` +
``ROS_STATIC_PEERS=<other host>``; rmw_fastrtps ignores static peers with the range ``OFF``).
``set_link(False)`` takes the link down (both ends), as a cable pulled out.

Needs root and ``ip netns`` (:func:`netns_usable` says why not); traffic stays inside the namespaces, which
:meth:`TwoHosts.close` removes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = ["netns_usable", "TwoHosts", "DISCOVERY_MODES", "DDS_MULTICAST_GROUP"]

DISCOVERY_MODES = ("multicast", "static_peers")
DDS_MULTICAST_GROUP = "239.255.0.1"  # the RTPS default discovery group


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=20)


def netns_usable() -> tuple[bool, str]:
    """(True, "") when network namespaces and veth pairs can be made here, else (False, why)."""
    if shutil.which("ip") is None:
        return False, "the 'ip' command (iproute2) is not installed"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return False, "network namespaces need root (run the tests as root, as CI does)"
    name = f"f3rmprobe{os.getpid()}"
    try:
        r = _ip("netns", "add", name, check=False)
        if r.returncode:
            return False, f"'ip netns add' failed: {r.stderr.strip()}"
        r = _ip("-n", name, "link", "add", "pa", "type", "veth", "peer", "name", "pb", check=False)
        if r.returncode:
            return False, f"cannot create a veth pair in a namespace: {r.stderr.strip()}"
        r = subprocess.run(["ip", "netns", "exec", name, "true"], capture_output=True, text=True, timeout=20)
        if r.returncode:
            return False, f"'ip netns exec' failed: {r.stderr.strip()}"
        return True, ""
    except (OSError, subprocess.SubprocessError) as e:
        return False, f"{type(e).__name__}: {e}"
    finally:
        _ip("netns", "del", name, check=False)


class TwoHosts:
    """The robot host and the GPU host; see the module docstring. A context manager (removes the namespaces).

    Args:
        discovery: "multicast" or "static_peers".
        domain_id: ROS_DOMAIN_ID of both hosts (default: this process's, else a random one).
    """

    ADDR = {"robot": "10.77.0.1", "gpu": "10.77.0.2"}

    def __init__(self, discovery: str = "multicast", domain_id: int | None = None) -> None:
        if discovery not in DISCOVERY_MODES:
            raise ValueError(f"discovery must be one of {DISCOVERY_MODES}, got {discovery!r}")
        self.discovery = discovery
        self.domain_id = int(domain_id if domain_id is not None else
                             os.environ.get("ROS_DOMAIN_ID", 100 + uuid.uuid4().int % 100))
        tag = uuid.uuid4().hex[:6]
        self.ns = {"robot": f"f3rm_{tag}_robot", "gpu": f"f3rm_{tag}_gpu"}
        self.dev = {"robot": f"f3r{tag}", "gpu": f"f3g{tag}"}
        self.procs: list[subprocess.Popen] = []
        # a SIGTERM (a CI timeout, `timeout`) unwinds like Ctrl-C, so close() still stops the processes and removes
        # the namespaces (by default Python dies at once and leaves both behind)
        self._old_sigterm = None
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            def on_term(*_: Any) -> None:
                raise SystemExit(128 + signal.SIGTERM)

            self._old_sigterm = signal.signal(signal.SIGTERM, on_term)
        try:
            for side in ("robot", "gpu"):
                _ip("netns", "add", self.ns[side])
            _ip("link", "add", self.dev["robot"], "type", "veth", "peer", "name", self.dev["gpu"])
            for side in ("robot", "gpu"):
                _ip("link", "set", self.dev[side], "netns", self.ns[side])
                _ip("-n", self.ns[side], "addr", "add", f"{self.ADDR[side]}/24", "dev", self.dev[side])
                _ip("-n", self.ns[side], "link", "set", "lo", "up")
            self.set_link(True)
        except Exception:
            self.close()
            raise

    # ------------------------------------------------------------------------------------------ link
    def set_link(self, up: bool) -> None:
        """Bring both ends of the link up or down (down: nothing passes, as a cable pulled out)."""
        for side in ("robot", "gpu"):
            _ip("-n", self.ns[side], "link", "set", self.dev[side], "up" if up else "down")

    def tx_bytes(self, side: str) -> int:
        """Bytes sent by ``side`` over the link so far (the veth's counter)."""
        r = subprocess.run(["ip", "netns", "exec", self.ns[side], "cat",
                            f"/sys/class/net/{self.dev[side]}/statistics/tx_bytes"],
                           capture_output=True, text=True, timeout=20)
        return int(r.stdout.strip() or 0)

    def multicast_groups(self, side: str) -> str:
        """``/proc/net/igmp`` of ``side``: the multicast groups its sockets joined (hex, little-endian)."""
        return subprocess.run(["ip", "netns", "exec", self.ns[side], "cat", "/proc/net/igmp"],
                              capture_output=True, text=True, timeout=20).stdout

    def joined_dds_multicast(self, side: str) -> bool:
        """Whether a socket of ``side`` joined the DDS discovery group 239.255.0.1 on the link."""
        hexgroup = "".join(f"{int(b):02X}" for b in reversed(DDS_MULTICAST_GROUP.split(".")))
        return hexgroup in self.multicast_groups(side)

    # ------------------------------------------------------------------------------------- processes
    def env(self, side: str, discovery: str | None = None) -> dict[str, str]:
        """The environment of a process on ``side``: domain, UDPv4 only, the discovery settings."""
        other = "gpu" if side == "robot" else "robot"
        env = dict(os.environ, ROS_DOMAIN_ID=str(self.domain_id), FASTDDS_BUILTIN_TRANSPORTS="UDPv4",
                   PYTHONUNBUFFERED="1")
        env.pop("ROS_STATIC_PEERS", None)
        env.pop("ROS_LOCALHOST_ONLY", None)
        if (discovery or self.discovery) == "multicast":
            env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "SUBNET"
        else:
            env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
            env["ROS_STATIC_PEERS"] = self.ADDR[other]
        return env

    def popen(self, side: str, argv: list[str], log: Path, discovery: str | None = None, **kw: Any
              ) -> subprocess.Popen:
        """Start ``argv`` on ``side`` (its namespace, a private /dev/shm), output appended to ``log``."""
        wrapper = ('mount -t tmpfs -o size=512m f3rm_shm /dev/shm || { echo "private /dev/shm failed" >&2; exit 97; }; '
                   'exec "$@"')
        cmd = ["ip", "netns", "exec", self.ns[side], "sh", "-c", wrapper, "sh", *argv]
        out = open(log, "a")
        p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env(side, discovery),
                             cwd=kw.pop("cwd", None), **kw)
        out.close()
        self.procs.append(p)
        return p

    def bringup(self, side: str, config: str | Path, params: Path | None, log: Path, ready: Path,
                discovery: str | None = None) -> subprocess.Popen:
        """``f3rm-ros bringup CONFIG [--params-file PARAMS] --ready-file READY`` on ``side``."""
        from f3rm_ros.ros.bringup import REPO_ROOT

        ready.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "f3rm_ros.cli.ros", "bringup", str(config), "--ready-file", str(ready)]
        if params is not None:
            argv += ["--params-file", str(params)]
        return self.popen(side, argv, log, discovery, cwd=str(REPO_ROOT))

    @staticmethod
    def wait_ready(proc: subprocess.Popen, ready: Path, timeout: float, log: Path | None = None) -> float:
        """Wait for a bringup's ready file; seconds waited. Raises RuntimeError if it exits or times out."""
        def tail() -> str:
            return Path(log).read_text(errors="replace")[-1500:] if log else ""

        t0 = time.monotonic()
        while not ready.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"the nodes exited with {proc.returncode} before they were ready:\n{tail()}")
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"the nodes were not ready within {timeout:.0f} s:\n{tail()}")
            time.sleep(0.1)
        return time.monotonic() - t0

    def close(self) -> None:
        """Stop every process started here (SIGINT, then kill) and remove both namespaces."""
        from f3rm_ros.ros.common import stop_process

        for p in self.procs:
            try:
                stop_process(p, timeout=10)
            except Exception:  # noqa: BLE001 - best effort
                pass
        for side in ("robot", "gpu"):
            _ip("netns", "del", self.ns[side], check=False)
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None

    def __enter__(self) -> TwoHosts:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
