"""16-bit label images as ROS messages (the synthetic world's ground-truth labels).

``sensor_msgs/Image`` with encoding ``mono16`` (or ``16UC1``), one ``f3rm_labels`` id per pixel
(0 = nothing), little-endian unless ``is_bigendian``. The label table travels as JSON in a
``std_msgs/String`` (the ``f3rm_labels`` dict of contracts.md).

(Kept beside :mod:`f3rm_ros.ros.conversions`, which handles 8-bit colour images only; it can move
there.)
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from sensor_msgs.msg import Image

from f3rm_ros.ros.conversions import ConversionError

__all__ = ["LABEL_ENCODINGS", "labels_to_image", "image_to_labels", "parse_label_table_json"]

LABEL_ENCODINGS = ("mono16", "16UC1")


def labels_to_image(labels: np.ndarray, stamp: Any = None, frame_id: str = "") -> Image:
    """uint16 label ids [H, W] -> ``sensor_msgs/Image`` (mono16, little-endian)."""
    lab = np.asarray(labels)
    if lab.ndim != 2 or lab.dtype.kind not in "ui" or (lab.size and (lab.min() < 0 or lab.max() > 65535)):
        raise ConversionError(f"labels must be an [H, W] integer array in [0, 65535], got {lab.dtype} {lab.shape}")
    lab = np.ascontiguousarray(lab, dtype="<u2")
    msg = Image(height=lab.shape[0], width=lab.shape[1], encoding="mono16", is_bigendian=0,
                step=lab.shape[1] * 2, data=lab.tobytes())
    msg.header.frame_id = frame_id
    if stamp is not None:
        msg.header.stamp = stamp
    return msg


def image_to_labels(msg: Image) -> np.ndarray:
    """``sensor_msgs/Image`` (mono16 / 16UC1) -> uint16 [H, W]."""
    if msg.encoding not in LABEL_ENCODINGS:
        raise ConversionError(f"unsupported label image encoding {msg.encoding!r}; supported: {list(LABEL_ENCODINGS)}")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ConversionError(f"label image has no pixels ({w}x{h})")
    if step < 2 * w:
        raise ConversionError(f"label image step {step} is smaller than 2*width = {2 * w}")
    raw = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if raw.size < h * step:
        raise ConversionError(f"label image data has {raw.size} bytes, expected {h * step}")
    rows = raw[: h * step].reshape(h, step)[:, : 2 * w].copy()
    return rows.view(">u2" if msg.is_bigendian else "<u2").reshape(h, w).astype(np.uint16)


def parse_label_table_json(text: str) -> dict[str, dict]:
    """The ``f3rm_labels`` table from JSON text; raises ConversionError if it is not {id: {...}}."""
    try:
        table = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConversionError(f"label table is not valid JSON: {e}") from None
    if not isinstance(table, dict) or not all(isinstance(v, dict) and "object" in v for v in table.values()):
        raise ConversionError("label table must map label ids to {'object', 'category', 'part', 'synonyms'}")
    for k in table:
        if not str(k).isdigit() or not 0 < int(k) <= 65535:
            raise ConversionError(f"label table key {k!r} is not an id in [1, 65535]")
    return {str(k): dict(v) for k, v in table.items()}
