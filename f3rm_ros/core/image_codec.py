"""Image compression for the wire: colour as JPEG or PNG, 16-bit images (depth in mm, label ids) as 16-bit PNG.

What a camera's images cost on a network between a robot host and a GPU host (``f3rm_ros.ros.camera_relay_node``
compresses, the capture node decodes). Plain PIL + numpy, no OpenCV. The byte layouts follow ROS 2's
``image_transport`` plugins so that a real robot's ``.../compressed`` and ``.../compressedDepth`` topics decode
here too:

* colour (``compressed_image_transport``): the JPEG or PNG file bytes; the message's ``format`` string says
  ``"rgb8; jpeg compressed bgr8"`` (the decoder reads the file's own header, so any RGB/grey JPEG/PNG works);
* 16-bit images on ``.../compressed`` (labels): a 16-bit greyscale PNG, ``"mono16; png compressed mono16"``;
* depth on ``.../compressedDepth`` (``compressed_depth_image_transport``): a 12-byte header (int32 format,
  two float32 quantisation parameters, little-endian) followed by a 16-bit PNG of millimetres for ``16UC1``.
  ``32FC1`` compressedDepth (inverse-depth quantised) is refused with the reason: publish 16UC1 depth.

Every decoder raises :class:`CodecError` (a ``ValueError``) with the reason on bad data; nothing else escapes.
"""

from __future__ import annotations

import io
import struct

import numpy as np

__all__ = ["CodecError", "COLOR_FORMATS", "COMPRESSED_DEPTH_HEADER", "encode_rgb", "decode_rgb", "encode_u16_png",
           "decode_u16_png", "encode_compressed_depth", "decode_compressed_depth"]

COLOR_FORMATS = ("jpeg", "png")
# compressed_depth_image_transport's ConfigHeader: enum compressionFormat (int32; 0 = INV_DEPTH) + float depthParam[2]
COMPRESSED_DEPTH_HEADER = struct.Struct("<iff")


class CodecError(ValueError):
    """Data that cannot be encoded or decoded; the message says why."""


def encode_rgb(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 90, png_level: int = 3) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG (``quality`` 1-100, 4:2:0 subsampling) or PNG (``png_level`` 0-9) bytes."""
    from PIL import Image

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise CodecError(f"expected an (H, W, 3) uint8 image, got {rgb.dtype} {rgb.shape}")
    if fmt not in COLOR_FORMATS:
        raise CodecError(f"unknown colour format {fmt!r}; use one of {list(COLOR_FORMATS)}")
    buf = io.BytesIO()
    im = Image.fromarray(np.ascontiguousarray(rgb))
    if fmt == "jpeg":
        im.save(buf, format="JPEG", quality=int(quality))
    else:
        im.save(buf, format="PNG", compress_level=int(png_level))
    return buf.getvalue()


def decode_rgb(data: bytes) -> np.ndarray:
    """JPEG/PNG bytes (colour or grey, any bit depth PIL reads) -> (H, W, 3) uint8 RGB."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(bytes(data))) as im:
            return np.asarray(im.convert("RGB")).copy()
    except Exception as e:  # PIL raises many types for bad data
        raise CodecError(f"cannot decode the image ({len(data)} bytes): {e}") from None


def encode_u16_png(values: np.ndarray, png_level: int = 3) -> bytes:
    """[H, W] integers in [0, 65535] -> 16-bit greyscale PNG bytes (lossless)."""
    from PIL import Image

    v = np.asarray(values)
    if v.ndim != 2 or v.dtype.kind not in "ui" or (v.size and (v.min() < 0 or v.max() > 65535)):
        raise CodecError(f"expected [H, W] integers in [0, 65535], got {v.dtype} {v.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(v, dtype=np.uint16)).save(buf, format="PNG",
                                                                           compress_level=int(png_level))
    return buf.getvalue()


def decode_u16_png(data: bytes) -> np.ndarray:
    """16-bit (or 8-bit) greyscale PNG bytes -> uint16 [H, W]."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(bytes(data))) as im:
            if im.format != "PNG":
                raise CodecError(f"a 16-bit image must be a PNG, got {im.format}")
            if im.mode not in ("I;16", "I;16B", "I", "L"):
                raise CodecError(f"expected a greyscale PNG (16 or 8 bit), got mode {im.mode}")
            arr = np.asarray(im)
    except CodecError:
        raise
    except Exception as e:
        raise CodecError(f"cannot decode the 16-bit PNG ({len(data)} bytes): {e}") from None
    if arr.ndim != 2 or (arr.size and (arr.min() < 0 or arr.max() > 65535)):
        raise CodecError(f"decoded PNG is not a [H, W] 16-bit image: {arr.dtype} {arr.shape}")
    return arr.astype(np.uint16)


def encode_compressed_depth(depth_mm: np.ndarray, png_level: int = 3) -> bytes:
    """uint16 millimetres [H, W] (0 = no data) -> compressedDepth bytes (header + 16-bit PNG), as
    ``compressed_depth_image_transport`` publishes 16UC1 images."""
    return COMPRESSED_DEPTH_HEADER.pack(0, 0.0, 0.0) + encode_u16_png(depth_mm, png_level)


def decode_compressed_depth(data: bytes, fmt: str = "16UC1; compressedDepth png") -> np.ndarray:
    """compressedDepth bytes (``fmt`` = the message's format string) -> uint16 millimetres [H, W].

    A payload that starts with the PNG signature (no header: a plain 16-bit PNG) is accepted too.
    """
    data = bytes(data)
    encoding = fmt.split(";")[0].strip().upper() if fmt else "16UC1"
    if encoding == "32FC1":
        raise CodecError("32FC1 compressedDepth (inverse-depth quantised) is not supported; publish 16UC1 "
                         "depth in millimetres (REP 118)")
    if encoding not in ("16UC1", "MONO16", ""):
        raise CodecError(f"unsupported compressedDepth encoding {encoding!r}; supported: 16UC1")
    png_sig = b"\x89PNG\r\n\x1a\n"
    if data[:8] != png_sig:
        if len(data) < COMPRESSED_DEPTH_HEADER.size + 8 or \
                data[COMPRESSED_DEPTH_HEADER.size:COMPRESSED_DEPTH_HEADER.size + 8] != png_sig:
            raise CodecError("compressedDepth payload is not a 12-byte header followed by a PNG")
        data = data[COMPRESSED_DEPTH_HEADER.size:]
    return decode_u16_png(data)
