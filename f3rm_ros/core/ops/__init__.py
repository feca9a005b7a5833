"""Fast paths for the core library, each beside a plain-PyTorch reference and a test against it.

Importing this package imports neither Triton nor any heavy dependency: kernels are defined and
compiled on first use. See :mod:`f3rm_ros.core.ops.feature_render` (feature rendering through the
linear head); the hash grid's backends (Triton included) live in :mod:`f3rm_ros.core.hashgrid`.
"""

from .feature_render import render_linear_head_fused, render_linear_head_reference

__all__ = ["render_linear_head_fused", "render_linear_head_reference"]
