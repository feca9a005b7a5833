"""The one place where ROS messages meet numpy: images, camera info, poses, point clouds, grasps.

Small stand-ins for what ROS does not ship on PyPI (cv_bridge, sensor_msgs_py.point_cloud2): the
real packages are used when they import (``HAVE_CV_BRIDGE`` / ``HAVE_SENSOR_MSGS_PY``), these
otherwise; tests compare both paths where both exist.

Frames: poses are ``T_parent_child`` 4x4 matrices in metres (geometry.py conventions); camera
intrinsics follow ``sensor_msgs/CameraInfo`` (OpenCV optical frame, ``plumb_bob`` distortion).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from geometry_msgs.msg import Point, Pose, PoseStamped, Quaternion, Transform, TransformStamped
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField

from f3rm_ros.core.dataset import depth_to_millimetres
from f3rm_ros.core.geometry import matrix_to_pose, pose_to_matrix
from f3rm_ros.core.image_codec import (CodecError, decode_compressed_depth, decode_rgb, decode_u16_png,
                                       encode_compressed_depth, encode_rgb, encode_u16_png)

try:  # pragma: no cover - depends on the ROS install
    # The import itself is the availability probe (a broken install must count as missing too).
    from cv_bridge import CvBridge  # type: ignore  # noqa: F401

    HAVE_CV_BRIDGE = True
except ImportError:
    HAVE_CV_BRIDGE = False
try:  # pragma: no cover - depends on the ROS install
    from sensor_msgs_py import point_cloud2 as _pc2  # type: ignore  # noqa: F401  (availability probe, as above)

    HAVE_SENSOR_MSGS_PY = True
except ImportError:
    HAVE_SENSOR_MSGS_PY = False

__all__ = [
    "SUPPORTED_ENCODINGS",
    "ConversionError",
    "image_to_rgb",
    "rgb_to_image",
    "compressed_to_rgb",
    "rgb_to_compressed",
    "labels_to_compressed",
    "compressed_to_labels",
    "depth_to_compressed",
    "compressed_to_depth",
    "LABEL_ENCODINGS",
    "labels_to_image",
    "image_to_labels",
    "parse_label_table_json",
    "DEPTH_ENCODINGS",
    "depth_to_image",
    "image_to_depth",
    "camera_info_to_intrinsics",
    "intrinsics_to_camera_info",
    "pose_msg_to_matrix",
    "matrix_to_pose_msg",
    "transform_msg_to_matrix",
    "make_point_cloud",
    "read_point_cloud",
    "GRASP_QUALITY_FIELDS",
    "grasp_to_msg",
    "grasp_msg_to_dict",
]

SUPPORTED_ENCODINGS = ("rgb8", "bgr8", "rgba8", "bgra8", "mono8")


class ConversionError(ValueError):
    """A message cannot be converted; the message says which field is wrong."""


def _set_header(msg: Any, frame_id: str, stamp: Any) -> None:
    """Fill a message's header: frame id, and the stamp when one is given."""
    msg.header.frame_id = frame_id
    if stamp is not None:
        msg.header.stamp = stamp


# --- images ----------------------------------------------------------------------------------------

def _pixel_rows(msg: Image, bytes_per_pixel: int, what: str = "image") -> np.ndarray:
    """The pixel bytes of an ``Image`` as uint8 [H, W * bytes_per_pixel], row padding dropped."""
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ConversionError(f"{what} has no pixels ({w}x{h})")
    if step < w * bytes_per_pixel:
        raise ConversionError(f"{what} step {step} is smaller than width*bytes per pixel = {w * bytes_per_pixel}")
    data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if data.size < h * step:
        raise ConversionError(f"{what} data has {data.size} bytes, expected {h * step} ({h} rows x step {step})")
    return data[: h * step].reshape(h, step)[:, : w * bytes_per_pixel]


def image_to_rgb(msg: Image) -> np.ndarray:
    """``sensor_msgs/Image`` -> (H, W, 3) uint8 RGB. Encodings: rgb8, bgr8, rgba8, bgra8, mono8."""
    enc = msg.encoding.lower()
    if enc not in SUPPORTED_ENCODINGS:
        raise ConversionError(f"unsupported image encoding {msg.encoding!r}; supported: {list(SUPPORTED_ENCODINGS)}")
    ch = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}[enc]
    arr = _pixel_rows(msg, ch).reshape(int(msg.height), int(msg.width), ch)
    if enc == "mono8":
        return np.repeat(arr, 3, axis=2).copy()
    if enc in ("bgr8", "bgra8"):
        arr = arr[..., [2, 1, 0]]
    return np.ascontiguousarray(arr[..., :3])


def rgb_to_image(rgb: np.ndarray, stamp: Any = None, frame_id: str = "") -> Image:
    """(H, W, 3) uint8 RGB -> ``sensor_msgs/Image`` (rgb8)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ConversionError(f"expected an (H, W, 3) image, got shape {rgb.shape}")
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", is_bigendian=0,
                step=rgb.shape[1] * 3, data=rgb.tobytes())
    _set_header(msg, frame_id, stamp)
    return msg


def compressed_to_rgb(msg: CompressedImage) -> np.ndarray:
    """``sensor_msgs/CompressedImage`` (jpeg/png) -> (H, W, 3) uint8 RGB."""
    try:
        return decode_rgb(msg.data)
    except CodecError as e:
        raise ConversionError(f"cannot decode compressed image (format {msg.format!r}): {e}") from None


def _compressed(data: bytes, fmt: str, stamp: Any, frame_id: str) -> CompressedImage:
    msg = CompressedImage(format=fmt, data=data)
    _set_header(msg, frame_id, stamp)
    return msg


def rgb_to_compressed(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90, stamp: Any = None,
                      frame_id: str = "") -> CompressedImage:
    """(H, W, 3) uint8 RGB -> ``sensor_msgs/CompressedImage`` (jpeg or png; ``format`` as image_transport
    writes it: ``"rgb8; jpeg compressed bgr8"``)."""
    try:
        data = encode_rgb(rgb, fmt, quality)
    except CodecError as e:
        raise ConversionError(str(e)) from None
    return _compressed(data, f"rgb8; {fmt} compressed bgr8", stamp, frame_id)


def labels_to_compressed(labels: np.ndarray, stamp: Any = None, frame_id: str = "") -> CompressedImage:
    """uint16 label ids [H, W] -> ``CompressedImage`` (16-bit PNG, lossless; ``"mono16; png compressed mono16"``)."""
    try:
        data = encode_u16_png(labels)
    except CodecError as e:
        raise ConversionError(f"labels: {e}") from None
    return _compressed(data, "mono16; png compressed mono16", stamp, frame_id)


def compressed_to_labels(msg: CompressedImage) -> np.ndarray:
    """``CompressedImage`` holding a 16-bit PNG of label ids -> uint16 [H, W]."""
    try:
        return decode_u16_png(msg.data)
    except CodecError as e:
        raise ConversionError(f"compressed label image (format {msg.format!r}): {e}") from None


def depth_to_compressed(depth_m: np.ndarray, stamp: Any = None, frame_id: str = "") -> CompressedImage:
    """z-depth [H, W] in metres -> ``CompressedImage`` compressedDepth (16UC1 millimetres as a 16-bit PNG
    behind compressed_depth_image_transport's 12-byte header; ``"16UC1; compressedDepth png"``)."""
    if np.ndim(depth_m) != 2:
        raise ConversionError(f"depth must be [H, W], got shape {np.shape(depth_m)}")
    return _compressed(encode_compressed_depth(depth_to_millimetres(depth_m)), "16UC1; compressedDepth png",
                       stamp, frame_id)


def compressed_to_depth(msg: CompressedImage) -> np.ndarray:
    """``CompressedImage`` compressedDepth (16UC1) -> float32 z-depth in metres [H, W], 0 = no measurement."""
    try:
        mm = decode_compressed_depth(msg.data, msg.format)
    except CodecError as e:
        raise ConversionError(f"compressed depth image (format {msg.format!r}): {e}") from None
    return mm.astype(np.float32) * np.float32(0.001)


# --- label images (the synthetic world's ground truth) --------------------------------------------
# ``sensor_msgs/Image`` mono16 (or 16UC1), one ``f3rm_labels`` id per pixel (0 = nothing),
# little-endian unless ``is_bigendian``; the label table travels as JSON in a ``std_msgs/String``.

LABEL_ENCODINGS = ("mono16", "16UC1")


def labels_to_image(labels: np.ndarray, stamp: Any = None, frame_id: str = "") -> Image:
    """uint16 label ids [H, W] -> ``sensor_msgs/Image`` (mono16, little-endian)."""
    lab = np.asarray(labels)
    if lab.ndim != 2 or lab.dtype.kind not in "ui" or (lab.size and (lab.min() < 0 or lab.max() > 65535)):
        raise ConversionError(f"labels must be an [H, W] integer array in [0, 65535], got {lab.dtype} {lab.shape}")
    return _u16_image(lab, "mono16", stamp, frame_id)


def _u16_image(values: np.ndarray, encoding: str, stamp: Any, frame_id: str) -> Image:
    """[H, W] values in [0, 65535] -> a little-endian 16-bit ``sensor_msgs/Image``."""
    v = np.ascontiguousarray(values, dtype="<u2")
    msg = Image(height=v.shape[0], width=v.shape[1], encoding=encoding, is_bigendian=0, step=v.shape[1] * 2,
                data=v.tobytes())
    _set_header(msg, frame_id, stamp)
    return msg


def image_to_labels(msg: Image) -> np.ndarray:
    """``sensor_msgs/Image`` (mono16 / 16UC1) -> uint16 [H, W]."""
    if msg.encoding not in LABEL_ENCODINGS:
        raise ConversionError(f"unsupported label image encoding {msg.encoding!r}; supported: {list(LABEL_ENCODINGS)}")
    rows = _pixel_rows(msg, 2, "label image").copy()
    return rows.view(">u2" if msg.is_bigendian else "<u2").reshape(int(msg.height), int(msg.width)).astype(np.uint16)


DEPTH_ENCODINGS = ("16UC1", "mono16", "32FC1")


def depth_to_image(depth_m: np.ndarray, stamp: Any = None, frame_id: str = "") -> Image:
    """z-depth [H, W] in metres (0 / NaN = no data) -> ``sensor_msgs/Image`` 16UC1 in millimetres (REP 118)."""
    if np.ndim(depth_m) != 2:
        raise ConversionError(f"depth must be [H, W], got shape {np.shape(depth_m)}")
    return _u16_image(depth_to_millimetres(depth_m), "16UC1", stamp, frame_id)


def image_to_depth(msg: Image) -> np.ndarray:
    """``sensor_msgs/Image`` depth (REP 118: 16UC1 millimetres or 32FC1 metres) -> float32 z-depth in
    metres [H, W], 0 where there is no measurement (0, NaN, inf or negative in the message)."""
    if msg.encoding not in DEPTH_ENCODINGS:
        raise ConversionError(f"unsupported depth image encoding {msg.encoding!r}; supported: {list(DEPTH_ENCODINGS)}")
    h, w = int(msg.height), int(msg.width)
    if msg.encoding == "32FC1":
        rows = _pixel_rows(msg, 4, "depth image").copy()
        d = rows.view(">f4" if msg.is_bigendian else "<f4").reshape(h, w).astype(np.float32)
    else:
        rows = _pixel_rows(msg, 2, "depth image").copy()
        d = rows.view(">u2" if msg.is_bigendian else "<u2").reshape(h, w).astype(np.float32) * np.float32(0.001)
    d[~np.isfinite(d) | (d < 0)] = 0.0
    return d


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


# --- cameras ---------------------------------------------------------------------------------------

def camera_info_to_intrinsics(msg: CameraInfo):
    """``sensor_msgs/CameraInfo`` -> :class:`f3rm_ros.core.cameras.CameraIntrinsics`.

    ROS puts pixel centres at integer coordinates (like OpenCV); CameraIntrinsics puts them at +0.5
    (like nerfstudio), so the principal point moves by half a pixel here. Supports ``plumb_bob`` /
    ``rational_polynomial`` (coefficients past k3 must be zero) and no distortion.
    Raises ConversionError on a zero/non-finite focal length, no image size or an unknown model.
    """
    from f3rm_ros.core.cameras import CameraIntrinsics

    k = np.asarray(msg.k, dtype=np.float64)
    if k.size != 9 or not np.all(np.isfinite(k)) or k[0] <= 0 or k[4] <= 0:
        raise ConversionError(f"camera_info K is not a valid intrinsic matrix: {k.tolist()}")
    if msg.width <= 0 or msg.height <= 0:
        raise ConversionError(f"camera_info has no image size ({msg.width}x{msg.height})")
    d = [float(x) for x in msg.d]
    model = msg.distortion_model or ("plumb_bob" if d else "")
    if d and model not in ("plumb_bob", "rational_polynomial"):
        raise ConversionError(f"unsupported distortion model {model!r} (use plumb_bob)")
    try:
        return CameraIntrinsics.from_opencv(k, int(msg.width), int(msg.height), d)
    except ValueError as e:
        raise ConversionError(f"camera_info rejected: {e}") from None


def intrinsics_to_camera_info(intr, stamp: Any = None, frame_id: str = "") -> CameraInfo:
    """:class:`CameraIntrinsics` -> ``sensor_msgs/CameraInfo`` (plumb_bob, integer pixel centres)."""
    K, dist = intr.to_opencv()
    msg = CameraInfo(width=int(intr.width), height=int(intr.height), distortion_model="plumb_bob")
    msg.k = [float(x) for x in K.reshape(-1)]
    msg.d = [float(x) for x in dist]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [float(K[0, 0]), 0.0, float(K[0, 2]), 0.0, 0.0, float(K[1, 1]), float(K[1, 2]), 0.0, 0.0, 0.0, 1.0, 0.0]
    _set_header(msg, frame_id, stamp)
    return msg


# --- poses -----------------------------------------------------------------------------------------

def pose_msg_to_matrix(pose: Pose | PoseStamped) -> np.ndarray:
    """``Pose``/``PoseStamped`` -> 4x4. Raises ConversionError on NaN/inf or a zero quaternion."""
    if isinstance(pose, PoseStamped):
        pose = pose.pose
    p, q = pose.position, pose.orientation
    vals = [p.x, p.y, p.z, q.x, q.y, q.z, q.w]
    if not np.all(np.isfinite(vals)):
        raise ConversionError(f"pose has non-finite values: {vals}")
    if np.linalg.norm(vals[3:]) < 1e-6:
        raise ConversionError("pose orientation is a zero quaternion")
    return pose_to_matrix(np.array(vals[:3]), np.array(vals[3:]))


def transform_msg_to_matrix(tf: Transform | TransformStamped) -> np.ndarray:
    """``Transform``/``TransformStamped`` -> 4x4 (same checks as :func:`pose_msg_to_matrix`)."""
    if isinstance(tf, TransformStamped):
        tf = tf.transform
    pose = Pose(position=Point(x=tf.translation.x, y=tf.translation.y, z=tf.translation.z),
                orientation=tf.rotation)
    return pose_msg_to_matrix(pose)


def matrix_to_pose_msg(T: np.ndarray, frame_id: str = "", stamp: Any = None) -> PoseStamped:
    """Rigid 4x4 -> ``PoseStamped``."""
    t, q = matrix_to_pose(np.asarray(T, dtype=np.float64))
    msg = PoseStamped()
    _set_header(msg, frame_id, stamp)
    msg.pose.position = Point(x=float(t[0]), y=float(t[1]), z=float(t[2]))
    msg.pose.orientation = Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))
    return msg


# --- point clouds ----------------------------------------------------------------------------------

def make_point_cloud(xyz: np.ndarray, fields: dict[str, np.ndarray] | None = None, *,
                     rgb: np.ndarray | None = None, frame_id: str = "world", stamp: Any = None) -> PointCloud2:
    """(N, 3) points in metres (+ float32 scalar fields, + (N, 3) uint8 colours) -> ``PointCloud2``.

    Layout: x y z, then each scalar field (float32), then ``rgb`` packed in a float32 as RViz expects.
    """
    xyz = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
    n = xyz.shape[0]
    names = ["x", "y", "z"]
    cols = [xyz[:, 0], xyz[:, 1], xyz[:, 2]]
    for name, values in (fields or {}).items():
        values = np.asarray(values, dtype=np.float32).reshape(-1)
        if values.shape[0] != n:
            raise ConversionError(f"field {name!r} has {values.shape[0]} values for {n} points")
        names.append(name)
        cols.append(values)
    if rgb is not None:
        c = np.asarray(rgb, dtype=np.uint32).reshape(n, 3)
        packed = (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]
        names.append("rgb")
        cols.append(packed.astype(np.uint32).view(np.float32))
    data = np.stack(cols, axis=1).astype(np.float32) if n else np.zeros((0, len(names)), np.float32)
    msg = PointCloud2(height=1, width=n, is_bigendian=False, is_dense=True,
                      point_step=4 * len(names), row_step=4 * len(names) * n, data=data.tobytes())
    msg.fields = [PointField(name=nm, offset=4 * i, datatype=PointField.FLOAT32, count=1) for i, nm in enumerate(names)]
    _set_header(msg, frame_id, stamp)
    return msg


def read_point_cloud(msg: PointCloud2) -> dict[str, np.ndarray]:
    """``PointCloud2`` with float32 fields -> ``{"xyz": (N, 3), <field>: (N,)...}`` (``rgb`` as (N, 3) uint8)."""
    n = int(msg.width) * int(msg.height)
    step = int(msg.point_step)
    raw = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if raw.size < n * step:
        raise ConversionError(f"point cloud data has {raw.size} bytes, expected {n * step}")
    raw = raw[: n * step].reshape(n, step)
    out: dict[str, np.ndarray] = {}
    for f in msg.fields:
        if f.datatype != PointField.FLOAT32:
            raise ConversionError(f"field {f.name!r} is not FLOAT32 (datatype {f.datatype})")
        col = raw[:, f.offset: f.offset + 4].copy().view(np.float32).reshape(n)
        out[f.name] = col
    if all(k in out for k in "xyz"):
        out["xyz"] = np.stack([out.pop("x"), out.pop("y"), out.pop("z")], axis=1)
    if "rgb" in out:
        packed = out["rgb"].view(np.uint32)
        out["rgb"] = np.stack([(packed >> 16) & 255, (packed >> 8) & 255, packed & 255], 1).astype(np.uint8)
    return out


# --- grasps ------------------------------------------------------------------------------------------

# core Grasp.quality key -> f3rm_ros/msg/Grasp field (contact_similarity travels as language_similarity)
GRASP_QUALITY_FIELDS = {"antipodal_deg": "antipodal_angle_deg", "contact_width_m": "contact_width",
                        "clearance_m": "clearance", "quality": "quality", "contact_similarity": "language_similarity"}


def grasp_to_msg(grasp: Any, frame_id: str = "world", stamp: Any = None) -> Any:
    """A planned grasp (:class:`f3rm_ros.core.grasp.Grasp`) -> ``f3rm_ros/msg/Grasp``: the pose in the tool frame
    (``T_world_tool``; the gripper frame when it has none), source, task, rank and the quality terms (a term the
    grasp lacks is 0)."""
    from f3rm_ros.msg import Grasp as GraspMsg

    T = grasp.T_world_tool if getattr(grasp, "T_world_tool", None) is not None else grasp.T_world_gripper
    m = GraspMsg(pose=matrix_to_pose_msg(T, frame_id=frame_id, stamp=stamp), score=float(grasp.score),
                 opening_width=float(grasp.width), task=str(grasp.task), rank=int(grasp.rank),
                 source=str(getattr(grasp, "source", "")))
    quality = getattr(grasp, "quality", None) or {}
    for key, name in GRASP_QUALITY_FIELDS.items():
        setattr(m, name, float(quality.get(key, 0.0)))
    return m


def grasp_msg_to_dict(msg: Any) -> dict[str, Any]:
    """``f3rm_ros/msg/Grasp`` -> ``{"pose": (4, 4), "frame_id", "score", "width", "task", "rank", "source",
    "language_similarity", "quality": {core quality key: value}}`` (the inverse of :func:`grasp_to_msg`)."""
    return {"pose": pose_msg_to_matrix(msg.pose), "frame_id": msg.pose.header.frame_id, "score": float(msg.score),
            "width": float(msg.opening_width), "task": msg.task, "rank": int(msg.rank), "source": msg.source,
            "language_similarity": float(msg.language_similarity),
            "quality": {key: float(getattr(msg, name)) for key, name in GRASP_QUALITY_FIELDS.items()}}
