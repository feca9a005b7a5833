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

Folded head (ours, :class:`FoldedTaskLoss`): when the field exposes its feature MLP's last hidden
activation ``h`` (width H, 64) and linear head ``f = W h + b`` (D = 768 for CLIP), the same loss is
computed in the H-dimensional hidden space: ``<alpha f, e> = alpha (h . W^T e + b . e)`` and
``|alpha f|^2 = alpha^2 (h^T (W^T W) h + 2 (W^T b) . h + |b|^2)``, with ``W^T e``, ``W^T W`` and ``W^T b``
made once per query. No [poses x points x D] tensor is formed (forward or backward): on the GPU the
768-wide head GEMMs and element-wise passes were most of a query's optimisation time.
:func:`pose_losses` without ``folded`` is the reference it is tested against.

Floor (ours): with ``floor_z`` set and the gripper's box corners given, after every step a pose whose
lowest corner is below the floor is lifted straight up (world z) until it touches the floor, so no
optimised gripper ends inside or under the table (see ``PlannerConfig.floor``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from f3rm_ros.core.fields.protocol import GraspField
from f3rm_ros.core.grasp.field_utils import field_has_feature_head, query_alpha_features, query_alpha_hidden
from f3rm_ros.core.grasp.proposals import quat_to_matrix_torch

__all__ = ["LanguageGuidance", "OptimizeSettings", "pose_losses", "optimize_poses", "lift_above_floor",
           "prune_schedule", "StaticPoseOptimizer", "FoldedTaskLoss"]


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


_EPS = 1e-8  # torch.nn.functional.cosine_similarity's eps on each norm


def _norm_from_square(sq: torch.Tensor) -> torch.Tensor:
    """max(sqrt(sq), eps) with a finite gradient (sq may round slightly below 0)."""
    return torch.sqrt(torch.clamp_min(sq, _EPS * _EPS))


@dataclass
class FoldedTaskLoss:
    """The task loss of :func:`pose_losses` with the field's linear feature head folded in (see the module
    docstring). Build with :meth:`build`; ``losses(alpha [B, Q], hidden [B, Q, H]) -> [B]``."""

    P: torch.Tensor  # [Q, H]  W^T e_q
    pe: torch.Tensor  # [Q]  b . e_q
    G: torch.Tensor  # [H, H]  W^T W
    u: torch.Tensor  # [H]  W^T b
    bb: float  # |b|^2
    e_norm: float  # max(|flatten(e)|, eps)
    guidance: LanguageGuidance | None
    wt: torch.Tensor | None = None  # [H]  W^T text
    bt: float = 0.0  # b . text
    t_norm: float = 1.0  # max(|text|, eps)

    @classmethod
    def build(cls, field: GraspField, task_emb: torch.Tensor,  # [Q, D]
              guidance: LanguageGuidance | None) -> FoldedTaskLoss | None:
        """None when the field does not expose its head (``query_feature_hidden`` and ``feature_head``), or when
        its features are no wider than its hidden layer (D <= H: nothing to save, e.g. the 64-d label
        features of the synthetic world; CLIP's D = 768 against H = 64)."""
        if not field_has_feature_head(field):
            return None
        W, b = field.feature_head  # [D, H], [D] | None
        if W.shape[0] <= W.shape[1]:
            return None
        E = task_emb.float().to(W.device)
        if b is None:
            b = torch.zeros(W.shape[0], device=W.device)
        if E.shape[-1] != W.shape[0]:
            raise ValueError(f"task embedding dimension {E.shape[-1]} != the field's feature dimension {W.shape[0]}")
        out = cls(P=E @ W, pe=E @ b, G=W.T @ W, u=W.T @ b, bb=float(b @ b),
                  e_norm=max(float(E.norm()), _EPS), guidance=guidance)
        if guidance is not None:
            t = guidance.text_embedding.float().to(W.device)
            out.wt, out.bt, out.t_norm = W.T @ t, float(b @ t), max(float(t.norm()), _EPS)
        return out

    def _sq_norm(self, h: torch.Tensor) -> torch.Tensor:  # [..., H] -> [...]
        """|W h + b|^2 = h^T G h + 2 u . h + |b|^2."""
        return ((h @ self.G) * h).sum(-1) + 2.0 * (h @ self.u) + self.bb

    def losses(self, alpha: torch.Tensor,  # [B, Q]
               hidden: torch.Tensor) -> torch.Tensor:  # [B, Q, H] -> [B]
        num = ((hidden * self.P).sum(-1) + self.pe) * alpha  # [B, Q]: alpha_q <f_q, e_q>
        sq = (alpha * alpha * self._sq_norm(hidden)).sum(-1)  # [B]: |alpha f|^2
        loss = -num.sum(-1) / (_norm_from_square(sq) * self.e_norm)
        g = self.guidance
        if g is not None:
            ma = alpha.mean(-1)  # [B]
            mh = (alpha[..., None] * hidden).mean(-2)  # [B, H]; mean_q alpha f = W mh + ma b
            dot = mh @ self.wt + ma * self.bt
            msq = ((mh @ self.G) * mh).sum(-1) + 2.0 * ma * (mh @ self.u) + ma * ma * self.bb
            sim = dot / (_norm_from_square(msq) * self.t_norm)
            span = g.sim_max - g.sim_min
            if span >= 1e-8:
                loss = torch.clamp(1.0 + (sim - g.sim_min) / span, min=0.0) * loss
        return loss


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
    fold_head: bool = True  # FoldedTaskLoss when the field exposes its feature head and D > H


def pose_losses(field: GraspField, t: torch.Tensor,  # [B, 3]
                p: torch.Tensor,  # [B, 4] scaled quaternions
                query_points: torch.Tensor,  # [Q, 3] gripper frame
                task_emb: torch.Tensor,  # [Q, C]
                guidance: LanguageGuidance | None, delta: float,
                folded: FoldedTaskLoss | None = None) -> torch.Tensor:  # [B]
    """Per-pose loss (differentiable w.r.t. ``t`` and ``p``). With ``folded`` (made from the same
    ``task_emb`` and ``guidance``) the loss is computed in the field's hidden feature space: the same
    value up to float rounding."""
    R = quat_to_matrix_torch(p)
    pts = torch.einsum("bij,qj->bqi", R, query_points) + t[:, None, :]
    b, q = pts.shape[:2]
    if folded is not None:
        alpha, hidden = query_alpha_hidden(field, pts.reshape(-1, 3), delta)
        return folded.losses(alpha.reshape(b, q), hidden.reshape(b, q, -1))
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


def _losses_chunked(field, t, p, qp, emb, guidance, delta, per, with_grad: bool, folded=None):
    losses, gt, gp = [], [], []
    for i in range(0, t.shape[0], per):
        tc, pc = t[i:i + per], p[i:i + per]
        if with_grad:
            tc = tc.detach().requires_grad_(True)
            pc = pc.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = pose_losses(field, tc, pc, qp, emb, guidance, delta, folded)
                g = torch.autograd.grad(loss.sum(), [tc, pc])
            gt.append(g[0])
            gp.append(g[1])
        else:
            with torch.no_grad():
                loss = pose_losses(field, tc, pc, qp, emb, guidance, delta, folded)
        losses.append(loss.detach())
    cat = lambda xs: torch.cat(xs) if xs else None  # noqa: E731
    return cat(losses), cat(gt), cat(gp)


def optimize_poses(field: GraspField, t0: torch.Tensor,  # [N, 3]
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
    folded = FoldedTaskLoss.build(field, task_emb, guidance) if s.fold_head else None
    mt, vt = torch.zeros_like(t), torch.zeros_like(t)
    mp, vp = torch.zeros_like(p), torch.zeros_like(p)
    b1, b2 = s.betas
    per = max(1, s.chunk_points // max(1, query_points.shape[0]))
    info: dict = {"initial": int(t.shape[0]), "pruned": []}
    for step in range(s.num_steps):
        if t.shape[0] == 0:
            break
        losses, gt, gp = _losses_chunked(field, t, p, query_points, task_emb, guidance, s.delta, per, True, folded)
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
    info["folded"] = folded is not None
    final, _, _ = _losses_chunked(field, t, p, query_points, task_emb, guidance, s.delta, per, False, folded)
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

    def __init__(self, field: GraspField, query_points: torch.Tensor, task_emb: torch.Tensor,
                 guidance: LanguageGuidance | None, s: OptimizeSettings, body_corners: torch.Tensor | None = None,
                 use_graph: bool = False, warmup_steps: int = 3):
        self.field, self.qp, self.emb, self.guidance, self.s = field, query_points, task_emb, guidance, s
        self.folded = FoldedTaskLoss.build(field, task_emb, guidance) if s.fold_head else None
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
                loss = pose_losses(self.field, tc, pc, self.qp, self.emb, self.guidance, s.delta, self.folded)
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
        self.do_prune = torch.tensor([a != b for a, b in zip(sched, prev, strict=True)] + [False], dtype=torch.bool,
                                     device=dev)
        self.step_idx = torch.zeros((), dtype=torch.long, device=dev)
        pruned = [(i, k) for i, (k, p) in enumerate(zip(sched, prev, strict=True)) if k != p]
        info: dict = {"initial": n, "pruned": pruned,
                      "steps": s.num_steps, "graph": False, "folded": self.folded is not None}
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
                for x, x0 in zip(self._state(), snapshot, strict=True):
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
        final, _, _ = _losses_chunked(self.field, t, p, self.qp, self.emb, self.guidance, s.delta, per, False,
                                      self.folded)
        if final is None:
            final = torch.zeros(0, device=dev)
        q = p / p.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return t, q, final, info
