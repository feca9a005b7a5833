"""What the planner returns: best-first grasps in the world frame, or no grasp and the reason why."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Grasp", "PlanResult", "PlanOptions", "SOURCES"]

SOURCES = ("demo", "geometric")


@dataclass
class Grasp:
    """One planned grasp.

    Attributes:
        T_world_gripper: (4, 4) pose of the gripper frame (gripper.py convention) in the world frame.
        score: higher is better, comparable within one result: ``quality`` (0..1) for a geometric grasp;
            for a demonstration-guided one ``PlannerConfig.demo_preference`` plus how well it matches the
            demonstrations (minus its language-weighted pose loss, clamped to [0, 2], / 2: F3RM's order) plus
            0.1 x ``quality``.
        width: finger opening to use, metres.
        task: name of the task (demonstrations) used; "" for a geometric grasp.
        rank: 0 for the best grasp.
        T_world_tool: (4, 4) the same grasp in the user's tool frame (``Gripper.to_tool``; equal to
            ``T_world_gripper`` with the default identity tool transform).
        source: "demo" (guided by the demonstrations of ``task``) or "geometric" (zero-shot antipodal).
        quality: the terms it was ranked by: ``antipodal_deg`` (estimated contact-normal angle, larger
            finger), ``contact_width_m`` (distance between the contact patches), ``contact_similarity``
            (similarity to the query at the contacts, 0..1), ``clearance_m`` (the margin it was checked
            with), ``quality`` (0..1, what the score adds besides the source preference).
    """

    T_world_gripper: np.ndarray
    score: float
    width: float
    task: str
    rank: int
    T_world_tool: np.ndarray | None = None
    source: str = "demo"
    quality: dict = field(default_factory=dict)


@dataclass
class PlanResult:
    """Result of one query.

    Attributes:
        query: the text as planned (whitespace normalised).
        grasps: best first; empty when nothing was found.
        reason: "" when grasps were found, else a sentence saying why there is none.
        task: the task of the best grasp (None when it is geometric or there is none).
        source: the best grasp's source ("demo" or "geometric"; None when there is none).
        timing: seconds per stage ("surface", "language", "retrieval", "geometric", "optimise",
            "verify", "total"; a stage that did not run is missing).
        stats: counts per stage (surface voxels, masked voxels, proposals, survivors, ...) and the best
            similarity of the query over the surface ("best_similarity"), failures of the final checks.
        heatmap_points, heatmap_similarity: the workspace surface points [M, 3] and their similarity to
            the query [M] (when ``PlanOptions.heatmap``; None otherwise).
    """

    query: str
    grasps: list[Grasp] = field(default_factory=list)
    reason: str = ""
    task: str | None = None
    timing: dict[str, float] = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    source: str | None = None
    heatmap_points: np.ndarray | None = None
    heatmap_similarity: np.ndarray | None = None

    @property
    def found(self) -> bool:
        return len(self.grasps) > 0

    @property
    def best(self) -> Grasp | None:
        return self.grasps[0] if self.grasps else None


@dataclass
class PlanOptions:
    """Per-request settings of :meth:`GraspPlanner.plan` (None = the planner's configuration).

    Attributes:
        negatives: negative phrases of the similarity and the language mask.
        max_grasps: best grasps returned (0 = all that pass).
        task: use only this task's demonstrations (name; raises ValueError when unknown).
        workspace: (lo, hi) world box, metres.
        sources: "auto", "demo" or "geometric" (``PlannerConfig.sources``).
        heatmap: also return the similarity of every workspace surface point (no extra field queries).
    """

    negatives: tuple[str, ...] | None = None
    max_grasps: int | None = None
    task: str | None = None
    workspace: tuple | None = None
    sources: str | None = None
    heatmap: bool = False
