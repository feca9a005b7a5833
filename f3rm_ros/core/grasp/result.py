"""What the planner returns: best-first grasps in the world frame, or no grasp and the reason why."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Grasp", "PlanResult"]


@dataclass
class Grasp:
    """One planned grasp.

    Attributes:
        T_world_gripper: (4, 4) pose of the gripper frame (gripper.py convention) in the world frame.
        score: higher is better: minus the final language-weighted pose loss (about 1 for a perfect
            match of the task's demonstrations, times the language weight in [0, 2]).
        width: finger opening to use, metres.
        task: name of the task (demonstrations) used.
        rank: 0 for the best grasp.
        T_world_tool: (4, 4) the same grasp in the user's tool frame (``Gripper.to_tool``; equal to
            ``T_world_gripper`` with the default identity tool transform).
    """

    T_world_gripper: np.ndarray
    score: float
    width: float
    task: str
    rank: int
    T_world_tool: np.ndarray | None = None


@dataclass
class PlanResult:
    """Result of one query.

    Attributes:
        query: the text as planned (whitespace normalised).
        grasps: best first; empty when nothing was found.
        reason: "" when grasps were found, else a sentence saying why there is none.
        task: the retrieved task's name (None if planning stopped before retrieval).
        timing: seconds per stage ("surface", "language", "retrieval", "collision_before",
            "optimise", "collision_after", "total").
        stats: counts per stage (surface voxels, masked voxels, proposals, survivors, ...) and the best
            similarity of the query over the surface ("best_similarity").
    """

    query: str
    grasps: list[Grasp] = field(default_factory=list)
    reason: str = ""
    task: str | None = None
    timing: dict[str, float] = field(default_factory=dict)
    stats: dict = field(default_factory=dict)

    @property
    def found(self) -> bool:
        return len(self.grasps) > 0

    @property
    def best(self) -> Grasp | None:
        return self.grasps[0] if self.grasps else None
