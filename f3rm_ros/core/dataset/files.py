"""The ``transforms.json`` format's building blocks, shared by the reader and the writer: the error type,
the file's key names, reading image files, numbers, matrices and paths (see :mod:`f3rm_ros.core.dataset`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DatasetError", "TRANSFORMS_NAME", "resize_image", "resize_labels"]

TRANSFORMS_NAME = "transforms.json"
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")
_SUPPORTED_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "RADIAL", "SIMPLE_RADIAL")
_INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "k1", "k2", "k3", "k4", "p1", "p2",
                   "camera_angle_x", "camera_angle_y", "camera_model")
_FRAME_KEYS = ("file_path", "transform_matrix", "mask_path", "label_path", "stamp") + _INTRINSIC_KEYS
_RIGID_TOL = 1e-3


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message names the file and the field."""


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
