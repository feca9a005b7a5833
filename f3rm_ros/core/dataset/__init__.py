"""Posed-image datasets in the nerfstudio / instant-ngp ``transforms.json`` format: reader (:mod:`.reader`),
writer (:mod:`.writer`), pose normalisation (:mod:`.normalise`), and the format's building blocks
(:mod:`.files`). Import the public names from here.

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

File format accepted by :func:`load_dataset` (:mod:`f3rm_ros.core.sim.export` writes it): top-level
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

from f3rm_ros.core.dataset.files import TRANSFORMS_NAME, DatasetError, resize_image, resize_labels
from f3rm_ros.core.dataset.normalise import focus_point, normalise_poses
from f3rm_ros.core.dataset.reader import PosedImageDataset, load_dataset
from f3rm_ros.core.dataset.writer import DatasetWriter, depth_to_millimetres, encode_depth_png, write_dataset

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
