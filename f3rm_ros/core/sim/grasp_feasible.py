"""Does any grasp of the queried object (or part) pass the ground-truth check? A search on the true meshes.

The scene generator decides whether an object query expects a grasp from the object's width alone
(:mod:`f3rm_ros.core.sim.families`): a 40 mm can pressed between a pot and a box, or a spatula lying flat
beside a tall bottle, is narrow enough, yet every pose of the Panda hand that holds it may touch a
neighbour. For such a query "no grasp" is the right answer, as it is for an object wider than the gripper
opens. This module searches for a witness: a pose that passes :meth:`GraspChecker.check` on the queried
object (and part), exactly the criterion a planner's top grasp is judged by.

Search (analytic, on the meshes; no field, no planner code):

1. contact points: the checker's surface samples of the queried objects (of the part, when one is named),
   a random subset, each with its triangle's outward normal ``n``;
2. opposite faces: a ray from just inside ``p`` along ``-n``; each hit within the gripper's opening where
   the ray leaves a solid (the hit's normal points along the ray) gives a pair (across a wall, and across
   the whole object); pairs whose normals are more than ``max_pair_deg`` from antipodal are dropped;
3. poses: the closing axis through the pair, the midpoint at each of ``depths`` along the fingers, the
   approach turned about the closing axis in ``approach_angles`` steps (the frames of the planner's
   geometric proposals, :func:`f3rm_ros.core.grasp.geometric.grasp_frames`);
4. each pose is checked with the ground-truth checker until one passes on the queried object (and part).

``feasible`` is a lower bound on what exists: a found witness proves a grasp exists; "none found" after
``max_checks`` poses means none was found with this sampling (the report says how many were tried).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from f3rm_ros.core.sim.grasp_check import GraspChecker

__all__ = ["FeasibilityResult", "find_feasible_grasp"]


@dataclass
class FeasibilityResult:
    feasible: bool
    T_world_gripper: np.ndarray | None  # the witness pose, when found
    pairs: int  # antipodal contact pairs found on the queried thing
    checked: int  # poses checked
    reason: str


def _triangle_normals(V: np.ndarray, F: np.ndarray) -> np.ndarray:
    n = np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]])
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def find_feasible_grasp(checker: GraspChecker, objects: tuple[str, ...], part: str | None = None, *,
                        max_points: int = 800, approach_angles: int = 12,
                        depths: tuple[float, ...] = (-0.007, -0.004, 0.0, 0.008, 0.016, 0.026),
                        max_pair_deg: float = 26.0,
                        max_checks: int = 30000, seed: int = 0) -> FeasibilityResult:
    """Search for a pose that passes ``checker.check`` with the fingers on one of ``objects`` (and ``part``).

    Args:
        checker: the scene's ground-truth checker (its gripper, opening and friction cone are the criterion).
        objects: names of the objects that count; part: the part that must be between the fingers, or None.
        max_points: contact points sampled on the queried surface.
        approach_angles / depths: poses per contact pair (depth: gripper z of the pair's midpoint, metres;
            the fingers span z -0.010 ... 0.044, so -0.007 holds a thin object at the fingertips).
        max_pair_deg: antipodality of a pair's normals before any pose is formed (the check's own cone
            decides in the end).
        max_checks: poses checked at most (a search that finds nothing says how many it tried).
        seed: sampling seed (the search is deterministic for a seed).
    """
    import torch

    from f3rm_ros.core.grasp.geometric import grasp_frames

    rng = np.random.default_rng(seed)
    scene = checker.scene
    opening = checker.config.opening_m or checker.gripper.max_opening
    pts, nrm = [], []
    for oi, ent in enumerate(scene.entities[1:]):
        if ent.name not in objects:
            continue
        P, tri = checker._surf[oi]
        if part is not None:
            keep = np.array([checker._part(oi + 1, int(t)) == part for t in tri], dtype=bool)
            P, tri = P[keep], tri[keep]
        if len(P):
            pts.append(P)
            nrm.append(_triangle_normals(ent.world_vertices(), ent.mesh.triangles)[tri])
    if not pts:
        return FeasibilityResult(False, None, 0, 0, f"no surface of {objects} ({part}) in the scene")
    P, N = np.concatenate(pts), np.concatenate(nrm)
    pick = rng.permutation(len(P))[:max_points]
    P, N = P[pick], N[pick]
    # opposite faces along -n: up to 4 hits per ray, each an exit face within the opening
    cos_pair = math.cos(math.radians(max_pair_deg))
    mids, axes = [], []
    origin = P - 1e-4 * N
    direction = -N
    travelled = np.zeros(len(P))
    alive = np.ones(len(P), dtype=bool)
    for _ in range(4):
        hits = checker.renderer.cast(origin, direction)
        t = travelled + hits.t
        ok = alive & np.isfinite(hits.t) & (t <= opening - 1e-3) & (t >= checker.config.min_width_m)
        exit_face = (hits.normal * direction).sum(1) >= cos_pair  # normal along the ray: leaving a solid
        sel = ok & exit_face
        q = origin + np.where(np.isfinite(hits.t), hits.t, 0.0)[:, None] * direction
        mids.append(((P + q) / 2)[sel])
        axes.append(N[sel])
        alive = ok
        travelled = t + 1e-4
        origin = q + 1e-4 * direction
    mid, y = np.concatenate(mids), np.concatenate(axes)
    if len(mid) == 0:
        return FeasibilityResult(False, None, 0, 0, "no antipodal contact pair within the opening")
    R, tr, _, _ = grasp_frames(torch.as_tensor(mid, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64),
                               torch.arange(approach_angles, dtype=torch.float64) * (2 * math.pi / approach_angles),
                               torch.as_tensor(depths, dtype=torch.float64))
    R, tr = R.numpy(), tr.numpy()
    order = rng.permutation(len(R))[:max_checks]
    for k, i in enumerate(order):
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R[i], tr[i]
        if checker.collides(T, opening):
            continue
        r = checker.check(T, opening)
        if not r.success or r.object not in objects:
            continue
        if part is not None and not any(o == r.object and p == part for (o, p) in r.between):
            continue
        return FeasibilityResult(True, T, len(mid), k + 1, r.reason)
    return FeasibilityResult(False, None, len(mid), len(order),
                             f"none of {len(order)} poses on {len(mid)} antipodal pairs passes the check")
