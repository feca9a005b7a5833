"""Posed-image datasets in the nerfstudio / instant-ngp ``transforms.json`` format: reader, writer,
pose normalisation.

Conventions:

* On disk (``transforms.json``), ``transform_matrix`` is camera-to-world in the **OpenGL** camera
  convention (+y up, +z backward), as nerfstudio and instant-ngp write it. This module converts at
  the boundary: everything in memory (:class:`PosedImageDataset.c2w`, :class:`DatasetWriter`
  arguments) is camera-to-world in the **OpenCV** convention (+y down, +z forward), in the world
  frame and units of the file (metres, z up for our own datasets).
* Intrinsics follow :mod:`f3rm_ros.core.cameras` (pixels, top-left corner at (0, 0)).
* :func:`normalise_poses` maps world poses into the field's frame (cameras inside [-1, 1]^3) and
  returns ``nerf_to_world``, the 4x4 similarity (rotation-free, uniform scale) that maps field
  points back to metres in the world frame.

File format accepted by :func:`load_dataset` (see ``/work/notes/contracts.md``): top-level
``camera_model`` ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "RADIAL", "SIMPLE_RADIAL"; fisheye models are
rejected), shared intrinsics ``fl_x fl_y cx cy w h k1 k2 p1 p2 k3`` (or ``camera_angle_x/_y``),
any of which may be given per frame instead (per-frame values win); ``frames`` with ``file_path``
(relative to the json's folder; a missing extension is tried as .png/.jpg/.jpeg), a 4x4 (or 3x4)
``transform_matrix``, optional ``mask_path`` (0 = ignore) and ``label_path`` (16-bit label ids),
optional ``stamp``. Other keys are kept in ``meta`` (top level) and ``frames_extra`` (per frame);
among them an optional depth image per frame, read by :meth:`PosedImageDataset.get_depth`:
``depth_path`` (ours) or ``depth_file_path`` (nerfstudio), a single-channel image of **z-depth** along
the optical axis (0 = no data), times ``depth_scale`` (per frame) or ``depth_unit_scale_factor`` (top
level, nerfstudio) metres per unit, default 0.001 (millimetres, as 16-bit PNGs usually hold).
"""

from __future__ import annotations

import io as _io
import json
import math
import os
import re
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Mapping, Sequence

import numpy as np

from f3rm_ros.core.cameras import CameraIntrinsics
from f3rm_ros.core.geometry import c2w_opencv_to_opengl, c2w_opengl_to_opencv
from f3rm_ros.core.io import atomic_write_bytes, atomic_write_json

__all__ = [
    "DatasetError",
    "PosedImageDataset",
    "load_dataset",
    "normalise_poses",
    "focus_point",
    "DatasetWriter",
    "write_dataset",
    "resize_image",
    "resize_labels",
    "TRANSFORMS_NAME",
    "encode_depth_png",
    "depth_to_millimetres",
]

TRANSFORMS_NAME = "transforms.json"
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")
_SUPPORTED_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "RADIAL", "SIMPLE_RADIAL")
_INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "k1", "k2", "k3", "k4", "p1", "p2",
                   "camera_angle_x", "camera_angle_y", "camera_model")
_FRAME_KEYS = ("file_path", "transform_matrix", "mask_path", "label_path", "stamp") + _INTRINSIC_KEYS
_RIGID_TOL = 1e-3


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message names the file and the field."""


# ---------------------------------------------------------------------------------- image helpers
def resize_image(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize an RGB uint8 image ``[H, W, 3]`` to ``[height, width, 3]``.

    Downscaling averages over each output pixel's footprint (PIL BOX = area); upscaling is bilinear.
    """
    from PIL import Image

    if image.shape[1] == width and image.shape[0] == height:
        return image
    down = width <= image.shape[1] and height <= image.shape[0]
    pil = Image.fromarray(image)
    return np.asarray(pil.resize((width, height), Image.BOX if down else Image.BILINEAR))


def resize_labels(labels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Nearest-neighbour resize of an integer/bool map ``[H, W]`` (values are never mixed).

    Output pixel (i, j) takes the input pixel under its centre: ``src = floor((i + 0.5) * W / width)``.
    """
    h, w = labels.shape[:2]
    if w == width and h == height:
        return labels
    cols = np.minimum(((np.arange(width) + 0.5) * (w / width)).astype(np.int64), w - 1)
    rows = np.minimum(((np.arange(height) + 0.5) * (h / height)).astype(np.int64), h - 1)
    return labels[rows[:, None], cols[None, :]]


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read image: {e}") from None


def _read_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DatasetError(f"image file not found: {path}") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read image: {e}") from None


def _read_label(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except FileNotFoundError:
        raise DatasetError(f"label file not found: {path}") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read label image: {e}") from None
    if arr.ndim == 3:
        arr = arr[..., 0]
    if arr.min(initial=0) < 0 or arr.max(initial=0) > 65535:
        raise DatasetError(f"{path}: label ids must lie in [0, 65535]")
    return arr.astype(np.uint16)


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"))
    except FileNotFoundError:
        raise DatasetError(f"mask file not found: {path}") from None
    except OSError as e:
        raise DatasetError(f"{path}: cannot read mask image: {e}") from None
    return arr > 0


# ------------------------------------------------------------------------------------- the dataset
@dataclass
class PosedImageDataset:
    """Images with per-frame intrinsics and camera-to-world poses (OpenCV convention, world frame).

    Attributes:
        root: folder holding ``transforms.json``.
        image_paths: one path per frame.
        intrinsics: per-frame cameras, already scaled by ``downscale`` (match :meth:`get_image`).
        c2w: camera-to-world, OpenCV convention, world frame and units of the file  # [N, 4, 4] float64
        train_indices, eval_indices: frame indices of the split  # [N_train], [N_eval] int64
        downscale: the factor images and intrinsics were reduced by.
        mask_paths, label_paths: per frame, or None.
        stamps: per-frame time stamps (seconds) or None.
        labels_table: the top-level ``f3rm_labels`` table ({} if absent).
        meta: other top-level keys of the file, unchanged.
        frames_extra: other per-frame keys, unchanged.
        source_indices: each frame's index in the json's ``frames`` list  # [N]
        skipped: (json index, file_path) of frames left out because their image is missing.
    """

    root: Path
    image_paths: list[Path]
    intrinsics: list[CameraIntrinsics]
    c2w: np.ndarray
    train_indices: np.ndarray
    eval_indices: np.ndarray
    downscale: int = 1
    mask_paths: list[Path | None] = field(default_factory=list)
    label_paths: list[Path | None] = field(default_factory=list)
    stamps: list[float | None] = field(default_factory=list)
    labels_table: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    frames_extra: list[dict[str, Any]] = field(default_factory=list)
    source_indices: np.ndarray | None = None
    skipped: list[tuple[int, str]] = field(default_factory=list)
    _cache: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.image_paths)

    def __repr__(self) -> str:
        sizes = sorted({k.size for k in self.intrinsics})
        return (f"PosedImageDataset(root={str(self.root)!r}, frames={len(self)}, train={len(self.train_indices)}, "
                f"eval={len(self.eval_indices)}, sizes={sizes}, downscale={self.downscale}, "
                f"labels={self.has_labels}, masks={self.has_masks}, skipped={len(self.skipped)})")

    @property
    def has_labels(self) -> bool:
        return any(p is not None for p in self.label_paths)

    @property
    def has_masks(self) -> bool:
        return any(p is not None for p in self.mask_paths)

    @property
    def same_size(self) -> bool:
        """True when every frame has the same (width, height)."""
        return len({k.size for k in self.intrinsics}) <= 1

    def get_image(self, index: int) -> np.ndarray:
        """Frame ``index`` as RGB uint8 ``[H, W, 3]``, resized by ``downscale`` (cached after the first read)."""
        if index in self._cache:
            return self._cache[index]
        K = self.intrinsics[index]
        img = _read_rgb(self.image_paths[index])
        img = resize_image(img, K.width, K.height)
        self._cache[index] = img
        return img

    @property
    def images(self) -> np.ndarray:
        """All frames, uint8 ``[N, H, W, 3]`` (loads and caches them; needs equal sizes)."""
        if not self.same_size:
            raise DatasetError(f"{self.root}: frames have different sizes {sorted({k.size for k in self.intrinsics})}; "
                               "use get_image(i)")
        stacked = self._cache.get(-1)
        if stacked is None or len(stacked) != len(self):
            stacked = np.stack([self.get_image(i) for i in range(len(self))])
            self._cache.clear()  # keep one copy: frames become views into the stacked array
            self._cache.update({i: stacked[i] for i in range(len(self))})
            self._cache[-1] = stacked
        return stacked

    def load_all(self) -> PosedImageDataset:
        """Read every image now (eager loading); returns self."""
        for i in range(len(self)):
            self.get_image(i)
        return self

    def get_mask(self, index: int) -> np.ndarray | None:
        """Frame ``index``'s mask as bool ``[H, W]`` (True = use the pixel), or None."""
        p = self.mask_paths[index] if self.mask_paths else None
        if p is None:
            return None
        K = self.intrinsics[index]
        return resize_labels(_read_mask(p), K.width, K.height)

    def depth_source(self, index: int) -> tuple[Path, float] | None:
        """Frame ``index``'s depth image path and metres per unit, or None (see the module docstring)."""
        extra = self.frames_extra[index] if self.frames_extra else {}
        rel = extra.get("depth_path", extra.get("depth_file_path"))
        if not rel:
            return None
        where = f"{self.root}: frame {index} ({self.image_paths[index].name})"
        path = _resolve_path(self.root, rel, f"{where}.depth_path", "depth")
        scale = extra.get("depth_scale", self.meta.get("depth_unit_scale_factor", 0.001))
        scale = _number(scale, f"{where}.depth_scale")
        if scale <= 0:
            raise DatasetError(f"{where}: depth_scale must be > 0 metres per unit, got {scale}")
        return path, scale

    @property
    def has_depth(self) -> bool:
        """True when at least one frame names a depth image."""
        return any(e.get("depth_path") or e.get("depth_file_path") for e in self.frames_extra)

    def get_depth(self, index: int) -> np.ndarray | None:
        """Frame ``index``'s z-depth (along the optical axis, OpenCV camera) in metres as float32
        ``[H, W]`` (nearest-resized to the frame's size; 0 = no data), or None when it has none."""
        src = self.depth_source(index)
        if src is None:
            return None
        path, scale = src
        from PIL import Image

        try:
            with Image.open(path) as im:
                arr = np.asarray(im)
        except OSError as e:
            raise DatasetError(f"{path}: cannot read depth image: {e}") from None
        if arr.ndim == 3:
            arr = arr[..., 0]
        if arr.ndim != 2 or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise DatasetError(f"{path}: a depth image must be single-channel numbers, got {arr.dtype} {arr.shape}")
        depth = arr.astype(np.float32) * np.float32(scale)
        depth[~np.isfinite(depth) | (depth < 0)] = 0.0
        K = self.intrinsics[index]
        return resize_labels(depth, K.width, K.height)

    def get_labels(self, index: int) -> np.ndarray | None:
        """Frame ``index``'s label ids as uint16 ``[H, W]`` (nearest-resized), or None."""
        p = self.label_paths[index] if self.label_paths else None
        if p is None:
            return None
        K = self.intrinsics[index]
        return resize_labels(_read_label(p), K.width, K.height)

    @property
    def c2w_opengl(self) -> np.ndarray:
        """Camera-to-world in the OpenGL convention (as in the file)  # [N, 4, 4]."""
        return c2w_opencv_to_opengl(self.c2w)

    def subset(self, indices: Sequence[int]) -> PosedImageDataset:
        """A dataset of the given frames (all of them in its train split, none in eval)."""
        idx = [int(i) for i in indices]
        return PosedImageDataset(
            root=self.root, image_paths=[self.image_paths[i] for i in idx],
            intrinsics=[self.intrinsics[i] for i in idx], c2w=self.c2w[idx].copy(),
            train_indices=np.arange(len(idx)), eval_indices=np.zeros(0, np.int64), downscale=self.downscale,
            mask_paths=[self.mask_paths[i] for i in idx], label_paths=[self.label_paths[i] for i in idx],
            stamps=[self.stamps[i] for i in idx], labels_table=dict(self.labels_table), meta=dict(self.meta),
            frames_extra=[dict(self.frames_extra[i]) for i in idx],
            source_indices=None if self.source_indices is None else self.source_indices[idx],
            _cache={j: self._cache[i] for j, i in enumerate(idx) if i >= 0 and i in self._cache})


# ------------------------------------------------------------------------------------------ reader
def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise DatasetError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _parse_matrix(value: Any, where: str) -> np.ndarray:
    try:
        T = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: not a numeric matrix: {str(value)[:80]}") from None
    if T.shape == (3, 4):
        T = np.vstack([T, [0.0, 0.0, 0.0, 1.0]])
    if T.shape != (4, 4):
        raise DatasetError(f"{where}: expected a 4x4 (or 3x4) matrix, got shape {T.shape}")
    if not np.all(np.isfinite(T)):
        raise DatasetError(f"{where}: contains non-finite values")
    R = T[:3, :3]
    err = float(np.abs(R.T @ R - np.eye(3)).max())
    det = float(np.linalg.det(R))
    if err > _RIGID_TOL or abs(det - 1.0) > _RIGID_TOL or not np.allclose(T[3], [0, 0, 0, 1], atol=_RIGID_TOL):
        raise DatasetError(f"{where}: not a rigid transform (max |R^T R - I| = {err:.2e}, det R = {det:.4f}, "
                           f"last row {T[3].tolist()})")
    return T


def _resolve_path(root: Path, rel: Any, where: str, kind: str = "image") -> Path:
    if not isinstance(rel, str) or not rel:
        raise DatasetError(f"{where}: expected a non-empty path string, got {rel!r}")
    p = Path(rel)
    p = p if p.is_absolute() else root / p
    if p.is_file():
        return p
    if p.suffix == "" or p.suffix not in _IMAGE_EXTENSIONS:
        for ext in _IMAGE_EXTENSIONS:
            q = p.with_name(p.name + ext)
            if q.is_file():
                return q
    raise DatasetError(f"{where}: {kind} file not found: {p}")


def _frame_intrinsics(top: Mapping[str, Any], frame: Mapping[str, Any], where: str,
                      image_path: Path) -> CameraIntrinsics:
    def get(key: str) -> Any:
        return frame[key] if key in frame else top.get(key)

    model = get("camera_model") or "OPENCV"
    if model not in _SUPPORTED_MODELS:
        raise DatasetError(f"{where}: camera_model {model!r} is not supported (supported: {list(_SUPPORTED_MODELS)})")
    w, h = get("w"), get("h")
    if w is None or h is None:
        w, h = _read_size(image_path)  # blender-style files give only the field of view
    w = _number(w, f"{where}.w")
    h = _number(h, f"{where}.h")
    if not (w.is_integer() and h.is_integer() and w > 0 and h > 0):
        raise DatasetError(f"{where}: image size w={w}, h={h} must be positive integers")
    fx, fy = get("fl_x"), get("fl_y")
    if fx is None and get("camera_angle_x") is not None:
        fx = 0.5 * w / math.tan(0.5 * _number(get("camera_angle_x"), f"{where}.camera_angle_x"))
    if fy is None and get("camera_angle_y") is not None:
        fy = 0.5 * h / math.tan(0.5 * _number(get("camera_angle_y"), f"{where}.camera_angle_y"))
    if fx is None and fy is None:
        raise DatasetError(f"{where}: missing intrinsics: no fl_x/fl_y or camera_angle_x (top level or per frame)")
    fx = _number(fx if fx is not None else fy, f"{where}.fl_x")
    fy = _number(fy if fy is not None else fx, f"{where}.fl_y")
    if fx <= 0 or fy <= 0:
        raise DatasetError(f"{where}: focal lengths must be > 0, got fl_x={fx}, fl_y={fy}")
    cx = _number(get("cx"), f"{where}.cx") if get("cx") is not None else w / 2.0
    cy = _number(get("cy"), f"{where}.cy") if get("cy") is not None else h / 2.0
    dist = {}
    for k in ("k1", "k2", "p1", "p2", "k3"):
        dist[k] = _number(get(k), f"{where}.{k}") if get(k) is not None else 0.0
    if get("k4") not in (None, 0, 0.0):
        raise DatasetError(f"{where}: k4 is set ({get('k4')}), which only fisheye models use; not supported")
    if model in ("PINHOLE", "SIMPLE_PINHOLE") and any(v != 0.0 for v in dist.values()):
        raise DatasetError(f"{where}: camera_model {model} but distortion coefficients are non-zero: {dist}")
    return CameraIntrinsics(fx, fy, cx, cy, int(w), int(h), **dist)


def _read_transforms(path: Path) -> dict[str, Any]:
    if path.is_dir():
        path = path / TRANSFORMS_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"dataset file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: not valid JSON (truncated or corrupt?) at line {e.lineno} column {e.colno}: "
                           f"{e.msg}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    frames = data.get("frames")
    if not isinstance(frames, list):
        raise DatasetError(f"{path}: missing or invalid 'frames' list")
    return data


def load_dataset(path: str | Path, downscale: int = 1, eval_every: int = 8, load_images: bool = False,
                 check_image_sizes: bool = True, missing_images: str = "skip") -> PosedImageDataset:
    """Read a ``transforms.json`` dataset (nerfstudio / instant-ngp format).

    Args:
        path: the dataset folder or its ``transforms.json``.
        downscale: integer factor to shrink images by; intrinsics are scaled to match (new size
            ``round(w / downscale) x round(h / downscale)``).
        eval_every: frames with ``index % eval_every == 0`` form the eval split (0 = no eval split).
        load_images: read (and resize) every image now instead of on first access.
        check_image_sizes: read each image's header and check it matches the intrinsics' size.
        missing_images: "skip" (default, as instant-ngp: frames whose image file does not exist are
            left out with a warning and listed in ``skipped``; the real fox capture lists 67 frames
            for 50 images) or "error" (raise naming the frame and file).

    Returns:
        the dataset; ``c2w`` is camera-to-world in the **OpenCV** convention, world frame of the file.

    Raises:
        DatasetError: missing files, malformed JSON, a bad matrix, missing intrinsics, an image whose
            size differs from ``w x h``, no frames; the message names the file and field.
    """
    path = Path(path)
    json_path = path / TRANSFORMS_NAME if path.is_dir() else path
    root = json_path.parent
    if isinstance(downscale, bool) or not isinstance(downscale, (int, np.integer)) or downscale < 1:
        if isinstance(downscale, float) and downscale.is_integer() and downscale >= 1:
            downscale = int(downscale)
        else:
            raise ValueError(f"downscale must be an integer >= 1, got {downscale!r}")
    if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 0:
        raise ValueError(f"eval_every must be an integer >= 0, got {eval_every!r}")
    if missing_images not in ("skip", "error"):
        raise ValueError(f"missing_images must be 'skip' or 'error', got {missing_images!r}")
    data = _read_transforms(json_path)
    frames = data["frames"]
    if not frames:
        raise DatasetError(f"{json_path}: 'frames' is empty")
    image_paths, intrinsics, poses, masks, labels, stamps, extras = [], [], [], [], [], [], []
    source, skipped = [], []
    for i, frame in enumerate(frames):
        where = f"{json_path}: frames[{i}]"
        if not isinstance(frame, dict):
            raise DatasetError(f"{where}: expected an object, got {type(frame).__name__}")
        if "file_path" not in frame:
            raise DatasetError(f"{where}: missing 'file_path'")
        where = f"{json_path}: frames[{i}] ({frame['file_path']})"
        try:
            img_path = _resolve_path(root, frame["file_path"], f"{where}.file_path")
        except DatasetError:
            if missing_images == "error" or not isinstance(frame["file_path"], str):
                raise
            skipped.append((i, frame["file_path"]))
            continue
        if "transform_matrix" not in frame:
            raise DatasetError(f"{where}: missing 'transform_matrix'")
        T_gl = _parse_matrix(frame["transform_matrix"], f"{where}.transform_matrix")
        K = _frame_intrinsics(data, frame, where, img_path)
        if check_image_sizes:
            size = _read_size(img_path)
            if size != K.size:
                raise DatasetError(f"{where}: image size mismatch: {img_path} is {size[0]}x{size[1]} but the "
                                   f"intrinsics say w x h = {K.width}x{K.height}")
        if downscale != 1:
            K = K.resized(max(1, round(K.width / downscale)), max(1, round(K.height / downscale)))
        image_paths.append(img_path)
        intrinsics.append(K)
        poses.append(c2w_opengl_to_opencv(T_gl))
        masks.append(_resolve_path(root, frame["mask_path"], f"{where}.mask_path", "mask")
                     if frame.get("mask_path") else None)
        labels.append(_resolve_path(root, frame["label_path"], f"{where}.label_path", "label")
                      if frame.get("label_path") else None)
        stamps.append(_number(frame["stamp"], f"{where}.stamp") if frame.get("stamp") is not None else None)
        extras.append({k: v for k, v in frame.items() if k not in _FRAME_KEYS})
        source.append(i)
    if not image_paths:
        raise DatasetError(f"{json_path}: none of the {len(frames)} frames' image files exist "
                           f"(first: {root / str(frames[0]['file_path'])})")
    if skipped:
        warnings.warn(f"{json_path}: skipped {len(skipped)} of {len(frames)} frames whose image file is missing "
                      f"({', '.join(str(p) for _, p in skipped[:5])}{', ...' if len(skipped) > 5 else ''})",
                      stacklevel=2)
    n = len(image_paths)
    idx = np.arange(n)
    if eval_every > 0 and n > 1:
        is_eval = idx % eval_every == 0
    else:
        is_eval = np.zeros(n, bool)
    labels_table = data.get("f3rm_labels") or {}
    if not isinstance(labels_table, dict):
        raise DatasetError(f"{json_path}: f3rm_labels must be an object mapping id -> description")
    meta = {k: v for k, v in data.items() if k not in ("frames", "f3rm_labels") + _INTRINSIC_KEYS}
    ds = PosedImageDataset(root=root, image_paths=image_paths, intrinsics=intrinsics, c2w=np.stack(poses),
                           train_indices=idx[~is_eval], eval_indices=idx[is_eval], downscale=int(downscale),
                           mask_paths=masks, label_paths=labels, stamps=stamps, labels_table=labels_table,
                           meta=meta, frames_extra=extras, source_indices=np.asarray(source, np.int64),
                           skipped=skipped)
    if load_images:
        ds.load_all()
    return ds


# ------------------------------------------------------------------------------- pose normalisation
def focus_point(c2w_opencv: np.ndarray) -> np.ndarray:
    """Least-squares point nearest to every camera's optical axis (OpenCV +z)  # [3].

    Args:
        c2w_opencv: camera-to-world, OpenCV convention  # [N, 4, 4]

    Falls back to the mean camera centre when the axes are (nearly) parallel.
    """
    c2w = np.asarray(c2w_opencv, dtype=np.float64)
    d = c2w[:, :3, 2]
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    o = c2w[:, :3, 3]
    P = np.eye(3)[None] - d[:, :, None] * d[:, None, :]  # projectors orthogonal to each axis
    A = P.sum(0)
    b = (P @ o[:, :, None]).sum(0)[:, 0]
    if np.linalg.cond(A) > 1e8:
        return o.mean(0)
    return np.linalg.solve(A, b)


def normalise_poses(c2w_world: np.ndarray, center: str = "focus", scale_factor: float = 1.0,
                    fixed_center: Sequence[float] | None = None, fixed_scale: float | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Map camera poses into the field's frame (cameras within [-1, 1]^3) without rotating them.

    ``p_nerf = scale * (p_world - centre)``, with ``scale = scale_factor / max |camera coordinate|``
    after centring (so the largest |coordinate| of a camera centre equals ``scale_factor``).

    Args:
        c2w_world: camera-to-world in the world frame (OpenCV or OpenGL: the rotation is kept as is)  # [N, 4, 4]
        center: "focus" (default: :func:`focus_point` of the optical axes, needs OpenCV poses; right
            for captures looking at a scene, where the mean camera centre can lie far off it),
            "poses" (mean camera centre) or "none" (world origin).
        scale_factor: extra multiplier on the automatic scale.
        fixed_center: use this world point as the centre instead  # [3]
        fixed_scale: use this scale (field units per metre) instead of the automatic one.

    Returns:
        c2w_nerf: the poses in the field's frame (rotation unchanged, translation scaled)  # [N, 4, 4]
        nerf_to_world: similarity ``[[I / scale, centre], [0, 1]]`` mapping field points to metres
            in the world frame  # [4, 4]; its scale is ``1 / scale`` (``np.cbrt(det(M[:3,:3]))``).
    """
    c2w = np.asarray(c2w_world, dtype=np.float64)
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4) or len(c2w) == 0:
        raise ValueError(f"c2w_world must have shape [N, 4, 4] with N >= 1, got {c2w.shape}")
    if not np.all(np.isfinite(c2w)):
        raise ValueError("c2w_world contains non-finite values")
    t = c2w[:, :3, 3]
    if fixed_center is not None:
        centre = np.asarray(fixed_center, dtype=np.float64).reshape(3)
    elif center == "poses":
        centre = t.mean(0)
    elif center == "focus":
        centre = focus_point(c2w)
    elif center == "none":
        centre = np.zeros(3)
    else:
        raise ValueError(f"center must be 'poses', 'focus' or 'none', got {center!r}")
    if fixed_scale is not None:
        scale = float(fixed_scale)
    else:
        extent = float(np.abs(t - centre).max())
        scale = scale_factor / extent if extent > 1e-12 else scale_factor
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"pose normalisation scale must be finite and > 0, got {scale}")
    out = c2w.copy()
    out[:, :3, 3] = scale * (t - centre)
    nerf_to_world = np.eye(4)
    nerf_to_world[:3, :3] *= 1.0 / scale
    nerf_to_world[:3, 3] = centre
    return out, nerf_to_world


# ------------------------------------------------------------------------------------------ writer
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
            stem = f"frame_{num:05d}"
            ext = "png" if self.image_format == "png" else "jpg"
            frame: dict[str, Any] = {"file_path": f"images/{stem}.{ext}"}
            atomic_write_bytes(self.root / frame["file_path"],
                               _encode_image(image, self.image_format, self.jpeg_quality))
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
            self._next_number = num + 1
            try:
                self._save()
            except BaseException:
                self._data["frames"].pop()
                raise
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
