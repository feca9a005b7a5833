"""Writing a ``transforms.json`` dataset frame by frame (:class:`DatasetWriter`, crash-safe) or at once
(:func:`write_dataset`); depth maps as 16-bit PNGs in millimetres (see :mod:`f3rm_ros.core.dataset`)."""

from __future__ import annotations

import io as _io
import json
import math
import os
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from f3rm_ros.core.cameras import CameraIntrinsics
from f3rm_ros.core.dataset.files import (_FRAME_KEYS, TRANSFORMS_NAME, DatasetError, _parse_matrix,
                                         _read_transforms)
from f3rm_ros.core.dataset.reader import _frame_intrinsics
from f3rm_ros.core.geometry import c2w_opencv_to_opengl
from f3rm_ros.core.io import atomic_write_bytes, atomic_write_json

__all__ = ["DatasetWriter", "write_dataset", "encode_depth_png", "depth_to_millimetres"]


def _encode_image(image: np.ndarray, fmt: str, jpeg_quality: int) -> bytes:
    from PIL import Image

    buf = _io.BytesIO()
    if fmt == "png":
        Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    else:
        Image.fromarray(image).save(buf, format="JPEG", quality=jpeg_quality)
    return buf.getvalue()


def _encode_png16(labels: np.ndarray) -> bytes:
    from PIL import Image

    buf = _io.BytesIO()
    Image.fromarray(labels.astype(np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def depth_to_millimetres(depth_m: np.ndarray) -> np.ndarray:
    """z-depth in metres -> uint16 millimetres (0 = no data; NaN/inf/negative -> 0; clipped at 65.535 m), the
    encoding of depth PNGs and of 16UC1 depth images (REP 118)."""
    d = np.asarray(depth_m, dtype=np.float64)
    d = np.where(np.isfinite(d) & (d > 0), d, 0.0)
    return np.clip(np.round(d * 1000.0), 0, 65535).astype(np.uint16)


def encode_depth_png(depth_m: np.ndarray) -> bytes:
    """16-bit PNG of a z-depth map ``[H, W]`` in metres (:func:`depth_to_millimetres`), read back by
    :meth:`PosedImageDataset.get_depth` with ``depth_scale`` 0.001."""
    return _encode_png16(depth_to_millimetres(depth_m))


class DatasetWriter:
    """Append frames to a ``transforms.json`` dataset one at a time, crash-safe.

    Each :meth:`add_frame` writes the image (and optional mask / label map / depth map) atomically, then
    rewrites ``transforms.json`` atomically, so the folder is a valid dataset after every call and a
    crash never leaves a frame half-written in the json. Opening a folder that already holds a
    dataset continues it: numbering resumes after the highest existing file number, existing
    frames are kept.

    Poses are given in the **OpenCV** convention (camera-to-world, world frame, metres) and stored
    in the file's OpenGL convention; intrinsics are stored per frame (and the first frame's also at
    the top level for tools that want shared ones).

    The methods are thread-safe (one lock), so a capture callback may add frames while another
    thread clears. Only one writer per folder at a time (across processes) is supported.

    Args:
        root: dataset folder (created if needed).
        image_format: "png" (lossless, default) or "jpg".
        jpeg_quality: JPEG quality 1-100.
        world_frame: name of the world frame written as ``world_frame``.
    """

    def __init__(self, root: str | Path, image_format: str = "png", jpeg_quality: int = 95,
                 world_frame: str = "world") -> None:
        if image_format not in ("png", "jpg", "jpeg"):
            raise ValueError(f"image_format must be 'png' or 'jpg', got {image_format!r}")
        if not (1 <= int(jpeg_quality) <= 100):
            raise ValueError(f"jpeg_quality must be in [1, 100], got {jpeg_quality}")
        self.root = Path(root)
        self.image_format = "jpg" if image_format == "jpeg" else image_format
        self.jpeg_quality = int(jpeg_quality)
        self.json_path = self.root / TRANSFORMS_NAME
        self._lock = threading.RLock()
        self.root.mkdir(parents=True, exist_ok=True)
        if self.json_path.exists():  # continue it (a corrupt file raises DatasetError and is left untouched)
            self._data = _read_transforms(self.json_path)
        else:
            self._data = {"camera_model": "OPENCV", "world_frame": world_frame, "units": "metres",
                          "camera_convention": "opengl", "frames": []}
        self._next_number = self._scan_next_number()

    # -- state
    def __len__(self) -> int:
        return len(self._data["frames"])

    @property
    def frames(self) -> list[dict[str, Any]]:
        """The frame entries as written in the json (do not modify)."""
        return self._data["frames"]

    def _scan_next_number(self) -> int:
        nums = [-1]
        pat = re.compile(r"frame_(\d+)")
        for fr in self._data["frames"]:
            for key in ("file_path", "mask_path", "label_path", "depth_path"):
                m = pat.search(str(fr.get(key, "")))
                if m:
                    nums.append(int(m.group(1)))
        for sub in ("images", "masks", "labels", "depth"):  # orphans of an interrupted add_frame are never reused
            d = self.root / sub
            if d.is_dir():
                for p in d.iterdir():
                    m = pat.match(p.name)
                    if m:
                        nums.append(int(m.group(1)))
        return max(nums) + 1

    def _save(self) -> None:
        atomic_write_json(self.json_path, self._data)

    # -- metadata
    @property
    def world_frame(self) -> str:
        """The dataset's ``world_frame`` ('' when the file names none)."""
        return str(self._data.get("world_frame", "") or "")

    def intrinsics(self, index: int) -> CameraIntrinsics:
        """The camera of frame ``index`` as the reader sees it (its own keys, else the top-level ones);
        DatasetError when the file's intrinsics are malformed."""
        with self._lock:
            frame = self._data["frames"][index]
            return _frame_intrinsics(self._data, frame, f"{self.json_path}: frames[{index}]",
                                     self.root / str(frame.get("file_path", "")))

    @property
    def labels_table(self) -> dict[str, dict[str, Any]] | None:
        """The top-level ``f3rm_labels`` table as stored (None if the dataset has none; do not modify)."""
        return self._data.get("f3rm_labels")

    def set_labels_table(self, table: Mapping[str | int, Mapping[str, Any]]) -> None:
        """Set the top-level ``f3rm_labels`` table ({id: {"object", "category", "part", "synonyms"}})."""
        with self._lock:
            self._data["f3rm_labels"] = {str(k): dict(v) for k, v in table.items()}
            self._save()

    def update_meta(self, meta: Mapping[str, Any]) -> None:
        """Add or replace top-level keys (not ``frames``)."""
        if "frames" in meta:
            raise ValueError("update_meta cannot replace 'frames'")
        with self._lock:
            self._data.update(json.loads(json.dumps(dict(meta))))
            self._save()

    # -- frames
    def add_frame(self, image: np.ndarray, intrinsics: CameraIntrinsics, c2w_opencv_world: np.ndarray,
                  stamp: float | None = None, extra: Mapping[str, Any] | None = None,
                  mask: np.ndarray | None = None, labels: np.ndarray | None = None,
                  depth_m: np.ndarray | None = None) -> int:
        """Append one frame; returns its index in the dataset.

        Args:
            image: RGB uint8  # [H, W, 3], with (W, H) == (intrinsics.width, intrinsics.height)
            intrinsics: the camera for this image.
            c2w_opencv_world: camera-to-world, OpenCV convention, world frame, metres  # [4, 4]
            stamp: time stamp in seconds (stored as ``stamp``).
            extra: additional JSON-serialisable per-frame keys (must not clash with standard keys).
            mask: optional bool/uint8  # [H, W], nonzero = use the pixel
            labels: optional label ids uint16  # [H, W], written as a 16-bit PNG (``label_path``)
            depth_m: optional z-depth along the optical axis in metres, 0 or NaN = no data  # [H, W];
                written as a 16-bit PNG in millimetres (``depth_path``, ``depth_scale`` 0.001)

        Raises:
            ValueError: wrong image dtype/shape, size not matching the intrinsics, a pose that is not
                a finite rigid transform, clashing extra keys.
        """
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
        if not isinstance(intrinsics, CameraIntrinsics):
            raise ValueError(f"intrinsics must be a CameraIntrinsics, got {type(intrinsics).__name__}")
        if (image.shape[1], image.shape[0]) != intrinsics.size:
            raise ValueError(f"image is {image.shape[1]}x{image.shape[0]} but intrinsics are "
                             f"{intrinsics.width}x{intrinsics.height}")
        try:
            T_cv = _parse_matrix(np.asarray(c2w_opencv_world, dtype=np.float64).tolist(), "c2w_opencv_world")
        except DatasetError as e:
            raise ValueError(str(e)) from None
        extra = dict(extra or {})
        clash = sorted(set(extra) & (set(_FRAME_KEYS) | {"file_path"} | ({"depth_path", "depth_scale"}
                                                                         if depth_m is not None else set())))
        if clash:
            raise ValueError(f"extra keys {clash} clash with standard frame keys")
        for name, arr in (("mask", mask), ("labels", labels), ("depth_m", depth_m)):
            if arr is not None and np.asarray(arr).shape != image.shape[:2]:
                raise ValueError(f"{name} must have shape {image.shape[:2]}, got {np.asarray(arr).shape}")
        if labels is not None:
            lab = np.asarray(labels)
            if lab.dtype.kind not in "ui" or lab.min(initial=0) < 0 or lab.max(initial=0) > 65535:
                raise ValueError("labels must be integer ids in [0, 65535]")
        if depth_m is not None and np.asarray(depth_m).dtype.kind not in "uif":
            raise ValueError(f"depth_m must be numbers (metres), got {np.asarray(depth_m).dtype}")

        try:  # before any file is written
            extra_json = json.loads(json.dumps(extra, allow_nan=False))
        except (TypeError, ValueError) as e:
            raise ValueError(f"extra must be JSON-serialisable (finite numbers, lists, dicts, strings): {e}") from None
        if stamp is not None and not math.isfinite(float(stamp)):
            raise ValueError(f"stamp must be finite, got {stamp!r}")

        with self._lock:
            num = self._next_number
            self._next_number = num + 1  # a failed frame's number is not reused (its files are removed below)
            frame: dict[str, Any] = {}
            first = not self._data["frames"]
            try:
                return self._write_frame(frame, num, image, intrinsics, T_cv, stamp, extra_json, mask, labels,
                                         depth_m)
            except BaseException:  # disk full, permissions...: no file of this frame stays behind
                if self._data["frames"] and self._data["frames"][-1] is frame:
                    self._data["frames"].pop()
                if first:
                    for k in ("camera_model", *intrinsics.to_dict()):
                        self._data.pop(k, None)
                for key in ("file_path", "mask_path", "label_path", "depth_path"):
                    if frame.get(key):
                        try:
                            os.unlink(self.root / frame[key])
                        except OSError:
                            pass
                raise

    def _write_frame(self, frame: dict[str, Any], num: int, image: np.ndarray, intrinsics: CameraIntrinsics,
                     T_cv: np.ndarray, stamp: float | None, extra_json: dict[str, Any], mask: np.ndarray | None,
                     labels: np.ndarray | None, depth_m: np.ndarray | None) -> int:
        """The files of one frame, then the json (``frame`` is filled as each file is written); with the lock held."""
        stem = f"frame_{num:05d}"
        ext = "png" if self.image_format == "png" else "jpg"
        frame["file_path"] = f"images/{stem}.{ext}"
        atomic_write_bytes(self.root / frame["file_path"], _encode_image(image, self.image_format, self.jpeg_quality))
        if mask is not None:
            frame["mask_path"] = f"masks/{stem}.png"
            m = (np.asarray(mask) != 0).astype(np.uint8) * 255
            from PIL import Image

            buf = _io.BytesIO()
            Image.fromarray(m).save(buf, format="PNG")
            atomic_write_bytes(self.root / frame["mask_path"], buf.getvalue())
        if labels is not None:
            frame["label_path"] = f"labels/{stem}.png"
            atomic_write_bytes(self.root / frame["label_path"], _encode_png16(np.asarray(labels)))
        if depth_m is not None:
            frame["depth_path"], frame["depth_scale"] = f"depth/{stem}.png", 0.001
            atomic_write_bytes(self.root / frame["depth_path"], encode_depth_png(depth_m))
        frame["transform_matrix"] = c2w_opencv_to_opengl(T_cv).tolist()
        frame.update(intrinsics.to_dict())
        if stamp is not None:
            frame["stamp"] = float(stamp)
        frame.update(extra_json)
        if not self._data["frames"]:
            self._data.update({"camera_model": "OPENCV", **intrinsics.to_dict()})
        self._data["frames"].append(frame)
        self._save()
        return len(self._data["frames"]) - 1

    def clear(self) -> None:
        """Remove every frame: the json is rewritten with no frames first, then the files are deleted."""
        with self._lock:
            old = list(self._data["frames"])
            self._data["frames"] = []
            for k in ("fl_x", "fl_y", "cx", "cy", "w", "h", "k1", "k2", "p1", "p2", "k3"):
                self._data.pop(k, None)
            self._save()
            for fr in old:
                for key in ("file_path", "mask_path", "label_path", "depth_path"):
                    rel = fr.get(key)
                    if rel:
                        p = self.root / rel
                        if p.is_file():
                            os.unlink(p)
            self._next_number = self._scan_next_number()


def write_dataset(root: str | Path, images: Sequence[np.ndarray] | np.ndarray,
                  intrinsics: CameraIntrinsics | Sequence[CameraIntrinsics], c2w_opencv_world: np.ndarray,
                  labels: Sequence[np.ndarray] | None = None, masks: Sequence[np.ndarray] | None = None,
                  labels_table: Mapping[str | int, Mapping[str, Any]] | None = None,
                  meta: Mapping[str, Any] | None = None, stamps: Sequence[float] | None = None,
                  image_format: str = "png", overwrite: bool = False) -> Path:
    """Write a whole dataset at once (see :class:`DatasetWriter`); returns the ``transforms.json`` path.

    Args:
        images: RGB uint8  # [N, H, W, 3] or a list of [H, W, 3]
        intrinsics: one camera for all frames or one per frame.
        c2w_opencv_world: camera-to-world, OpenCV convention, world frame  # [N, 4, 4]
        labels, masks, stamps: optional, one per frame.
        labels_table: the ``f3rm_labels`` table.
        meta: extra top-level keys.
        overwrite: clear an existing dataset in ``root`` first (else raise if it has frames).
    """
    n = len(images)
    poses = np.asarray(c2w_opencv_world, dtype=np.float64)
    if poses.shape != (n, 4, 4):
        raise ValueError(f"c2w_opencv_world must have shape [{n}, 4, 4], got {poses.shape}")
    Ks = [intrinsics] * n if isinstance(intrinsics, CameraIntrinsics) else list(intrinsics)
    if len(Ks) != n:
        raise ValueError(f"got {len(Ks)} intrinsics for {n} images")
    for name, seq in (("labels", labels), ("masks", masks), ("stamps", stamps)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"got {len(seq)} {name} for {n} images")
    w = DatasetWriter(root, image_format=image_format)
    if len(w):
        if not overwrite:
            raise ValueError(f"{w.json_path} already holds {len(w)} frames (pass overwrite=True to replace them)")
        w.clear()
    if meta:
        w.update_meta(meta)
    if labels_table is not None:
        w.set_labels_table(labels_table)
    for i in range(n):
        w.add_frame(np.asarray(images[i]), Ks[i], poses[i], stamp=None if stamps is None else stamps[i],
                    mask=None if masks is None else masks[i], labels=None if labels is None else labels[i])
    return w.json_path
