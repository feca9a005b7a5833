"""Settings and results of :func:`~f3rm_ros.core.sim.families.generate_scene`: :class:`GeneratorConfig`,
:class:`SceneQuery`, :class:`ObjectInfo`, :class:`GeneratedScene`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from f3rm_ros.core.config import param, to_dict
from f3rm_ros.core.sim.families.catalogue import DEFAULT_WEIGHTS, GENERATOR_VERSION
from f3rm_ros.core.sim.scene import Scene


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
