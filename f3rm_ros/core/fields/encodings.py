"""Input encodings: hash grid (backends torch | levels | triton | tcnn), spherical harmonics, frequency (sin/cos).

Backends of :class:`HashGrid` (config ``backend``):

* ``torch``: :func:`f3rm_ros.core.fields.hashgrid.hash_grid_encode_torch`, runs everywhere (reference).
* ``levels``: :func:`f3rm_ros.core.fields.hashgrid.hash_grid_encode_levels`, the same plain PyTorch one
  level at a time (the CPU path: ~5x faster forward there, more kernels on a GPU); same table.
* ``triton``: ``f3rm_ros.core.ops.hashgrid_triton.hash_grid_encode_triton`` (same math and table
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
from f3rm_ros.core.fields.hashgrid import grid_resolutions, hash_grid_encode_levels, hash_grid_encode_torch

__all__ = [
    "HashGridConfig",
    "HashGrid",
    "triton_usable",
    "tcnn_usable",
    "resolve_hashgrid_backend",
    "SHEncoding",
    "spherical_harmonics",
    "FrequencyEncoding",
]

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
        from f3rm_ros.core.ops import hashgrid_triton  # noqa: PLC0415 - lazy on purpose
    except Exception as e:  # ImportError, or triton failing to import
        return False, f"f3rm_ros.core.ops.hashgrid_triton does not import: {e}"
    try:
        ok = bool(hashgrid_triton.triton_hashgrid_available())
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
            from f3rm_ros.core.ops.hashgrid_triton import hash_grid_encode_triton  # noqa: PLC0415

            out = hash_grid_encode_triton(flat.float().contiguous(), self.table, self.resolutions)
        elif self.backend == "levels":
            out = hash_grid_encode_levels(flat, self.table, self.resolutions)
        else:
            out = hash_grid_encode_torch(flat, self.table, self.resolutions)
        return out.float().reshape(*shape, self.out_dim)

    def extra_repr(self) -> str:
        return f"backend={self.backend}, resolutions={self.resolutions}, out_dim={self.out_dim}"


# ----------------------------------------------------------------------------- spherical harmonics
def spherical_harmonics(d: Tensor, degree: int = 4) -> Tensor:  # [..., 3] unit -> [..., (degree+1)^2]
    """Real spherical harmonics of unit directions, bands 0..degree (at most 4), in the order
    Y_0^0, Y_1^-1, Y_1^0, Y_1^1, Y_2^-2, ... with the sign convention of tiny-cuda-nn's SH encoding.

    Args:
        d: unit directions  # [..., 3]
        degree: highest band l (0..4); output dim (degree+1)^2 (25 for 4).
    """
    if not 0 <= degree <= 4:
        raise ValueError(f"SH degree must be in 0..4, got {degree}")
    if d.shape[-1] != 3:
        raise ValueError(f"directions must be [..., 3], got {tuple(d.shape)}")
    x, y, z = d[..., 0], d[..., 1], d[..., 2]
    out = [torch.full_like(x, 0.28209479177387814)]
    if degree >= 1:
        out += [-0.48860251190291987 * y, 0.48860251190291987 * z, -0.48860251190291987 * x]
    if degree >= 2:
        x2, y2, z2 = x * x, y * y, z * z
        out += [1.0925484305920792 * x * y, -1.0925484305920792 * y * z,
                0.94617469575755997 * z2 - 0.31539156525251999, -1.0925484305920792 * x * z,
                0.54627421529603959 * (x2 - y2)]
    if degree >= 3:
        out += [0.59004358992664352 * y * (-3.0 * x2 + y2), 2.8906114426405538 * x * y * z,
                0.45704579946446572 * y * (1.0 - 5.0 * z2), 0.3731763325901154 * z * (5.0 * z2 - 3.0),
                0.45704579946446572 * x * (1.0 - 5.0 * z2), 1.4453057213202769 * z * (x2 - y2),
                0.59004358992664352 * x * (-x2 + 3.0 * y2)]
    if degree >= 4:
        out += [2.5033429417967046 * x * y * (x2 - y2), 1.7701307697799304 * y * z * (-3.0 * x2 + y2),
                0.94617469575756008 * x * y * (7.0 * z2 - 1.0), 0.66904654355728921 * y * z * (3.0 - 7.0 * z2),
                -3.1735664074561294 * z2 + 3.7024941420321507 * z2 * z2 + 0.31735664074561293,
                0.66904654355728921 * x * z * (3.0 - 7.0 * z2), 0.47308734787878004 * (x2 - y2) * (7.0 * z2 - 1.0),
                1.7701307697799304 * x * z * (-x2 + 3.0 * y2),
                0.62583573544917614 * (x2 * x2 - 6.0 * x2 * y2 + y2 * y2)]
    return torch.stack(out, dim=-1)


class SHEncoding(nn.Module):
    """Spherical-harmonics direction encoding; ``degree`` 4 gives 25 outputs (nerfacto's ``levels=4``)."""

    def __init__(self, degree: int = 4):
        super().__init__()
        if not 0 <= degree <= 4:
            raise ValueError(f"SH degree must be in 0..4, got {degree}")
        self.degree = degree
        self.out_dim = (degree + 1) ** 2

    def forward(self, d: Tensor) -> Tensor:  # [..., 3] unit -> [..., out_dim]
        return spherical_harmonics(d, self.degree)


# --------------------------------------------------------------------------------------- frequency
class FrequencyEncoding(nn.Module):
    """sin/cos positional encoding: for k in 0..n-1, ``sin(2^e_k * pi * x)``, ``cos(2^e_k * pi * x)`` with
    exponents e_k evenly spaced in [min_exp, max_exp] (F3RM: 6 frequencies 2^0..2^5, inputs in [0, 1];
    output 3 * 2 * 6 = 36). Layout: [sin(all dims x all freqs), cos(...)], optionally the input first.
    """

    def __init__(self, in_dim: int = 3, num_frequencies: int = 6, min_exp: float = 0.0, max_exp: float = 5.0,
                 include_input: bool = False):
        super().__init__()
        if num_frequencies < 1:
            raise ValueError(f"num_frequencies must be >= 1, got {num_frequencies}")
        exps = torch.linspace(min_exp, max_exp, num_frequencies)
        self.register_buffer("freqs", math.pi * 2.0 ** exps, persistent=False)
        self.in_dim = in_dim
        self.include_input = include_input
        self.out_dim = in_dim * 2 * num_frequencies + (in_dim if include_input else 0)

    def forward(self, x: Tensor) -> Tensor:  # [..., in_dim] -> [..., out_dim]
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"expected [..., {self.in_dim}] inputs, got {tuple(x.shape)}")
        scaled = (x[..., :, None] * self.freqs).reshape(*x.shape[:-1], -1)
        parts = [x] if self.include_input else []
        return torch.cat(parts + [torch.sin(scaled), torch.cos(scaled)], dim=-1)
