"""The planner's own checks of a candidate grasp, shared by every source (demonstration or geometric).

A candidate passes when all of these hold on the field (world frame, metres):

1. **Clearance**: the whole gripper (fingers at the maximum opening, palm, wrist), each box grown by
   ``clearance_m`` on every side, has fewer than ``clearance_min_points`` occupied points (and none
   below the floor). The reference F3RM check ignores the fingers and tolerates 9 occupied points at
   7.5 mm; a trained field's surface is also off by about a millimetre, so without a margin grasps
   that graze an object by 0.5-1 mm were returned.
2. **Contact**: rays across both finger pads hit something, and neither finger starts inside it
   (an object wider than the opening fails here).
3. **Antipodal**: the estimated contact normals lie within ``antipodal_max_deg`` of the closing axis
   (:mod:`f3rm_ros.core.grasp.antipodal`), and a candidate that passes every check is estimated again with the
   denser ``check_grid`` and must lie within ``check_max_deg`` there (a pad on an edge or a curved wall's corner).
4. **On target**: both contact patches lie within ``contact_radius_m`` of a surface voxel the
   language selected, and (the planner's ``contact_test``) the field's features at both match the query
   nearly as well as the selected voxels do, so the fingers close on the queried thing (or part), not on
   a neighbour that touches it or on the body next to the handle.

Failures are counted by their first failing check, so a planner with no passing candidate can say why.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from f3rm_ros.core.fields.protocol import GraspField
from f3rm_ros.core.grasp.antipodal import AntipodalEstimate, AntipodalSettings, align_to_contacts, estimate_antipodal
from f3rm_ros.core.grasp.collision import in_collision, lowest_point_z

__all__ = ["VerifySettings", "Verdict", "Verifier", "REASONS", "explain_failures"]

# failure code -> what it means to a user
REASONS = {
    "collision": "the gripper would touch the scene (clearance margin included)",
    "no_contact": "nothing between the fingers, or a finger would start inside the object (wider than the "
                  "gripper opens)",
    "not_antipodal": "the contact surfaces are not opposite each other (would slip)",
    "off_target": "the fingers would close on something other than the queried thing",
}


@dataclass
class VerifySettings:
    clearance_m: float = 0.003
    clearance_min_points: int = 2
    collision_voxel_m: float = 0.0075  # alpha's delta in the collision checks
    collision_alpha: float = 0.2
    antipodal_max_deg: float = 15.0
    contact_radius_m: float = 0.012
    contact_depth_m: float = 0.003  # the contact test samples features this far inside the surface
    refine_iters: int = 2
    fine_check: bool = True  # the check without margin adds the fine whole-gripper points (fine_check_after)
    chunk_points: int = 2**18
    point_block: int = 0  # > 0: early-exit collision checks and adaptive blocks (PlannerConfig.early_exit)
    min_call: int = 0  # with point_block: each early-exit block queries at least this many points in all
    check_grid: tuple[int, int] = (0, 0)  # > 0: the grasps that pass also pass an estimate with this denser ray grid
    check_max_deg: float = 26.6  # ... its angle up to this


@dataclass
class Verdict:
    """Per-candidate outcome of :meth:`Verifier.verify` (tensors of length N, on the field's device)."""

    R: torch.Tensor  # [N, 3, 3] (refined)
    t: torch.Tensor  # [N, 3]
    passed: torch.Tensor  # [N] bool
    code: list[str]  # "" when passed, else the first failing check (REASONS)
    angle_deg: torch.Tensor  # [N]
    width: torch.Tensor  # [N] distance between the contact patches, metres (NaN without contact)
    contacts: torch.Tensor  # [N, 2, 3]
    stats: dict = field(default_factory=dict)


class Verifier:
    """Refines and checks candidate grasps of one gripper on one field (see the module docstring)."""

    def __init__(self, field: GraspField, clear_points: torch.Tensor, coarse_points: torch.Tensor,
                 fine_points: torch.Tensor, corners: torch.Tensor, antipodal: AntipodalSettings,
                 settings: VerifySettings, coarse_min_points: int, fine_min_points: int):
        self.field = field
        self.clear_points = clear_points  # gripper frame, boxes grown by the clearance
        self.coarse_points, self.fine_points = coarse_points, fine_points
        self.corners = corners
        self.antipodal = antipodal
        self.s = settings
        self.coarse_min, self.fine_min = coarse_min_points, fine_min_points

    def collides(self, R: torch.Tensor, t: torch.Tensor, floor: float | None, clearance: bool = True
                 ) -> torch.Tensor:  # [N] bool
        s = self.s
        if clearance:  # the floor is known exactly (and already a margin above the table): no clearance there
            return in_collision(self.field, R, t, self.clear_points, s.collision_voxel_m, s.collision_alpha,
                                s.clearance_min_points, s.chunk_points,
                                None if floor is None else floor - s.clearance_m, s.point_block, s.min_call)
        coll = in_collision(self.field, R, t, self.coarse_points, s.collision_voxel_m, s.collision_alpha,
                            self.coarse_min, s.chunk_points, floor, s.point_block, s.min_call)
        if not s.fine_check:
            return coll
        if s.point_block > 0:  # early exit: the fine check only for the poses the coarse one let through
            free = torch.nonzero(~coll)[:, 0]
            coll = coll.clone()
            coll[free] = in_collision(self.field, R[free], t[free], self.fine_points, s.collision_voxel_m,
                                      s.collision_alpha, self.fine_min, s.chunk_points, floor, s.point_block,
                                      s.min_call)
            return coll
        return coll | in_collision(self.field, R, t, self.fine_points, s.collision_voxel_m, s.collision_alpha,
                                   self.fine_min, s.chunk_points, floor)

    def first_free(self, R: torch.Tensor, t: torch.Tensor, order: torch.Tensor, need: int, block: int,
                   floor: float | None, clearance: bool) -> tuple[torch.Tensor, int, int]:
        """The first ``need`` entries of ``order`` whose poses are free (:meth:`collides`), checked in blocks of
        ``block`` until enough are found: the same as checking all and keeping the first ``need``, for a
        fraction of the field queries when the best candidates are free. With ``point_block`` (early exit) the
        first block is ``need`` poses and each next one what the free fraction so far says is still needed
        (at most ``block`` and twice the poses checked so far): the same poses, fewer checked. Returns
        (indices in ``order``'s order, poses checked, free ones found)."""
        free: list[torch.Tensor] = []
        n_free, checked = 0, 0
        while checked < order.numel() and n_free < need:
            size = block
            if self.s.point_block > 0:  # early exit (the CPU): blocks sized by the free fraction seen so far
                left = need - n_free  # (a free pose costs every point: at most twice the poses checked so far)
                size = min(block, left if not checked else max(left, min(2 * checked, math.ceil(
                    left * checked / max(n_free, 1)))))
            idx = order[checked:checked + size]
            ok = idx[~self.collides(R[idx], t[idx], floor, clearance)]
            free.append(ok)
            n_free += int(ok.numel())
            checked += int(idx.numel())
        return (torch.cat(free)[:need] if free else order[:0]), checked, n_free

    def refine(self, R: torch.Tensor, t: torch.Tensor, floor: float | None, known_free: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, AntipodalEstimate, int]:
        """Turn each closing axis onto its estimated contact normals (``align_to_contacts``); a step is kept
        only where it is free with the clearance margin and lowers the estimated angle. ``known_free`` [N] bool
        (optional, updated in place): poses known to be free with the clearance margin; a kept step is.

        Returns (R, t, estimate, improved)."""
        est = estimate_antipodal(self.field, R, t, self.antipodal)
        improved = 0
        for _ in range(self.s.refine_iters):
            R2, t2 = align_to_contacts(R, t, est)
            if floor is not None:  # keep the refined gripper above the floor, as the optimiser does
                low = lowest_point_z(R2, t2, self.corners)
                t2 = t2.clone()
                t2[:, 2] += torch.where(low < floor, floor + 1e-4 - low, torch.zeros_like(low))
            moved = (R2 - R).abs().amax(dim=(1, 2)) > 1e-6
            if not bool(moved.any()):
                break
            idx = torch.nonzero(moved)[:, 0]
            if self.s.point_block > 0:  # early exit: the collision check only where the angle drops (same steps)
                est2 = estimate_antipodal(self.field, R2[idx], t2[idx], self.antipodal)
                better = est2.angle_deg < est.angle_deg[idx]
                k = torch.nonzero(better)[:, 0]
                better[k] = ~self.collides(R2[idx[k]], t2[idx[k]], floor, clearance=True)
            else:
                coll = self.collides(R2[idx], t2[idx], floor, clearance=True)  # the final check's criterion
                est2 = estimate_antipodal(self.field, R2[idx], t2[idx], self.antipodal)
                better = ~coll & (est2.angle_deg < est.angle_deg[idx])
            if not bool(better.any()):
                break
            j = idx[better]
            improved += int(better.sum())
            if known_free is not None:
                known_free[j] = True
            R, t = R.clone(), t.clone()
            R[j], t[j] = R2[j], t2[j]
            for name in ("angle_deg", "angles_deg", "contacts", "normals", "valid"):
                getattr(est, name)[j] = getattr(est2, name)[better]
        return R, t, est, improved

    def verify(self, R: torch.Tensor, t: torch.Tensor, floor: float | None, target: torch.Tensor,
               refine: bool = True, contact_test: Callable[[torch.Tensor], torch.Tensor] | None = None,
               free_with_clearance: bool = False) -> Verdict:
        """Refine (optional) and check N candidates; ``target`` [K, 3]: the surface voxels the language selected;
        ``contact_test``: contacts [N, 2, 3] -> [N] bool, a further test that the contacts are on the queried
        thing (the planner's: the features there match the query about as well as the selected voxels do).
        ``free_with_clearance``: the caller already found every candidate free with the clearance margin
        (``first_free(clearance=True)``); with ``point_block`` (early exit) the final collision check then skips
        the poses the refinement left where they were (the same check of the same poses)."""
        n = R.shape[0]
        dev = t.device
        known = None
        if self.s.point_block > 0:
            known = torch.full((n,), bool(free_with_clearance), dtype=torch.bool, device=dev)
        if refine and n:
            R, t, est, improved = self.refine(R, t, floor, known)
        else:
            est, improved = estimate_antipodal(self.field, R, t, self.antipodal), 0
        if known is not None and n:
            coll = torch.zeros(n, dtype=torch.bool, device=dev)
            todo = torch.nonzero(~known)[:, 0]
            coll[todo] = self.collides(R[todo], t[todo], floor, clearance=True)
        else:
            coll = self.collides(R, t, floor, clearance=True) if n else torch.zeros(0, dtype=torch.bool, device=dev)
        contact = est.valid
        antipodal = est.angle_deg <= self.s.antipodal_max_deg
        if target.shape[0] and n:
            c = torch.nan_to_num(est.contacts, nan=1e6).reshape(-1, 3)
            d = torch.cdist(c, target).amin(dim=1).reshape(n, 2)
            on_target = (d <= self.s.contact_radius_m).all(dim=1)
            if contact_test is not None:  # a little inside the surface, where the features are the object's own
                inner = est.contacts - self.s.contact_depth_m * torch.nan_to_num(est.normals)
                on_target &= contact_test(inner)
        else:
            on_target = torch.zeros(n, dtype=torch.bool, device=dev)
        if self.s.check_grid[0] > 0 and self.s.check_grid[1] > 0 and n:
            # a pad resting on an edge or a curved wall's corner: the coarse rays can miss it (their patch takes
            # rays further in), the denser ones see it; only the grasps that pass everything else are estimated
            idx = torch.nonzero(~coll & contact & antipodal & on_target)[:, 0]
            if len(idx):
                dense = estimate_antipodal(self.field, R[idx], t[idx],
                                           dataclasses.replace(self.antipodal, ray_grid=tuple(self.s.check_grid)))
                antipodal[idx] = dense.valid & (dense.angle_deg <= self.s.check_max_deg)  # (its own tensor)
        codes = []
        for cl, co, an, ot in zip(coll.tolist(), contact.tolist(), antipodal.tolist(), on_target.tolist(),
                                  strict=True):
            codes.append("collision" if cl else "no_contact" if not co else "not_antipodal" if not an
                         else "off_target" if not ot else "")
        passed = ~coll & contact & antipodal & on_target
        width = (est.contacts[:, 0] - est.contacts[:, 1]).norm(dim=-1)
        stats = {"checked": n, "passed": int(passed.sum()), "refined": improved, "failures": dict(Counter(
            c for c in codes if c))}
        return Verdict(R, t, passed, codes, est.angle_deg, width, est.contacts, stats)


def explain_failures(counts: Counter, total: int, too_wide: int = 0, seeds: int = 0, pairs: int | None = None,
                     unfree: int = 0) -> str:
    """One sentence on why no candidate passed (most common failure first). ``too_wide`` of ``seeds`` surface
    points had no opposite face within the opening and the geometric search found ``pairs`` antipodal pairs:
    "wider than the gripper" is said only when nearly all had none and no pair was found at all (a flat thing
    on the table also has no opposite face along its top's normal, but its chords give pairs). ``unfree``: candidate
    poses that were formed but all collided before the checks (told apart from "none could be formed")."""
    wide = bool(seeds) and too_wide >= 0.8 * seeds and not pairs
    wide_msg = (f"it is wider than the gripper opens ({too_wide} of {seeds} surface points have no opposite face "
                f"within the opening, and no narrower pair was found)")
    if total == 0 and unfree and not wide:
        return (f"every one of the {unfree} candidate grasp poses would touch the scene (clearance margin included): "
                f"no collision-free approach")
    if total == 0:
        return "no candidate grasp could be formed" + (f": {wide_msg}" if wide else "")
    parts = [f"{k}: {v}" for k, v in counts.most_common()]
    head = f"none of {total} candidate grasps passes the checks ({', '.join(parts)})"
    main = counts.most_common(1)[0][0] if counts else ""
    if wide:
        return f"{head}: {wide_msg}"
    return f"{head}: mostly, {REASONS.get(main, main)}" if main else head

