"""Poses and placement of :mod:`f3rm_ros.core.sim.families`: 2D footprints (convex hulls, overlap, width),
standing / lying rotations, and :func:`_place` (free, touching or near the edge; see the package docstring)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from f3rm_ros.core.sim.families.catalogue import Family
from f3rm_ros.core.sim.families.records import GeneratorConfig
from f3rm_ros.core.sim.meshes import PartMesh


# ----------------------------------------------------------------------------------- 2D footprints
def _hull2d(pts: np.ndarray) -> np.ndarray:  # [K, 2] counter-clockwise
    from scipy.spatial import ConvexHull

    return pts[ConvexHull(pts).vertices]


def _overlap_depth(a: np.ndarray, b: np.ndarray) -> float:
    """Separating-axis test of two convex CCW polygons: > 0 = overlap depth, <= 0 = separated by that much."""
    best = np.inf
    for poly in (a, b):
        e = np.roll(poly, -1, 0) - poly
        n = np.stack([e[:, 1], -e[:, 0]], 1)
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-15)
        pa, pb = a @ n.T, b @ n.T  # [Ka, E], [Kb, E]
        d = np.minimum(pa.max(0) - pb.min(0), pb.max(0) - pa.min(0))
        best = min(best, float(d.min()))
    return best


def _min_width(poly: np.ndarray) -> float:
    """Narrowest width of a convex polygon (rotating calipers over its edges)."""
    e = np.roll(poly, -1, 0) - poly
    n = np.stack([e[:, 1], -e[:, 0]], 1)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-15)
    p = poly @ n.T
    return float((p.max(0) - p.min(0)).min())


# ------------------------------------------------------------------------------------------- poses
def _rz(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _align(n: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Rotation taking unit vector ``n`` to unit vector ``target`` (Rodrigues)."""
    v = np.cross(n, target)
    c = float(n @ target)
    s = float(np.linalg.norm(v))
    if s < 1e-12:
        if c > 0:
            return np.eye(3)
        ax = np.cross(n, [1.0, 0.0, 0.0] if abs(n[0]) < 0.9 else [0.0, 1.0, 0.0])
        ax /= np.linalg.norm(ax)
        return 2 * np.outer(ax, ax) - np.eye(3)
    K = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + K + K @ K * ((1 - c) / s ** 2)


def _side_normal(mesh: PartMesh) -> tuple[float, float]:
    """Outward normal (n_r, n_z) of the longest side edge of the convex hull of the (r, z) silhouette.

    A revolved object lying on its side rests on that edge (a tapered glass on the line from its foot
    to its rim, a bottle on its body). Handles are left out (the body decides how it lies).
    """
    from scipy.spatial import ConvexHull

    keep = np.ones(len(mesh.triangles), bool)
    if "handle" in mesh.part_names:
        keep = mesh.tri_part != mesh.part_names.index("handle")
    v = mesh.vertices[np.unique(mesh.triangles[keep])]
    q = np.stack([np.hypot(v[:, 0], v[:, 1]), v[:, 2]], 1)
    q = np.concatenate([q, [[0.0, q[:, 1].min()], [0.0, q[:, 1].max()]]])
    h = ConvexHull(q)
    best, best_len = (1.0, 0.0), -1.0
    for simplex, eq in zip(h.simplices, h.equations, strict=True):
        nr, nz = eq[0], eq[1]
        if nr < 0.5:
            continue
        length = float(np.linalg.norm(q[simplex[0]] - q[simplex[1]]))
        if length > best_len:
            best, best_len = (float(nr), float(nz)), length
    return best


def _pose(fam: Family, mesh: PartMesh, params: dict, lying: bool, rng: np.random.Generator) -> np.ndarray:
    """Rotation (3, 3) of the object: random yaw, on its side / another face when ``lying``."""
    yaw = _rz(rng.uniform(-math.pi, math.pi))
    if not lying:
        return yaw
    if fam.lying == "revolved":
        nr, nz = _side_normal(mesh)
        if fam.name == "mug" and params.get("handle", True):
            phi = float(rng.choice([math.pi, math.pi / 2, -math.pi / 2]))  # handle up or sideways
        else:
            phi = rng.uniform(-math.pi, math.pi)
        n = np.array([nr * math.cos(phi), nr * math.sin(phi), nz])
        return yaw @ _align(n / np.linalg.norm(n), np.array([0.0, 0.0, -1.0]))
    if fam.lying == "box":
        a = float(rng.choice([math.pi / 2, -math.pi / 2]))
        c, s = math.cos(a), math.sin(a)
        r = (np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) if rng.random() < 0.5
             else np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]))
        return yaw @ r
    return yaw


@dataclass
class _Placed:
    family: Family
    colour: str
    params: dict
    oversize: bool
    lying: bool
    R: np.ndarray
    z: float
    poly: np.ndarray  # footprint at the origin, [K, 2]
    t: np.ndarray = field(default_factory=lambda: np.zeros(2))
    placement: str = "free"

    @property
    def footprint(self) -> np.ndarray:
        return self.poly + self.t


def _place(obj: _Placed, placed: list[_Placed], rng: np.random.Generator, cfg: GeneratorConfig) -> bool:
    """Find a position for ``obj`` (sets ``obj.t`` and ``obj.placement``); False if none was found."""
    lo = np.array([-cfg.x_limit_m, -cfg.y_limit_m]) - obj.poly.min(0)
    hi = np.array([cfg.x_limit_m, cfg.y_limit_m]) - obj.poly.max(0)
    if np.any(lo > hi):
        return False
    tol = 1e-4

    def free(t: np.ndarray) -> bool:
        if np.any(t < lo - 1e-12) or np.any(t > hi + 1e-12):
            return False
        return all(_overlap_depth(obj.poly + t, p.footprint) <= tol for p in placed)

    for _ in range(cfg.max_tries):
        u = rng.random()  # [0, clutter_prob): touching (if anything is placed), [1 - edge_prob, 1): edge
        if placed and u < cfg.clutter_prob:
            other = placed[int(rng.integers(len(placed)))]
            a = rng.uniform(-math.pi, math.pi)
            d = np.array([math.cos(a), math.sin(a)])
            far = float(np.linalg.norm(obj.poly, axis=1).max() + np.linalg.norm(other.poly, axis=1).max()) + 0.01
            s_in, s_out = 0.0, far  # overlap at s_in (both contain their origins), none at s_out
            for _ in range(30):
                s = 0.5 * (s_in + s_out)
                if _overlap_depth(obj.poly + other.t + s * d, other.footprint) > 0:
                    s_in = s
                else:
                    s_out = s
            t, kind = other.t + (s_out + 2e-5) * d, "touching"
        elif u >= 1.0 - cfg.edge_prob:
            t = rng.uniform(lo, hi)
            axis = int(rng.integers(2))
            side = hi if rng.random() < 0.5 else lo
            sign = 1.0 if side is hi else -1.0
            t[axis] = side[axis] - sign * rng.uniform(0.0, cfg.edge_margin_m)
            kind = "edge"
        else:
            t, kind = rng.uniform(lo, hi), "free"
        if free(t):
            obj.t, obj.placement = t, kind
            return True
    return False
