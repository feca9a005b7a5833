"""Issue 21, third round: the CPU preset's batched field walks against their plain references.

Each fast path here regroups the same field queries into fewer, larger calls (a field query costs ~1.6 ms on one
CPU thread before its first point), so its answers must equal the plain code's exactly: on an analytic field and
on the trained fixture (hash grids and MLPs, whose batched evaluation must not depend on which points share a
call). Seconds, no training, no ROS.
"""

from __future__ import annotations

import pytest
import torch

from f3rm_ros.core.grasp.geometric import GeometricSettings, geometric_candidates

from test_grasp_cpu_fast import (FIXTURE, BallOnTable, make_oracle_planners,  # noqa: E402, F401 - one_thread:
                                 one_thread)  # autouse fixture


def _same(a, b) -> None:
    assert a.stats == b.stats
    for name in ("R", "t", "prescore", "width", "seed_index"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def _ball_seeds(f: BallOnTable, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    d = torch.randn(n, 3, generator=g)
    d = d / d.norm(dim=-1, keepdim=True)
    p = f.c + d * f.r
    p[:, 2] = p[:, 2].clamp_min(0.004)
    return p


@pytest.mark.parametrize("block", [3, 8])
def test_geometric_candidates_with_batched_chords_match_plain_on_an_analytic_field(block):
    """All horizontal chords marched together (march_block > 0) give the same candidates as one chord direction
    at a time with every sample (march_block 0)."""
    f = BallOnTable()
    seeds = _ball_seeds(f, 40)
    plain = geometric_candidates(f, seeds, GeometricSettings(), torch.Generator().manual_seed(1))
    fast = geometric_candidates(f, seeds, GeometricSettings(march_block=block), torch.Generator().manual_seed(1))
    print(block, plain.stats)
    assert plain.stats["antipodal_pairs"] > 10
    _same(plain, fast)


class TrainedBall:
    """The ball on the table with its density modulated by the trained fixture's (~0.64 everywhere, varying in the
    fourth digit): every walk goes through the hash grids and MLPs, and their rounding decides the close calls."""

    def __init__(self):
        from f3rm_ros.core.field_api import load_trained_field

        self.trained = load_trained_field(FIXTURE, "cpu")
        self.ball = BallOnTable()
        self.device = self.trained.device

    def query_density(self, p):
        return self.ball.query_density(p) * self.trained.query_density(p) / 0.64


def test_geometric_candidates_with_batched_chords_match_plain_on_a_trained_field():
    f = TrainedBall()
    seeds = _ball_seeds(f.ball, 40)
    plain = geometric_candidates(f, seeds, GeometricSettings(), torch.Generator().manual_seed(1))
    fast = geometric_candidates(f, seeds, GeometricSettings(march_block=8), torch.Generator().manual_seed(1))
    print(plain.stats)
    assert plain.stats["antipodal_pairs"] > 10
    _same(plain, fast)


def _poses(n: int, centre: torch.Tensor, spread: float, seed: int):
    from f3rm_ros.core.grasp.proposals import quat_to_matrix_torch, random_quaternions

    q = random_quaternions(n, torch.Generator().manual_seed(seed))
    t = centre + torch.randn(n, 3, generator=torch.Generator().manual_seed(seed + 1)) * spread
    return quat_to_matrix_torch(q), t


@pytest.mark.parametrize("field_kind", ["analytic", "trained"])
def test_early_exit_collision_with_a_minimum_call_size_matches_plain(field_kind):
    """Early-exit collision checks whose blocks are widened to at least min_call points in all give the plain
    answer, from one pose (one block of every point) to many (min_call below the first block)."""
    from f3rm_ros.core.gripper import Gripper
    from f3rm_ros.core.grasp.collision import gripper_shell_points, in_collision

    f = BallOnTable() if field_kind == "analytic" else TrainedBall()
    c = f.c if field_kind == "analytic" else f.ball.c
    pts = torch.as_tensor(gripper_shell_points(Gripper(), 0.0075), dtype=torch.float32)
    R, t = _poses(80, c, 0.06, 11)
    for mp in (2, 10):
        plain = in_collision(f, R, t, pts, 0.0075, 0.2, mp, 2**15, 0.004)
        assert 5 < int(plain.sum()) < 75
        for n in (1, 3, 80):
            for min_call in (100, 4096, 10**6):
                fast = in_collision(f, R[:n], t[:n], pts, 0.0075, 0.2, mp, 2**15, 0.004, point_block=64,
                                    min_call=min_call)
                assert torch.equal(fast, plain[:n]), (mp, n, min_call)


@pytest.fixture(scope="module")
def oracle_clearance_first():
    """Planners on the oracle field of a built-in scene with demo_clearance_first, plain and with the CPU fast
    paths (the CPU preset with fewer steps and candidates: seconds)."""
    return make_oracle_planners({"plain": {"early_exit": False, "geometric_only_if_needed": False},
                                 "fast": {"early_exit": True, "geometric_only_if_needed": True}},
                                demo_clearance_first=True)


@pytest.mark.parametrize("query", ["mug handle", "bowl"])
def test_demo_clearance_first_fast_paths_match_plain_and_grasps_are_clear(oracle_clearance_first, query):
    """With demo_clearance_first the demonstration-guided candidates are chosen among the poses free with the
    clearance margin and not checked again; the CPU fast paths give the plain planner's grasps, and every returned
    grasp is free with the margin by a check of every point."""
    import numpy as np

    plain, fast = (oracle_clearance_first[k].plan(query) for k in ("plain", "fast"))
    assert plain.found and any(g.source == "demo" for g in plain.grasps), plain.reason
    assert len(plain.grasps) == len(fast.grasps) and plain.reason == fast.reason
    for g, h in zip(plain.grasps, fast.grasps, strict=True):
        assert np.allclose(g.T_world_gripper, h.T_world_gripper, atol=1e-6) and g.source == h.source
        assert g.score == pytest.approx(h.score, abs=1e-6)
    planner = oracle_clearance_first["plain"]
    T = torch.as_tensor(np.stack([g.T_world_gripper for g in plain.grasps]), dtype=torch.float32)
    coll = planner.verifier().collides(T[:, :3, :3], T[:, :3, 3], planner.floor_z(), clearance=True)
    print(query, [(g.source, round(g.score, 3)) for g in plain.grasps], plain.stats.get("final_checked"))
    assert not bool(coll.any())
