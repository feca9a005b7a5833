"""Judging planner results on generated scenes (:func:`judge_query`) and finding a ground-truth grasp per
query (:func:`find_witnesses`), for :mod:`f3rm_ros.core.sim.families`."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from f3rm_ros.core.sim.families.catalogue import FAMILIES, Family
from f3rm_ros.core.sim.families.placement import _hull2d, _rz
from f3rm_ros.core.sim.families.records import GeneratedScene, SceneQuery


def judge_query(checker: Any, result: Any, query: SceneQuery) -> tuple[bool, str]:
    """Is a planner result right for ``query``?

    Args:
        checker: :class:`~f3rm_ros.core.sim.grasp_check.GraspChecker` of the generated scene.
        result: the planner's result (``found``, ``reason``, ``best.T_world_gripper``).
        query: one of :attr:`GeneratedScene.queries`.

    Returns:
        (success, detail). Where a grasp is expected, the top grasp must pass
        :func:`f3rm_ros.core.grasp.evaluate.judge` on ``query.objects`` / ``query.part``. For absent
        things returning no grasp is the only right answer. For a present object expected to be too
        big for the gripper, no grasp is right, and so is a grasp that passes the ground-truth check
        (``expect_grasp`` is a width rule; an object 75-80 mm wide may still fit).
    """
    from f3rm_ros.core.grasp.evaluate import judge

    if query.expect_grasp:
        return judge(checker, result, tuple(query.objects), query.part)
    if not result.found:
        return True, f"no grasp, as expected: {result.reason}"
    if not query.present:
        return False, f"returned a grasp for {query.text!r}, which is not in the scene"
    ok, detail = judge(checker, result, tuple(query.objects), query.part)
    return ok, ("feasible after all: " if ok else "returned an infeasible grasp where none was expected: ") + detail


def _candidate_grasps(obj: Any, family: Family) -> list[np.ndarray]:
    """Gripper poses (world) worth trying on one object, for :func:`find_witnesses`.

    Canonical grasps (:mod:`f3rm_ros.core.sim.grasps`) turned about the object's vertical axis in 30 degree
    steps (round things) or about their own vertical by -30..30 degrees (handles, tools, boxes), plus
    top-down grasps across the narrow direction of the footprint at five points along it (what holds
    objects lying on their side).
    """
    from f3rm_ros.core.sim.grasps import canonical_grasps, grasp_frame

    out: list[np.ndarray] = []
    T = obj.T_world_obj
    round_family = family.lying == "revolved" or family.name in ("bowl", "plate", "ball")
    for c in canonical_grasps(obj):
        if round_family and c.part != "handle":
            for k in range(12):
                Rw = np.eye(4)
                Rw[:3, :3] = _rz(k * math.pi / 6)
                out.append(T @ Rw @ np.linalg.inv(T) @ c.T_world_grasp)
        else:
            for a in (0.0, -0.26, 0.26, -0.52, 0.52):  # turned about the world vertical through the grasp point
                Tt = c.T_world_grasp.copy()
                Tt[:3, :3] = _rz(a) @ Tt[:3, :3]
                out.append(Tt)
    V = obj.world_vertices()
    poly = _hull2d(V[:, :2])
    e = np.roll(poly, -1, 0) - poly
    n = np.stack([e[:, 1], -e[:, 0]], 1)
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-15)
    widths = (poly @ n.T).max(0) - (poly @ n.T).min(0)
    y = np.array([*n[int(np.argmin(widths))], 0.0])  # closing direction: across the narrow width
    along = np.cross([0.0, 0.0, 1.0], y)
    proj = V[:, :2] @ along[:2]
    centre = V.mean(0)
    top = V[:, 2].max()
    for f in (0.5, 0.3, 0.7, 0.15, 0.85):
        s_ = proj.min() + f * (proj.max() - proj.min())
        near = V[np.abs(proj - s_) < 0.01]
        if not len(near):
            continue
        h = near[:, 2].max()
        c = centre[:2] + (s_ - centre[:2] @ along[:2]) * along[:2]
        zc = max(min(h - 0.012, top / 2 + 0.01), 0.0105)
        out.append(grasp_frame(y, [0.0, 0.0, 1.0], [c[0], c[1], zc]))
    return out


def find_witnesses(gen: GeneratedScene, checker: Any | None = None) -> list[np.ndarray | None]:
    """Per query of ``gen``, a gripper pose (4, 4) that passes the ground-truth check for it, or None.

    A witness proves a present query has a feasible grasp in this very scene (clutter included); None
    only means none of the candidates (:func:`_candidate_grasps`) passed, not that no grasp exists.
    Absent queries always get None. Costs a few seconds per scene (hundreds of checks).
    """
    from f3rm_ros.core.sim.grasp_check import GraspChecker

    gc = checker or GraspChecker(gen.scene)
    results: dict[str, list[tuple[np.ndarray, Any]]] = {}
    out: list[np.ndarray | None] = []
    for q in gen.queries:
        w = None
        for name in q.objects if q.present else ():
            if name not in results:
                obj = gen.scene.object(name)
                fam = FAMILIES[obj.category]
                results[name] = [(T, None) for T in _candidate_grasps(obj, fam)]
            for k, (T, r) in enumerate(results[name]):
                if r is None:
                    r = gc.check(T)
                    results[name][k] = (T, r)
                if r.success and r.object in q.objects and (
                        q.part is None or any(o in q.objects and p == q.part for (o, p) in r.between)):
                    w = T
                    break
            if w is not None:
                break
        out.append(w)
    return out
