"""Reading a ``transforms.json`` dataset: :func:`load_dataset` and :class:`PosedImageDataset` (see
:mod:`f3rm_ros.core.dataset` for the conventions and the file format)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from f3rm_ros.core.cameras import CameraIntrinsics
from f3rm_ros.core.dataset.files import (_FRAME_KEYS, _INTRINSIC_KEYS, _SUPPORTED_MODELS, TRANSFORMS_NAME, DatasetError,
                                         _number, _parse_matrix, _read_label, _read_mask, _read_rgb, _read_size,
                                         _read_transforms, _resolve_path, resize_image, resize_labels)
from f3rm_ros.core.geometry import c2w_opencv_to_opengl, c2w_opengl_to_opencv

log = logging.getLogger(__name__)

__all__ = ["PosedImageDataset", "load_dataset"]


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
            raise DatasetError(f"{self.root}: frames have different image sizes ({self.sizes_described()}); "
                               "resize them to one size (or use get_image(i))")
        stacked = self._cache.get(-1)
        if stacked is None or len(stacked) != len(self):
            stacked = np.stack([self.get_image(i) for i in range(len(self))])
            self._cache.clear()  # keep one copy: frames become views into the stacked array
            self._cache.update({i: stacked[i] for i in range(len(self))})
            self._cache[-1] = stacked
        return stacked

    def sizes_described(self) -> str:
        """Each image size with its first file and frame count, e.g. "64x48: images/a.png (frame 0) and 3 more;
        32x24: images/e.png (frame 4)"."""
        by: dict[tuple[int, int], list[int]] = {}
        for i, k in enumerate(self.intrinsics):
            by.setdefault(k.size, []).append(i)
        parts = []
        for (w, h), idx in by.items():
            name = self.image_paths[idx[0]]
            rel = name.relative_to(self.root) if name.is_relative_to(self.root) else name
            parts.append(f"{w}x{h}: {rel} (frame {idx[0]})" + (f" and {len(idx) - 1} more" if len(idx) > 1 else ""))
        return "; ".join(parts)

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
        missing_images: what to do with a frame whose image, label (``label_path``) or depth (``depth_path``)
            file does not exist, the one rule for all three: "skip" (default, as instant-ngp: the frame is left
            out, listed in ``skipped``, and one warning is logged (``logging``, this module's logger) with the
            count of each kind and the first files; the real fox capture lists 67 frames for 50 images) or
            "error" (raise naming the frame and the file).

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
    source, skipped, missing = [], [], {}  # missing: kind -> [the DatasetError message of each skipped frame]
    for i, frame in enumerate(frames):
        where = f"{json_path}: frames[{i}]"
        if not isinstance(frame, dict):
            raise DatasetError(f"{where}: expected an object, got {type(frame).__name__}")
        if "file_path" not in frame:
            raise DatasetError(f"{where}: missing 'file_path'")
        where = f"{json_path}: frames[{i}] ({frame['file_path']})"
        try:
            img_path = _resolve_path(root, frame["file_path"], f"{where}.file_path")
            for key, kind in (("label_path", "label"), ("depth_path", "depth"), ("depth_file_path", "depth")):
                if frame.get(key):
                    _resolve_path(root, frame[key], f"{where}.{key}", kind)
        except DatasetError as e:
            if missing_images == "error" or not isinstance(frame["file_path"], str) or "file not found" not in str(e):
                raise
            kind = str(e).rsplit(" file not found", 1)[0].rsplit(" ", 1)[-1]
            missing.setdefault(kind, []).append(str(e))
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
        first = "; ".join(v[0] for v in missing.values())
        raise DatasetError(f"{json_path}: none of the {len(frames)} frames can be used: their files are missing "
                           f"(first: {first})")
    if skipped:
        counts = ", ".join(f"{len(v)} without its {k} file" for k, v in missing.items())
        examples = "; ".join(m for v in missing.values() for m in v[:2])
        log.warning(f"{json_path}: skipped {len(skipped)} of {len(frames)} frames ({counts}), e.g. {examples}; "
                    "missing_images='error' makes this an error")
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
