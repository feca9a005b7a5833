"""Fast paths (Triton kernels) for the core library, each beside a plain-PyTorch reference.

Importing this package imports neither Triton nor any heavy dependency: kernels are defined and
compiled on first use. See :mod:`f3rm_ros.core.ops.hashgrid_triton`.
"""

from .hashgrid_triton import hash_grid_encode_triton, triton_hashgrid_available

__all__ = ["hash_grid_encode_triton", "triton_hashgrid_available"]
