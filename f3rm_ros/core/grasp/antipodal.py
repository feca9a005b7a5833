"""Antipodal estimate and refinement of parallel-jaw grasps from the field's density alone (ours).

The task loss only matches features at the demonstrations' query points, so an optimised grasp on a
thin handle can close a few degrees off the surface normals and slip (outside the friction cone).
This module estimates, from the density, what the closing fingers would touch:

* rays across each finger pad (``ray_grid`` = across x, along z of the pad) run along the closing
  direction (gripper y) from the finger's inner face to the other finger, sampled every ``step``;
  a ray's contact is where alpha(density, delta) first reaches ``level`` (linear between samples);
* each finger's contact patch is the rays within ``band`` of its nearest contact; the outward
  normal at a contact is minus the density gradient (central differences, step ``h``);
* the estimated antipodal angle of a finger is the angle between its patch's mean normal and the
  reversed pushing direction (0 = perfectly antipodal); a grasp's angle is the larger of the two,
  180 degrees when a finger closes on nothing or starts inside something.

:func:`align_to_contacts` turns a grasp about the midpoint of its contacts so that the closing axis
lies along the estimated contact normals (``n_left - n_right``) and shifts it onto the axis of a round
bar it closes off-centre, the cheap refinement the planner applies to its best candidates. Everything is batched
over poses; points are world-frame metres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from f3rm_ros.core.fields.protocol import GraspField
from f3rm_ros.core.grasp.field_utils import alpha_from_density, query_density_chunked

__all__ = ["AntipodalSettings", "AntipodalEstimate", "estimate_antipodal", "estimate_antipodal_reference",
           "align_to_contacts", "rotation_between"]


@dataclass
class AntipodalSettings:
    opening: float = 0.08  # finger opening, metres
    pad_x: float = 0.02  # finger pad width (gripper x), metres
    pad_z: tuple[float, float] = (-0.01, 0.044)  # pad extent along gripper z, metres
    ray_grid: tuple[int, int] = (3, 7)  # rays across x, along z
    step: float = 0.001  # sampling step along a ray, metres
    delta: float = 0.01  # alpha's step, metres
    level: float = 0.1  # alpha at which a sample counts as a contact
    band: float = 0.002  # rays within this of the first contact form the patch, metres
    h: float = 0.003  # finite-difference step of the density gradient, metres
    chunk_points: int = 2**18


@dataclass
class AntipodalEstimate:
    angle_deg: torch.Tensor  # [N] larger of the two fingers' angles (180 = no valid contact)
    angles_deg: torch.Tensor  # [N, 2] left, right
    contacts: torch.Tensor  # [N, 2, 3] patch centres (world), NaN where none
    normals: torch.Tensor  # [N, 2, 3] mean outward unit normals (world), NaN where none
    valid: torch.Tensor  # [N] both fingers touch, neither starts inside


def _pad_rays(s: AntipodalSettings, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Gripper-frame ray samples [P, K, 3] from the left face (y = +opening/2) to the right one, and the
    distance of sample k from the left face [K]."""
    nx, nz = s.ray_grid
    xs = (torch.arange(nx, dtype=torch.float32) + 0.5) / nx * s.pad_x - s.pad_x / 2
    zs = s.pad_z[0] + (torch.arange(nz, dtype=torch.float32) + 0.5) / nz * (s.pad_z[1] - s.pad_z[0])
    k = int(np.floor(s.opening / s.step + 1e-6)) + 1
    d = torch.arange(k, dtype=torch.float32) * s.step
    ys = s.opening / 2 - d
    X, Z = torch.meshgrid(xs, zs, indexing="ij")
    P = X.numel()
    pts = torch.stack([X.reshape(P, 1).expand(P, k), ys.reshape(1, k).expand(P, k), Z.reshape(P, 1).expand(P, k)], -1)
    return pts.to(device), d.to(device)


def _gradient(field: GraspField, pts: torch.Tensor, h: float, chunk: int) -> torch.Tensor:  # [M, 3] -> [M, 3]
    off = torch.eye(3, device=pts.device) * h
    probe = torch.cat([pts[:, None, :] + off[None], pts[:, None, :] - off[None]], dim=1)  # [M, 6, 3]
    dens = query_density_chunked(field, probe.reshape(-1, 3), chunk).reshape(-1, 6)
    ld = torch.log(dens.clamp_min(1e-6))  # density rises ~exponentially at a surface: differences of its log
    return (ld[:, :3] - ld[:, 3:]) / (2 * h)  # are unbiased there, plain differences lean to the larger side


def estimate_antipodal(field: GraspField, R: torch.Tensor,  # [N, 3, 3] world_from_gripper
                       t: torch.Tensor,  # [N, 3]
                       s: AntipodalSettings) -> AntipodalEstimate:
    """Batched antipodal estimate of N grasps (see the module docstring)."""
    n = R.shape[0]
    dev = t.device
    rays, d = _pad_rays(s, dev)  # [P, K, 3], [K]
    P, K = rays.shape[:2]
    nan3 = torch.full((n, 2, 3), float("nan"), device=dev)
    if n == 0:
        z = torch.zeros(0, device=dev)
        return AntipodalEstimate(z, torch.zeros(0, 2, device=dev), nan3, nan3,
                                 torch.zeros(0, dtype=torch.bool, device=dev))
    with torch.no_grad():
        world = torch.einsum("nij,pkj->npki", R, rays) + t[:, None, None, :]  # [N, P, K, 3]
        dens = query_density_chunked(field, world.reshape(-1, 3), s.chunk_points).reshape(n, P, K)
        alpha = alpha_from_density(dens, s.delta)
        occ = alpha >= s.level
        contacts, normals, angles = nan3.clone(), nan3.clone(), torch.full((n, 2), 180.0, device=dev)
        valid = torch.ones(n, dtype=torch.bool, device=dev)
        y = R[:, :, 1]  # [N, 3] closing axis (left finger at +y)
        for side in (0, 1):
            o = occ if side == 0 else occ.flip(-1)
            w = world if side == 0 else world.flip(2)
            a = alpha if side == 0 else alpha.flip(-1)
            hit = o.any(dim=-1)  # [N, P]
            first = torch.argmax(o.int(), dim=-1)  # [N, P]
            # sub-sample crossing of the level between samples first-1 and first (linear in alpha)
            a1 = torch.gather(a, 2, first[..., None])[..., 0]
            a0 = torch.gather(a, 2, (first - 1).clamp_min(0)[..., None])[..., 0]
            frac = ((s.level - a0) / (a1 - a0).clamp_min(1e-6)).clamp(0.0, 1.0)
            frac = torch.where(first > 0, frac, torch.ones_like(frac))
            dcross = d[first] - (1.0 - frac) * s.step
            dist = torch.where(hit, dcross, torch.full_like(dcross, 1e9))
            dmin = dist.amin(dim=1)  # [N]
            ok = hit.any(dim=1) & ~(o[..., 0].any(dim=1))  # touches something, does not start inside
            valid &= ok
            patch = hit & (dist <= dmin[:, None] + s.band)  # [N, P]
            push = (-y if side == 0 else y)[:, None, :]  # [N, 1, 3] this finger's closing direction
            start = w[:, :, 0]  # [N, P, 3] ray origins on the finger face
            cp = start + dist.clamp_max(s.opening)[..., None] * push  # [N, P, 3] contact points
            g = _gradient(field, cp.reshape(-1, 3), s.h, s.chunk_points).reshape(n, P, 3)
            nrm = -g / g.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            wts = patch.float()[..., None]
            cnt = wts.sum(dim=1).clamp_min(1.0)
            mean_n = (nrm * wts).sum(dim=1)
            mean_n = mean_n / mean_n.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            centre = (cp * wts).sum(dim=1) / cnt
            want = y if side == 0 else -y  # outward normal facing the finger
            ang = torch.rad2deg(torch.arccos((mean_n * want).sum(-1).clamp(-1.0, 1.0)))
            angles[:, side] = torch.where(ok, ang, torch.full_like(ang, 180.0))
            contacts[:, side] = torch.where(ok[:, None], centre, nan3[:, 0])
            normals[:, side] = torch.where(ok[:, None], mean_n, nan3[:, 0])
    return AntipodalEstimate(angles.amax(dim=1), angles, contacts, normals, valid)


def estimate_antipodal_reference(field: GraspField, T: np.ndarray,  # [4, 4] one grasp
                                 s: AntipodalSettings) -> tuple[float, bool]:
    """Plain one-grasp, ray-by-ray twin of :func:`estimate_antipodal` (angle in degrees, valid)."""
    R, t = np.asarray(T[:3, :3], dtype=np.float64), np.asarray(T[:3, 3], dtype=np.float64)
    rays, d = _pad_rays(s, "cpu")
    rays, d = rays.double().numpy(), d.double().numpy()

    def dens(p):
        with torch.no_grad():
            x = torch.as_tensor(np.asarray(p, dtype=np.float32).reshape(-1, 3), device=field.device)
            return field.query_density(x).reshape(-1).float().cpu().numpy()

    angles = []
    for side, want in ((0, R[:, 1]), (1, -R[:, 1])):
        found = []
        for ray in rays:
            seq = ray if side == 0 else ray[::-1]
            w = seq @ R.T + t
            a = 1.0 - np.exp(-np.clip(dens(w), 0, None) * s.delta)
            occ = a >= s.level
            if occ[0]:
                return 180.0, False
            if occ.any():
                k = int(np.argmax(occ))
                frac = float(np.clip((s.level - a[k - 1]) / max(a[k] - a[k - 1], 1e-6), 0, 1)) if k > 0 else 1.0
                dist = d[k] - (1.0 - frac) * s.step
                push = -R[:, 1] if side == 0 else R[:, 1]
                found.append((dist, w[0] + dist * push))
        if not found:
            return 180.0, False
        dmin = min(f[0] for f in found)
        ns = []
        for dist, p in found:
            if dist <= dmin + s.band:
                ld = lambda x: float(np.log(max(dens(x)[0], 1e-6)))  # noqa: E731
                g = np.array([(ld(p + s.h * e) - ld(p - s.h * e)) / (2 * s.h) for e in np.eye(3)])
                ns.append(-g / max(np.linalg.norm(g), 1e-12))
        m = np.mean(ns, axis=0)
        m /= max(np.linalg.norm(m), 1e-12)
        angles.append(float(np.degrees(np.arccos(np.clip(m @ want, -1, 1)))))
    return max(angles), True


def rotation_between(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # [N, 3], [N, 3] unit -> [N, 3, 3]
    """Smallest rotations taking unit vectors ``a`` onto ``b`` (Rodrigues; identity where a == b)."""
    v = torch.cross(a, b, dim=-1)
    c = (a * b).sum(-1)
    vx = torch.zeros(a.shape[0], 3, 3, device=a.device, dtype=a.dtype)
    vx[:, 0, 1], vx[:, 0, 2], vx[:, 1, 2] = -v[:, 2], v[:, 1], -v[:, 0]
    vx = vx - vx.transpose(1, 2)
    eye = torch.eye(3, device=a.device, dtype=a.dtype).expand_as(vx)
    k = (1.0 / (1.0 + c).clamp_min(1e-6))[:, None, None]
    return eye + vx + vx @ vx * k


def align_to_contacts(R: torch.Tensor, t: torch.Tensor,  # [N, 3, 3], [N, 3]
                      est: AntipodalEstimate, max_deg: float = 30.0,
                      max_shift: float = 0.005) -> tuple[torch.Tensor, torch.Tensor]:
    """One refinement step from the estimated contacts.

    1. Turn each grasp about the midpoint of its contacts so its closing axis (gripper y) lies along
       ``n_left - n_right`` (what two flat faces at an angle need).
    2. Shift it across the closing axis against the normals' common tilt: on a round bar (a handle)
       closed off its axis both normals lean the same way, away from the axis, by theta with
       tan(theta) = |perpendicular part| / |parallel part|; the bar's axis then lies
       (width / 2) * tan(theta) further along -(that lean) (at most ``max_shift`` per step).

    Grasps without valid contacts, or needing a turn above ``max_deg``, are left as they are.
    Returns new (R [N, 3, 3], t [N, 3]).
    """
    y = R[:, :, 1]
    axis = est.normals[:, 0] - est.normals[:, 1]
    axis = axis / axis.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    cosang = (axis * y).sum(-1)
    ok = est.valid & torch.isfinite(axis).all(-1) & (cosang >= float(np.cos(np.radians(max_deg))))
    axis = torch.where(ok[:, None], axis, y)
    Q = rotation_between(y, axis)  # world rotation
    mid = torch.where(ok[:, None], est.contacts.mean(dim=1), t)
    R2 = Q @ R
    t2 = torch.einsum("nij,nj->ni", Q, t - mid) + mid
    nl, nr = torch.nan_to_num(est.normals[:, 0]), torch.nan_to_num(est.normals[:, 1])
    par = ((nl * axis).sum(-1) - (nr * axis).sum(-1)).abs() / 2  # mean |cos| to the axis
    lean = (nl + nr) / 2
    lean = lean - (lean * axis).sum(-1, keepdim=True) * axis  # across the closing axis
    half_w = torch.nan_to_num((est.contacts[:, 0] - est.contacts[:, 1]).norm(dim=-1) / 2)
    shift = -half_w[:, None] * lean / par.clamp_min(0.2)[:, None]
    norm = shift.norm(dim=-1, keepdim=True)
    shift = shift * (max_shift / norm.clamp_min(max_shift))
    t2 = torch.where(ok[:, None], t2 + shift, t2)
    return R2, t2
