"""The multiresolution hash-grid encoding (Mueller et al. 2022) in one package, every backend beside its reference.

* :mod:`.reference`: :func:`hash_grid_encode_torch`, the plain-PyTorch reference every backend is tested
  against, :func:`grid_resolutions`, and :func:`hash_grid_encode_loop` (a per-point loop, for tests);
* :mod:`.levels`: :func:`hash_grid_encode_levels`, the same math one level at a time (the CPU path);
* :mod:`.triton_op`: :func:`hash_grid_encode_triton` / :func:`hash_grid_freq_encode_triton`, Triton kernels
  (:mod:`._triton_kernels`, defined on first use) for CUDA, or Triton's interpreter on a CPU;
* :mod:`.module`: :class:`HashGrid` (``nn.Module``), its :class:`HashGridConfig`, and the backend choice
  (:func:`resolve_hashgrid_backend`, :func:`triton_usable`, :func:`tcnn_usable`).

Importing the package imports neither Triton nor tiny-cuda-nn and compiles nothing.
"""

from f3rm_ros.core.hashgrid.levels import hash_grid_encode_levels
from f3rm_ros.core.hashgrid.module import HashGrid, HashGridConfig, resolve_hashgrid_backend, tcnn_usable, triton_usable
from f3rm_ros.core.hashgrid.reference import (HASH_PRIMES, grid_resolutions, hash_grid_encode_loop,
                                              hash_grid_encode_torch)
from f3rm_ros.core.hashgrid.triton_op import (hash_grid_encode_triton, hash_grid_freq_encode_triton,
                                              triton_hashgrid_available)

__all__ = [
    "HASH_PRIMES",
    "grid_resolutions",
    "hash_grid_encode_torch",
    "hash_grid_encode_loop",
    "hash_grid_encode_levels",
    "hash_grid_encode_triton",
    "hash_grid_freq_encode_triton",
    "triton_hashgrid_available",
    "HashGridConfig",
    "HashGrid",
    "resolve_hashgrid_backend",
    "triton_usable",
    "tcnn_usable",
]
