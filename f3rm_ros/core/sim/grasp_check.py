"""Ground-truth check of a parallel-jaw grasp in a simulated scene (no physics).

Given a gripper pose ``T_world_grasp`` (gripper frame of :mod:`f3rm_ros.core.gripper`: origin between
the fingers, +z towards the wrist, fingers closing along y), the gripper model and a scene, the check
answers, in this order:

1. **Collision**: does any gripper box (fingers at the approach opening, palm, wrist) intersect the
   table or an object by more than ``penetration_tolerance_m``? Three tests, each exact or dense:
   the table is a box, tested against each gripper box with the separating-axis theorem; object
   surface points (sampled every ~2 mm) inside a gripper box; gripper volume points inside a
   watertight object component (open3d signed distance).
2. **Between the fingers**: rays from a grid on each finger's inner pad along the closing direction
   find what the closing fingers would touch first (object and part).
3. **Antipodal**: the mean outward normal over each finger's contact patch must lie within the
   friction cone (half-angle ``atan(friction_coefficient)``) around the finger's pushing direction
   (reversed), and both fingers must touch the same object.

The result carries a success flag and a human-readable reason.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from f3rm_ros.core.config import param
from f3rm_ros.core.geometry import is_rigid
from f3rm_ros.core.gripper import Gripper, box_grid_points
from f3rm_ros.core.sim.render import Renderer, rotate
from f3rm_ros.core.sim.scene import Scene

__all__ = ["GraspCheckConfig", "GraspCheckResult", "GraspChecker", "check_grasp", "obb_overlap_depth"]


@dataclass
class GraspCheckConfig:
    """Settings of the ground-truth grasp check."""

    opening_m: float = param(0.0, "finger opening while approaching; 0 = the gripper's maximum", range=(0.0, 1.0))
    penetration_tolerance_m: float = param(0.0005, "penetration depth tolerated before a collision counts",
                                           range=(0.0, 0.05))
    surface_spacing_m: float = param(0.002, "spacing of object surface samples", range=(2e-4, 0.05))
    gripper_spacing_m: float = param(0.005, "spacing of gripper volume samples", range=(5e-4, 0.05))
    friction_coefficient: float = param(0.5, "Coulomb friction coefficient (cone half-angle atan(mu))",
                                        range=(0.0, 10.0))
    pad_rays: tuple[int, int] = param((7, 15), "contact rays per finger pad (across width, along length)")
    contact_band_m: float = param(0.002, "rays hitting within this of the first contact form the patch",
                                  range=(0.0, 0.05))
    min_width_m: float = param(0.002, "narrowest object width the fingers can hold", range=(0.0, 0.1))


@dataclass
class GraspCheckResult:
    """Outcome of :meth:`GraspChecker.check`.

    Attributes:
        success: collision-free, something graspable between the fingers, antipodal.
        reason: one-line explanation ("ok: ..." on success).
        collisions: (gripper box, object name, part or None, penetration depth m) per colliding pair.
        object / part: what the fingers close on (None if nothing).
        between: {(object, part): number of pad rays hitting it} for everything between the fingers.
        contact_points: (2, 3) world contact patch centres (left, right) or None.
        contact_normals: (2, 3) mean outward normals at the contacts or None.
        normal_angles_deg: (left, right) angles between each contact normal and the reversed
            pushing direction of its finger (0 = perfectly antipodal).
        width_m: object width between the contacts (the closed opening).
    """

    success: bool
    reason: str
    collisions: list[tuple[str, str, str | None, float]] = field(default_factory=list)
    object: str | None = None
    part: str | None = None
    between: dict[tuple[str, str | None], int] = field(default_factory=dict)
    contact_points: np.ndarray | None = None
    contact_normals: np.ndarray | None = None
    normal_angles_deg: tuple[float, float] | None = None
    width_m: float | None = None


def obb_overlap_depth(T_a: np.ndarray, size_a: np.ndarray, T_b: np.ndarray, size_b: np.ndarray) -> float:
    """Separating-axis test of two oriented boxes (centre/axes from T (4, 4), edge lengths size (3,)).

    Returns:
        The smallest overlap over the 15 candidate axes in metres: > 0 means the boxes intersect
        (by at least roughly that depth), <= 0 means they are separated.
    """
    Ra, Rb = T_a[:3, :3], T_b[:3, :3]
    ha, hb = np.asarray(size_a) / 2, np.asarray(size_b) / 2
    d = T_b[:3, 3] - T_a[:3, 3]
    axes = [Ra[:, i] for i in range(3)] + [Rb[:, i] for i in range(3)]
    for i in range(3):
        for j in range(3):
            c = np.cross(Ra[:, i], Rb[:, j])
            n = np.linalg.norm(c)
            if n > 1e-9:
                axes.append(c / n)
    best = np.inf
    for ax in axes:
        ra = np.sum(ha * np.abs(Ra.T @ ax))
        rb = np.sum(hb * np.abs(Rb.T @ ax))
        best = min(best, ra + rb - abs(d @ ax))
        if best <= 0:
            return float(best)
    return float(best)


def _sample_surface(V: np.ndarray, T: np.ndarray, spacing: float,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted random surface points (about one per spacing^2) plus vertices; returns (points, triangle)."""
    a, b, c = V[T[:, 0]], V[T[:, 1]], V[T[:, 2]]
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    n = int(np.ceil(area.sum() / spacing ** 2))
    tri = rng.choice(len(T), size=n, p=area / area.sum()) if area.sum() > 0 else np.zeros(0, int)
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    pts = (1 - s)[:, None] * a[tri] + (s * (1 - r2))[:, None] * b[tri] + (s * r2)[:, None] * c[tri]
    # add the vertices too (sharp corners of boxes)
    vt = np.zeros(len(V), dtype=np.int64)
    vt[T[:, 0]] = np.arange(len(T))
    vt[T[:, 1]] = np.arange(len(T))
    vt[T[:, 2]] = np.arange(len(T))
    return np.concatenate([pts, V]), np.concatenate([tri, vt])


class GraspChecker:
    """Ground-truth grasp checks in one scene; build once, call :meth:`check` per pose."""

    def __init__(self, scene: Scene, gripper: Gripper | None = None, config: GraspCheckConfig | None = None,
                 renderer: Renderer | None = None, seed: int = 0):
        import open3d as o3d

        self.scene = scene
        self.gripper = gripper or Gripper()
        self.config = config or GraspCheckConfig()
        self.renderer = renderer or Renderer(scene)
        rng = np.random.default_rng(seed)
        c = self.config
        ents = scene.entities
        t = ents[0]
        lo, hi = t.mesh.bounds()
        self._table_T = np.eye(4)
        self._table_T[:3, 3] = (lo + hi) / 2
        self._table_size = hi - lo
        # per object: surface samples (world), their triangle, and SDF scenes of watertight components
        self._surf: list[tuple[np.ndarray, np.ndarray]] = []
        self._solids: list[list] = []
        self._spheres: list[tuple[np.ndarray, float]] = []  # bounding sphere per object, for culling
        for e in ents[1:]:
            Vw = e.world_vertices()
            centre = (Vw.min(0) + Vw.max(0)) / 2
            self._spheres.append((centre, float(np.linalg.norm(Vw - centre, axis=1).max())))
            self._surf.append(_sample_surface(Vw, e.mesh.triangles, c.surface_spacing_m, rng))
            solids = []
            for comp in e.mesh.components:
                tris = e.mesh.triangles[comp]
                om = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(Vw), o3d.utility.Vector3iVector(tris))
                om.remove_unreferenced_vertices()
                if not om.is_watertight():
                    continue
                rc = o3d.t.geometry.RaycastingScene()
                rc.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(om))
                solids.append((rc, comp))
            self._solids.append(solids)

    # ------------------------------------------------------------------------------------------
    def _part(self, ent_index: int, tri: int) -> str | None:
        m = self.scene.entities[ent_index].mesh
        p = int(m.tri_part[tri])
        return None if p < 0 else m.part_names[p]

    def collisions(self, T_world_grasp: np.ndarray, opening: float) -> list[tuple[str, str, str | None, float]]:
        """Colliding (gripper box, object, part, depth m) pairs, deepest first (see module docstring)."""
        import open3d as o3d

        c = self.config
        tol = c.penetration_tolerance_m
        out: dict[tuple[str, str, str | None], float] = {}
        for bname, T_g_box, size in self.gripper.boxes(opening):
            T_w_box = T_world_grasp @ T_g_box
            depth = obb_overlap_depth(T_w_box, size, self._table_T, self._table_size)
            if depth > tol:
                out[(bname, "table", None)] = depth
            R, t = T_w_box[:3, :3], T_w_box[:3, 3]
            half = size / 2
            vol_pts = rotate(box_grid_points(size, c.gripper_spacing_m), R) + t
            box_radius = float(np.linalg.norm(half))
            for oi, (pts, tris) in enumerate(self._surf):
                centre, radius = self._spheres[oi]
                if np.linalg.norm(centre - t) > radius + box_radius:
                    continue  # too far apart to touch
                ent = self.scene.entities[oi + 1]
                local = rotate(pts - t, R.T)
                pen = np.min(half - np.abs(local), axis=1)  # > 0 inside the box, = depth below its surface
                inside = pen > tol
                if inside.any():
                    j = int(np.argmax(np.where(inside, pen, -np.inf)))
                    key = (bname, ent.name, self._part(oi + 1, int(tris[j])))
                    out[key] = max(out.get(key, 0.0), float(pen[j]))
                for rc, comp in self._solids[oi]:
                    q = o3d.core.Tensor(vol_pts.astype(np.float32))
                    sdf = rc.compute_signed_distance(q).numpy()
                    if np.any(sdf < -tol):
                        j = int(np.argmin(sdf))
                        cp = rc.compute_closest_points(o3d.core.Tensor(vol_pts[j:j + 1].astype(np.float32)))
                        tri = int(comp[int(cp["primitive_ids"].numpy()[0])])
                        key = (bname, ent.name, self._part(oi + 1, tri))
                        out[key] = max(out.get(key, 0.0), float(-sdf[j]))
        return sorted(((k[0], k[1], k[2], d) for k, d in out.items()), key=lambda x: -x[3])

    def collides(self, T_world_grasp: np.ndarray, opening: float) -> bool:
        """``bool(self.collisions(T, opening))``, answered early: the table and the surface samples of every
        box first, the (costly) signed distances of the solids only when those find nothing."""
        import open3d as o3d

        tol = self.config.penetration_tolerance_m
        boxes = []
        for _, T_g_box, size in self.gripper.boxes(opening):
            T_w_box = T_world_grasp @ T_g_box
            if obb_overlap_depth(T_w_box, size, self._table_T, self._table_size) > tol:
                return True
            boxes.append((T_w_box[:3, :3], T_w_box[:3, 3], size))
        near = []
        for R, t, size in boxes:
            half = size / 2
            box_radius = float(np.linalg.norm(half))
            for oi, (pts, _) in enumerate(self._surf):
                centre, radius = self._spheres[oi]
                if np.linalg.norm(centre - t) > radius + box_radius:
                    continue
                if np.any(np.min(half - np.abs(rotate(pts - t, R.T)), axis=1) > tol):
                    return True
                near.append((oi, R, t, size))
        for oi, R, t, size in near:
            vol = o3d.core.Tensor((rotate(box_grid_points(size, self.config.gripper_spacing_m), R) + t)
                                  .astype(np.float32))
            for rc, _ in self._solids[oi]:
                if np.any(rc.compute_signed_distance(vol).numpy() < -tol):
                    return True
        return False

    def check(self, T_world_grasp: np.ndarray, opening: float | None = None) -> GraspCheckResult:
        """Check one grasp.

        Args:
            T_world_grasp: (4, 4) gripper pose in the world frame (gripper frame convention above).
            opening: approach opening in metres (default: config.opening_m, 0 meaning the maximum).

        Returns:
            :class:`GraspCheckResult`.
        """
        T = np.asarray(T_world_grasp, dtype=np.float64)
        if not is_rigid(T):
            raise ValueError("T_world_grasp must be a finite rigid 4x4 transform")
        c = self.config
        g = self.gripper
        if opening is None:
            opening = c.opening_m if c.opening_m > 0 else g.max_opening
        opening = g._check_opening(opening)
        cols = self.collisions(T, opening)
        if cols:
            b, o, p, d = cols[0]
            what = f"{o!r}" + (f" ({p})" if p else "")
            return GraspCheckResult(False, f"collision: {b} penetrates {what} by {d * 1000:.1f} mm", cols)

        # pad rays, gripper frame: left finger face y = +opening/2 pushes along -y; right the reverse
        fx = g.config.finger_size_m[0]
        zb, zt = g.finger_z_range
        nx, nz = c.pad_rays
        xs = (np.arange(nx) + 0.5) / nx * fx - fx / 2
        zs = zb + (np.arange(nz) + 0.5) / nz * (zt - zb)
        X, Z = np.meshgrid(xs, zs, indexing="ij")
        R, t = T[:3, :3], T[:3, 3]
        y_w = R[:, 1]
        sides = {}
        between: Counter = Counter()
        for side, sign in (("left", 1.0), ("right", -1.0)):
            o_g = np.stack([X.ravel(), np.full(X.size, sign * opening / 2), Z.ravel()], 1)
            o_w = rotate(o_g, R) + t
            d_w = np.broadcast_to(-sign * y_w, o_w.shape)
            hits = self.renderer.cast(o_w, d_w)
            ok = hits.hit & (hits.t <= opening)
            sides[side] = (o_w, d_w, hits, ok)
            for e, tri in zip(hits.entity[ok], hits.triangle[ok], strict=True):
                between[(self.scene.entities[e].name, self._part(int(e), int(tri)))] += 1
        between_d = dict(between)
        if not between_d:
            return GraspCheckResult(False, "empty: nothing between the fingers", between=between_d)
        contact = {}
        for side, (o_w, d_w, hits, ok) in sides.items():
            if not ok.any():
                return GraspCheckResult(False, f"one-sided: only the other finger touches something "
                                        f"({side} finger closes on nothing)", between=between_d)
            tmin = hits.t[ok].min()
            patch = ok & (hits.t <= tmin + c.contact_band_m)
            ents = Counter(hits.entity[patch].tolist())
            e = ents.most_common(1)[0][0]
            sel = patch & (hits.entity == e)
            parts = Counter(self._part(e, int(tr)) for tr in hits.triangle[sel])
            n = hits.normal[sel].mean(0)
            n /= max(np.linalg.norm(n), 1e-12)
            p = (o_w[sel] + hits.t[sel, None] * d_w[sel]).mean(0)
            push = d_w[0]
            if float(np.mean(hits.normal[sel] @ push)) > 0:  # first hits are back faces: finger starts inside
                return GraspCheckResult(False, f"too wide: the {side} finger starts inside "
                                        f"{self.scene.entities[e].name!r} (wider than the "
                                        f"{opening * 1000:.0f} mm opening?)", between=between_d)
            ang = math.degrees(math.acos(float(np.clip(n @ -push, -1.0, 1.0))))
            contact[side] = (e, parts.most_common(1)[0][0], p, n, ang, tmin)
        eL, pL, cL, nL, aL, tL = contact["left"]
        eR, pR, cR, nR, aR, tR = contact["right"]
        nameL, nameR = self.scene.entities[eL].name, self.scene.entities[eR].name
        width = opening - tL - tR
        res = GraspCheckResult(False, "", [], nameL, pL, between_d, np.stack([cL, cR]), np.stack([nL, nR]),
                               (aL, aR), float(width))
        if eL != eR:
            res.reason = f"two objects: the fingers close on {nameL!r} and {nameR!r}"
            res.object = res.part = None
            return res
        if eL == 0:
            res.reason = "table: the fingers close on the table"
            return res
        if width < c.min_width_m:
            res.reason = f"too thin: {width * 1000:.1f} mm between the contacts"
            return res
        cone = math.degrees(math.atan(c.friction_coefficient))
        part_txt = f" ({pL})" if pL else ""
        if max(aL, aR) > cone:
            res.reason = (f"not antipodal: contact normals {aL:.0f} and {aR:.0f} deg off the closing "
                          f"direction (friction cone {cone:.1f} deg) on {nameL!r}{part_txt}")
            return res
        if pR != pL:
            part_txt = f" ({pL}/{pR})"
        res.success = True
        res.reason = (f"ok: grasps {nameL!r}{part_txt}, width {width * 1000:.1f} mm, normals "
                      f"{aL:.0f}/{aR:.0f} deg within the {cone:.1f} deg friction cone")
        return res


def check_grasp(scene: Scene, T_world_grasp: np.ndarray, gripper: Gripper | None = None,
                config: GraspCheckConfig | None = None, opening: float | None = None) -> GraspCheckResult:
    """One-off :meth:`GraspChecker.check` (build a :class:`GraspChecker` to check many poses)."""
    return GraspChecker(scene, gripper, config).check(T_world_grasp, opening)
