"""Known-good ("canonical") grasps of the procedural objects, for demonstrations and benchmarks.

For an object made by a generator of :mod:`f3rm_ros.core.sim.meshes`, :func:`canonical_grasps`
returns hand-designed Panda grasps in the world frame, named by task and part, e.g. the mug
handle from the side or the box from above. They use the gripper frame of
:mod:`f3rm_ros.core.gripper` (origin between the fingers ~1 cm above the fingertips, +z towards the
wrist, fingers closing along y). The tests check every one of them in the built-in scenes with the
ground-truth grasp check. Objects loaded from mesh files have none.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

from f3rm_ros.core.sim.meshes import GENERATORS
from f3rm_ros.core.sim.scene import Scene, SceneObject

__all__ = ["CanonicalGrasp", "canonical_grasps", "scene_grasps", "grasp_frame", "RIM_PINCH_MIN_DIAMETER_M"]

# a rim pinch at the Panda's full opening puts the inner finger (12 mm thick) 40-52 mm from the wall:
# the open object's inner diameter must be larger than this, with a little room
RIM_PINCH_MIN_DIAMETER_M = 0.056


@dataclass
class CanonicalGrasp:
    """A named grasp of one object.

    Attributes:
        object: object name; part: the part grasped; task: short task name ("handle_side").
        T_world_grasp: (4, 4) gripper pose in the world frame.
    """

    object: str
    part: str
    task: str
    T_world_grasp: np.ndarray


def grasp_frame(y_axis, z_axis, origin) -> np.ndarray:
    """Gripper pose (4, 4) from its closing axis y, its wrist axis z (unit, orthogonal) and origin."""
    y, z = np.asarray(y_axis, dtype=np.float64), np.asarray(z_axis, dtype=np.float64)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = np.cross(y, z), y, z, np.asarray(origin, dtype=np.float64)
    return T


def _params(obj: SceneObject) -> dict:
    fn = GENERATORS[obj.generator]
    p = {k: v.default for k, v in inspect.signature(fn).parameters.items()}
    p.update(obj.generator_params)
    return p


def canonical_grasps(obj: SceneObject) -> list[CanonicalGrasp]:
    """Hand-designed grasps of a procedural object (empty for mesh files and unknown generators).

    The grasps are designed for the object in its generator's own orientation (standing, or lying as
    the tools are made); an object turned over (its z axis not vertical, e.g. a bottle lying on its
    side in a generated scene) has none.
    """
    if obj.generator not in GENERATORS or obj.T_world_obj[2, 2] < 0.999:
        return []
    p = _params(obj)
    X, Y, Z = np.eye(3)
    g: list[tuple[str, str, np.ndarray]] = []  # (task, part, T_obj_grasp)
    if obj.generator == "mug":
        wall_c = p["radius"] - p["wall"] / 2
        if p["handle"]:  # at least 47 mm up, so the wrist stays above the table on short mugs
            g.append(("handle_side", "handle", grasp_frame(Y, X, [wall_c + p["handle_radius"], 0,
                                                                 max(p["height"] / 2, 0.047)])))
        if not p["lid"]:
            g.append(("rim_top", "rim", grasp_frame(X, Z, [-wall_c, 0, p["height"] - 0.02])))
    elif obj.generator in ("cup", "glass"):
        slope = p["radius"] * (1 - p["taper"]) / p["height"]
        wall_c = p["radius"] - slope * 0.02 - p["wall"] / 2
        if 2 * wall_c - p["wall"] / 2 > RIM_PINCH_MIN_DIAMETER_M:  # the inner finger clears the far wall
            g.append(("rim_top", "rim", grasp_frame(X, Z, [-wall_c, 0, p["height"] - 0.02])))
        if 2 * p["radius"] <= 0.074:  # narrow enough to close around near the top
            g.append(("top_down", "rim", grasp_frame(Y, Z, [0, 0, p["height"] - 0.004])))
    elif obj.generator == "plate":
        wall_c = p["radius"] - p["wall"] / 2
        g.append(("rim_top", "rim", grasp_frame(X, Z, [-wall_c, 0, p["height"] - p["lip"] + p["wall"] + 0.013])))
    elif obj.generator == "bottle":
        z_neck = p["height"] - p["cap_height"] - p["neck_length"]
        g.append(("neck_side", "neck", grasp_frame(Y, X, [0, 0, z_neck + p["neck_length"] / 2])))
        g.append(("cap_top", "cap", grasp_frame(Y, Z, [0, 0, p["height"] - 0.002])))
    elif obj.generator == "pot":
        a = p["handle_rise"]
        t = 0.6 * p["handle_length"]
        c = [p["radius"] - p["wall"] / 2 + t * np.cos(a), 0, p["height"] - 0.01 + t * np.sin(a)]
        g.append(("handle_top", "handle", grasp_frame(Y, Z, c)))
        g.append(("rim_top", "rim", grasp_frame(Y, Z, [0, -(p["radius"] - p["wall"] / 2), p["height"] - 0.02])))
    elif obj.generator == "hammer":
        x0 = -(p["handle_length"] + p["head_width"] / 2) / 2
        g.append(("handle_top", "handle", grasp_frame(Y, Z, [x0 + 0.4 * p["handle_length"], 0,
                                                            max(p["handle_radius"], 0.0105)])))
        g.append(("head_top", "head", grasp_frame(X, Z, [x0 + p["handle_length"], p["head_length"] / 2 - 0.018,
                                                        max(0.0105, p["head_height"] - 0.012)])))
    elif obj.generator == "spatula":
        x0 = -(p["handle_length"] + p["blade_length"]) / 2
        g.append(("handle_top", "handle", grasp_frame(Y, Z, [x0 + 0.5 * p["handle_length"], 0,
                                                            max(p["handle_height"] / 2, 0.0105)])))
    elif obj.generator == "jar":
        if 2 * (p["radius"] - 0.002) <= 0.074:
            g.append(("lid_top", "lid", grasp_frame(Y, Z, [0, 0, p["height"] - 0.002])))
        if 2 * p["radius"] <= 0.074:
            g.append(("top_down", "body", grasp_frame(Y, Z, [0, 0, p["height"] - p["lid_height"] - 0.015])))
    elif obj.generator == "brush":
        x0 = -(p["handle_length"] + p["head_length"]) / 2
        g.append(("handle_top", "handle", grasp_frame(Y, Z, [x0 + 0.45 * p["handle_length"], 0,
                                                            max(p["handle_height"] / 2, 0.0105)])))
    elif obj.generator == "banana":
        m = GENERATORS["banana"](**{k: p[k] for k in ("length", "radius", "bend", "segments")})
        v = m.vertices[np.abs(m.vertices[:, 0]) < 0.006]
        g.append(("middle_top", "body", grasp_frame(Y, Z, [0, v[:, 1].mean(), max(v[:, 2].max() / 2, 0.0105)])))
    elif obj.generator == "bowl":
        wall_c = p["radius"] - p["wall"] / 2
        g.append(("rim_top", "rim", grasp_frame(X, Z, [-wall_c, 0, p["height"] - 0.012])))
    elif obj.generator == "box":
        sx, sy, sz = p["size"]
        y_ax = Y if sy <= sx else X
        g.append(("top_down", "body", grasp_frame(y_ax, Z, [0, 0, sz - 0.025])))
    elif obj.generator == "ball":
        g.append(("top_down", "body", grasp_frame(Y, Z, [0, 0, p["radius"]])))
    elif obj.generator == "can":
        g.append(("top_down", "body", grasp_frame(Y, Z, [0, 0, p["height"] - 0.02])))
        g.append(("side", "body", grasp_frame(Y, X, [0, 0, p["height"] / 2])))
    elif obj.generator == "screwdriver":
        total = p["handle_length"] + p["shaft_length"] + p["tip_length"]
        x_h = -total / 2 + p["handle_length"] * 0.45
        g.append(("handle_top", "handle", grasp_frame(Y, Z, [x_h, 0, p["handle_radius"]])))
    return [CanonicalGrasp(obj.name, part, task, obj.T_world_obj @ T) for task, part, T in g]


def scene_grasps(scene: Scene) -> list[CanonicalGrasp]:
    """Canonical grasps of every object of a scene."""
    return [c for o in scene.objects for c in canonical_grasps(o)]
