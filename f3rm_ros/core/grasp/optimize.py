"""Batched 6-DoF pose optimisation against a task embedding (f3rm-method.md s. 4).

Each pose is a translation ``t`` (metres, world) and a scaled quaternion ``p = scale * q`` (x, y, z, w);
its rotation is that of ``p / |p|``. The loss of a pose is

    w_lang * -cos(flatten(alpha * features at the transformed query points), flatten(task embedding))

with ``w_lang = clamp(1 + (cos(mean_q(alpha * features), text) - s_min) / (s_max - s_min), 0)``.
Adam runs on all poses at once; the field is queried ``chunk_points`` points at a time and the
gradients of the chunks are accumulated, so memory is bounded whatever the number of poses.

Our Adam is a few tensor lines rather than ``torch.optim.Adam`` so that pruning can index its moment
estimates: survivors keep their momentum (the reference rebuilds the optimiser at every pruning,
restarting the moments of every pose each step while it prunes).

Floor (ours): with ``floor_z`` set and the gripper's box corners given, after every step a pose whose
lowest corner is below the floor is lifted straight up (world z) until it touches the floor, so no
optimised gripper ends inside or under the table (see ``PlannerConfig.floor``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from f3rm_ros.core.grasp.field_utils import query_alpha_features
from f3rm_ros.core.grasp.proposals import quat_to_matrix_torch

__all__ = ["LanguageGuidance", "OptimizeSettings", "pose_losses", "optimize_poses", "lift_above_floor",
           "prune_schedule", "StaticPoseOptimizer"]


@dataclass
class LanguageGuidance:
    """Text embedding and the similarity range (over the masked voxels) used to scale pose losses."""

    text_embedding: torch.Tensor  # [C] unit length
    sim_min: float
    sim_max: float

    def weight(self, feats: torch.Tensor) -> torch.Tensor:  # [B, Q, C] -> [B]
        s = torch.nn.functional.cosine_similarity(feats.mean(dim=1), self.text_embedding[None, :], dim=-1)
        span = self.sim_max - self.sim_min
        if span < 1e-8:
            return torch.ones_like(s)
        return torch.clamp(1.0 + (s - self.sim_min) / span, min=0.0)


@dataclass
class OptimizeSettings:
    num_steps: int = 200
    lr: float = 2e-3
    quat_scale: float = 0.1
    prune_after_step: int = 10
    keep_fraction: float = 0.975
    min_poses: int = 2048
    delta: float = 0.01
    chunk_points: int = 2**18
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    floor_z: float | None = None  # world z; None: no floor


def pose_losses(field: Any, t: torch.Tensor,  # [B, 3]
                p: torch.Tensor,  # [B, 4] scaled quaternions
                query_points: torch.Tensor,  # [Q, 3] gripper frame
                task_emb: torch.Tensor,  # [Q, C]
                guidance: LanguageGuidance | None, delta: float) -> torch.Tensor:  # [B]
    """Per-pose loss (differentiable w.r.t. ``t`` and ``p``)."""
    R = quat_to_matrix_torch(p)
    pts = torch.einsum("bij,qj->bqi", R, query_points) + t[:, None, :]
    b, q = pts.shape[:2]
    feats = query_alpha_features(field, pts.reshape(-1, 3), delta).reshape(b, q, -1)
    loss = -torch.nn.functional.cosine_similarity(feats.reshape(b, -1), task_emb.reshape(1, -1), dim=-1)
    if guidance is not None:
        loss = guidance.weight(feats) * loss
    return loss


def lift_above_floor(t: torch.Tensor,  # [N, 3] modified in place
                     p: torch.Tensor,  # [N, 4] (scaled) quaternions
                     corners: torch.Tensor,  # [K, 3] gripper frame
                     floor_z: float) -> torch.Tensor:  # [N] lift applied, metres
    """Raise each pose (world +z) just enough that its lowest corner is 0.1 mm above ``floor_z`` (the margin
    keeps rounding from putting a lifted fingertip a hair under the floor in the collision checks)."""
    from f3rm_ros.core.grasp.collision import lowest_point_z

    with torch.no_grad():
        lift = (floor_z + 1e-4 - lowest_point_z(quat_to_matrix_torch(p), t, corners)).clamp_min(0.0)
        lift = torch.where(lift > 1e-4, lift, torch.zeros_like(lift))  # only poses that were below
        t[:, 2] += lift
    return lift


def _losses_chunked(field, t, p, qp, emb, guidance, delta, per, with_grad: bool):
    losses, gt, gp = [], [], []
    for i in range(0, t.shape[0], per):
        tc, pc = t[i:i + per], p[i:i + per]
        if with_grad:
            tc = tc.detach().requires_grad_(True)
            pc = pc.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = pose_losses(field, tc, pc, qp, emb, guidance, delta)
                g = torch.autograd.grad(loss.sum(), [tc, pc])
            gt.append(g[0])
            gp.append(g[1])
        else:
            with torch.no_grad():
                loss = pose_losses(field, tc, pc, qp, emb, guidance, delta)
        losses.append(loss.detach())
    cat = lambda xs: torch.cat(xs) if xs else None  # noqa: E731
    return cat(losses), cat(gt), cat(gp)


def optimize_poses(field: Any, t0: torch.Tensor,  # [N, 3]
                   q0: torch.Tensor,  # [N, 4] unit quaternions (x, y, z, w)
                   query_points: torch.Tensor,  # [Q, 3]
                   task_emb: torch.Tensor,  # [Q, C]
                   guidance: LanguageGuidance | None,
                   s: OptimizeSettings,
                   body_corners: torch.Tensor | None = None  # [K, 3] gripper frame, for the floor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Optimise N poses with Adam, pruning to ``keep_fraction`` after ``prune_after_step`` while more than
    ``min_poses`` remain; with ``s.floor_z`` and ``body_corners``, poses are kept above the floor.

    Returns:
        (t [M, 3], unit quaternions [M, 4], final losses [M] evaluated at the returned poses, info dict
        with the number of poses after each pruning and the step count).
    """
    t = t0.detach().float().clone()
    if s.floor_z is not None and body_corners is not None:
        lift_above_floor(t, q0.detach().float(), body_corners, s.floor_z)
    p = (q0.detach().float() / q0.norm(dim=-1, keepdim=True).clamp_min(1e-12)) * s.quat_scale
    mt, vt = torch.zeros_like(t), torch.zeros_like(t)
    mp, vp = torch.zeros_like(p), torch.zeros_like(p)
    b1, b2 = s.betas
    per = max(1, s.chunk_points // max(1, query_points.shape[0]))
    info: dict = {"initial": int(t.shape[0]), "pruned": []}
    for step in range(s.num_steps):
        if t.shape[0] == 0:
            break
        losses, gt, gp = _losses_chunked(field, t, p, query_points, task_emb, guidance, s.delta, per, True)
        k = step + 1
        for x, g, m, v in ((t, gt, mt, vt), (p, gp, mp, vp)):
            g = torch.nan_to_num(g)
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            mhat = m / (1 - b1 ** k)
            vhat = v / (1 - b2 ** k)
            x.sub_(s.lr * mhat / (vhat.sqrt() + s.eps))
        if s.floor_z is not None and body_corners is not None:
            lift_above_floor(t, p, body_corners, s.floor_z)
        n = t.shape[0]
        if s.keep_fraction < 1.0 and n > s.min_poses and step > s.prune_after_step:
            keep = max(int(s.keep_fraction * n), s.min_poses)
            # the best `keep` by loss; ties go to the earlier pose (stable sort), and the survivors keep their
            # order, so the fixed-shape optimiser (which never reorders) cuts the same poses
            idx = torch.argsort(losses, stable=True)[:keep].sort().values
            t, p, mt, vt, mp, vp = (x[idx].contiguous() for x in (t, p, mt, vt, mp, vp))
            info["pruned"].append((step, keep))
    info["steps"] = s.num_steps
    final, _, _ = _losses_chunked(field, t, p, query_points, task_emb, guidance, s.delta, per, False)
    if final is None:
        final = torch.zeros(0, device=t.device)
    q = p / p.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return t, q, final, info


# --- fixed-shape variant (CUDA graphs) ---------------------------------------------------------------

def prune_schedule(n: int, s: OptimizeSettings) -> list[int]:
    """Number of poses alive after each step of :func:`optimize_poses` started with ``n`` poses (its
    pruning depends only on the count, so it is known in advance)."""
    out = []
    for step in range(s.num_steps):
        if s.keep_fraction < 1.0 and n > s.min_poses and step > s.prune_after_step:
            n = max(int(s.keep_fraction * n), s.min_poses)
        out.append(n)
    return out


class StaticPoseOptimizer:
    """:func:`optimize_poses` with fixed tensor shapes: pruned poses stay in the batch, frozen, behind an
    ``alive`` mask, and every per-step number (Adam's bias corrections, how many to keep, whether to
    prune) comes from tables on the device indexed by a step counter that the step itself advances.
    One step is then the same sequence of kernels every time, so on CUDA it is captured once in a CUDA
    graph and replayed (``use_graph``), removing the per-kernel launch cost that dominates a query's
    Adam loop (~100+ small kernels per step on a few thousand poses). Pruned poses still cost compute
    (the batch does not shrink), which is why the plain loop stays the CPU path.

    The result equals :func:`optimize_poses` (the same poses survive, up to ties in the pruning's
    ranking and float rounding); ``test_grasp_optimize_static.py`` compares them.
    """

    def __init__(self, field: Any, query_points: torch.Tensor, task_emb: torch.Tensor,
                 guidance: LanguageGuidance | None, s: OptimizeSettings, body_corners: torch.Tensor | None = None,
                 use_graph: bool = False, warmup_steps: int = 3):
        self.field, self.qp, self.emb, self.guidance, self.s = field, query_points, task_emb, guidance, s
        self.corners = body_corners
        self.use_graph = use_graph
        self.warmup_steps = max(1, int(warmup_steps))
        self.graph_info: dict = {}

    def _step(self) -> None:
        s = self.s
        k = self.step_idx
        per = max(1, s.chunk_points // max(1, self.qp.shape[0]))
        n = self.t.shape[0]
        gts, gps, losses = [], [], []
        for i in range(0, n, per):
            tc = self.t[i:i + per].detach().requires_grad_(True)
            pc = self.p[i:i + per].detach().requires_grad_(True)
            with torch.enable_grad():
                loss = pose_losses(self.field, tc, pc, self.qp, self.emb, self.guidance, s.delta)
                g = torch.autograd.grad(loss.sum(), [tc, pc])
            gts.append(g[0])
            gps.append(g[1])
            losses.append(loss.detach())
        gt, gp = (torch.cat(x) if len(x) > 1 else x[0] for x in (gts, gps))
        loss = torch.cat(losses) if len(losses) > 1 else losses[0]
        alive = self.alive[:, None]
        b1, b2 = s.betas
        k1 = k.view(1)  # index_select with a device index: no host sync (plain indexing would read it back)
        bc1, bc2 = self.bc1.index_select(0, k1), self.bc2.index_select(0, k1)
        for x, g, m, v in ((self.t, gt, self.mt, self.vt), (self.p, gp, self.mp, self.vp)):
            g = torch.nan_to_num(g)
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            upd = s.lr * (m / bc1) / ((v / bc2).sqrt() + s.eps)
            x.sub_(torch.where(alive, upd, torch.zeros_like(upd)))
        if s.floor_z is not None and self.corners is not None:
            lift_above_floor(self.t, self.p, self.corners, s.floor_z)
        masked = torch.where(self.alive, loss, torch.full_like(loss, float("inf")))
        rank = torch.empty_like(self.rank_buf)
        rank.scatter_(0, torch.argsort(masked, stable=True), self.arange)  # ties: the earlier pose, as the plain loop
        keep, prune = self.keep.index_select(0, k1), self.do_prune.index_select(0, k1)
        self.alive.copy_(torch.where(prune, rank < keep, self.alive))
        self.step_idx.add_(1)

    def _state(self) -> list[torch.Tensor]:
        return [self.t, self.p, self.mt, self.vt, self.mp, self.vp, self.alive, self.step_idx]

    def run(self, t0: torch.Tensor, q0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """Same contract as :func:`optimize_poses` (info also says whether a CUDA graph ran, or why not)."""
        s = self.s
        dev = t0.device
        n = t0.shape[0]
        self.t = t0.detach().float().clone()
        if s.floor_z is not None and self.corners is not None:
            lift_above_floor(self.t, q0.detach().float(), self.corners, s.floor_z)
        self.p = (q0.detach().float() / q0.norm(dim=-1, keepdim=True).clamp_min(1e-12)) * s.quat_scale
        self.mt, self.vt = torch.zeros_like(self.t), torch.zeros_like(self.t)
        self.mp, self.vp = torch.zeros_like(self.p), torch.zeros_like(self.p)
        self.alive = torch.ones(n, dtype=torch.bool, device=dev)
        self.arange = torch.arange(n, device=dev)
        self.rank_buf = torch.empty(n, dtype=torch.long, device=dev)
        sched = prune_schedule(n, s)
        prev = [n] + sched[:-1]
        b1, b2 = s.betas
        steps = range(1, s.num_steps + 1)
        self.bc1 = torch.tensor([1 - b1 ** k for k in steps] + [1.0], dtype=torch.float32, device=dev)
        self.bc2 = torch.tensor([1 - b2 ** k for k in steps] + [1.0], dtype=torch.float32, device=dev)
        self.keep = torch.tensor(sched + [n], dtype=torch.long, device=dev)
        self.do_prune = torch.tensor([a != b for a, b in zip(sched, prev)] + [False], dtype=torch.bool, device=dev)
        self.step_idx = torch.zeros((), dtype=torch.long, device=dev)
        info: dict = {"initial": n, "pruned": [(i, k) for i, (k, p) in enumerate(zip(sched, prev)) if k != p],
                      "steps": s.num_steps, "graph": False}
        if n == 0 or s.num_steps == 0:
            pass
        elif self.use_graph and dev.type == "cuda" and s.num_steps > self.warmup_steps:
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):  # warm-up steps are real steps, run eagerly on a side stream
                for _ in range(self.warmup_steps):
                    self._step()
            torch.cuda.current_stream(dev).wait_stream(side)
            snapshot = [x.clone() for x in self._state()]
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    self._step()
            except RuntimeError as e:  # the field's query cannot be captured (e.g. a host copy): run eagerly
                graph = None
                info["graph_error"] = str(e).splitlines()[0][:200]
                for x, x0 in zip(self._state(), snapshot):
                    x.copy_(x0)  # a failed capture may have left partial writes
            del snapshot
            remaining = s.num_steps - self.warmup_steps
            if graph is not None:
                for _ in range(remaining):
                    graph.replay()
                info["graph"] = True
                del graph
            else:
                for _ in range(remaining):
                    self._step()
        else:
            for _ in range(s.num_steps):
                self._step()
        idx = torch.nonzero(self.alive)[:, 0]
        t, p = self.t[idx], self.p[idx]
        per = max(1, s.chunk_points // max(1, self.qp.shape[0]))
        final, _, _ = _losses_chunked(self.field, t, p, self.qp, self.emb, self.guidance, s.delta, per, False)
        if final is None:
            final = torch.zeros(0, device=dev)
        q = p / p.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return t, q, final, info
