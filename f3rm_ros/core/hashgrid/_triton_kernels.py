"""Triton kernels of the hash-grid encoding (private; imported on first use by ``triton_op``).

Importing this module imports Triton and defines the kernels; it compiles nothing. The math is
documented in :mod:`f3rm_ros.core.hashgrid.triton_op`. Only Triton APIs present in both Triton 3.6
and 3.8 are used (jit, constexpr, static_range, load/store with masks, where, atomic_add).
With 16-byte-aligned tensors both versions vectorise the gathers (ld.global.v2/v4) and the
backward's atomics (atom.global.relaxed.add.v2/v4.f32) over the F features of a corner.
"""

import triton
import triton.language as tl


@triton.jit
def _corner_parts(cx, cy, cz, fx, fy, fz, stride, dense,
                  K: tl.constexpr, T: tl.constexpr, POW2: tl.constexpr):
    # corner K = (bx, by, bz) bits; returns (table row index int32, per-axis weights wx, wy, wz fp32)
    if K & 1:
        ix = cx + 1
        wx = fx
    else:
        ix = cx
        wx = 1.0 - fx
    if (K >> 1) & 1:
        iy = cy + 1
        wy = fy
    else:
        iy = cy
        wy = 1.0 - fy
    if (K >> 2) & 1:
        iz = cz + 1
        wz = fz
    else:
        iz = cz
        wz = 1.0 - fz
    idx_d = ix + iy * stride + iz * (stride * stride)
    if POW2:
        # int32 products wrap like uint32; the low log2(T) bits are all that is kept
        h = ix ^ (iy * -1640531535) ^ (iz * 805459861)
        idx_h = h & (T - 1)
    else:
        h64 = (ix.to(tl.int64) ^ (iy.to(tl.int64) * 2654435761) ^ (iz.to(tl.int64) * 805459861)) & 0xFFFFFFFF
        idx_h = (h64 % T).to(tl.int32)
    idx = tl.where(dense != 0, idx_d, idx_h)
    return idx, wx, wy, wz


@triton.jit
def _corner(cx, cy, cz, fx, fy, fz, stride, dense,
            K: tl.constexpr, T: tl.constexpr, POW2: tl.constexpr):
    # corner K = (bx, by, bz) bits; returns (table row index int32, trilinear weight fp32)
    idx, wx, wy, wz = _corner_parts(cx, cy, cz, fx, fy, fz, stride, dense, K, T, POW2)
    w = wx * wy * wz
    return idx, w

@triton.jit
def _cell(x_ptr, offs, mask, Rf, R):
    x0 = tl.load(x_ptr + offs * 3 + 0, mask=mask, other=0.0)
    x1 = tl.load(x_ptr + offs * 3 + 1, mask=mask, other=0.0)
    x2 = tl.load(x_ptr + offs * 3 + 2, mask=mask, other=0.0)
    px = tl.minimum(tl.maximum(x0, 0.0), 1.0) * Rf
    py = tl.minimum(tl.maximum(x1, 0.0), 1.0) * Rf
    pz = tl.minimum(tl.maximum(x2, 0.0), 1.0) * Rf
    # pos >= 0, so truncation is floor
    cx = tl.minimum(px.to(tl.int32), R - 1)
    cy = tl.minimum(py.to(tl.int32), R - 1)
    cz = tl.minimum(pz.to(tl.int32), R - 1)
    fx = px - cx.to(tl.float32)
    fy = py - cy.to(tl.float32)
    fz = pz - cz.to(tl.float32)
    return cx, cy, cz, fx, fy, fz

@triton.jit
def hash_fwd(x_ptr, table_ptr, meta_ptr, out_ptr, N, out_stride,
             T: tl.constexpr, L: tl.constexpr, F: tl.constexpr, BLOCK: tl.constexpr, POW2: tl.constexpr):
    pid = tl.program_id(0)
    lvl = tl.program_id(1)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    R = tl.load(meta_ptr + 2 * lvl)
    dense = tl.load(meta_ptr + 2 * lvl + 1)
    cx, cy, cz, fx, fy, fz = _cell(x_ptr, offs, mask, R.to(tl.float32), R)
    stride = R + 1
    fo = tl.arange(0, F)
    base = table_ptr + lvl.to(tl.int64) * (T * F)
    acc = tl.zeros([BLOCK, F], dtype=tl.float32)
    for k in tl.static_range(8):
        idx, w = _corner(cx, cy, cz, fx, fy, fz, stride, dense, k, T, POW2)
        v = tl.load(base + idx[:, None] * F + fo[None, :], mask=mask[:, None], other=0.0)
        acc += w[:, None] * v.to(tl.float32)
    optr = out_ptr + offs.to(tl.int64)[:, None] * out_stride + lvl * F + fo[None, :]
    tl.store(optr, acc.to(out_ptr.dtype.element_ty), mask=mask[:, None])

@triton.jit
def _seg_add(f1, v1, f2, v2):
    # segmented inclusive sum: f = 1 where a segment starts
    return f1 | f2, tl.where(f2 != 0, v2, v1 + v2)


@triton.jit
def hash_bwd(x_ptr, gout_ptr, meta_ptr, gtab_ptr, N, g_stride, seg_max_res,
             T: tl.constexpr, L: tl.constexpr, F: tl.constexpr, BLOCK: tl.constexpr, POW2: tl.constexpr,
             SEG: tl.constexpr):
    pid = tl.program_id(0)
    lvl = tl.program_id(1)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    R = tl.load(meta_ptr + 2 * lvl)
    dense = tl.load(meta_ptr + 2 * lvl + 1)
    Rf = R.to(tl.float32)
    cx, cy, cz, fx, fy, fz = _cell(x_ptr, offs, mask, Rf, R)
    stride = R + 1
    fo = tl.arange(0, F)
    gptr = gout_ptr + offs.to(tl.int64)[:, None] * g_stride + lvl * F + fo[None, :]
    g = tl.load(gptr, mask=mask[:, None], other=0.0).to(tl.float32)
    base = gtab_ptr + lvl.to(tl.int64) * (T * F)
    if SEG and R <= seg_max_res:
        # Coarse level: consecutive points (samples along a ray) often lie in the same cell, so share
        # all 8 corner rows. Sum their contributions with a segmented scan over the block and let
        # only the last point of each run issue the atomics (same sum, fewer atomic operations).
        i = tl.arange(0, BLOCK)
        pm = mask & (i > 0)
        px, py, pz, _a, _b, _c = _cell(x_ptr, offs - 1, pm, Rf, R)
        nm = ((offs + 1) < N) & (i < BLOCK - 1)
        nx, ny, nz, _d, _e, _f = _cell(x_ptr, offs + 1, nm, Rf, R)
        start = ((px != cx) | (py != cy) | (pz != cz) | (i == 0)).to(tl.int32)
        end = (nx != cx) | (ny != cy) | (nz != cz) | (i == BLOCK - 1) | ((offs + 1) >= N)
        flags = tl.broadcast_to(start[:, None], (BLOCK, F))
        amask = (mask & end)[:, None]
        for k in tl.static_range(8):
            idx, w = _corner(cx, cy, cz, fx, fy, fz, stride, dense, k, T, POW2)
            _fl, acc = tl.associative_scan((flags, w[:, None] * g), 0, _seg_add)
            tl.atomic_add(base + idx[:, None] * F + fo[None, :], acc, mask=amask, sem="relaxed")
    else:
        for k in tl.static_range(8):
            idx, w = _corner(cx, cy, cz, fx, fy, fz, stride, dense, k, T, POW2)
            tl.atomic_add(base + idx[:, None] * F + fo[None, :], w[:, None] * g, mask=mask[:, None],
                          sem="relaxed")


@triton.jit
def freq_fwd(x_ptr, freq_ptr, out_ptr, N, out_stride, col0,
             K: tl.constexpr, J: tl.constexpr, BLOCK: tl.constexpr):
    """sin/cos encoding into columns [col0, col0 + 6K) of out: [sin(x_d * f_k) for d, k], then cos.

    Column j = d*K + k (d the input dim, k the frequency), as ``FrequencyEncoding``; J = next power of
    two >= 3K."""
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    j = tl.arange(0, J)
    jm = j < 3 * K
    d = j // K
    k = j - d * K
    m2 = mask[:, None] & jm[None, :]
    xv = tl.load(x_ptr + offs[:, None] * 3 + d[None, :], mask=m2, other=0.0)
    fr = tl.load(freq_ptr + k, mask=jm, other=0.0)
    s = xv * fr[None, :]
    optr = out_ptr + offs.to(tl.int64)[:, None] * out_stride + col0 + j[None, :]
    tl.store(optr, tl.sin(s).to(out_ptr.dtype.element_ty), mask=m2)
    tl.store(optr + 3 * K, tl.cos(s).to(out_ptr.dtype.element_ty), mask=m2)


@triton.jit
def hash_bwd_x(x_ptr, table_ptr, meta_ptr, gout_ptr, gx_ptr, N, g_stride,
               T: tl.constexpr, L: tl.constexpr, F: tl.constexpr, BLOCK: tl.constexpr, POW2: tl.constexpr):
    """Gradient w.r.t. the points:
    gx[n, a] = [0 < x_a < 1] * sum_l R_l * sum_k dw_k/dfrac_a * <table[l, idx_k], gout[n, l]>.

    One program per BLOCK points loops over the L levels (no atomics: each program owns its rows, so
    the result does not depend on scheduling). dw_k/dfrac_a is +-(product of the other two axes'
    weights), + where corner k takes the upper cell face on axis a."""
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    x0 = tl.load(x_ptr + offs * 3 + 0, mask=mask, other=0.0)
    x1 = tl.load(x_ptr + offs * 3 + 1, mask=mask, other=0.0)
    x2 = tl.load(x_ptr + offs * 3 + 2, mask=mask, other=0.0)
    fo = tl.arange(0, F)
    gx = tl.zeros([BLOCK], dtype=tl.float32)
    gy = tl.zeros([BLOCK], dtype=tl.float32)
    gz = tl.zeros([BLOCK], dtype=tl.float32)
    base = table_ptr  # advanced by one level's table (T * F rows of 64-bit pointer arithmetic) per level
    for lvl in range(L):
        R = tl.load(meta_ptr + 2 * lvl)
        dense = tl.load(meta_ptr + 2 * lvl + 1)
        Rf = R.to(tl.float32)
        cx, cy, cz, fx, fy, fz = _cell(x_ptr, offs, mask, Rf, R)
        stride = R + 1
        g = tl.load(gout_ptr + offs.to(tl.int64)[:, None] * g_stride + lvl * F + fo[None, :],
                    mask=mask[:, None], other=0.0).to(tl.float32)
        lx = tl.zeros([BLOCK], dtype=tl.float32)
        ly = tl.zeros([BLOCK], dtype=tl.float32)
        lz = tl.zeros([BLOCK], dtype=tl.float32)
        for k in tl.static_range(8):
            idx, wx, wy, wz = _corner_parts(cx, cy, cz, fx, fy, fz, stride, dense, k, T, POW2)
            v = tl.load(base + idx[:, None] * F + fo[None, :], mask=mask[:, None], other=0.0).to(tl.float32)
            s = tl.sum(v * g, axis=1)
            if k & 1:
                lx += wy * wz * s
            else:
                lx -= wy * wz * s
            if (k >> 1) & 1:
                ly += wx * wz * s
            else:
                ly -= wx * wz * s
            if (k >> 2) & 1:
                lz += wx * wy * s
            else:
                lz -= wx * wy * s
        gx += Rf * lx
        gy += Rf * ly
        gz += Rf * lz
        base += T * F
    # the clamp to [0, 1] passes the gradient only strictly inside: 0 at the bounds, as reference.clamp_unit
    # (torch.clamp's own backward is 1 at the bounds up to torch 2.13, 0 from 2.14)
    gx = tl.where((x0 > 0.0) & (x0 < 1.0), gx, 0.0)
    gy = tl.where((x1 > 0.0) & (x1 < 1.0), gy, 0.0)
    gz = tl.where((x2 > 0.0) & (x2 < 1.0), gz, 0.0)
    tl.store(gx_ptr + offs * 3 + 0, gx, mask=mask)
    tl.store(gx_ptr + offs * 3 + 1, gy, mask=mask)
    tl.store(gx_ptr + offs * 3 + 2, gz, mask=mask)
