"""Antipodal estimate/refinement of grasps from the density alone (f3rm_ros/core/grasp/antipodal.py)."""

from __future__ import annotations

import numpy as np
import torch

from f3rm_ros.core.grasp.antipodal import (AntipodalSettings, align_to_contacts, estimate_antipodal,
                                           estimate_antipodal_reference)
from f3rm_ros.core.grasp.demos import gripper_pose


class BoxField:
    """A 3 x 6 x 10 cm box standing on z = 0 at the origin (smooth analytic density, no features): faces wide and
    tall enough that no pad ray of the grasps below, turned up to 40 deg, lands within the normals' finite-difference
    step of an edge, whatever the ray grid (3 x 7 or 7 x 15 on the 20 x 54 mm pad), so every contact is on a flat
    face. (On a 3 x 4 x 6 cm box the pad reaches the top and side edges: 3 x 7 rays happened to miss them, 7 x 15
    ones mix the edges' rounded normals in.)"""

    def __init__(self, half=(0.015, 0.03, 0.05)):
        self.h = torch.tensor(half)
        self.c = torch.tensor([0.0, 0.0, half[2]])
        self.device = torch.device("cpu")

    def query_density(self, p):
        q = (p - self.c).abs() - self.h
        sdf = q.clamp_min(0).norm(dim=-1) + q.amax(dim=-1).clamp_max(0)
        return 3000.0 * torch.sigmoid(-sdf / 0.0008)


def _poses(yaws_deg, z=0.04):
    Ts = []
    for yaw in yaws_deg:
        a = np.radians(yaw)
        Ts.append(gripper_pose([0.0, 0.0, z], [0, 0, -1], [np.cos(a), np.sin(a), 0.0]))  # close along x, turned
    return Ts


def test_estimate_matches_reference_and_sees_the_tilt():
    f = BoxField()
    s = AntipodalSettings()
    yaws = [0.0, 10.0, 25.0, 40.0]
    Ts = _poses(yaws)
    R = torch.tensor(np.stack([T[:3, :3] for T in Ts]), dtype=torch.float32)
    t = torch.tensor(np.stack([T[:3, 3] for T in Ts]), dtype=torch.float32)
    est = estimate_antipodal(f, R, t, s)
    ref = [estimate_antipodal_reference(f, T, s) for T in Ts]
    print("yaw", yaws, "estimated", est.angle_deg.numpy().round(2), "reference", [round(r[0], 2) for r in ref])
    assert bool(est.valid.all()) and all(r[1] for r in ref)
    assert np.allclose(est.angle_deg.numpy(), [r[0] for r in ref], atol=0.5)
    assert np.allclose(est.angle_deg.numpy(), yaws, atol=1.0)  # flat faces: the angle is the yaw error
    # a gripper closing on nothing, and one whose finger starts inside the box
    Tn = gripper_pose([0.2, 0.2, 0.04], [0, 0, -1], [1, 0, 0])
    Ti = gripper_pose([0.03, 0.0, 0.04], [0, 0, -1], [1, 0, 0])
    e2 = estimate_antipodal(f, torch.tensor(np.stack([Tn[:3, :3], Ti[:3, :3]]), dtype=torch.float32),
                            torch.tensor(np.stack([Tn[:3, 3], Ti[:3, 3]]), dtype=torch.float32), s)
    print("nothing between / starts inside:", e2.angle_deg.tolist(), e2.valid.tolist())
    assert e2.valid.tolist() == [False, False] and e2.angle_deg.tolist() == [180.0, 180.0]


def test_align_to_contacts_turns_the_closing_axis_onto_the_normals():
    f = BoxField()
    s = AntipodalSettings()
    Ts = _poses([15.0, -22.0, 0.0])
    R = torch.tensor(np.stack([T[:3, :3] for T in Ts]), dtype=torch.float32)
    t = torch.tensor(np.stack([T[:3, 3] for T in Ts]), dtype=torch.float32)
    est = estimate_antipodal(f, R, t, s)
    R2, t2 = align_to_contacts(R, t, est)
    est2 = estimate_antipodal(f, R2, t2, s)
    orth = (R2.transpose(1, 2) @ R2 - torch.eye(3)).abs().max()
    print("before", est.angle_deg.numpy().round(2), "after one alignment", est2.angle_deg.numpy().round(2),
          "orthonormality error", float(orth), "approach z", R2[:, :, 2].numpy().round(3).tolist())
    assert float(orth) < 1e-5 and bool((est2.angle_deg < 2.0).all())
    assert torch.allclose(R2[:, :, 2], R[:, :, 2], atol=1e-4)  # turned about the approach axis only


class BarField:
    """A round bar (radius 8 mm) along world x at height 5 cm, smooth analytic density."""

    device = torch.device("cpu")

    def query_density(self, p):
        sdf = torch.sqrt(p[:, 1] ** 2 + (p[:, 2] - 0.05) ** 2) - 0.008
        return 3000.0 * torch.sigmoid(-sdf / 0.0008)


def test_align_to_contacts_centres_a_round_bar():
    """Fingertips closing 5 mm above a bar's axis: only the lowest pad rays touch it and the normals lean up
    (not antipodal); the shift lowers the grasp onto the axis."""
    f = BarField()
    s = AntipodalSettings()
    low = s.pad_z[0] + (s.pad_z[1] - s.pad_z[0]) / s.ray_grid[1] / 2  # lowest ray row, gripper z
    T = gripper_pose([0.0, 0.0, 0.05 + 0.005 - low], [0, 0, -1], [0, 1, 0])
    R = torch.tensor(T[None, :3, :3], dtype=torch.float32)
    t = torch.tensor(T[None, :3, 3], dtype=torch.float32)
    est = estimate_antipodal(f, R, t, s)
    angles = [float(est.angle_deg[0])]
    for _ in range(3):
        R, t = align_to_contacts(R, t, est)
        est = estimate_antipodal(f, R, t, s)
        angles.append(float(est.angle_deg[0]))
    print("estimated angle per alignment step", [round(a, 1) for a in angles], "; lowest ray row above the "
          "bar's axis: 5 mm before, after:", round((float(t[0, 2]) + low - 0.05) * 1000, 1), "mm")
    assert angles[0] > 20.0 and angles[-1] < 5.0  # asin(5 / 12.6 mm surface radius) = 23 deg before
