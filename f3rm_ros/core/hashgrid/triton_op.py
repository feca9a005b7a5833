"""Multiresolution hash-grid encoding as Triton kernels (forward + backward, all levels per launch).

Same math as the plain-PyTorch reference
:func:`f3rm_ros.core.hashgrid.reference.hash_grid_encode_torch` (whose docstring gives the full math), for level
``l`` with resolution ``R``: ``x`` clamped to [0, 1]; ``pos = x*R``; ``cell = min(floor(pos), R-1)``;
``frac = pos - cell``; 8 corners ``cell + {0,1}^3``; dense index ``cx + cy*(R+1) + cz*(R+1)**2`` when
``(R+1)**3 <= T``, else ``(cx ^ cy*2654435761 ^ cz*805459861) mod T`` on uint32; trilinear weights;
output level-major ``[N, L*F]`` in the table's dtype, arithmetic in fp32.

Kernels:

* forward: one launch over a grid ``(ceil(N / BLOCK), L)``; a program gathers the 8 corners of
  BLOCK points at one level (programs of one level run next to each other, so a level's table stays
  in L2) and writes its F columns of the output;
* backward: same grid; scatter-adds ``w * grad_out`` into an fp32 gradient table with relaxed
  atomics (vectorised over the F features of a corner), then casts to the table's dtype. At coarse
  levels, consecutive points in the same cell (samples along a ray) are first summed with a
  segmented scan so that only the last of each run issues atomics (``DEFAULT_SEG_MAX_RES``);
* gradient w.r.t. the points (``hash_grid_encode_triton`` with ``x`` requiring grad, e.g. a planner
  optimising gripper poses through a frozen field): one launch over ``ceil(N / BLOCK)`` programs, each
  looping over the L levels and gathering the 8 corner rows again, ``d out / d x`` contracted with the
  upstream gradient in registers; no atomics, so it is deterministic. A point outside the open
  interval (0, 1) on an axis gets 0 on it (the clamp; the reference's ``clamp_unit`` too, on every torch).

The kernels are compiled with ``enable_fp_fusion=False``: a fused multiply-add would compute
``x*R - cell`` without rounding ``x*R`` to fp32 first and so differ from the reference's ``frac``
by up to one ulp of ``x*R`` (1e-4 at R = 2048).

Nothing is imported from Triton or compiled at import time: the kernels are defined on first use.
They run on CUDA tensors, or on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1`` set in
the environment before Triton is first imported; used by the CPU tests).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["triton_hashgrid_available", "hash_grid_encode_triton", "hash_grid_freq_encode_triton",
           "DEFAULT_FWD_CONFIG", "DEFAULT_BWD_CONFIG"]

# (BLOCK points per program, num_warps); chosen from the sweep of benchmarks/bench_hashgrid.py on an H100.
DEFAULT_FWD_CONFIG = (128, 4)
DEFAULT_BWD_CONFIG = (128, 4)
# Backward: levels with resolution <= this pre-sum the gradients of consecutive points (samples along
# a ray) that share a cell with a segmented scan before the atomics; 0 turns it off. Per features-per-
# level F, from the H100 sweep of benchmarks/bench_hashgrid.py --seg-sweep (F=2: 0.78 -> 0.57 ms with
# every level; F=8: 0.79 -> 0.72-0.73 ms with R <= 24..48). Env override: F3RM_HASHGRID_SEG_MAX_RES.
DEFAULT_SEG_MAX_RES = {1: 1 << 30, 2: 1 << 30}
DEFAULT_SEG_MAX_RES_OTHER = 48

_PRIME_Y_I32 = 2654435761 - (1 << 32)  # same low 32 bits as 2654435761 (int32 wrap-around)
_PRIME_Z = 805459861
_MAX_INT32 = 2**31 - 1
_MAX_POINTS = _MAX_INT32 // 3  # one call's points (x is read with int32 offsets point * 3 + axis)


def _interpret_mode() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def triton_hashgrid_available() -> bool:
    """True if :func:`hash_grid_encode_triton` can run here.

    That needs Triton importable and either a CUDA device of compute capability >= 7.0, or
    ``TRITON_INTERPRET=1`` in the environment (CPU interpreter; slow, for tests). Compiles nothing.
    """
    try:
        import triton  # noqa: F401
    except Exception:  # ImportError, or a broken install
        return False
    if _interpret_mode():
        return True
    try:
        return bool(torch.cuda.is_available()) and torch.cuda.get_device_capability()[0] >= 7
    except Exception:
        return False


@functools.cache
def _kernels():
    """Import (and so define) the Triton kernels on first use; nothing is compiled until launched."""
    from . import _triton_kernels as k

    return k.hash_fwd, k.hash_bwd, k.freq_fwd, k.hash_bwd_x


_META_CACHE: dict = {}


def _meta(resolutions: Sequence[int], T: int, device: torch.device) -> Tensor:
    """int32 [L, 2] of (R, dense flag), cached per (resolutions, T, device)."""
    key = (tuple(int(r) for r in resolutions), int(T), str(device))
    m = _META_CACHE.get(key)
    if m is None:
        rows = [(r, 1 if (r + 1) ** 3 <= T else 0) for r in key[0]]
        m = torch.tensor(rows, dtype=torch.int32).to(device)
        _META_CACHE[key] = m
    return m


def _launch_fwd(x: Tensor, table: Tensor, meta: Tensor, cfg, out_dtype: torch.dtype | None = None,
                pe_freqs: Tensor | None = None) -> Tensor:
    hash_fwd, _, freq_fwd, _ = _kernels()
    L, T, F = table.shape
    n = x.shape[0]
    K = 0 if pe_freqs is None else pe_freqs.numel()
    width = L * F + 6 * K
    out = torch.empty(n, width, dtype=out_dtype or table.dtype, device=x.device)
    if n == 0:
        return out
    block, warps = cfg
    grid = ((n + block - 1) // block, L)
    hash_fwd[grid](x, table, meta, out, n, width, T=T, L=L, F=F, BLOCK=block, POW2=(T & (T - 1)) == 0,
                   num_warps=warps, enable_fp_fusion=False)
    if K:
        J = 1 << max(0, (3 * K - 1).bit_length())
        freq_fwd[((n + 127) // 128,)](x, pe_freqs, out, n, width, L * F, K=K, J=J, BLOCK=128, num_warps=4,
                                      enable_fp_fusion=False)
    return out


def _seg_max_res(F: int) -> int:
    v = os.environ.get("F3RM_HASHGRID_SEG_MAX_RES")
    if v not in (None, ""):
        return int(v)
    return DEFAULT_SEG_MAX_RES.get(F, DEFAULT_SEG_MAX_RES_OTHER)


def _launch_bwd(x: Tensor, grad_out: Tensor, meta: Tensor, shape, cfg, seg_max_res: int | None = None) -> Tensor:
    hash_bwd = _kernels()[1]
    L, T, F = shape
    n = x.shape[0]
    gtab = torch.zeros(L, T, F, dtype=torch.float32, device=x.device)
    if n == 0:
        return gtab
    block, warps = cfg
    grid = ((n + block - 1) // block, L)
    seg = _seg_max_res(F) if seg_max_res is None else int(seg_max_res)
    seg = min(seg, 1 << 30)
    hash_bwd[grid](x, grad_out, meta, gtab, n, grad_out.stride(0), seg, T=T, L=L, F=F, BLOCK=block,
                   POW2=(T & (T - 1)) == 0, SEG=seg > 0, num_warps=warps, enable_fp_fusion=False)
    return gtab


# (BLOCK, num_warps) of the points-gradient kernel (the planner's queries: ~1e4-1e5 points, all levels per
# program). A first choice, not swept: small blocks keep enough programs for the SMs at planner sizes.
DEFAULT_BWD_X_CONFIG = (64, 2)


def _launch_bwd_x(x: Tensor, table: Tensor, grad_out: Tensor, meta: Tensor, cfg=None) -> Tensor:
    hash_bwd_x = _kernels()[3]
    L, T, F = table.shape
    n = x.shape[0]
    gx = torch.empty(n, 3, dtype=torch.float32, device=x.device)
    if n == 0:
        return gx
    block, warps = cfg or DEFAULT_BWD_X_CONFIG
    hash_bwd_x[((n + block - 1) // block,)](x, table, meta, grad_out, gx, n, grad_out.stride(0), T=T, L=L, F=F,
                                            BLOCK=block, POW2=(T & (T - 1)) == 0, num_warps=warps,
                                            enable_fp_fusion=False)
    return gx


class _HashGridTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, table, meta, fwd_cfg, bwd_cfg, out_dtype, pe_freqs):  # noqa: D401 - autograd signature
        # the table is kept only when x needs a gradient (the points-gradient kernel reads it)
        ctx.save_for_backward(x, meta, table if ctx.needs_input_grad[0] else None)
        ctx.shape = tuple(table.shape)
        ctx.dtype = table.dtype
        ctx.bwd_cfg = bwd_cfg
        return _launch_fwd(x, table, meta, fwd_cfg, out_dtype, pe_freqs)

    @staticmethod
    def backward(ctx, grad_out):
        x, meta, table = ctx.saved_tensors
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return (None,) * 7
        if grad_out.stride(-1) != 1:
            grad_out = grad_out.contiguous()
        gx = gtab = None
        if ctx.needs_input_grad[0]:
            gx = _launch_bwd_x(x, table.contiguous(), grad_out, meta)  # reads the first L*F columns
        if ctx.needs_input_grad[1]:
            gtab = _launch_bwd(x, grad_out, meta, ctx.shape, ctx.bwd_cfg)  # reads the first L*F columns
            if ctx.dtype != torch.float32:
                gtab = gtab.to(ctx.dtype)
        return gx, gtab, None, None, None, None, None


def _check_inputs(x: Tensor, table: Tensor, resolutions: Sequence[int], out_dtype) -> None:
    if x.dim() != 2 or x.shape[-1] != 3:
        raise ValueError(f"x must be [N, 3], got {tuple(x.shape)}")
    if table.dim() != 3:
        raise ValueError(f"table must be [L, T, F], got {tuple(table.shape)}")
    L, T, F = table.shape
    if len(resolutions) != L:
        raise ValueError(f"{len(resolutions)} resolutions for a table of {L} levels")
    if any(int(r) < 1 for r in resolutions):
        raise ValueError(f"resolutions must be >= 1, got {list(resolutions)}")
    if F < 1 or F & (F - 1):
        raise ValueError(f"features per level must be a power of two for the Triton kernel, got {F}")
    if table.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"table dtype must be float32, float16 or bfloat16, got {table.dtype}")
    if out_dtype not in (None, torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"out_dtype must be float32, float16 or bfloat16, got {out_dtype}")
    if 3 * x.shape[0] > _MAX_INT32:
        # the kernels address x (and the points gradient) with int32 offsets point * 3 + axis
        raise ValueError(f"{x.shape[0]} points are too many for one call (int32 offsets): at most {_MAX_POINTS}")
    if x.device != table.device:
        raise ValueError(f"x on {x.device} but table on {table.device}")
    if x.device.type != "cuda" and not _interpret_mode():
        raise ValueError("hash_grid_encode_triton needs CUDA tensors (or TRITON_INTERPRET=1 for the CPU interpreter)")
    if T * F >= 2**31:
        raise ValueError(f"one level of the table is too large for int32 indexing: {tuple(table.shape)}")


def hash_grid_encode_triton(x: Tensor,  # [N, 3] in [0, 1]
                            table: Tensor,  # [L, T, F]
                            resolutions: Sequence[int],
                            fwd_config: tuple[int, int] | None = None,
                            bwd_config: tuple[int, int] | None = None,
                            out_dtype: torch.dtype | None = None) -> Tensor:  # [N, L*F]
    """Hash-grid encoding with Triton kernels; differentiable w.r.t. ``table`` and ``x``.

    Args:
        x: points, shape [N, 3] (any float dtype; clamped to [0, 1], math in fp32). When it requires
            grad (and grad mode is on) it gets the gradient of the reference: the trilinear weights'
            derivative inside the cells, 0 on an axis where the point is outside (0, 1).
        table: feature tables, shape [L, T, F], fp32, fp16 or bf16; F a power of two.
        resolutions: L grid resolutions (ints >= 1).
        fwd_config, bwd_config: optional (BLOCK, num_warps) overrides (BLOCK a power of two).
        out_dtype: output dtype (default: the table's, as the contract says); e.g. float16 for an
            fp32 table feeding an fp16 MLP, which halves the bytes written and saves a cast.
    Returns:
        [N, L*F] features, level-major, dtype ``out_dtype`` or that of ``table``.
    Raises:
        ValueError: bad shapes/dtypes, or tensors on the CPU without ``TRITON_INTERPRET=1``.
    """
    _check_inputs(x, table, resolutions, out_dtype)
    x32 = (x if x.requires_grad and torch.is_grad_enabled() else x.detach()).to(torch.float32).contiguous()
    meta = _meta(resolutions, table.shape[1], x.device)
    return _HashGridTriton.apply(x32, table.contiguous(), meta,
                                 tuple(fwd_config or DEFAULT_FWD_CONFIG), tuple(bwd_config or DEFAULT_BWD_CONFIG),
                                 out_dtype, None)


def hash_grid_freq_encode_triton(x: Tensor,  # [N, 3] in [0, 1]
                                 table: Tensor,  # [L, T, F]
                                 resolutions: Sequence[int],
                                 pe_freqs: Tensor,  # [K]
                                 out_dtype: torch.dtype | None = None,
                                 fwd_config: tuple[int, int] | None = None,
                                 bwd_config: tuple[int, int] | None = None) -> Tensor:  # [N, L*F + 6K]
    """Hash-grid encoding and sin/cos encoding written side by side into one buffer (no concat).

    Equal to ``torch.cat([hash_grid_encode_torch(x, table, res), sin(s), cos(s)], -1)`` with
    ``s = (x[:, :, None] * pe_freqs).reshape(N, 3K)`` (the layout of
    ``f3rm_ros.core.fields.encodings.FrequencyEncoding`` without the raw input; x is not clamped
    for the sin/cos part), all in ``out_dtype``: the input of the feature field's MLP in one buffer,
    and in the backward the hash-grid gradient is read in place from the first L*F columns.

    Args:
        x: points [N, 3] (no gradient: the sin/cos part has no points-gradient kernel).
        table: [L, T, F] hash tables (gradient).
        resolutions: L grid resolutions.
        pe_freqs: [K] angular frequencies (e.g. ``pi * 2**k``), on x's device.
        out_dtype: output dtype (default the table's), e.g. float16 for an fp16 MLP.
        fwd_config, bwd_config: optional (BLOCK, num_warps) of the hash-grid kernels.
    Returns:
        [N, L*F + 6K].
    """
    _check_inputs(x, table, resolutions, out_dtype)
    if pe_freqs.dim() != 1 or pe_freqs.numel() < 1:
        raise ValueError(f"pe_freqs must be a non-empty 1-D tensor, got shape {tuple(pe_freqs.shape)}")
    x32 = x.detach().to(torch.float32).contiguous()
    meta = _meta(resolutions, table.shape[1], x.device)
    return _HashGridTriton.apply(x32, table.contiguous(), meta,
                                 tuple(fwd_config or DEFAULT_FWD_CONFIG), tuple(bwd_config or DEFAULT_BWD_CONFIG),
                                 out_dtype, pe_freqs.detach().to(device=x.device, dtype=torch.float32).contiguous())
