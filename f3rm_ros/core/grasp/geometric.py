"""Zero-shot geometric grasp candidates: antipodal pairs found directly on the field's density.

No demonstration is needed (the idea of LERF-TOGO and GraspSplats: geometry proposes, language
selects). From surface points inside the region the language selected (the object, or the part when
one is named):

1. **Normal**: the outward unit normal ``n = -grad log density / |.|`` (central differences).
2. **Surface**: the seed (a 1 cm surface voxel) is moved along ``n`` onto the iso-surface
   ``alpha = level`` (the outermost crossing within ``project_span_m``).
3. **Opposite faces**: a ray from that point into the object along ``-n`` finds where it leaves the
   solid: the first occupied -> free crossing (across a wall: a pinch on a rim) and the last one
   within reach (across the whole object: both walls of a cup's body). No exit within the gripper's
   opening minus twice the clearance means "wider than the gripper".
   Also ``horizontal_chords`` horizontal lines through a point 3 mm under each seed, through the seed
   itself and 5 mm above and below it: where the solid ends on either side gives a pair too (what a flat
   or lying object offers a gripper from above; its top face's normal points along no useful closing
   axis).
4. **Antipodality**: each contact's outward normal must point along its finger's push (within
   ``max_pair_deg`` of the line between the contacts).
5. **Poses**: closing axis (gripper y) along ``n - n_exit`` (left finger at the seed's side), the
   contact midpoint at gripper depth ``z = d`` for each ``d`` in ``depths`` (so the contacts sit on
   the finger pads), and the approach (gripper -z) turned about the closing axis in
   ``approach_angles`` steps starting from "from above" (gripper +z as close to world +z as the
   closing axis allows).

Each candidate carries a pre-score used to keep the best ``max_candidates`` and to order the
(expensive) collision and antipodal checks of the planner: the pair's antipodality, a preference for
approaches from above, and a preference for widths well inside the opening. Everything is batched
over seeds; points are world-frame metres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from f3rm_ros.core.fields.protocol import GraspField
from f3rm_ros.core.grasp.antipodal import _gradient
from f3rm_ros.core.grasp.field_utils import alpha_from_density, query_density_chunked

__all__ = ["GeometricSettings", "GeometricCandidates", "surface_normals", "project_to_surface",
           "opposite_face", "chord_exits", "geometric_candidates", "grasp_frames"]


@dataclass
class GeometricSettings:
    """Settings of :func:`geometric_candidates` (the planner fills them from ``PlannerConfig``)."""

    max_width: float = 0.074  # widest object the fingers may close on: opening - 2 * clearance, metres
    min_width: float = 0.002  # narrowest (thinner reads as noise), metres
    level: float = 0.1  # alpha of the surface
    delta: float = 0.01  # alpha's step, metres
    step: float = 0.001  # ray sample spacing, metres
    h: float = 0.003  # finite-difference step of the normal, metres
    project_span_m: float = 0.012  # search +- this along the normal for the surface, metres
    max_pair_deg: float = 30.0  # antipodality of the (seed, exit) normal pair
    approach_angles: int = 8  # approaches per pair, evenly turned about the closing axis
    horizontal_chords: int = 4  # horizontal closing directions tried through each seed (0 = off)
    depths: tuple[float, ...] = (-0.005, 0.006, 0.018)  # gripper z of the contact midpoint, metres
    max_candidates: int = 8192  # kept by pre-score (0 = all)
    chunk_points: int = 2**18
    march_block: int = 0  # > 0: chords march this many samples first, then twice as many, ... until they exit


@dataclass
class GeometricCandidates:
    """Candidate grasps (world_from_gripper) and per-seed diagnostics."""

    R: torch.Tensor  # [N, 3, 3]
    t: torch.Tensor  # [N, 3]
    prescore: torch.Tensor  # [N]
    width: torch.Tensor  # [N] estimated width across the object, metres
    seed_index: torch.Tensor  # [N] index into the seeds
    stats: dict


def surface_normals(field: GraspField, pts: torch.Tensor, h: float, chunk: int) -> torch.Tensor:  # [M, 3] unit
    """Outward unit normals ``-grad log density`` (NaN-free; zero where the gradient vanishes)."""
    g = _gradient(field, pts, h, chunk)
    return -g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _alpha_along(field: GraspField, origins: torch.Tensor, dirs: torch.Tensor, s: torch.Tensor,
                 delta: float, chunk: int) -> torch.Tensor:  # [M, 3], [M, 3], [K] -> [M, K]
    pts = origins[:, None, :] + s[None, :, None] * dirs[:, None, :]
    dens = query_density_chunked(field, pts.reshape(-1, 3), chunk).reshape(pts.shape[:2])
    return alpha_from_density(dens, delta)


def project_to_surface(field: GraspField, pts: torch.Tensor, normals: torch.Tensor, st: GeometricSettings
                       ) -> tuple[torch.Tensor, torch.Tensor]:  # [M, 3], [M] bool
    """Each point moved along its normal onto the outermost level crossing within +- ``project_span_m``."""
    k = int(round(2 * st.project_span_m / st.step)) + 1
    s = torch.linspace(-st.project_span_m, st.project_span_m, k, device=pts.device)
    occ = _alpha_along(field, pts, normals, s, st.delta, st.chunk_points) >= st.level  # [M, K]
    # crossing between sample j (occupied) and j + 1 (free): take the outermost one
    cross = occ[:, :-1] & ~occ[:, 1:]
    idx = torch.arange(k - 1, device=pts.device).expand_as(cross)
    last = torch.where(cross, idx, torch.full_like(idx, -1)).amax(dim=1)
    ok = last >= 0
    off = s[last.clamp_min(0)] + 0.5 * st.step
    return pts + off[:, None] * normals, ok


def opposite_face(field: GraspField, x0: torch.Tensor, n: torch.Tensor, st: GeometricSettings
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # width [M, 2], exit [M, 2, 3], ok [M, 2]
    """March from surface points ``x0`` into the solid along ``-n`` up to ``max_width``. Two opposite faces per
    point: the first occupied -> free crossing after entering (a wall: the pinch across a rim) and the last
    one within reach (the whole object: across a cup's body, both walls). ``ok`` is False where the ray never
    leaves the solid within ``max_width`` (wider than the gripper) or never enters it; the second is also
    False where it is the first."""
    k = int(math.floor(st.max_width / st.step)) + 2
    s = torch.arange(k, device=x0.device, dtype=torch.float32) * st.step + 0.5 * st.step
    occ = _alpha_along(field, x0, -n, s, st.delta, st.chunk_points) >= st.level  # [M, K]
    entered = torch.cumsum(occ.int(), dim=1) > 0
    leave = entered[:, :-1] & occ[:, :-1] & ~occ[:, 1:]
    has = leave.any(dim=1)
    first = torch.argmax(leave.int(), dim=1)
    idx = torch.arange(k - 1, device=x0.device).expand_as(leave)
    last = torch.where(leave, idx, torch.full_like(idx, -1)).amax(dim=1).clamp_min(0)
    width = torch.stack([s[first], s[last]], dim=1) + 0.5 * st.step  # [M, 2]
    ok = has[:, None] & (width <= st.max_width) & (width >= st.min_width)
    ok[:, 1] &= last > first
    return width, x0[:, None, :] - width[..., None] * n[:, None, :], ok


def grasp_frames(mid: torch.Tensor, y: torch.Tensor, angles: torch.Tensor, depths: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gripper poses around contact midpoints ``mid`` [M, 3] with closing axes ``y`` [M, 3] (unit).

    For each pair, approach angle ``a`` (radians, about the closing axis; 0 = gripper +z as close to
    world +z as possible) and depth ``d`` (gripper z of the midpoint): R = [x, y, z], t = mid - d z.

    Returns:
        R [M*A*D, 3, 3], t [M*A*D, 3], the angle and the pair index of each pose.
    """
    m, a, d = mid.shape[0], angles.shape[0], depths.shape[0]
    up = torch.tensor([0.0, 0.0, 1.0], device=mid.device).expand_as(y)
    z0 = up - (up * y).sum(-1, keepdim=True) * y
    alt = torch.tensor([1.0, 0.0, 0.0], device=mid.device).expand_as(y)
    alt = alt - (alt * y).sum(-1, keepdim=True) * y
    z0 = torch.where(z0.norm(dim=-1, keepdim=True) > 1e-3, z0, alt)  # closing axis vertical: any z
    z0 = z0 / z0.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    x0 = torch.cross(y, z0, dim=-1)
    c, s = torch.cos(angles), torch.sin(angles)  # [A]
    z = c[None, :, None] * z0[:, None, :] + s[None, :, None] * x0[:, None, :]  # [M, A, 3]
    x = torch.cross(y[:, None, :].expand_as(z), z, dim=-1)
    R = torch.stack([x, y[:, None, :].expand_as(z), z], dim=-1)  # columns x, y, z: [M, A, 3, 3]
    t = mid[:, None, None, :] - depths[None, None, :, None] * z[:, :, None, :]  # [M, A, D, 3]
    R = R[:, :, None].expand(m, a, d, 3, 3).reshape(-1, 3, 3)
    ang = angles[None, :, None].expand(m, a, d).reshape(-1)
    pair = torch.arange(m, device=mid.device)[:, None, None].expand(m, a, d).reshape(-1)
    return R, t.reshape(-1, 3), ang, pair


def chord_exits(field: GraspField, p: torch.Tensor, u: torch.Tensor, st: GeometricSettings
                ) -> tuple[torch.Tensor, torch.Tensor]:  # distance [M], ok [M]
    """Distance from points ``p`` (inside the solid) along ``u`` to where the solid ends (first free sample);
    ``ok`` False where ``p`` is not inside or the solid goes on past ``max_width``. With ``st.march_block`` the
    samples are taken in blocks and a chord stops at its first free sample (the same answer, for the samples
    up to where the chord leaves the solid instead of all of them)."""
    k = int(math.floor(st.max_width / st.step)) + 1
    s = torch.arange(k, device=p.device, dtype=torch.float32) * st.step
    if st.march_block <= 0:
        occ = _alpha_along(field, p, u, s, st.delta, st.chunk_points) >= st.level  # [M, K]; s[0] = 0 is p itself
        free = ~occ
        first = torch.argmax(free.int(), dim=1)
        ok = occ[:, 0] & free.any(dim=1)
        return s[first] - 0.5 * st.step, ok
    m = p.shape[0]
    first = torch.zeros(m, dtype=torch.long, device=p.device)  # 0 where no free sample (as argmax of all False)
    found = torch.zeros(m, dtype=torch.bool, device=p.device)
    inside = torch.zeros(m, dtype=torch.bool, device=p.device)
    live = torch.arange(m, device=p.device)
    j, block = 0, st.march_block
    while j < k and live.numel():
        occ = _alpha_along(field, p[live], u[live], s[j:j + block], st.delta, st.chunk_points) >= st.level
        if j == 0:
            inside[live] = occ[:, 0]
        free = ~occ
        has = free.any(dim=1)
        first[live[has]] = j + torch.argmax(free[has].int(), dim=1)
        found[live[has]] = True
        live = live[~has]
        j, block = j + block, 2 * block
    return s[first] - 0.5 * st.step, inside & found


def geometric_candidates(field: GraspField, seeds: torch.Tensor, st: GeometricSettings,
                         generator: torch.Generator | None = None) -> GeometricCandidates:
    """Antipodal candidates from surface seeds [M, 3] (see the module docstring)."""
    dev = seeds.device
    stats: dict = {"seeds": int(seeds.shape[0])}
    empty = GeometricCandidates(torch.zeros(0, 3, 3, device=dev), torch.zeros(0, 3, device=dev),
                                torch.zeros(0, device=dev), torch.zeros(0, device=dev),
                                torch.zeros(0, dtype=torch.long, device=dev), stats)
    if seeds.shape[0] == 0:
        return empty
    with torch.no_grad():
        n = surface_normals(field, seeds, st.h, st.chunk_points)
        x0, ok0 = project_to_surface(field, seeds, n, st)
        n = torch.where(ok0[:, None], surface_normals(field, x0, st.h, st.chunk_points), n)
        ok0 &= n.norm(dim=-1) > 0.5
        stats["on_surface"] = int(ok0.sum())
        m = seeds.shape[0]
        # (a) along the normal: the first and the last opposite face
        width2, x12, ok_w2 = opposite_face(field, x0, n, st)  # [M, 2], [M, 2, 3], [M, 2]
        stats["no_opposite_face"] = int((ok0 & ~ok_w2.any(dim=1)).sum())
        ca = [x0.repeat_interleave(2, dim=0)]
        cb = [x12.reshape(-1, 3)]
        seed_of = [torch.arange(m, device=dev).repeat_interleave(2)]
        oks = [ok0.repeat_interleave(2) & ok_w2.reshape(-1)]
        # (b) horizontal chords through a point just under the surface, and through the seed itself (a 1 cm
        # surface voxel often lies inside a thin part, where the normal is noise): what a flat or lying object
        # offers a gripper coming from above (its top face's normal points along no useful closing axis)
        # and 5 mm above and below the seed (a 1 cm voxel grid rarely meets the equator of a bar lying on the table,
        # the only height where a horizontal closing axis is antipodal on it)
        dz = torch.tensor([0.0, 0.0, 0.005], device=dev)
        origins = ((x0 - n * min(0.003, 0.5 * st.project_span_m), ok0), (seeds, torch.ones_like(ok0)),
                   (seeds - dz, torch.ones_like(ok0)), (seeds + dz, torch.ones_like(ok0)))
        chords = [(p, ok_p, torch.tensor([math.cos(math.pi * j / st.horizontal_chords),
                                          math.sin(math.pi * j / st.horizontal_chords), 0.0], device=dev).expand_as(p))
                  for p, ok_p in origins for j in range(st.horizontal_chords)]
        if st.march_block > 0 and chords:
            # every chord (both ways) in one march: the same exits (each chord is marched on its own samples), in a
            # few field queries of thousands of points instead of a few per chord (each query costs ~1.6 ms on one
            # CPU thread before its first point: 32 chords x ~4 blocks were ~0.2 s of a CPU query)
            pa, ua = torch.cat([c[0] for c in chords]), torch.cat([c[2] for c in chords])
            d_all, ok_all = chord_exits(field, torch.cat([pa, pa]), torch.cat([ua, -ua]), st)
            half = pa.shape[0]
            exits = list(zip(d_all[:half].split(m), ok_all[:half].split(m), d_all[half:].split(m),
                             ok_all[half:].split(m), strict=True))
        else:  # the plain reference: one chord direction at a time
            exits = [(*chord_exits(field, p, u, st), *chord_exits(field, p, -u, st)) for p, _, u in chords]
        for (p, ok_p, u), (dp, okp, dm, okm) in zip(chords, exits, strict=True):
            ca.append(p + dp[:, None] * u)
            cb.append(p - dm[:, None] * u)
            seed_of.append(torch.arange(m, device=dev))
            oks.append(ok_p & okp & okm & (dp + dm <= st.max_width) & (dp + dm >= st.min_width))
        ca, cb, seed_of, ok = torch.cat(ca), torch.cat(cb), torch.cat(seed_of), torch.cat(oks)
        na = surface_normals(field, ca, st.h, st.chunk_points)
        nb = surface_normals(field, cb, st.h, st.chunk_points)
        axis = ca - cb
        width = axis.norm(dim=-1)
        axis = axis / width[:, None].clamp_min(1e-9)
        cos_pair = torch.minimum((na * axis).sum(-1), (nb * -axis).sum(-1))  # each normal along its push
        ok &= cos_pair >= math.cos(math.radians(st.max_pair_deg))
        stats["antipodal_pairs"] = int(ok.sum())
        idx = torch.nonzero(ok)[:, 0]
        if idx.numel() == 0:
            return empty
        y = na[idx] - nb[idx]
        y = y / y.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        mid = 0.5 * (ca[idx] + cb[idx])
        angles = torch.arange(st.approach_angles, device=dev, dtype=torch.float32) * (2 * math.pi / st.approach_angles)
        depths = torch.as_tensor(st.depths, dtype=torch.float32, device=dev)
        R, t, ang, pair = grasp_frames(mid, y, angles, depths)
        w = width[idx][pair]
        # pre-score: antipodal pair (1 at 0 deg), from above (1 when gripper +z is world +z), width inside
        # the opening (1 when at most half of it), small random tie-break so equal scores keep diversity
        from_above = R[:, 2, 2].clamp(-1.0, 1.0)
        roomy = (1.0 - (w / st.max_width - 0.5).clamp_min(0.0) * 2.0).clamp_min(0.0)
        pre = cos_pair[idx][pair] + 0.5 * from_above + 0.25 * roomy
        pre = pre + 1e-3 * torch.rand(pre.shape[0], generator=generator).to(dev)
        stats["candidates"] = int(pre.shape[0])
        if 0 < st.max_candidates < pre.shape[0]:
            keep = torch.topk(pre, st.max_candidates).indices
            R, t, pre, w, pair = R[keep], t[keep], pre[keep], w[keep], pair[keep]
        return GeometricCandidates(R, t, pre, w, seed_of[idx[pair]], stats)
