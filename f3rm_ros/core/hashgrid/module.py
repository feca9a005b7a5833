"""The hash grid as a module: :class:`HashGridConfig`, :class:`HashGrid` and the choice of its backend.

Backends of :class:`HashGrid` (config ``backend``), all in this package:

* ``torch``: :func:`f3rm_ros.core.hashgrid.reference.hash_grid_encode_torch`, runs everywhere (reference).
* ``levels``: :func:`f3rm_ros.core.hashgrid.levels.hash_grid_encode_levels`, the same plain PyTorch one
  level at a time (the CPU path: ~5x faster forward there, more kernels on a GPU); same table.
* ``triton``: :func:`f3rm_ros.core.hashgrid.triton_op.hash_grid_encode_triton` (same math and table
  layout as ``torch``, so parameters are interchangeable), imported lazily; CUDA only.
* ``tcnn``: ``tinycudann.Encoding`` (its own parameter layout and slightly different grid
  alignment, so a tcnn checkpoint only loads with the tcnn backend); CUDA + tinycudann only.
* ``auto``: triton if usable, else tcnn if usable, else levels on a CPU and torch otherwise; logs the choice.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from f3rm_ros.core.config import param
from f3rm_ros.core.hashgrid.levels import hash_grid_encode_levels
from f3rm_ros.core.hashgrid.reference import grid_resolutions, hash_grid_encode_torch

__all__ = ["HashGridConfig", "HashGrid", "triton_usable", "tcnn_usable", "resolve_hashgrid_backend"]

log = logging.getLogger(__name__)


@dataclass
class HashGridConfig:
    """Multiresolution hash grid (defaults: nerfacto's RGB field grid)."""

    num_levels: int = param(16, "number of resolution levels L", range=(1, 32))
    features_per_level: int = param(2, "features per table entry F", range=(1, 32))
    log2_hashmap_size: int = param(19, "log2 of entries per level T", range=(4, 26))
    base_res: int = param(16, "coarsest grid resolution", range=(1, 65536))
    max_res: int = param(2048, "finest grid resolution", range=(1, 1 << 20))
    init_scale: float = param(1e-4, "tables initialised uniform(-s, s)", range=(0.0, 1.0))
    backend: Literal["auto", "torch", "levels", "triton", "tcnn"] = param(
        "auto", "implementation: auto picks triton, then tcnn, then levels (CPU) or torch; torch is the plain "
                "reference, levels the same math one level at a time (faster on CPUs)",
        choices=("auto", "torch", "levels", "triton", "tcnn"))


def triton_usable(device: torch.device | str | None = None) -> tuple[bool, str]:
    """Whether the Triton hash grid kernel can run (CUDA device + module importable + its own check)."""
    if device is not None and torch.device(device).type != "cuda":
        return False, f"device {device} is not CUDA"
    if not torch.cuda.is_available():
        return False, "CUDA is not available"
    try:
        from f3rm_ros.core.hashgrid import triton_op  # noqa: PLC0415 - lazy on purpose
    except Exception as e:  # ImportError, or triton failing to import
        return False, f"f3rm_ros.core.hashgrid.triton_op does not import: {e}"
    try:
        ok = bool(triton_op.triton_hashgrid_available())
    except Exception as e:
        return False, f"triton_hashgrid_available() failed: {e}"
    return (ok, "ok") if ok else (False, "triton_hashgrid_available() is False")


def tcnn_usable(device: torch.device | str | None = None) -> tuple[bool, str]:
    """Whether tiny-cuda-nn imports and a CUDA device is present."""
    if device is not None and torch.device(device).type != "cuda":
        return False, f"device {device} is not CUDA"
    if not torch.cuda.is_available():
        return False, "CUDA is not available"
    try:
        import tinycudann  # noqa: F401, PLC0415
    except Exception as e:
        return False, f"tinycudann does not import: {e}"
    return True, "ok"


def resolve_hashgrid_backend(backend: str, device: torch.device | str | None = None) -> str:
    """The concrete backend for ``backend`` on ``device`` (``auto`` logs its pick).

    Raises:
        ValueError: an unknown name, or an explicit triton/tcnn request that cannot run here.
    """
    if backend in ("torch", "levels"):
        return backend
    if backend in ("triton", "tcnn"):
        ok, why = (triton_usable if backend == "triton" else tcnn_usable)(device)
        if not ok:
            raise ValueError(f"hash grid backend {backend!r} requested but not usable: {why}")
        return backend
    if backend != "auto":
        raise ValueError(f"unknown hash grid backend {backend!r}; choose auto, torch, levels, triton or tcnn")
    reasons = []
    for name, check in (("triton", triton_usable), ("tcnn", tcnn_usable)):
        ok, why = check(device)
        if ok:
            log.info("hash grid backend auto -> %s", name)
            return name
        reasons.append(f"{name}: {why}")
    pick = "levels" if device is None or torch.device(device).type == "cpu" else "torch"
    log.info("hash grid backend auto -> %s (%s)", pick, "; ".join(reasons))
    return pick


class HashGrid(nn.Module):
    """Multiresolution hash encoding of points in [0, 1]^3.

    With the triton backend, inputs that require grad (e.g. a planner optimising poses through the
    field) get their gradient from the Triton points-gradient kernel (same math as the reference's
    autograd); ``points_grad_backend = "torch"`` (class or instance attribute) sends them through the
    plain-PyTorch reference instead, as before that kernel existed (kept for comparisons).

    ``forward(x: [..., 3]) -> [..., L*F]`` (float32 for torch/triton; tcnn returns its own dtype,
    cast to float32).

    Args:
        config: sizes and backend.
        device: where the module will run (decides ``auto``); the module is created on it.
    """

    points_grad_backend: str = "triton"  # "triton" | "torch": who differentiates w.r.t. x on the triton backend

    def __init__(self, config: HashGridConfig, device: torch.device | str | None = None):
        super().__init__()
        self.config = config
        self.resolutions = grid_resolutions(config.num_levels, config.base_res, config.max_res)
        F = config.features_per_level
        backend = config.backend
        if backend == "auto" and F & (F - 1):  # the Triton kernel needs F = 2^k
            on_cpu = device is None or torch.device(device).type == "cpu"
            backend = "tcnn" if tcnn_usable(device)[0] else ("levels" if on_cpu else "torch")
        elif backend == "triton" and F & (F - 1):
            raise ValueError(f"the triton hash grid backend needs features_per_level a power of two, got {F}")
        self.backend = resolve_hashgrid_backend(backend, device)
        self.out_dim = config.num_levels * config.features_per_level
        if self.backend == "tcnn":
            import tinycudann as tcnn  # noqa: PLC0415

            scale = math.exp((math.log(config.max_res) - math.log(config.base_res)) / max(1, config.num_levels - 1))
            self.tcnn_encoding = tcnn.Encoding(n_input_dims=3, encoding_config={
                "otype": "HashGrid", "n_levels": config.num_levels, "n_features_per_level": config.features_per_level,
                "log2_hashmap_size": config.log2_hashmap_size, "base_resolution": config.base_res,
                "per_level_scale": scale})
            self.table = None
        else:
            T = 1 << config.log2_hashmap_size
            table = torch.empty(config.num_levels, T, config.features_per_level, device=device)
            nn.init.uniform_(table, -config.init_scale, config.init_scale)
            self.table = nn.Parameter(table)

    def forward(self, x: Tensor) -> Tensor:  # [..., 3] -> [..., L*F]
        shape = x.shape[:-1]
        flat = x.reshape(-1, 3)
        if self.backend == "tcnn":
            out = self.tcnn_encoding(flat.clamp(0.0, 1.0)).float()
        elif self.backend == "triton" and (self.points_grad_backend == "triton" or not flat.requires_grad):
            from f3rm_ros.core.hashgrid.triton_op import hash_grid_encode_triton  # noqa: PLC0415

            out = hash_grid_encode_triton(flat.float().contiguous(), self.table, self.resolutions)
        elif self.backend == "levels":
            out = hash_grid_encode_levels(flat, self.table, self.resolutions)
        else:
            out = hash_grid_encode_torch(flat, self.table, self.resolutions)
        return out.float().reshape(*shape, self.out_dim)

    def extra_repr(self) -> str:
        return f"backend={self.backend}, resolutions={self.resolutions}, out_dim={self.out_dim}"
