"""Images matched to their camera intrinsics, pose, label and depth images by stamp, in any arrival order.

:class:`FrameMatcher` holds the images that still wait for something: the newest intrinsics, the pose at the
image stamp (a :class:`PoseBuffer`, or a ``pose_lookup`` such as TF) and, when expected, the label and depth
images with exactly the image's stamp. An image is decided once all of it is there, or once it has waited
``pose_wait_s``; :meth:`FrameMatcher.refusal` then says why it cannot be a frame, if so.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from f3rm_ros.core.capture.config import CaptureConfig
from f3rm_ros.core.capture.poses import PoseBuffer, PoseLookup

__all__ = ["FrameMatcher", "Match", "PendingImage", "REASONS", "camera_mismatch", "size_mismatch", "stamp_seconds"]

# Every reason a capture rejects an image for (keys of CaptureStatus.reject_reasons), with its meaning.
REASONS = {
    "bad_encoding": "image encoding not supported",
    "bad_image": "image message malformed or undecodable",
    "no_camera_info": "no camera_info within pose_wait_s of the image",
    "bad_camera_info": "camera_info malformed",
    "size_mismatch": "image size differs from camera_info",
    "camera_mismatch": "an appended frame's camera is not the dataset's (APPEND adds views of the same camera)",
    "bad_pose": "pose message has NaN/inf values or a zero quaternion",
    "wrong_frame": "pose is not given in the world frame",
    "no_pose": "no camera pose received for the image",
    "pose_too_far": "nearest camera pose too far from the image stamp",
    "no_labels": "no label image with the image's stamp",
    "bad_labels": "label image malformed",
    "no_depth": "no depth image with the image's stamp",
    "bad_depth": "depth image malformed or of another size than the image",
    "blurry": "image too blurry",
    "too_close": "too close to a kept frame",
    "max_frames": "dataset full (max_frames)",
    "overflow": "too many images waiting for a pose",
    "write_failed": "writing the frame failed",
    "writer_busy": "max_pending_writes kept frames are already waiting to be written (disk too slow)",
    "internal_error": "unexpected error in a callback (a bug: please report the logged reason)",
}



def stamp_seconds(stamp_ns: int) -> float:
    """Seconds of a stamp in nanoseconds, computed as from a message's ``sec + 1e-9 * nanosec``."""
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    return float(sec) + 1e-9 * float(nanosec)


def size_mismatch(rgb: np.ndarray, K: Any) -> str:
    """Why the image [H, W, 3] does not fit the intrinsics ``K`` ('' if it does)."""
    if (rgb.shape[1], rgb.shape[0]) != tuple(K.size):
        return f"image is {rgb.shape[1]}x{rgb.shape[0]} but camera_info says {K.width}x{K.height}"
    return ""


def camera_mismatch(K: Any, dataset_K: Any, rel_tol: float = 0.01, dist_tol: float = 0.01) -> str:
    """Why the camera ``K`` is not the one ``dataset_K`` (both ``CameraIntrinsics``) was recorded with ('' if it is):
    another image size, a focal length or principal point more than ``rel_tol`` x the image size away, or a
    distortion coefficient more than ``dist_tol`` away (a driver repeating its calibration gives equal numbers)."""
    def desc(c: Any) -> str:
        return f"{c.width}x{c.height}, fx {c.fx:.2f} fy {c.fy:.2f} cx {c.cx:.2f} cy {c.cy:.2f}"

    if tuple(K.size) != tuple(dataset_K.size):
        return f"the camera is {desc(K)}, the dataset's is {desc(dataset_K)} (another image size)"
    span = rel_tol * max(K.width, K.height)
    off = {n: abs(getattr(K, n) - getattr(dataset_K, n)) for n in ("fx", "fy", "cx", "cy")}
    bad = [n for n, d in off.items() if d > span]
    bad += [n for n in ("k1", "k2", "p1", "p2", "k3") if abs(getattr(K, n) - getattr(dataset_K, n)) > dist_tol]
    if bad:
        return f"the camera is {desc(K)}, the dataset's is {desc(dataset_K)} ({', '.join(bad)} differ)"
    return ""


@dataclass(eq=False)  # compared by identity (equal stamps must not compare image arrays)
class PendingImage:
    """An image waiting for its intrinsics, pose, labels or depth."""

    stamp: float
    stamp_ns: int
    rgb: np.ndarray  # [H, W, 3] uint8
    intrinsics: Any  # CameraIntrinsics, or None until one arrives
    arrival: float  # clock seconds
    sharpness: float


@dataclass
class Match:
    """What was found for an image once it is decided."""

    look: PoseLookup
    labels: np.ndarray | None  # [H, W] label ids
    depth: np.ndarray | None  # [H, W] z-depth, metres


class FrameMatcher:
    """See the module docstring.

    Args:
        config: ``pose_wait_s``, ``max_pending``, ``pose_tolerance_s`` (read at each call: assign a new one).
        poses: the pose buffer (used unless ``pose_lookup`` is given).
        pose_lookup: ``(stamp_s, final) -> PoseLookup`` (e.g. TF).
        camera_info_source, labels_source, depth_source: names used in reasons (topics); a non-empty
            ``labels_source`` / ``depth_source`` means every image needs a label / depth image.
    """

    def __init__(self, config: CaptureConfig, poses: PoseBuffer, *,
                 pose_lookup: Callable[[float, bool], PoseLookup] | None = None,
                 camera_info_source: str = "camera_info", labels_source: str = "", depth_source: str = "") -> None:
        self.config, self.poses, self._pose_lookup = config, poses, pose_lookup
        self.camera_info_source, self.labels_source, self.depth_source = camera_info_source, labels_source, depth_source
        self.camera_info: Any = None  # the newest CameraIntrinsics
        self._lock = threading.Lock()
        self._pending: list[PendingImage] = []
        self._sides: dict[str, collections.OrderedDict[int, np.ndarray]] = {
            "labels": collections.OrderedDict(), "depth": collections.OrderedDict()}

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def add_side(self, kind: str, stamp_ns: int, image: np.ndarray) -> None:
        """Keep a per-pixel side image ("labels" or "depth") under its stamp until its colour image is decided."""
        cache = self._sides[kind]
        cache[int(stamp_ns)] = image
        while len(cache) > 4 * self.config.max_pending:
            cache.popitem(last=False)

    def add(self, image: PendingImage) -> list[PendingImage]:
        """Let ``image`` wait; returns the oldest images dropped to keep at most ``max_pending`` waiting."""
        n = self.config.max_pending
        with self._lock:
            self._pending.append(image)
            overflow = self._pending[:-n] if len(self._pending) > n else []
            del self._pending[: len(overflow)]
        return overflow

    def clear(self) -> None:
        """Forget every waiting image."""
        with self._lock:
            self._pending.clear()

    def decide(self, now: float) -> list[tuple[PendingImage, Match]]:
        """The waiting images that are decided at clock time ``now`` (no longer waiting), oldest arrival first."""
        with self._lock:
            pending = list(self._pending)
        out = []
        for p in pending:
            m = self._match(p, final=now - p.arrival >= self.config.pose_wait_s)
            if m is None:
                continue
            with self._lock:
                if p not in self._pending:  # cleared meanwhile
                    continue
                self._pending.remove(p)
            out.append((p, m))
        return out

    def _match(self, p: PendingImage, final: bool) -> Match | None:
        """What is known for ``p``; None while something may still come (never None when ``final``)."""
        if p.intrinsics is None:
            if self.camera_info is None and not final:
                return None
            p.intrinsics = self.camera_info
        side = {}
        for kind, source in (("labels", self.labels_source), ("depth", self.depth_source)):
            side[kind] = self._sides[kind].get(p.stamp_ns) if source else None
            if source and side[kind] is None and not final:
                return None
        if self._pose_lookup is not None:
            look = self._pose_lookup(p.stamp, final)
        else:
            look = self.poses.lookup(p.stamp, final)
        if look.status == "wait" or (look.status == "empty" and not final):
            return None
        return Match(look, side["labels"], side["depth"])

    def refusal(self, p: PendingImage, m: Match) -> tuple[str, str] | None:
        """(reason, detail) when the decided image cannot be a frame, checked in this order; None if it can."""
        c, t, look = self.config, f"image at t={p.stamp:.3f}", m.look
        size = p.rgb.shape[1::-1]
        if p.intrinsics is None:
            return "no_camera_info", (f"{t} but no camera_info received on {self.camera_info_source} within "
                                      f"pose_wait_s={c.pose_wait_s:g} s")
        if size_mismatch(p.rgb, p.intrinsics):
            return "size_mismatch", size_mismatch(p.rgb, p.intrinsics)
        if look.status == "empty":
            return "no_pose", f"{t}: {look.reason} within pose_wait_s={c.pose_wait_s:g} s"
        if look.status == "too_far":
            return "pose_too_far", f"{t}: {look.reason} (pose_tolerance_s={c.pose_tolerance_s:g})"
        if self.labels_source and m.labels is None:
            return "no_labels", (f"{t}: no label image with this stamp on {self.labels_source} within "
                                 f"{c.pose_wait_s:g} s")
        if m.labels is not None and m.labels.shape != p.rgb.shape[:2]:
            return "bad_labels", f"label image {m.labels.shape[::-1]} differs from image {size}"
        if self.depth_source and m.depth is None:
            return "no_depth", (f"{t}: no depth image with this stamp on {self.depth_source} within "
                                f"{c.pose_wait_s:g} s")
        if m.depth is not None and m.depth.shape != p.rgb.shape[:2]:
            return "bad_depth", (f"depth image {m.depth.shape[::-1]} differs from image {size} "
                                 "(it must be registered to the colour image)")
        return None
