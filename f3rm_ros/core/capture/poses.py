"""Camera poses by time stamp: a buffer of recent ``T_world_cam`` looked up (and interpolated) at an image stamp.

Poses are 4x4 camera-to-world transforms ``T_world_cam`` in metres (OpenCV optical camera frame: x right,
y down, z forward); stamps are seconds (float).
"""

from __future__ import annotations

import bisect
import math
import threading
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation, Slerp

from f3rm_ros.core.geometry import make_transform

__all__ = ["PoseLookup", "PoseBuffer", "interpolate_pose", "T_BODY_OPTICAL"]

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
