"""The capture node's decisions, without ROS: pose-by-stamp lookup, blur score, keyframe selection, and the
bounded background writer that takes disk writes off the executor thread.

Kept free of rclpy so it is unit-tested directly; :mod:`f3rm_ros.ros.capture_node` wires it to topics.
Poses are 4x4 camera-to-world transforms ``T_world_cam`` in metres (OpenCV optical camera frame:
x right, y down, z forward); stamps are seconds (float).
"""

from __future__ import annotations

import bisect
import collections
import math
import threading
import time
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from f3rm_ros.core.geometry import make_transform

__all__ = [
    "PoseLookup",
    "PoseBuffer",
    "interpolate_pose",
    "laplacian_variance",
    "laplacian_variance_reference",
    "KeyframeSelector",
    "BackgroundWriter",
    "WriteJob",
    "T_BODY_OPTICAL",
]

# Camera "body" frame of REP 103 (x forward, y left, z up) -> optical frame (x right, y down, z forward):
# T_world_optical = T_world_body @ T_BODY_OPTICAL.
T_BODY_OPTICAL = np.array([[0.0, 0.0, 1.0, 0.0],
                           [-1.0, 0.0, 0.0, 0.0],
                           [0.0, -1.0, 0.0, 0.0],
                           [0.0, 0.0, 0.0, 1.0]])


# --- poses by time stamp ---------------------------------------------------------------------------

@dataclass
class PoseLookup:
    """Result of :meth:`PoseBuffer.lookup`.

    status: "ok" (pose set), "wait" (no pose at or after the stamp yet; a newer one may still come),
    "too_far" (the nearest pose is farther than the tolerance), "empty" (no pose received at all).
    """

    status: str
    pose: np.ndarray | None = None  # [4, 4] T_world_cam when status == "ok"
    dt: float = math.inf  # seconds from the image stamp to the nearest pose
    interpolated: bool = False
    detail: str = ""  # overrides the default reason text

    @property
    def reason(self) -> str:
        if self.detail:
            return self.detail
        if self.status == "too_far":
            return f"nearest camera pose is {self.dt * 1000:.1f} ms from the image stamp"
        if self.status == "empty":
            return "no camera pose received yet"
        if self.status == "wait":
            return "waiting for a camera pose at or after the image stamp"
        return ""


def interpolate_pose(T0: np.ndarray, T1: np.ndarray, alpha: float) -> np.ndarray:
    """Pose between ``T0`` (alpha 0) and ``T1`` (alpha 1): linear translation, spherical rotation."""
    rots = Rotation.from_matrix(np.stack([T0[:3, :3], T1[:3, :3]]))
    R = Slerp([0.0, 1.0], rots)([float(alpha)]).as_matrix()[0]
    t = (1.0 - alpha) * T0[:3, 3] + alpha * T1[:3, 3]
    return make_transform(R, t)


class PoseBuffer:
    """The camera poses of the last ``duration_s`` seconds, looked up by image stamp (thread-safe).

    Args:
        duration_s: how long poses are kept (relative to the newest stamp).
        tolerance_s: the nearest pose must be at most this far from the image stamp.
        interpolate: when the poses just before and just after the stamp are at most
            ``2 * tolerance_s`` apart, interpolate between them; else use the nearest pose.
    """

    def __init__(self, duration_s: float = 5.0, tolerance_s: float = 0.05, interpolate: bool = True) -> None:
        if not duration_s > 0 or not tolerance_s >= 0:
            raise ValueError(f"duration_s must be > 0 and tolerance_s >= 0, got {duration_s}, {tolerance_s}")
        self.duration_s = float(duration_s)
        self.tolerance_s = float(tolerance_s)
        self.interpolate = bool(interpolate)
        self._stamps: list[float] = []
        self._poses: list[np.ndarray] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._stamps)

    @property
    def newest_stamp(self) -> float | None:
        with self._lock:
            return self._stamps[-1] if self._stamps else None

    def add(self, stamp: float, T_world_cam: np.ndarray) -> None:
        """Insert a pose (out-of-order stamps are placed in order; an equal stamp replaces the old pose)."""
        T = np.asarray(T_world_cam, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError("pose must be a finite 4x4 matrix")
        with self._lock:
            i = bisect.bisect_left(self._stamps, stamp)
            if i < len(self._stamps) and self._stamps[i] == stamp:
                self._poses[i] = T
            else:
                self._stamps.insert(i, float(stamp))
                self._poses.insert(i, T)
            cutoff = self._stamps[-1] - self.duration_s
            k = bisect.bisect_left(self._stamps, cutoff)
            if k:
                del self._stamps[:k]
                del self._poses[:k]

    def clear(self) -> None:
        with self._lock:
            self._stamps.clear()
            self._poses.clear()

    def lookup(self, stamp: float, final: bool = False) -> PoseLookup:
        """Camera pose at ``stamp``.

        Args:
            stamp: the image stamp, seconds.
            final: no newer pose will be waited for (answer "too_far"/"ok", never "wait").
        """
        with self._lock:
            if not self._stamps:
                return PoseLookup("empty")
            i = bisect.bisect_left(self._stamps, stamp)  # first pose at or after the stamp
            before = i - 1 if i > 0 else None
            after = i if i < len(self._stamps) else None
            cands = [j for j in (before, after) if j is not None]
            j = min(cands, key=lambda k: abs(self._stamps[k] - stamp))
            dt = abs(self._stamps[j] - stamp)
            if after is None and not final and dt > 0:
                # no pose after the image yet: a closer one (or one to interpolate with) may arrive
                if dt > self.tolerance_s or self.interpolate:
                    return PoseLookup("wait", dt=dt)
            if dt > self.tolerance_s:
                return PoseLookup("too_far", dt=dt)
            if (self.interpolate and before is not None and after is not None and dt > 0
                    and self._stamps[after] - self._stamps[before] <= 2.0 * self.tolerance_s):
                t0, t1 = self._stamps[before], self._stamps[after]
                alpha = (stamp - t0) / (t1 - t0)
                return PoseLookup("ok", interpolate_pose(self._poses[before], self._poses[after], alpha), dt, True)
            return PoseLookup("ok", self._poses[j].copy(), dt, False)


# --- blur ------------------------------------------------------------------------------------------

def _gray(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 3:
        img = img[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return img.astype(np.float64)


def laplacian_variance(image: np.ndarray) -> float:
    """Sharpness: variance of the 4-neighbour Laplacian of the grey image (0-255 levels), interior pixels.

    Higher is sharper; a blurred or featureless image scores low. Args: image [H, W, 3] or [H, W].
    """
    g = _gray(image)
    if g.shape[0] < 3 or g.shape[1] < 3:
        return 0.0
    lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def laplacian_variance_reference(image: np.ndarray) -> float:
    """Plain per-pixel loop version of :func:`laplacian_variance` (for tests)."""
    g = _gray(image)
    vals = []
    for y in range(1, g.shape[0] - 1):
        for x in range(1, g.shape[1] - 1):
            vals.append(g[y - 1, x] + g[y + 1, x] + g[y, x - 1] + g[y, x + 1] - 4.0 * g[y, x])
    if not vals:
        return 0.0
    m = sum(vals) / len(vals)
    return float(sum((v - m) ** 2 for v in vals) / len(vals))


# --- keyframes -------------------------------------------------------------------------------------

class KeyframeSelector:
    """Keeps a frame only if it moved enough from every frame kept so far.

    A candidate is "too close" when some kept frame is within ``min_translation_m`` AND within
    ``min_rotation_deg`` of it (so either moving far enough or turning far enough makes a keyframe).
    Both thresholds 0 = keep every frame.
    """

    def __init__(self, min_translation_m: float = 0.05, min_rotation_deg: float = 10.0) -> None:
        self.min_translation_m = float(min_translation_m)
        self.min_rotation_deg = float(min_rotation_deg)
        self._t = np.zeros((0, 3))
        self._R = np.zeros((0, 3, 3))

    def __len__(self) -> int:
        return len(self._t)

    def reset(self, poses: np.ndarray | None = None) -> None:
        """Forget every kept frame (or start from ``poses`` [N, 4, 4], e.g. a continued dataset)."""
        P = np.zeros((0, 4, 4)) if poses is None else np.asarray(poses, dtype=np.float64).reshape(-1, 4, 4)
        self._t = P[:, :3, 3].copy()
        self._R = P[:, :3, :3].copy()

    def nearest(self, T: np.ndarray) -> tuple[float, float]:
        """(distance m, rotation deg) to the kept frame that is closest in the "too close" sense."""
        if not len(self._t):
            return math.inf, math.inf
        d = np.linalg.norm(self._t - T[:3, 3], axis=1)
        cos = (np.einsum("nij,ij->n", self._R, T[:3, :3]) - 1.0) / 2.0  # trace(R_k^T R) = sum R_k * R
        ang = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
        # the kept frame that is "most" too close: largest max(d/dmin, ang/amin)
        score = np.maximum(d / max(self.min_translation_m, 1e-12), ang / max(self.min_rotation_deg, 1e-12))
        k = int(np.argmin(score))
        return float(d[k]), float(ang[k])

    def check(self, T: np.ndarray) -> tuple[bool, str]:
        """(keep?, reason if not)."""
        if self.min_translation_m <= 0 and self.min_rotation_deg <= 0:
            return True, ""
        d, a = self.nearest(T)
        if d < self.min_translation_m and a < self.min_rotation_deg:
            return False, (f"too close to a kept frame ({d * 100:.1f} cm < {self.min_translation_m * 100:.1f} cm and "
                           f"{a:.1f} deg < {self.min_rotation_deg:.1f} deg)")
        return True, ""

    def add(self, T: np.ndarray) -> None:
        self._t = np.vstack([self._t, T[None, :3, 3]])
        self._R = np.concatenate([self._R, T[None, :3, :3]])

    def remove(self, T: np.ndarray) -> bool:
        """Forget the most recently added kept frame equal to ``T`` [4, 4] (e.g. its write failed).

        Returns:
            True if one was found and removed.
        """
        hit = np.nonzero(np.all(self._t == T[:3, 3], axis=1) & np.all(self._R == T[:3, :3], axis=(1, 2)))[0]
        if not len(hit):
            return False
        k = int(hit[-1])
        self._t = np.delete(self._t, k, axis=0)
        self._R = np.delete(self._R, k, axis=0)
        return True


# --- background writing ----------------------------------------------------------------------------

@dataclass(eq=False)
class WriteJob:
    """One unit of work for :class:`BackgroundWriter`.

    Attributes:
        run: does the write; its return value goes to ``on_done``.
        kind: a tag counted separately in :meth:`BackgroundWriter.pending` (e.g. "frame", "meta").
        on_done: called with the result on the writer thread after a successful ``run``.
        on_error: called with the exception on the writer thread when ``run`` raises.
        on_discard: called (on the discarding thread) when the job is dropped unrun by :meth:`discard`.
    """

    run: Callable[[], Any]
    kind: str = "frame"
    on_done: Callable[[Any], None] | None = None
    on_error: Callable[[BaseException], None] | None = None
    on_discard: Callable[[], None] | None = None


_BARRIER = "\0barrier"  # kind of the internal markers of BackgroundWriter.barrier


class BackgroundWriter:
    """Runs write jobs one at a time, in submission order, on its own thread (a bounded FIFO).

    The producer (a ROS executor thread) never waits for the disk: :meth:`submit` returns False at
    once when ``max_pending`` jobs of the same kind are already waiting or running, so the caller can
    reject the frame with a reason. An exception in a job is passed to its ``on_error`` and counted;
    the thread keeps running. Callbacks run on the writer thread (before the job stops counting as
    pending); an exception in a callback is counted in ``callback_errors`` and otherwise ignored.

    Args:
        max_pending: jobs of one kind waiting or being written at most (>= 1).
        name: thread name.

    Attributes:
        delay_s: test hook, settable only in-process: seconds slept before each job (a slow disk).
        hold: test hook, settable only in-process: while it is a ``threading.Event`` that is not set,
            no job is started (jobs stay queued: a disk that does not answer; barriers still pass when
            they reach the head of the queue); None (default) = no hold.
        done, failed: jobs finished / raised so far.
        last_duration_s, max_duration_s: wall time of the last / slowest job (without ``delay_s``).
    """

    def __init__(self, max_pending: int = 32, name: str = "f3rm-writer") -> None:
        if int(max_pending) < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.max_pending = int(max_pending)
        self.delay_s = 0.0
        self.hold: threading.Event | None = None
        self.done = 0
        self.failed = 0
        self.callback_errors = 0
        self.last_duration_s = 0.0
        self.max_duration_s = 0.0
        self._queue: collections.deque[WriteJob] = collections.deque()
        self._running: WriteJob | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # -- producer side
    def submit(self, job: WriteJob, force: bool = False) -> bool:
        """Queue ``job``; False (job not queued) when full or closed.

        Args:
            force: queue even when full (small metadata writes that must not be lost).
        """
        with self._cond:
            if self._closed or (not force and self._count_locked(job.kind) >= self.max_pending):
                return False
            self._queue.append(job)
            self._cond.notify_all()
            return True

    def barrier(self) -> threading.Event | None:
        """An event set once every job queued before this call has run (None if closed).

        Lets a caller wait for "everything so far" while new jobs keep coming (a FIFO marker; it is not
        subject to ``delay_s`` and does not count as a job).
        """
        ev = threading.Event()
        with self._cond:
            if self._closed:
                return None
            self._queue.append(WriteJob(ev.set, kind=_BARRIER))
            self._cond.notify_all()
        return ev

    def pending(self, kind: str | None = None) -> int:
        """Jobs queued or being written (only those of ``kind`` when given)."""
        with self._cond:
            return self._count_locked(kind)

    def _count_locked(self, kind: str | None) -> int:
        jobs = list(self._queue) + ([self._running] if self._running is not None else [])
        return sum(1 for j in jobs if j.kind != _BARRIER and (kind is None or j.kind == kind))

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued or being written; True if so within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        with self._cond:
            while self._queue or self._running is not None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def discard(self, kind: str | None = None) -> int:
        """Drop queued jobs (of ``kind``) that have not started; the one being written finishes.

        Returns:
            How many were dropped (their ``on_discard`` is called).
        """
        with self._cond:
            keep, dropped = collections.deque(), []
            for j in self._queue:
                (dropped if j.kind != _BARRIER and (kind is None or j.kind == kind) else keep).append(j)
            self._queue = keep
            self._cond.notify_all()
        for j in dropped:
            self._call(j.on_discard)
        return len(dropped)

    def close(self, timeout: float | None = None) -> bool:
        """Refuse new jobs, write what is queued (at most ``timeout`` seconds), stop the thread.

        Returns:
            True if everything queued was written (or failed) in time; on False the jobs not yet
            started are dropped and the one running finishes on its own (a daemon thread: it never
            blocks process exit; a job cut by the exit is lost whole if it writes atomically).
        """
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        ok = self.wait_idle(timeout)
        if ok:
            self._thread.join(timeout=1.0)
        else:
            self.discard()
        return ok

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def busy(self) -> bool:
        """Whether a job is being written right now."""
        with self._cond:
            return self._running is not None and self._running.kind != _BARRIER

    # -- writer thread
    def _call(self, fn: Callable[..., None] | None, *args: Any) -> None:
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:
            self.callback_errors += 1

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    while not self._queue and not self._closed:
                        self._cond.wait()
                    if not self._queue:  # closed and empty
                        self._cond.notify_all()
                        return
                    hold = self.hold
                    if self._queue[0].kind == _BARRIER or hold is None or hold.is_set():
                        break
                    self._cond.wait(0.05)  # held: look again (the event does not notify this condition)
                job = self._running = self._queue.popleft()
            if job.kind == _BARRIER:
                job.run()
                with self._cond:
                    self._running = None
                    self._cond.notify_all()
                continue
            if self.delay_s > 0:
                time.sleep(self.delay_s)
            t0 = time.perf_counter()
            try:
                result = job.run()
            except BaseException as e:  # disk full, permissions, a bad frame: reported, never the end of the thread
                self.last_duration_s = time.perf_counter() - t0
                self.failed += 1
                self._call(job.on_error, e)
            else:
                self.last_duration_s = time.perf_counter() - t0
                self.done += 1
                self._call(job.on_done, result)
            self.max_duration_s = max(self.max_duration_s, self.last_duration_s)
            with self._cond:
                self._running = None
                self._cond.notify_all()
