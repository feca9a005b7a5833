"""Randomised tabletop scenes from a seed, with the queries a user would type (issue 17).

:func:`generate_scene` turns ``(seed, GeneratorConfig)`` into a :class:`GeneratedScene`: a
:class:`~f3rm_ros.core.sim.scene.Scene` (the same one the YAML loader makes from
``GeneratedScene.yaml_text``), the per-object facts (family, pose kind, placement, graspability) and
a list of :class:`SceneQuery`. Same seed and config -> the same scene, bit for bit, in every process
(one ``numpy.random.default_rng(seed)`` drives everything; nothing iterates over a set).

Families (:data:`FAMILIES`; the category is the family name, the object name is ``"<colour> <family>"``)
    mug (handle or not, lid or not), cup, glass, bowl, plate, pot, bottle, can, jar, box (many aspect
    ratios), ball, screwdriver, hammer, spatula, brush, banana. Each samples its generator's parameters
    uniformly from ranges (:func:`family_table` lists them), a colour from a named palette (distinct
    within a family in one scene, so names are unique), a texture with probability
    ``texture_prob``, a specular strength, and fixed colours for metal parts.

Poses
    Standing with a random yaw; revolved objects (mug, cup, glass, bottle, can, jar) lie on their side with
    probability ``lying_prob`` (rotated so the longest side edge of their silhouette's convex hull
    rests on the table, rolled at random (a mug: handle up or sideways), then lowered until the lowest
    vertex is at z = 0); boxes lie on another face. Tools and the banana are made lying. Placement works
    on footprints (convex hull of the posed object's xy vertices, a conservative outline): a new object
    is put at random, or touching an object already placed (``clutter_prob``: moved in from a random
    direction until the footprints touch), or near the workspace edge (``edge_prob``: its footprint
    within ``edge_margin_m`` of a limit); footprints may touch but not overlap (0.1 mm), and all stay in
    ``|x| <= x_limit_m``, ``|y| <= y_limit_m`` (defaults 0.33 / 0.28, inside the planners' workspace
    box). An object that does not fit after ``max_tries`` positions is dropped.

Queries (:class:`SceneQuery`: text, kind, objects that count, part or None, expect_grasp)
    * ``object``: the category ("mug") when exactly one object has it;
    * ``attribute``: colour + category ("red mug"), every object;
    * ``part``: "<mug|red mug> <part>" for parts a gripper can hold (mug handle and rim, cup / glass /
      bowl / plate / pot rim, pot handle, bottle neck and cap, jar lid, screwdriver / hammer / spatula /
      brush handle, hammer head); rims, caps and lids only of standing objects, rims only where a pinch
      at full opening clears the far wall or the object is narrow enough to close around;
    * ``synonym``: one synonym per category ("cup" for mugs, "saucepan" for a pot), or colour +
      synonym when several objects share the category. Objects list colour-prefixed synonyms
      ("red cup"); a synonym is left out of a scene where another present family lists it or it
      names another present category, since the label vocabulary resolves a synonym to every
      object listing it;
    * ``absent``: families not in the scene and not easily confused with one that is (no "cup" when
      a mug is there), and other things ("teapot", "scissors"); none shares a word with the scene's
      names, categories, synonyms or parts, so the label features parse them as unknown.

    ``expect_grasp`` says whether a Panda grasp should exist: a part query always (parts are only
    queried where they are graspable); an object query when the object has a graspable part or its
    footprint is at most 74 mm wide in some direction (the Panda opens 80 mm). ``oversize_prob`` makes
    a deliberate small share of balls and boxes too big for the gripper (``expect_grasp: False``: the
    right answer is "no feasible grasp"); :func:`judge_query` judges a planner result accordingly.

Seed split (defined once, here)
    A seed is an evaluation seed when the first 8 bytes of SHA-256 of ``"f3rm_ros/sim-families/split:<seed>"``,
    read little-endian, are 0 mod 5 (about 20% of seeds); every other seed is a development seed.
    :func:`is_eval_seed`, :func:`dev_seeds`, :func:`eval_seeds`. Develop and tune on development
    seeds only; evaluation seeds are only ever reported in aggregate (success rates over many
    seeds), never looked at one by one or tuned on.

Files (``f3rm-sim generate --seed N --out DIR``; :func:`write_generated`): ``DIR/scene.yaml`` (loadable
by :func:`~f3rm_ros.core.sim.scene.load_scene`, so ``f3rm-sim render DIR/scene.yaml`` works) and
``DIR/queries.json`` (``{"seed", "split", "generator_version", "config", "scene", "objects",
"queries"}``; with ``--witness`` each query also gets ``witness``: a gripper pose that passes the
ground-truth check in this scene, found by :func:`find_witnesses`, or null). The label features need
``labels.dim`` >= #concepts + 4; a scene of 8 objects has at most about 50 concepts (43 seen over 400
seeds), within the default 64.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from f3rm_ros.core.config import param, to_dict
from f3rm_ros.core.geometry import matrix_to_quat
from f3rm_ros.core.sim.meshes import PartMesh, generate
from f3rm_ros.core.sim.scene import Scene, load_scene_text

__all__ = [
    "GENERATOR_VERSION", "FAMILIES", "PALETTE", "Family", "GeneratorConfig", "SceneQuery", "ObjectInfo",
    "GeneratedScene", "generate_scene", "write_generated", "load_queries", "judge_query", "family_table",
    "find_witnesses",
    "is_eval_seed", "split_of", "dev_seeds", "eval_seeds", "GRIPPER_MAX_WIDTH_M",
]

GENERATOR_VERSION = 1  # bump when the same (seed, config) gives a different scene
GRIPPER_MAX_WIDTH_M = 0.074  # widest footprint a Panda (80 mm opening) is expected to close around

# ---------------------------------------------------------------------------------------- seed split
_SPLIT_SALT = "f3rm_ros/sim-families/split"
_EVAL_MODULUS = 5  # 1 in 5 seeds is an evaluation seed


def is_eval_seed(seed: int) -> bool:
    """True for evaluation seeds (about 20%; rule in the module docstring). Report these only in aggregate."""
    h = hashlib.sha256(f"{_SPLIT_SALT}:{int(seed)}".encode()).digest()
    return int.from_bytes(h[:8], "little") % _EVAL_MODULUS == 0


def split_of(seed: int) -> str:
    """"eval" or "dev"."""
    return "eval" if is_eval_seed(seed) else "dev"


def _seeds(n: int, start: int, want_eval: bool) -> list[int]:
    out, s = [], int(start)
    while len(out) < n:
        if is_eval_seed(s) == want_eval:
            out.append(s)
        s += 1
    return out


def dev_seeds(n: int, start: int = 0) -> list[int]:
    """The first ``n`` development seeds >= ``start``: tune and look at these."""
    return _seeds(n, start, False)


def eval_seeds(n: int, start: int = 0) -> list[int]:
    """The first ``n`` evaluation seeds >= ``start``: only ever report results on them in aggregate."""
    return _seeds(n, start, True)


# ------------------------------------------------------------------------------------------- palette
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.80, 0.12, 0.10), "green": (0.16, 0.58, 0.22), "blue": (0.12, 0.28, 0.80),
    "yellow": (0.95, 0.80, 0.10), "orange": (0.95, 0.48, 0.08), "purple": (0.50, 0.22, 0.66),
    "pink": (0.95, 0.52, 0.70), "white": (0.93, 0.93, 0.90), "black": (0.09, 0.09, 0.10),
    "grey": (0.52, 0.52, 0.54), "brown": (0.45, 0.28, 0.15), "teal": (0.10, 0.55, 0.55),
    "clear": (0.82, 0.88, 0.90), "amber": (0.80, 0.50, 0.12),
}
_GENERAL = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "white", "black", "grey", "brown", "teal")
_METAL = (0.62, 0.62, 0.65)
_DARK_METAL = (0.33, 0.33, 0.36)


@dataclass(frozen=True)
class Family:
    """One object family.

    Attributes:
        name: the category ("mug"); also what a user types.
        generator: mesh generator of :mod:`f3rm_ros.core.sim.meshes`.
        ranges: generator parameter -> (low, high), sampled uniformly (``size`` of a box: see ``_box_size``).
        synonyms: other words for it ("cup"); objects list them colour-prefixed ("red cup").
        grasp_parts: parts a gripper can hold, queried as "<object> <part>".
        standing_only_parts: of those, the ones only queried on a standing object (rims, caps).
        lying: how it can lie: "none", "revolved" (on its side) or "box" (on another face).
        related: families a vision-language model would confuse with it (never absent queries then).
        colours: palette names it may take.
        part_colors: fixed colours of some parts (metal heads).
    """

    name: str
    generator: str
    ranges: dict[str, tuple[float, float]]
    synonyms: tuple[str, ...] = ()
    grasp_parts: tuple[str, ...] = ()
    standing_only_parts: tuple[str, ...] = ()
    lying: str = "none"
    related: tuple[str, ...] = ()
    colours: tuple[str, ...] = _GENERAL
    part_colors: dict[str, tuple[float, float, float]] = field(default_factory=dict)


FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("mug", "mug", {"radius": (0.034, 0.045), "height": (0.08, 0.11), "wall": (0.0035, 0.005),
                          "handle_radius": (0.024, 0.032)},
           ("cup", "coffee mug"), ("handle", "rim"), ("rim",), "revolved", ("cup", "glass")),
    Family("cup", "cup", {"radius": (0.03, 0.045), "height": (0.06, 0.10), "taper": (0.7, 1.0),
                          "wall": (0.003, 0.004)},
           ("tumbler", "teacup"), ("rim",), ("rim",), "revolved", ("mug", "glass")),
    Family("glass", "glass", {"radius": (0.028, 0.038), "height": (0.10, 0.16), "taper": (0.75, 0.95)},
           ("drinking glass", "tumbler"), ("rim",), ("rim",), "revolved", ("mug", "cup", "bottle"),
           ("clear", "blue", "green", "amber")),
    Family("bowl", "bowl", {"radius": (0.055, 0.09), "height": (0.04, 0.07), "wall": (0.004, 0.006),
                            "foot_radius": (0.025, 0.04)},
           ("dish",), ("rim",), ("rim",), "none", ("plate", "pot")),
    Family("plate", "plate", {"radius": (0.09, 0.125), "height": (0.02, 0.03), "lip": (0.01, 0.016)},
           ("dish", "dinner plate"), ("rim",), ("rim",), "none", ("bowl", "pot")),
    Family("pot", "pot", {"radius": (0.06, 0.085), "height": (0.06, 0.11), "handle_length": (0.10, 0.15),
                          "handle_rise": (0.08, 0.26)},
           ("saucepan", "cooking pot"), ("handle", "rim"), ("rim",), "none", ("bowl", "plate"),
           part_colors={"handle": (0.08, 0.08, 0.08)}),
    Family("bottle", "bottle", {"radius": (0.025, 0.038), "height": (0.17, 0.27), "shoulder": (0.5, 0.7),
                                "neck_radius": (0.010, 0.015), "neck_length": (0.03, 0.06),
                                "cap_height": (0.015, 0.022)},
           ("water bottle", "flask"), ("neck", "cap"), ("cap",), "revolved", ("can", "glass")),
    Family("can", "can", {"radius": (0.026, 0.036), "height": (0.08, 0.15)},
           ("soda can", "tin"), (), (), "revolved", ("bottle",)),
    Family("box", "box", {}, ("carton", "package"), (), (), "box"),
    Family("ball", "ball", {"radius": (0.025, 0.037)}, ("toy ball",), (), (), "none"),
    Family("screwdriver", "screwdriver", {"handle_length": (0.08, 0.12), "handle_radius": (0.012, 0.018),
                                          "shaft_length": (0.06, 0.12), "shaft_radius": (0.0025, 0.004)},
           ("tool",), ("handle",), (), "none", ("hammer", "spatula"),
           part_colors={"shaft": _METAL, "tip": _DARK_METAL}),
    Family("hammer", "hammer", {"handle_length": (0.2, 0.3), "handle_radius": (0.011, 0.015),
                                "head_length": (0.09, 0.13), "head_width": (0.022, 0.032),
                                "head_height": (0.022, 0.032)},
           ("mallet", "tool"), ("handle", "head"), (), "none", ("screwdriver", "spatula"),
           part_colors={"head": _DARK_METAL}),
    Family("spatula", "spatula", {"handle_length": (0.12, 0.18), "handle_width": (0.018, 0.026),
                                  "handle_height": (0.016, 0.022), "blade_length": (0.07, 0.11),
                                  "blade_width": (0.05, 0.08)},
           ("turner", "tool"), ("handle",), (), "none", ("screwdriver", "hammer"),
           part_colors={"blade": _METAL}),
    Family("jar", "jar", {"radius": (0.028, 0.039), "height": (0.07, 0.14), "lid_height": (0.012, 0.02)},
           ("glass jar", "container"), ("lid",), ("lid",), "revolved", ("can", "bottle", "glass"),
           part_colors={}),
    Family("brush", "brush", {"handle_length": (0.10, 0.16), "handle_width": (0.02, 0.026),
                              "handle_height": (0.017, 0.022), "head_length": (0.05, 0.08),
                              "head_width": (0.04, 0.06), "head_height": (0.022, 0.032),
                              "bristle_length": (0.012, 0.022)},
           ("scrubbing brush", "scrub brush"), ("handle",), (), "none", ("spatula",)),
    Family("banana", "banana", {"length": (0.16, 0.22), "radius": (0.015, 0.02), "bend": (0.6, 1.1)},
           ("fruit",), (), (), "none", (), ("yellow", "green", "brown")),
]}

DEFAULT_WEIGHTS: dict[str, float] = {"mug": 2.0, "cup": 1.0, "glass": 1.0, "bowl": 1.0, "plate": 0.7, "pot": 0.7,
                                     "bottle": 1.5, "can": 1.0, "box": 1.5, "ball": 1.0, "screwdriver": 1.0,
                                     "hammer": 1.0, "spatula": 1.0, "banana": 0.7, "jar": 0.8, "brush": 0.7}

# things in no family, for absent queries (no word shared with any family name, synonym or part)
OTHER_THINGS: tuple[str, ...] = ("teapot", "scissors", "apple", "phone", "wrench", "sponge", "stapler", "laptop",
                                 "pen", "remote control", "calculator", "fork", "spoon", "knife", "keyboard",
                                 "wallet", "pliers", "lemon", "candle", "watch")


# -------------------------------------------------------------------------------------------- config
@dataclass
class GeneratorConfig:
    """Settings of :func:`generate_scene` (what a scene family looks like)."""

    min_objects: int = param(1, "fewest objects in a scene", range=(1, 8))
    max_objects: int = param(8, "most objects in a scene (drawn uniformly between the two)", range=(1, 8))
    lying_prob: float = param(0.25, "probability that an object that can lie on its side (mug, cup, glass, "
                              "bottle, can) or on another face (box) does", range=(0.0, 1.0))
    clutter_prob: float = param(0.4, "probability that an object is placed touching one already placed",
                                range=(0.0, 1.0))
    edge_prob: float = param(0.15, "probability that an object is placed near the workspace edge", range=(0.0, 1.0))
    edge_margin_m: float = param(0.02, "'near the edge': footprint within this of a workspace limit, metres",
                                 range=(0.0, 0.2))
    x_limit_m: float = param(0.33, "objects stay within |x| <= this, metres (table is 1.0 x 0.8)",
                             range=(0.1, 0.5))
    y_limit_m: float = param(0.28, "objects stay within |y| <= this, metres", range=(0.1, 0.4))
    texture_prob: float = param(0.35, "probability that an object gets a procedural texture", range=(0.0, 1.0))
    oversize_prob: float = param(0.05, "probability that a ball or box is made too big for the gripper "
                                 "(its queries expect no feasible grasp)", range=(0.0, 1.0))
    family_weights: dict[str, float] = param(dict(DEFAULT_WEIGHTS), "relative frequency of each family "
                                             "(0 = never); keys are family names")
    absent_queries: int = param(4, "number of absent-thing queries per scene", range=(0, 20))
    max_tries: int = param(300, "placement attempts per object before it is dropped", range=(1, 100000))


# ----------------------------------------------------------------------------------------- records
QUERY_KINDS = ("object", "part", "attribute", "synonym", "absent")


@dataclass(frozen=True)
class SceneQuery:
    """A query a user would type, with what counts as a right answer.

    Attributes:
        text: the query ("red mug handle").
        kind: "object", "part", "attribute", "synonym" or "absent".
        objects: names of the objects a grasp may be on (empty for absent queries).
        part: the part that must be between the fingers, or None.
        expect_grasp: whether a grasp should exist; False for absent things and for objects too big
            for the gripper with no graspable part (then "no grasp" is the right answer).
    """

    text: str
    kind: str
    objects: tuple[str, ...] = ()
    part: str | None = None
    expect_grasp: bool = True

    @property
    def present(self) -> bool:
        return self.kind != "absent"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["objects"] = list(self.objects)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> SceneQuery:
        if d.get("kind") not in QUERY_KINDS:
            raise ValueError(f"query {d!r}: kind must be one of {QUERY_KINDS}")
        return SceneQuery(str(d["text"]), d["kind"], tuple(d.get("objects") or ()), d.get("part"),
                          bool(d.get("expect_grasp", True)))


@dataclass(frozen=True)
class ObjectInfo:
    """What the generator decided for one object (for breakdowns of results).

    Attributes:
        name, family, colour: "red mug", "mug", "red".
        pose: "standing" or "lying" (tools and the banana count as standing: it is how they are made).
        placement: "free", "touching" or "edge".
        oversize: made too big for the gripper on purpose.
        min_width_m: narrowest width of its footprint, metres.
        expect_grasp: an object query on it should find a grasp.
    """

    name: str
    family: str
    colour: str
    pose: str
    placement: str
    oversize: bool
    min_width_m: float
    expect_grasp: bool


@dataclass
class GeneratedScene:
    """Result of :func:`generate_scene`."""

    seed: int
    split: str
    scene: Scene
    objects: list[ObjectInfo]
    queries: list[SceneQuery]
    yaml_text: str
    config: GeneratorConfig

    @property
    def present_queries(self) -> list[SceneQuery]:
        return [q for q in self.queries if q.present]

    @property
    def absent_queries(self) -> list[SceneQuery]:
        return [q for q in self.queries if not q.present]

    def queries_json(self, witnesses: list[np.ndarray | None] | None = None) -> dict[str, Any]:
        """The ``queries.json`` content; with ``witnesses`` (:func:`find_witnesses`) each query gets a
        ``witness``: a 4x4 gripper pose (world) that passes the ground-truth check, or null."""
        qs = [q.to_dict() for q in self.queries]
        if witnesses is not None:
            for d, w in zip(qs, witnesses, strict=True):
                d["witness"] = None if w is None else np.round(w, 6).tolist()
        return {"seed": self.seed, "split": self.split, "generator_version": GENERATOR_VERSION,
                "config": to_dict(self.config), "scene": self.scene.name,
                "objects": [asdict(o) for o in self.objects], "queries": qs}


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


# ---------------------------------------------------------------------------------------- sampling
def _box_size(rng: np.random.Generator, oversize: bool) -> tuple[float, float, float]:
    """Box edge lengths: flat, tall, long or cube-like; one horizontal edge <= 72 mm unless ``oversize``."""
    if oversize:
        return tuple(float(round(x, 4)) for x in rng.uniform(0.09, 0.16, 3))  # type: ignore[return-value]
    kind = rng.choice(["tall", "flat", "long", "cube"])
    narrow = rng.uniform(0.03, 0.072)
    if kind == "tall":
        size = (narrow, rng.uniform(0.04, 0.12), rng.uniform(0.12, 0.25))
    elif kind == "flat":
        size = (narrow, rng.uniform(0.08, 0.2), rng.uniform(0.025, 0.05))
    elif kind == "long":
        size = (narrow, rng.uniform(0.15, 0.25), rng.uniform(0.03, 0.08))
    else:
        size = (narrow, narrow * rng.uniform(0.9, 1.1), narrow * rng.uniform(0.9, 1.1))
    size = list(size)
    if rng.random() < 0.5:
        size[0], size[1] = size[1], size[0]
    return tuple(float(round(x, 4)) for x in size)  # type: ignore[return-value]


def _sample_params(fam: Family, rng: np.random.Generator, cfg: GeneratorConfig) -> tuple[dict, bool]:
    params: dict[str, Any] = {k: float(round(rng.uniform(lo, hi), 4)) for k, (lo, hi) in fam.ranges.items()}
    oversize = False
    if fam.name == "box":
        oversize = bool(rng.random() < cfg.oversize_prob)
        params["size"] = _box_size(rng, oversize)
    elif fam.name == "ball" and rng.random() < cfg.oversize_prob:
        oversize = True
        params["radius"] = float(round(rng.uniform(0.045, 0.065), 4))
    elif fam.name == "mug":
        params["handle"] = bool(rng.random() < 0.85)
        params["lid"] = bool(params["handle"] and rng.random() < 0.2)
    elif fam.name == "bowl":
        params["foot_radius"] = min(params["foot_radius"], 0.55 * params["radius"])
    return params, oversize


def _material(fam: Family, colour: str, params: dict, rng: np.random.Generator,
              cfg: GeneratorConfig) -> dict[str, Any]:
    base = np.clip(np.array(PALETTE[colour]) + rng.uniform(-0.04, 0.04, 3), 0.0, 1.0)
    out: dict[str, Any] = {"color": [round(float(c), 3) for c in base]}
    if fam.name not in ("glass", "banana") and rng.random() < cfg.texture_prob:
        other = [c for c in _GENERAL if c != colour]
        c2 = PALETTE[str(rng.choice(other))] if rng.random() < 0.6 else tuple(min(1.0, 0.55 * c + 0.45) for c in base)
        out["texture"] = {"type": str(rng.choice(["checker", "stripes", "noise"])),
                          "color2": [round(float(c), 3) for c in c2],
                          "scale": round(float(rng.uniform(0.006, 0.03)), 4)}
    out["specular"] = round(float(rng.uniform(0.6, 0.9) if fam.name == "glass" else rng.uniform(0.1, 0.6)), 3)
    part_colors = {k: list(v) for k, v in fam.part_colors.items()}
    lids = {"bottle": ("cap",), "jar": ("lid",), "mug": ("lid",) if params.get("lid") else ()}
    for part in lids.get(fam.name, ()):  # caps and lids in another colour
        part_colors[part] = list(PALETTE[str(rng.choice([c for c in _GENERAL if c != colour]))])
    return out | ({"part_colors": part_colors} if part_colors else {})


def _pick_family(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = [n for n in FAMILIES if weights.get(n, 0.0) > 0]
    w = np.array([weights[n] for n in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=w / w.sum()))]


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


# ----------------------------------------------------------------------------------------- queries
def _part_ok(fam: Family, params: dict, part: str) -> bool:
    """Extra conditions on a graspable part: a rim a Panda can hold, a jar lid narrow enough."""
    if part == "rim":
        return not params.get("lid") and _rim_ok(fam, params)
    if fam.name == "jar" and part == "lid":
        return 2 * (params["radius"] - 0.002) <= GRIPPER_MAX_WIDTH_M
    return True


def _rim_ok(fam: Family, params: dict) -> bool:
    """Can a Panda at full opening hold this open object's rim: a pinch whose inner finger clears the far
    wall, or closing around the whole object near its top?"""
    import inspect

    from f3rm_ros.core.sim.grasps import RIM_PINCH_MIN_DIAMETER_M
    from f3rm_ros.core.sim.meshes import GENERATORS

    p = {k: v.default for k, v in inspect.signature(GENERATORS[fam.generator]).parameters.items()} | params
    slope = p["radius"] * (1 - p.get("taper", 1.0)) / p["height"]
    wall_c = p["radius"] - slope * 0.02 - p["wall"] / 2
    return 2 * wall_c - p["wall"] / 2 > RIM_PINCH_MIN_DIAMETER_M or 2 * p["radius"] <= GRIPPER_MAX_WIDTH_M


def _graspable_parts(o: _Placed, mesh_parts: list[str]) -> list[str]:
    """The parts of a placed object worth a part query: present, holdable in its pose."""
    out = []
    for part in o.family.grasp_parts:
        if part not in mesh_parts or (o.lying and part in o.family.standing_only_parts):
            continue
        if not _part_ok(o.family, o.params, part):
            continue
        out.append(part)
    return out


def _tails(phrase: str) -> list[str]:
    w = phrase.split()
    return [" ".join(w[k:]) for k in range(len(w))]


def _synonyms_for(present: list[str]) -> dict[str, list[str]]:
    """Per present family, the synonyms that stay unambiguous in this scene (see the module docstring)."""
    out = {}
    for f in present:
        keep = []
        for s in FAMILIES[f].synonyms:
            clash = False
            for g in present:
                if g == f:
                    continue
                other = {g} | {t for syn in FAMILIES[g].synonyms for t in _tails(syn)}
                if any(t in other for t in _tails(s)):
                    clash = True
            if not clash:
                keep.append(s)
        out[f] = keep
    return out


def _words(text: str) -> set[str]:
    out = set()
    for w in text.lower().replace("-", " ").split():
        out |= {w, w.rstrip("s"), w[:-2] if w.endswith("es") else w}
    return out


def _queries(objs: list[_Placed], names: list[str], infos: list[ObjectInfo], synonyms: dict[str, list[str]],
             rng: np.random.Generator, cfg: GeneratorConfig, mesh_parts: list[list[str]]) -> list[SceneQuery]:
    qs: list[SceneQuery] = []
    by_family: dict[str, list[int]] = {}
    for i, o in enumerate(objs):
        by_family.setdefault(o.family.name, []).append(i)
    for fname, idx in by_family.items():
        single = len(idx) == 1
        if single:
            i = idx[0]
            qs.append(SceneQuery(fname, "object", (names[i],), None, infos[i].expect_grasp))
        for i in idx:
            qs.append(SceneQuery(names[i], "attribute", (names[i],), None, infos[i].expect_grasp))
            for part in _graspable_parts(objs[i], mesh_parts[i]):
                qs.append(SceneQuery(f"{fname if single else names[i]} {part}", "part", (names[i],), part, True))
        if synonyms[fname]:
            syn = str(rng.choice(synonyms[fname]))
            if single:
                qs.append(SceneQuery(syn, "synonym", (names[idx[0]],), None, infos[idx[0]].expect_grasp))
            else:
                i = idx[int(rng.integers(len(idx)))]
                qs.append(SceneQuery(f"{objs[i].colour} {syn}", "synonym", (names[i],), None, infos[i].expect_grasp))
    # absent: families not related to any present one, then other things; no word shared with the scene
    present = set(by_family)
    used_words: set[str] = set()
    for i, o in enumerate(objs):
        for text in [names[i], o.family.name, *synonyms[o.family.name], *mesh_parts[i]]:
            used_words |= _words(text)
    fam_cands = [f for f in FAMILIES if f not in present and not (set(FAMILIES[f].related) & present)
                 and not any(f in FAMILIES[p].related for p in present)]
    other_cands = list(OTHER_THINGS)
    n_fam = min(len(fam_cands), (cfg.absent_queries + 1) // 2)
    picks = [fam_cands[int(k)] for k in rng.permutation(len(fam_cands))[:n_fam]]
    picks += [other_cands[int(k)] for k in rng.permutation(len(other_cands))]
    for text in picks:
        if len([q for q in qs if not q.present]) >= cfg.absent_queries:
            break
        if _words(text) & used_words:
            continue
        qs.append(SceneQuery(text, "absent", (), None, False))
    return qs


# ------------------------------------------------------------------------------------------- scene
def _scene_dict(seed: int, table: dict, objs: list[_Placed], names: list[str], materials: list[dict],
                synonyms: dict[str, list[str]]) -> dict[str, Any]:
    entries = []
    for o, name, mat in zip(objs, names, materials, strict=True):
        q = matrix_to_quat(o.R)
        params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in o.params.items()}
        e = {"name": name, "category": o.family.name,
             "synonyms": [f"{o.colour} {s}" for s in synonyms[o.family.name]],
             "mesh": {"generator": o.family.generator, "params": params},
             "pose": {"position": [float(o.t[0]), float(o.t[1]), float(o.z) + 0.0],
                      "quat_xyzw": [float(x) for x in q]}}
        e.update(mat)
        entries.append(e)
    return {"name": f"generated_{seed}",
            "description": f"f3rm_ros.core.sim.families seed {seed} (generator version {GENERATOR_VERSION}): "
                           + ", ".join(names),
            "table": table, "objects": entries}


def _table(rng: np.random.Generator) -> dict[str, Any]:
    woods = [((0.62, 0.47, 0.33), (0.50, 0.36, 0.24)), ((0.55, 0.42, 0.30), (0.42, 0.30, 0.20)),
             ((0.75, 0.62, 0.45), (0.62, 0.50, 0.35)), ((0.40, 0.28, 0.18), (0.30, 0.20, 0.12))]
    r = rng.random()
    if r < 0.7:
        c, c2 = woods[int(rng.integers(len(woods)))]
        tex = {"type": "wood", "color2": list(c2), "scale": round(float(rng.uniform(0.02, 0.04)), 4)}
    else:
        g = float(rng.uniform(0.55, 0.85))
        c = (g, g, g * 0.97)
        tex = {"type": "noise" if r < 0.9 else "checker", "color2": [round(0.8 * g, 3)] * 3,
               "scale": round(float(rng.uniform(0.01, 0.05)), 4)}
    return {"size": [1.0, 0.8, 0.04], "color": list(c), "texture": tex}


def generate_scene(seed: int, config: GeneratorConfig | None = None) -> GeneratedScene:
    """Make the scene and queries of ``seed`` (see the module docstring).

    Args:
        seed: any non-negative integer; :func:`split_of` tells whether it is a development or an
            evaluation seed.
        config: scene family settings (default :class:`GeneratorConfig`).

    Returns:
        :class:`GeneratedScene` with the scene, per-object facts, queries and the YAML text.

    Raises:
        ValueError: negative seed, unknown family in ``family_weights``, no family with positive
            weight, or min_objects > max_objects.

    Example::

        g = generate_scene(3)
        print(g.scene.name, [o.name for o in g.scene.objects])
        for q in g.queries:
            print(q.kind, q.text, q.objects, q.part, q.expect_grasp)
    """
    cfg = config or GeneratorConfig()
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    unknown = sorted(set(cfg.family_weights) - set(FAMILIES))
    if unknown:
        raise ValueError(f"family_weights: unknown famil(ies) {unknown}; valid ones are {list(FAMILIES)}")
    if any(float(w) < 0 for w in cfg.family_weights.values()) or not any(
            float(w) > 0 for w in cfg.family_weights.values()):
        raise ValueError("family_weights: weights must be >= 0 and at least one > 0")
    if cfg.min_objects > cfg.max_objects:
        raise ValueError(f"min_objects ({cfg.min_objects}) > max_objects ({cfg.max_objects})")
    rng = np.random.default_rng([GENERATOR_VERSION, int(seed)])
    table = _table(rng)
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    weights = {k: float(v) for k, v in cfg.family_weights.items()}
    objs: list[_Placed] = []
    used_colours: dict[str, list[str]] = {}
    mesh_parts: list[list[str]] = []
    for _ in range(n):
        for _attempt in range(3):
            fam = FAMILIES[_pick_family(rng, weights)]
            free_colours = [c for c in fam.colours if c not in used_colours.get(fam.name, [])]
            if not free_colours:
                continue
            colour = str(rng.choice(free_colours))
            params, oversize = _sample_params(fam, rng, cfg)
            mesh = generate(fam.generator, **params)
            lying = fam.lying != "none" and bool(rng.random() < cfg.lying_prob)
            R = _pose(fam, mesh, params, lying, rng)
            v = mesh.vertices @ R.T
            o = _Placed(fam, colour, params, oversize, lying, R, float(-v[:, 2].min()), _hull2d(v[:, :2]))
            if _place(o, objs, rng, cfg):
                objs.append(o)
                used_colours.setdefault(fam.name, []).append(colour)
                mesh_parts.append(list(mesh.part_names))
                break
    if not objs:  # cannot happen with the default limits (any single object fits the workspace)
        raise ValueError(f"seed {seed}: no object could be placed; check x_limit_m / y_limit_m")
    names = [f"{o.colour} {o.family.name}" for o in objs]
    counts: dict[str, int] = {}
    for o in objs:
        counts[o.family.name] = counts.get(o.family.name, 0) + 1
    infos = []
    for o, name, parts in zip(objs, names, mesh_parts, strict=True):
        width = _min_width(o.poly)
        expect = bool(_graspable_parts(o, parts) or width <= GRIPPER_MAX_WIDTH_M)
        infos.append(ObjectInfo(name, o.family.name, o.colour, "lying" if o.lying else "standing", o.placement,
                                o.oversize, round(width, 4), expect))
    synonyms = _synonyms_for(list(dict.fromkeys(o.family.name for o in objs)))
    materials = [_material(o.family, o.colour, o.params, rng, cfg) for o in objs]
    queries = _queries(objs, names, infos, synonyms, rng, cfg, mesh_parts)
    text = yaml.safe_dump(_scene_dict(seed, table, objs, names, materials, synonyms), sort_keys=False,
                          default_flow_style=None, width=120)
    header = (f"# generated by f3rm_ros.core.sim.families: seed {seed} ({split_of(seed)} split), "
              f"generator version {GENERATOR_VERSION}\n")
    scene = load_scene_text(header + text, file=f"<generated seed {seed}>")
    return GeneratedScene(int(seed), split_of(seed), scene, infos, queries, header + text, cfg)


# ------------------------------------------------------------------------------------------- files
def write_generated(gen: GeneratedScene, out_dir: str | Path,
                    witnesses: list[np.ndarray | None] | None = None) -> tuple[Path, Path]:
    """Write ``out_dir/scene.yaml`` and ``out_dir/queries.json`` atomically; returns both paths."""
    from f3rm_ros.core.io import atomic_write_json, atomic_write_text

    out = Path(out_dir)
    ys = atomic_write_text(out / "scene.yaml", gen.yaml_text)
    qs = atomic_write_json(out / "queries.json", gen.queries_json(witnesses))
    return ys, qs


def load_queries(path: str | Path) -> list[SceneQuery]:
    """The queries of a ``queries.json`` written by :func:`write_generated` (or its folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / "queries.json"
    with open(p) as f:
        data = json.load(f)
    return [SceneQuery.from_dict(d) for d in data["queries"]]


# ------------------------------------------------------------------------------------------ judging
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


def family_table() -> str:
    """One line per family: generator, parameter ranges, synonyms, graspable parts, how it lies."""
    lines = []
    for f in FAMILIES.values():
        rng = ", ".join(f"{k} {lo:g}-{hi:g}" for k, (lo, hi) in f.ranges.items()) or "size: flat/tall/long/cube"
        lines.append(f"{f.name:12s} generator {f.generator:12s} {rng}\n{'':12s} synonyms {list(f.synonyms)}, "
                     f"graspable parts {list(f.grasp_parts)}, lies: {f.lying}, colours {len(f.colours)}")
    return "\n".join(lines)
