"""A capture session: decoded camera data in, keyframes written to a dataset, every rejection with a reason.

:class:`CaptureSession` is what the capture node does, without ROS. The node converts messages and feeds
the session: camera intrinsics, camera poses (``T_world_cam`` [4, 4], metres, by stamp), colour images,
and optional label and depth images with the colour image's stamp. The session

* matches each image to the newest camera intrinsics, the pose at its stamp (:class:`PoseBuffer`, or a
  ``pose_lookup`` such as TF) and the label/depth images with exactly its stamp, in any arrival order: an
  image waits up to ``pose_wait_s`` (on the session's clock) for what it lacks, then is decided;
* rejects with a reason (keys of :data:`REASONS`, counted): missing or mismatched inputs, blur, too close
  to a kept frame, a full dataset, a full write queue, a failed write;
* keeps keyframes (:class:`KeyframeSelector` over every kept frame, written or still queued) and hands them
  to a :class:`BackgroundWriter` (the caller's thread never waits for the disk); a frame whose write fails
  or is dropped by CLEAR is forgotten again (its pose may be kept later);
* answers START/STOP/CLEAR/SAVE/APPEND and reports counters and health.

Scene versions (issue 18): APPEND starts keeping views of a changed scene into the open dataset; every frame kept
from then on records ``scene_version``, one more than the dataset's highest (frames of the first scene record none:
0), and a later START goes on with the dataset's newest version. An append session keeps frames of the dataset's
camera only (``camera_mismatch``) and is refused, changing nothing, for a dataset that does not exist yet, one
without frames, one stored in another world frame, or one recorded with another camera than the one streaming.

Stamps are integer nanoseconds (``stamp_ns``); seconds are ``sec + 1e-9 * nanosec`` as in the messages.
Thread-safe: data, control and status calls may come from different threads; the writer's callbacks run
on its thread. Hooks: ``log(level, text)`` (level "info", "warning" or "error") and ``on_change()``
(called after every decision, e.g. to publish a status message).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from f3rm_ros.core.capture.config import CaptureConfig
from f3rm_ros.core.capture.keyframes import KeyframeSelector
from f3rm_ros.core.capture.matching import (REASONS, FrameMatcher, Match, PendingImage, camera_mismatch, size_mismatch,
                                            stamp_seconds)
from f3rm_ros.core.capture.poses import T_BODY_OPTICAL, PoseBuffer, PoseLookup
from f3rm_ros.core.capture.sharpness import laplacian_variance
from f3rm_ros.core.capture.writer import BackgroundWriter, WriteJob
from f3rm_ros.core.geometry import c2w_opengl_to_opencv

__all__ = ["CaptureSession", "CaptureState", "REASONS"]


def _version(frame: dict) -> int:
    """A frame entry's ``scene_version`` (0 when it has none)."""
    try:
        return int(frame.get("scene_version", 0) or 0)
    except (TypeError, ValueError):
        return 0

@dataclass
class CaptureState:
    """One consistent snapshot of a session (what ~/status and /diagnostics report)."""

    capturing: bool
    frames_written: int  # frames in the dataset on disk
    frames_pending: int  # kept frames still waiting for the writer
    frames_kept_total: int  # written + pending
    reject_counts: dict[str, int] = field(default_factory=dict)
    last_reject_reason: str = ""
    dataset_path: str = ""
    images_seen: int = 0
    scene_version: int = 0  # what frames kept now record (0 = the first scene; each APPEND adds one)


class CaptureSession:
    """See the module docstring.

    Args:
        config: the settings (a :class:`CaptureConfig` or a subclass, e.g. the node's settings).
        dataset_dir: maps a ``dataset_name`` to its folder, raising ``ValueError`` with the reason when
            the name is refused (default: ``<data_root>/<name>``, unchecked).
        pose_lookup: ``(stamp_s, final) -> PoseLookup`` replacing the session's own pose buffer (e.g. TF).
        camera_info_source, labels_source, depth_source: names used in rejection reasons (topics); a
            non-empty ``labels_source`` / ``depth_source`` means every image needs a label / depth image.
        log: ``log(level, text)``; on_change: called after every decision and state change.
        clock: monotonic seconds (tests pass their own).
        writer_name: the writer thread's name.
    """

    def __init__(self, config: CaptureConfig, *, dataset_dir: Callable[[str], Path] | None = None,
                 pose_lookup: Callable[[float, bool], PoseLookup] | None = None,
                 camera_info_source: str = "camera_info", labels_source: str = "", depth_source: str = "",
                 log: Callable[[str, str], None] | None = None, on_change: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, writer_name: str = "capture-writer") -> None:
        c = self.config = config
        self._dataset_dir = dataset_dir or (lambda name: Path(self.config.data_root).expanduser() / name)
        self._log_fn, self._on_change, self._clock = log, on_change, clock
        self._lock = threading.RLock()
        self.capturing = False
        self.writer: Any = None  # core.dataset.DatasetWriter of the open dataset, None when none is open
        self.writer_error = ""  # why no dataset is open
        self.dataset_path: Path | None = None
        self.reject_counts: collections.Counter[str] = collections.Counter()
        self.last_reject_reason = ""
        self.write_error = ""  # the last write failure; cleared by the next successful write
        self.images_seen = 0
        self.last_image_time = 0.0
        self._last_log: dict[str, float] = {}
        self._label_table: dict | None = None
        self.keyframes = KeyframeSelector(c.min_translation_m, c.min_rotation_deg)
        # the scene version kept frames record (issue 18): the dataset's newest, one more after an APPEND; 0 = the
        # first scene (its frames record none). The keyframe selector holds the views of _keyframes_version only
        self.scene_version = self._keyframes_version = 0
        self._dataset_camera: Any = None  # the camera an append session keeps frames of (None: any)
        # kept frames of the open dataset: written + waiting in the write queue (keyframes and max_frames use it)
        self._kept_total = 0
        # kept frames whose write failed (not in the dataset): in all, and since the capture last started
        self.frames_failed, self._failed_mark, self._last_failure = 0, 0, ""
        self.write_queue = BackgroundWriter(c.max_pending_writes, name=writer_name)
        self.poses = PoseBuffer(c.pose_buffer_s, c.pose_tolerance_s, c.interpolate_poses)
        self.matcher = FrameMatcher(c, self.poses, pose_lookup=pose_lookup, camera_info_source=camera_info_source,
                                    labels_source=labels_source, depth_source=depth_source)

    # ------------------------------------------------------------------------------------ hooks
    def _log(self, level: str, text: str) -> None:
        if self._log_fn is not None:
            try:
                self._log_fn(level, text)
            except Exception:  # a logger that is gone (process shutting down)
                pass

    def _changed(self) -> None:
        if self._on_change is not None:
            try:
                self._on_change()
            except Exception:  # e.g. publishing while shutting down
                pass

    # ---------------------------------------------------------------------------- configuration
    def configure(self, config: CaptureConfig) -> None:
        """Apply changed settings (a new ``dataset_name`` opens that dataset)."""
        with self._lock:
            old, self.config = self.config, config
            self.matcher.config = config
            self.keyframes.min_translation_m = config.min_translation_m
            self.keyframes.min_rotation_deg = config.min_rotation_deg
            self.poses.tolerance_s, self.poses.duration_s = config.pose_tolerance_s, config.pose_buffer_s
            self.poses.interpolate = config.interpolate_poses
            self.write_queue.max_pending = config.max_pending_writes
            if config.dataset_name != old.dataset_name:
                self.open_dataset(config.dataset_name)

    def dataset_change_refusal(self) -> str:
        """Why the dataset cannot be switched now ('' if it can)."""
        if self.capturing:
            return "dataset_name cannot change while capturing; send STOP first"
        if self.write_queue.pending("frame"):
            return "dataset_name cannot change while kept frames are still being written; try again"
        return ""

    def open_dataset(self, name: str) -> bool:
        """Open (or continue) dataset ``name``; on failure remember why in ``writer_error`` (START is refused)."""
        from f3rm_ros.core.dataset import DatasetWriter

        c = self.config
        with self._lock:
            self.writer, self.writer_error = None, ""
            try:
                self.dataset_path = self._dataset_dir(name)
                self.writer = DatasetWriter(self.dataset_path, image_format=c.image_format,
                                            jpeg_quality=c.jpeg_quality, world_frame=c.world_frame)
            except Exception as e:  # a refused name, DatasetError (corrupt json), OSError
                self.writer_error = f"cannot open dataset {name!r}: {e}"
                self._log("error", self.writer_error)
                return False
            self.scene_version = self._top_version()
            self._reset_keyframes(self.scene_version)
            self._dataset_camera = None
            self._kept_total = len(self.writer)
            if self._label_table is not None:
                self._write_label_table()
            if len(self.writer):
                self._log("info", f"continuing dataset {self.dataset_path} with {len(self.writer)} frames")
            return True

    def _top_version(self) -> int:
        """The highest ``scene_version`` of the open dataset's frames (0: none appended, or no dataset)."""
        frames = self.writer.frames if self.writer is not None else []
        return max((_version(f) for f in frames), default=0)

    def _reset_keyframes(self, version: int) -> None:
        """The keyframe selector from the poses of the dataset's frames of scene ``version`` (the views of another
        version of the scene do not make a view of this one redundant)."""
        frames = self.writer.frames if self.writer is not None else []
        poses = [c2w_opengl_to_opencv(np.asarray(f["transform_matrix"], dtype=np.float64))
                 for f in frames if _version(f) == version]
        self.keyframes.reset(np.stack(poses) if poses else None)
        self._keyframes_version = version

    def append_refusal(self) -> str:
        """Why APPEND cannot start now ('' if it can): capturing, no dataset open, a dataset that does not exist
        yet or has no frames, one stored in another world frame, one recorded with another camera than the newest
        camera_info (when one was received)."""
        with self._lock:
            if self.capturing:
                return "APPEND refused while capturing; send STOP first"
            w = self.writer
            if w is None:
                return self.writer_error or "no dataset open"
            if not w.json_path.is_file():
                return (f"APPEND refused: there is no dataset at {self.dataset_path} (no transforms.json): APPEND adds "
                        f"views of a changed scene to an existing capture; START records a new one (or set "
                        f"dataset_name to the dataset to append to)")
            if not len(w):
                return (f"APPEND refused: the dataset {self.dataset_path} has no frames to append to; use START for a "
                        f"new scene")
            frame = w.world_frame
            if frame and frame != self.config.world_frame:
                return (f"APPEND refused: the dataset {self.dataset_path} is stored in world frame {frame!r}, this "
                        f"capture's poses are in {self.config.world_frame!r}")
            try:
                dataset_K = w.intrinsics(len(w) - 1)
            except ValueError as e:  # DatasetError: the file's own intrinsics are malformed
                return f"APPEND refused: the camera of the dataset {self.dataset_path} is unreadable: {e}"
            K = self.matcher.camera_info
            why = camera_mismatch(K, dataset_K) if K is not None else ""
            if why:
                return (f"APPEND refused: the dataset {self.dataset_path} was recorded with another camera: {why}; "
                        f"append views of the same camera, or START a new dataset (set dataset_name)")
            return ""

    def _write_label_table(self) -> None:
        writer = self.writer
        if writer is not None and self._label_table is not None and writer.labels_table != self._label_table:
            writer.set_labels_table(self._label_table)

    # ------------------------------------------------------------------------------- rejections
    def reject(self, reason: str, detail: str) -> None:
        """Count a rejection, remember its reason, log it (at most every 2 s per reason)."""
        with self._lock:
            self.reject_counts[reason] += 1
            self.last_reject_reason = f"{reason}: {detail}"
            n = self.reject_counts[reason]
            now = self._clock()
            log = now - self._last_log.get(reason, -1e9) >= 2.0
            if log:
                self._last_log[reason] = now
        if log:
            self._log("warning", f"frame rejected ({reason}, {n} so far): {detail}")
        self._changed()

    # ------------------------------------------------------------------------------------ inputs
    def add_camera_info(self, intrinsics: Any) -> None:
        """The newest camera intrinsics (``CameraIntrinsics``); used for every image from now on."""
        self.matcher.camera_info = intrinsics

    def pose_frame_ok(self, frame_id: str) -> bool:
        """Whether a pose given in ``frame_id`` is in the world frame ('' counts as it); else a rejection."""
        c = self.config
        if frame_id.lstrip("/") in ("", c.world_frame):
            return True
        self.reject("wrong_frame", f"pose frame_id {frame_id!r} is not the world frame {c.world_frame!r} "
                                   "(publish T_world_camera, or set world_frame)")
        return False

    def add_pose(self, stamp_ns: int, T_world_cam: np.ndarray) -> None:
        """A camera pose [4, 4] in the world frame, axes as ``pose_frame_convention`` says."""
        T = T_world_cam @ T_BODY_OPTICAL if self.config.pose_frame_convention == "body" else T_world_cam
        self.poses.add(stamp_seconds(stamp_ns), T)
        self.process()

    def add_labels(self, stamp_ns: int, labels: np.ndarray) -> None:
        """A label image [H, W] with the stamp of its colour image."""
        self.matcher.add_side("labels", stamp_ns, labels)
        self.process()

    def add_depth(self, stamp_ns: int, depth_m: np.ndarray) -> None:
        """A z-depth image [H, W] in metres, registered to the colour image, with its stamp."""
        self.matcher.add_side("depth", stamp_ns, depth_m)
        self.process()

    def set_label_table(self, table: dict) -> None:
        """The ``f3rm_labels`` table; written to the dataset through the writer thread (after queued frames)."""
        with self._lock:
            self._label_table = table
            writer = self.writer
        if writer is None:
            return

        def write() -> None:
            with self._lock:
                if writer is self.writer:
                    self._write_label_table()

        # forced: tiny and never to be lost
        self.write_queue.submit(WriteJob(write, kind="meta",
                                         on_error=lambda e: self.reject("write_failed", f"label table: {e}")),
                                force=True)

    def image_received(self, stamp_ns: int, what: str = "image") -> bool:
        """Count an arriving image (before decoding it); whether it is wanted (capturing)."""
        self.images_seen += 1
        self.last_image_time = self._clock()
        if self.images_seen == 1:
            self._log("info", f"first image received (t={stamp_seconds(stamp_ns):.3f}, {what}); "
                              f"capturing={self.capturing}")
        return self.capturing

    def add_image(self, stamp_ns: int, rgb: np.ndarray) -> None:
        """A decoded colour image [H, W, 3] uint8: checked at once, then waits for what it lacks."""
        c = self.config
        stamp = stamp_seconds(stamp_ns)
        K = self.matcher.camera_info  # None: wait up to pose_wait_s for one (drivers publish both in any order)
        if K is not None and size_mismatch(rgb, K):
            self.reject("size_mismatch", size_mismatch(rgb, K))
            return
        sharp = laplacian_variance(rgb)
        if c.blur_threshold > 0 and sharp < c.blur_threshold:
            self.reject("blurry", f"variance of Laplacian {sharp:.1f} < blur_threshold {c.blur_threshold:g}")
            return
        for p in self.matcher.add(PendingImage(stamp, int(stamp_ns), rgb, K, self._clock(), sharp)):
            self.reject("overflow", f"image at t={p.stamp:.3f} dropped: more than max_pending={c.max_pending} "
                                    "images wait for their camera pose")
        self.process()

    @property
    def images_waiting(self) -> int:
        """Images waiting for their intrinsics, pose, labels or depth."""
        return len(self.matcher)

    # --------------------------------------------------------------------------------- decisions
    def process(self) -> None:
        """Decide every waiting image whose inputs are all there, or that waited ``pose_wait_s`` (call it on a
        timer too: waiting ends by time)."""
        for p, m in self.matcher.decide(self._clock()):
            with self._lock:
                if not self.capturing:
                    continue
            refusal = self.matcher.refusal(p, m)
            if refusal is not None:
                self.reject(*refusal)
            else:
                self._keep(p, m)

    def _keep(self, p: PendingImage, m: Match) -> None:
        """Decide on a frame with a pose and hand a keyframe to the writer thread (never waits for the disk)."""
        c, look = self.config, m.look
        with self._lock:
            if not self.capturing:  # STOP came in between
                return
            if self.writer is None:
                self.reject("write_failed", self.writer_error or "no dataset open")
                return
            if c.max_frames and self._kept_total >= c.max_frames:
                self.capturing = False
                self.reject("max_frames", f"the dataset has max_frames={c.max_frames} frames; capture stopped")
                return
            if self._dataset_camera is not None and p.intrinsics is not None:
                why = camera_mismatch(p.intrinsics, self._dataset_camera)
                if why:
                    self.reject("camera_mismatch", f"image at t={p.stamp:.3f} not appended: {why}")
                    return
            ok, why = self.keyframes.check(look.pose)
            if not ok:
                self.reject("too_close", why)
                return
            extra = {"sharpness": round(p.sharpness, 3), "pose_dt_s": round(look.dt, 6),
                     "pose_interpolated": look.interpolated}
            if self.scene_version:
                extra["scene_version"] = self.scene_version
            if not self.write_queue.submit(self._frame_job(self.writer, p, m, extra)):
                self.reject("writer_busy", f"image at t={p.stamp:.3f}: {self.write_queue.pending('frame')} kept "
                                           f"frames still wait to be written (max_pending_writes="
                                           f"{c.max_pending_writes}); the disk is too slow")
                return
            self.keyframes.add(look.pose)  # before the write: later frames are decided against it
            self._kept_total += 1
            if c.max_frames and self._kept_total >= c.max_frames:
                self.capturing = False
                self._log("info", f"max_frames={c.max_frames} reached: capture stopped")
        self._changed()

    def _frame_job(self, writer: Any, p: PendingImage, m: Match, extra: dict) -> WriteJob:
        """The write of one kept frame, with its bookkeeping (callbacks run on the writer thread)."""
        look, pose = m.look, m.look.pose

        def run() -> int:
            return writer.add_frame(p.rgb, p.intrinsics, pose, stamp=p.stamp, extra=extra, labels=m.labels,
                                    depth_m=m.depth)

        def forget() -> None:  # the frame will not be in the dataset: later frames may take its place
            with self._lock:
                if writer is self.writer:
                    self._kept_total -= 1
                    self.keyframes.remove(pose)

        def done(idx: int) -> None:
            with self._lock:
                self.write_error = ""
            q = self.write_queue
            self._log("info", f"kept frame {idx} (t={p.stamp:.3f}, pose dt {look.dt * 1000:.1f} ms, sharpness "
                              f"{p.sharpness:.0f}, written in {q.last_duration_s:.3f} s); {len(writer)} in "
                              f"{writer.root}, {q.pending('frame') - 1} waiting")
            self._changed()

        def failed(e: BaseException) -> None:
            forget()
            with self._lock:
                self.write_error = f"image at t={p.stamp:.3f} not written: {type(e).__name__}: {e}"
                self.frames_failed += 1
                self._last_failure = self.write_error
            self.reject("write_failed", self.write_error)

        return WriteJob(run, kind="frame", on_done=done, on_error=failed, on_discard=forget)

    def _wait_written(self, what: str) -> tuple[bool, str]:
        """Wait (at most drain_timeout_s) until every frame queued so far is written; (ok, reason if not).

        A barrier job through the FIFO, so frames kept after this call (still capturing) are not waited for.
        Never called with ``self._lock`` held (the writer's callbacks take it).
        """
        timeout = self.config.drain_timeout_s
        passed = self.write_queue.barrier()
        if passed is None:
            return False, f"{what}: the writer is closed (node shutting down)"
        if passed.wait(timeout):
            return True, ""
        n = self.write_queue.pending("frame")
        return False, (f"{what}: {n} kept frame(s) still wait to be written after drain_timeout_s={timeout:g} s "
                       f"(disk too slow; they are written in the background: ask again later)")

    # ----------------------------------------------------------------------------------- control
    def start(self) -> tuple[bool, str]:
        """START: keep frames (opens the dataset first if none is open), of the dataset's newest scene version (after
        an APPEND session, a START goes on with the changed scene)."""
        return self._start(append=False)

    def _start(self, append: bool) -> tuple[bool, str]:
        with self._lock:
            if self.writer is None:
                self.open_dataset(self.config.dataset_name)
            if self.writer is None:
                return False, self.writer_error
            if self.config.max_frames and self._kept_total >= self.config.max_frames:
                return False, f"the dataset already has max_frames={self.config.max_frames} frames"
            if append:
                why = self.append_refusal()
                if why:
                    return False, why
            # frames of the last session may still wait for the disk (a STOP whose drain timed out): theirs counts
            queued = self.scene_version if self.write_queue.pending("frame") else 0
            version = max(self._top_version(), queued) + (1 if append else 0)
            camera = None
            if version and len(self.writer):  # an append session keeps frames of the dataset's camera only
                try:
                    camera = self.writer.intrinsics(len(self.writer) - 1)
                except ValueError as e:
                    return False, f"the camera of the dataset {self.dataset_path} is unreadable: {e}"
            if version != self._keyframes_version:
                self._reset_keyframes(version)
            self.scene_version, self._dataset_camera = version, camera
            self.capturing = True
            self._failed_mark = self.frames_failed
            if append:
                return True, (f"appending scene version {version} to {self.dataset_path} ({len(self.writer)} frames "
                              f"so far)")
            return True, "capturing" + (f" scene version {version}" if version else "")

    def append(self) -> tuple[bool, str]:
        """APPEND: start keeping frames of a changed scene into the open dataset (an append session, issue 18): the
        keyframe selector forgets the earlier views (the same viewpoints are worth taking again) and every kept frame
        records ``scene_version``, one more than the dataset's highest (0 for frames without one), so a refresh
        can tell the new frames from the old. Only frames of the dataset's camera are kept. Refused, changing
        nothing, as :meth:`append_refusal` says. Frames are written atomically as always."""
        return self._start(append=True)

    def stop(self) -> tuple[bool, str]:
        """STOP: keep no more frames, then wait (drain_timeout_s) until every kept frame is written. Kept frames
        whose write failed since the capture started make it (False, how many and the last error)."""
        with self._lock:
            self.capturing = False
            self.matcher.clear()
        ok, why = self._wait_written("stopped")
        if not ok:
            return ok, why
        lost = self._lost_frames("stopped")
        return (False, lost) if lost else (True, "stopped; every kept frame is written")

    def _lost_frames(self, what: str) -> str:
        """"" or what to say about kept frames that could not be written since the capture last started."""
        with self._lock:
            n, last = self.frames_failed - self._failed_mark, self._last_failure
            on_disk = len(self.writer) if self.writer is not None else 0
        if n <= 0:
            return ""
        return (f"{what}, but {n} kept frame(s) could not be written and are not in the dataset ({on_disk} frames "
                f"are; last failure: {last})")

    def clear(self) -> tuple[bool, str]:
        """CLEAR: drop queued frames, let the one being written finish, delete every frame of the dataset."""
        with self._lock:
            if self.capturing:
                return False, "CLEAR refused while capturing; send STOP first"
            if self.writer is None:
                return False, self.writer_error or "no dataset open"
        dropped = self.write_queue.discard("frame")
        if not self.write_queue.wait_idle(self.config.drain_timeout_s):
            return False, (f"CLEAR refused: a write still runs after drain_timeout_s="
                           f"{self.config.drain_timeout_s:g} s (disk too slow); try again")
        with self._lock:
            if self.capturing or self.write_queue.pending("frame"):
                return False, "CLEAR refused: capture was started again meanwhile"
            n = len(self.writer)
            self.writer.clear()
            self.keyframes.reset()
            self.scene_version = self._keyframes_version = 0
            self._dataset_camera = None
            self._kept_total = 0
        return True, f"cleared {n} frames" + (f" ({dropped} not yet written dropped)" if dropped else "")

    def save(self) -> tuple[bool, str]:
        """SAVE: wait (drain_timeout_s) until every frame kept so far is written, then store the summary."""
        if self.writer is None:
            return False, self.writer_error or "no dataset open"
        ok, why = self._wait_written("not saved")
        if not ok:
            return False, why
        with self._lock:
            writer, summary = self.writer, self.summary()
        try:
            writer.update_meta({"f3rm_capture": summary})
        except OSError as e:  # disk full...: transforms.json keeps its frames, the summary is not stored
            return False, f"not saved: the capture summary could not be written to {writer.json_path}: {e}"
        lost = self._lost_frames(f"saved {writer.json_path}")
        return (False, lost) if lost else (True, f"saved {writer.json_path}")

    def summary(self) -> dict[str, Any]:
        """What SAVE stores as ``f3rm_capture`` in transforms.json."""
        return {"frames_rejected": dict(self.reject_counts), "images_seen": self.images_seen,
                "write_failures": self.write_queue.failed, "max_write_s": round(self.write_queue.max_duration_s, 4),
                "settings": {k: getattr(self.config, k) for k in ("min_translation_m", "min_rotation_deg",
                                                                   "blur_threshold", "pose_tolerance_s")}}

    def close(self) -> bool:
        """Stop capturing and write the queued frames (at most ``drain_timeout_s``); True if all were written."""
        if self.write_queue.closed:
            return True
        with self._lock:
            self.capturing = False
        n = self.write_queue.pending("frame")
        t0 = time.monotonic()
        ok = self.write_queue.close(self.config.drain_timeout_s)
        if ok and n:
            self._log("info", f"shutdown: wrote the {n} queued frame(s) in {time.monotonic() - t0:.2f} s")
        elif not ok:
            self._log("error", f"shutdown: frames still unwritten after drain_timeout_s="
                               f"{self.config.drain_timeout_s:g} s were dropped")
        return ok

    # ------------------------------------------------------------------------------------ status
    @property
    def frames_written(self) -> int:
        """Frames in the open dataset on disk (0 when none is open)."""
        with self._lock:
            return len(self.writer) if self.writer is not None else 0

    @property
    def kept_total(self) -> int:
        """Kept frames of the open dataset: written + waiting to be written."""
        with self._lock:
            return self._kept_total

    def frame_counts(self) -> tuple[int, int, int]:
        """(written to the dataset, waiting to be written, kept = written + waiting), one consistent snapshot."""
        with self._lock:
            if self.writer is None:
                return 0, 0, 0
            written = len(self.writer)
            kept = max(self._kept_total, written)
            return written, kept - written, kept

    def state(self) -> CaptureState:
        """A consistent snapshot of the counters."""
        with self._lock:
            written, pending, kept = self.frame_counts()
            return CaptureState(self.capturing, written, pending, kept, dict(self.reject_counts),
                                self.last_reject_reason, str(self.dataset_path or ""), self.images_seen,
                                self.scene_version)

    def health(self) -> tuple[str, str, dict[str, Any]]:
        """(level "ok"/"warn"/"error", message, values) for diagnostics."""
        st, q = self.state(), self.write_queue
        # frames_kept as in ~/status (= written); frames_kept_total also counts the frames waiting for the disk
        values = {"capturing": st.capturing, "frames_kept": st.frames_written, "frames_written": st.frames_written,
                  "frames_pending": st.frames_pending, "frames_kept_total": st.frames_kept_total,
                  "max_pending_writes": q.max_pending, "write_failures": q.failed,
                  "last_write_s": q.last_duration_s, "max_write_s": q.max_duration_s,
                  "frames_rejected": sum(st.reject_counts.values()), "images_seen": st.images_seen,
                  "dataset": st.dataset_path,
                  **{f"rejected.{k}": st.reject_counts[k] for k in sorted(st.reject_counts)}}
        if self.writer is None:
            return "error", self.writer_error or "no dataset open", values
        if self.write_error:
            return "error", f"writing frames fails: {self.write_error}", values
        if st.frames_pending >= q.max_pending:
            return "warn", f"the disk is behind: {st.frames_pending} kept frames wait to be written", values
        if st.capturing and self._clock() - self.last_image_time > 5.0:
            return "warn", "capturing but no image for 5 s", values
        return "ok", ("capturing" if st.capturing else "idle") + f", {st.frames_written} frames", values
