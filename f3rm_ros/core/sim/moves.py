"""Pick-and-place in the synthetic world (issue 18): move an object, find a free place for it.

``move_object(scene, name, T_world_new_old)`` returns a new :class:`~f3rm_ros.core.sim.scene.Scene` with that
object's pose changed (the scene passed in is untouched), so a :class:`~f3rm_ros.core.sim.render.Renderer` or a
:class:`~f3rm_ros.core.sim.grasp_check.GraspChecker` built on it sees the world after the move.
``free_place(scene, name, rng)`` draws a move on the table top (a turn about the vertical and a shift) whose
footprint keeps a clearance from every other object and stays inside a box: what a robot's place step does.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np

from f3rm_ros.core.sim.scene import Scene

__all__ = ["move_object", "free_place", "footprint"]


def move_object(scene: Scene, name: str, T_world_new_old: np.ndarray) -> Scene:
    """A copy of ``scene`` with object ``name`` moved by ``T_world_new_old`` (4x4 rigid, world frame): its new pose is
    ``T_world_new_old @ T_world_obj``. KeyError for an unknown name, ValueError for the table."""
    obj = scene.object(name)
    if obj is scene.table:
        raise ValueError("the table cannot be moved")
    T = np.asarray(T_world_new_old, dtype=np.float64)
    out = copy.copy(scene)
    out.objects = []
    for o in scene.objects:
        if o.name == name:
            o = copy.copy(o)
            o.T_world_obj = T @ obj.T_world_obj
        out.objects.append(o)
    return out


def footprint(scene: Scene, name: str) -> tuple[np.ndarray, float]:
    """(centre xy [2], radius) of the circle around the object's vertices seen from above."""
    V = scene.object(name).world_vertices()[:, :2]
    c = (V.min(0) + V.max(0)) / 2
    return c, float(np.linalg.norm(V - c, axis=1).max())


def free_place(scene: Scene, name: str, rng: np.random.Generator, box: Sequence[Sequence[float]] =
               ((-0.3, -0.25), (0.3, 0.25)), clearance_m: float = 0.04, min_shift_m: float = 0.12,
               tries: int = 500) -> np.ndarray:
    """A move ``T_world_new_old`` of object ``name`` about the vertical (yaw) plus a shift on the table, at least
    ``min_shift_m`` away from where it is, whose footprint circle stays in ``box`` (xy lo, hi) and ``clearance_m``
    from every other object's. RuntimeError when none is found in ``tries`` draws."""
    c, r = footprint(scene, name)
    others = [footprint(scene, o.name) for o in scene.objects if o.name != name]
    lo, hi = np.asarray(box[0], np.float64) + r, np.asarray(box[1], np.float64) - r
    if np.any(hi <= lo):
        raise RuntimeError(f"{name!r} (radius {r:.3f} m) does not fit in the box {box}")
    for _ in range(tries):
        new = rng.uniform(lo, hi)
        if np.linalg.norm(new - c) < min_shift_m:
            continue
        if all(np.linalg.norm(new - oc) >= r + orad + clearance_m for oc, orad in others):
            yaw = rng.uniform(-math.pi, math.pi)
            T = np.eye(4)
            T[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
            T[:2, 3] = new - T[:2, :2] @ c  # turn about the footprint's centre, then put it at ``new``
            return T
    raise RuntimeError(f"no free place for {name!r} found in {tries} tries")
