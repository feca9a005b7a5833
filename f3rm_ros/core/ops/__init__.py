"""Fast paths for the core library, each beside a plain-PyTorch reference and a test against it.

Importing this package imports neither Triton nor any heavy dependency: kernels are defined and
compiled on first use. See :mod:`f3rm_ros.core.ops.hashgrid_triton` (hash-grid encoding) and
:mod:`f3rm_ros.core.ops.feature_render` (feature rendering through the linear head).
"""

from .feature_render import render_linear_head_fused, render_linear_head_reference
from .hashgrid_triton import hash_grid_encode_triton, triton_hashgrid_available

__all__ = ["hash_grid_encode_triton", "triton_hashgrid_available",
           "render_linear_head_fused", "render_linear_head_reference"]
