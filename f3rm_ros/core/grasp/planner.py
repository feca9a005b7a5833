"""Language-guided 6-DoF grasp planner on a field (f3rm-method.md s. 3-4).

Pipeline of :meth:`GraspPlanner.plan`:

1. checks: empty text, text made only of negatives, field without features -> no grasp and a reason;
2. coarse proposals: alpha on a dense grid over the workspace box, surface voxels, voxel
   downsampling, statistical outlier removal (cached per field and workspace: it does not depend on
   the text);
3. language: pairwise-softmax similarity of each surface point to the query; if the best one is
   below ``min_similarity`` the thing is "not found" (ours: the reference always returns something);
   the language mask (softmax over [query + negatives] at temperature 0.001) keeps the query's voxels;
4. candidates from two sources (ours; the reference has only the first, for the one best task):

   * **demonstrations**: the tasks whose retrieval score reaches ``task_fit_min``, best first;
     ``rotations_per_voxel`` random rotations per voxel, poses in collision dropped, batched Adam with
     pruning towards the task's demonstrations, the best collision-free ones by loss. The next
     fitting task is tried (up to ``max_tasks_tried``) only while no candidate of the earlier ones
     passes the checks;
   * **geometry** (zero-shot, grasp/geometric.py): antipodal pairs found on the density inside the
     selected voxels, several approaches each, the collision-free ones best by pre-score;

5. the final checks of every candidate (grasp/verify.py): refinement onto the estimated contact
   normals, then clearance margin, contact, antipodality, fingers on the queried thing. Only grasps
   that pass are returned, ranked by quality (antipodality, similarity at the contacts) plus
   ``demo_preference`` for demonstration-guided ones; none passing -> no grasp, with the most common
   failure as the reason.

Everything runs on the field's device (CUDA or CPU); field queries are chunked (``chunk_points``)
so memory stays bounded.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from f3rm_ros.core.device import resolve_device
from f3rm_ros.core.fields.protocol import GraspField
from f3rm_ros.core.gripper import Gripper
from f3rm_ros.core.grasp.antipodal import AntipodalSettings
from f3rm_ros.core.grasp.collision import gripper_corner_points, gripper_shell_points, in_collision
from f3rm_ros.core.grasp.config import PlannerConfig
from f3rm_ros.core.grasp.geometric import GeometricSettings, geometric_candidates
from f3rm_ros.core.grasp.field_utils import field_has_features, query_features_chunked
from f3rm_ros.core.grasp.language import (encode_texts, is_negative_only, language_mask, normalise_query,
                                          pairwise_softmax, similarity_map)
from f3rm_ros.core.grasp.optimize import LanguageGuidance, OptimizeSettings, StaticPoseOptimizer, optimize_poses
from f3rm_ros.core.grasp.proposals import (alpha_grid, dense_grid, quat_to_matrix_torch, random_quaternions,
                                           remove_statistical_outliers, surface_voxels, voxel_downsample)
from f3rm_ros.core.grasp.result import SOURCES, Grasp, PlanOptions, PlanResult
from f3rm_ros.core.grasp.task import Task, adapt_task, retrieve_task, task_embedding
from f3rm_ros.core.grasp.verify import Verifier, VerifySettings, explain_failures

__all__ = ["GraspPlanner"]

# PlannerConfig.early_exit: the first block of gripper points of a collision check (then 2x, 4x, ...) and of
# samples along a geometric chord (the demo's bowl query with 32, 64, 256 points: 0.73, 0.77, 1.08 M field queries
# in the proposals' check, of which 249 free proposals x 1740 points are 0.43 M)
EARLY_EXIT_POINTS = 64
EARLY_EXIT_SAMPLES = 8
# and each block of such a check queries at least this many points in all: a field query costs ~1.6 ms on one CPU
# thread before its first point, so checks of a few poses went in many tiny queries (2 poses x 64 points); replayed
# on the occupancy of 5 CPU queries' checks (cost 1.6 ms a query + 1.1 us a point), 1024 / 2048 / 4096 cut the modelled
# time of the collision checks by 1 / 3 / 4 % (fewer queries, the same points within 1 %)
EARLY_EXIT_MIN_CALL = 4096


class GraspPlanner:
    """Plans grasps for text queries on one field.

    Args:
        field: a GraspField (core/fields/protocol.py), world frame.
        text_encoder: object with ``encode_text(list[str]) -> Tensor[N, D]`` (the feature extractor
            the field was distilled from), or None for a field without features.
        tasks: grasp tasks (e.g. :func:`f3rm_ros.core.grasp.task.load_default_tasks`).
        gripper: gripper model (default Panda).
        config: planner settings.

    Raises:
        ExtractorMismatchError: a task was made with another extractor than the field's.
    """

    def __init__(self, field: GraspField, text_encoder: Any, tasks: Sequence[Task], gripper: Gripper | None = None,
                 config: PlannerConfig | None = None, surface_cache: dict | None = None):
        self.field = field
        self.text_encoder = text_encoder
        self.config = config or PlannerConfig()
        self.gripper = gripper or Gripper()
        self.tasks = list(tasks)
        self.has_features = field_has_features(field)
        if self.has_features:
            self.tasks = [adapt_task(t, getattr(field, "extractor_info", None)) for t in self.tasks]
            for t in self.tasks:
                if t.feature_dim != int(field.feature_dim):
                    raise ValueError(f"task {t.name!r} has {t.feature_dim}-dim features, the field "
                                     f"{field.feature_dim}")
        dev = self.config.device
        self.device = torch.device(getattr(field, "device", "cpu")) if dev == "auto" else resolve_device(dev)
        c = self.config
        self._gripper_points = torch.as_tensor(
            gripper_shell_points(self.gripper, c.collision_voxel_m, include_fingers=c.collision_include_fingers),
            dtype=torch.float32, device=self.device)
        self._fine_points = torch.as_tensor(
            gripper_shell_points(self.gripper, c.fine_voxel_m, include_fingers=True),
            dtype=torch.float32, device=self.device)
        self._corners = torch.as_tensor(gripper_corner_points(self.gripper, include_fingers=True),
                                        dtype=torch.float32, device=self.device)
        # the workspace surface per (box, settings): it depends on the field only, so a planner for the same field
        # with other tasks or another gripper may share it (surface_cache=old.surface_cache)
        self.surface_cache: dict = {} if surface_cache is None else surface_cache
        self._clear_points: dict = {}

    def floor_z(self, workspace: tuple[Sequence[float], Sequence[float]] | None = None) -> float | None:
        """World z below which space counts as occupied (``PlannerConfig.floor``), None for no floor."""
        c = self.config
        if c.floor == "none":
            return None
        if c.floor == "floor_z_m":
            return float(c.floor_z_m)
        lo = workspace[0] if workspace is not None else c.workspace_min_m
        return float(lo[2])

    # --- surface -------------------------------------------------------------------------------------
    def invalidate_cache(self) -> None:
        """Forget the cached surface (call after the field changed)."""
        self.surface_cache.clear()

    def surface(self, workspace: tuple[Sequence[float], Sequence[float]] | None = None
                ) -> tuple[torch.Tensor, dict]:
        """Surface points [M, 3] (world) in the workspace box after downsampling and outlier removal.

        Returns:
            (points [M, 3], counts per stage).
        """
        c = self.config
        lo, hi = workspace if workspace is not None else (c.workspace_min_m, c.workspace_max_m)
        key = (tuple(float(x) for x in lo), tuple(float(x) for x in hi), c.voxel_size_m, c.surface_alpha,
               c.downsample_voxel_m, c.outlier_neighbors, c.outlier_std_ratio)
        if key in self.surface_cache:
            return self.surface_cache[key]
        grid = dense_grid(lo, hi, c.voxel_size_m, device=self.device)
        alpha = alpha_grid(self.field, grid, c.voxel_size_m, c.chunk_points)
        mask = surface_voxels(alpha, c.surface_alpha)
        pts = grid[mask]
        counts = {"grid": int(grid[..., 0].numel()), "occupied": int((alpha >= c.surface_alpha).sum()),
                  "surface": int(pts.shape[0])}
        pts = voxel_downsample(pts, c.downsample_voxel_m)
        counts["downsampled"] = int(pts.shape[0])
        keep = remove_statistical_outliers(pts, c.outlier_neighbors, c.outlier_std_ratio)
        pts = pts[keep]
        counts["inliers"] = int(pts.shape[0])
        self.surface_cache[key] = (pts, counts)
        return pts, counts

    # --- similarity map ------------------------------------------------------------------------------
    def similarity_map(self, text: str, points: torch.Tensor | np.ndarray | None = None,
                       negatives: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per-point similarity in [0, 1] of the field's features to ``text`` (pairwise softmax).

        Args:
            text: the query.
            points: [N, 3] world points (default: the workspace surface points).

        Returns:
            (points [N, 3] float32, similarity [N] float32); all zeros for an empty text or a field
            without features.
        """
        text = normalise_query(text)
        if points is None:
            pts, _ = self.surface()
        else:
            pts = torch.as_tensor(np.asarray(points), dtype=torch.float32, device=self.device).reshape(-1, 3)
        if not text or not self.has_features or self.text_encoder is None or pts.shape[0] == 0:
            return pts.cpu().numpy(), np.zeros(pts.shape[0], dtype=np.float32)
        negs = self.config.negatives if negatives is None else tuple(negatives)
        emb = encode_texts(self.text_encoder, [text, *negs], self.device)
        feats = query_features_chunked(self.field, pts, self.config.chunk_points)
        sim = similarity_map(feats, emb[0], emb[1:], self.config.similarity_temperature)
        return pts.cpu().numpy(), sim.cpu().numpy().astype(np.float32)

    # --- the final checks ----------------------------------------------------------------------------
    def antipodal_settings(self, config: PlannerConfig | None = None) -> AntipodalSettings:
        c, g = config or self.config, self.gripper
        return AntipodalSettings(opening=float(g.max_opening), pad_x=float(g.config.finger_size_m[0]),
                                 pad_z=tuple(float(z) for z in g.finger_z_range), ray_grid=tuple(c.antipodal_ray_grid),
                                 step=c.antipodal_step_m, delta=c.voxel_size_m, level=c.surface_alpha,
                                 h=c.antipodal_normal_step_m, chunk_points=c.chunk_points)

    def verifier(self, config: PlannerConfig | None = None) -> Verifier:
        """The checks every returned grasp passes (grasp/verify.py), with this planner's settings."""
        c = config or self.config
        key = (c.clearance_m, c.fine_voxel_m)
        if key not in self._clear_points:
            self._clear_points[key] = torch.as_tensor(
                gripper_shell_points(self.gripper, c.fine_voxel_m, include_fingers=True, margin=c.clearance_m),
                dtype=torch.float32, device=self.device)
        vs = VerifySettings(clearance_m=c.clearance_m, clearance_min_points=c.clearance_min_points,
                            collision_voxel_m=c.collision_voxel_m, collision_alpha=c.collision_alpha,
                            antipodal_max_deg=c.antipodal_max_deg, contact_radius_m=c.contact_radius_m,
                            refine_iters=c.antipodal_refine_iters, fine_check=c.fine_check_after,
                            chunk_points=c.chunk_points, point_block=EARLY_EXIT_POINTS if c.early_exit else 0,
                            min_call=EARLY_EXIT_MIN_CALL if c.early_exit else 0,
                            check_grid=tuple(c.antipodal_check_grid), check_max_deg=c.antipodal_check_max_deg)
        return Verifier(self.field, self._clear_points[key], self._gripper_points, self._fine_points, self._corners,
                        self.antipodal_settings(c), vs, c.collision_min_points, c.fine_min_points)

    def _contact_similarity(self, contacts: torch.Tensor, pos: torch.Tensor, negs: torch.Tensor,
                            c: PlannerConfig) -> torch.Tensor:  # [N, 2, 3] -> [N] in [0, 1]
        """Mean pairwise-softmax similarity to the query at the two contact patches (0 where none)."""
        n = contacts.shape[0]
        if n == 0:
            return torch.zeros(0, device=self.device)
        pts = torch.nan_to_num(contacts, nan=0.0).reshape(-1, 3)
        f = query_features_chunked(self.field, pts, c.chunk_points)
        f = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        sim = pairwise_softmax(f, pos, negs, c.similarity_temperature).reshape(n, 2).mean(dim=1)
        return torch.where(torch.isfinite(contacts).all(-1).all(-1), sim, torch.zeros_like(sim))

    # --- candidate sources -----------------------------------------------------------------------------
    def _demo_candidates(self, task: Task, vox: torch.Tensor, cos: torch.Tensor, pos: torch.Tensor,
                         floor: float | None, gen: torch.Generator, c: PlannerConfig, res: PlanResult, tag: str
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # R [K, 3, 3], t [K, 3], loss [K]
        """F3RM's path: rotations around the selected voxels, optimised towards the task's demonstrations,
        then the collision-free ones best by loss (at most ``max(antipodal_candidates, max_grasps)``)."""
        emb_task = task_embedding(task, delta=c.voxel_size_m, device=self.device)
        qp = torch.as_tensor(task.query_points, dtype=torch.float32, device=self.device)
        tr = vox.repeat_interleave(c.rotations_per_voxel, dim=0)
        q = random_quaternions(tr.shape[0], gen, self.device)
        res.stats[f"{tag}proposals_all"] = int(tr.shape[0])
        if 0 < c.max_proposals < tr.shape[0]:  # uniform random subset (see PlannerConfig.max_proposals)
            keep = torch.randperm(tr.shape[0], generator=gen)[:c.max_proposals].sort().values.to(self.device)
            tr, q = tr[keep], q[keep]
        coll = in_collision(self.field, quat_to_matrix_torch(q), tr, self._gripper_points, c.collision_voxel_m,
                            c.collision_alpha, c.collision_min_points, c.chunk_points, floor,
                            EARLY_EXIT_POINTS if c.early_exit else 0, EARLY_EXIT_MIN_CALL if c.early_exit else 0)
        tr, q = tr[~coll], q[~coll]
        res.stats[f"{tag}proposals"] = int(coll.numel())
        res.stats[f"{tag}proposals_free"] = int(tr.shape[0])
        empty = (torch.zeros(0, 3, 3, device=self.device), torch.zeros(0, 3, device=self.device),
                 torch.zeros(0, device=self.device))
        if tr.shape[0] == 0:
            return empty
        perm = torch.randperm(tr.shape[0], generator=gen).to(self.device)
        tr, q = tr[perm], q[perm]
        guidance = LanguageGuidance(pos, float(cos.min()), float(cos.max()))
        settings = OptimizeSettings(num_steps=c.num_steps, lr=c.lr, quat_scale=c.quat_scale,
                                    prune_after_step=c.prune_after_step, keep_fraction=c.keep_fraction,
                                    min_poses=c.min_poses, delta=c.voxel_size_m, chunk_points=c.chunk_points,
                                    floor_z=floor, fold_head=c.fold_feature_head)
        backend = c.optimizer_backend
        if backend == "auto":
            backend = "cuda_graph" if self.device.type == "cuda" else "plain"
        if backend == "plain":
            tr, q, loss, info = optimize_poses(self.field, tr, q, qp, emb_task, guidance, settings, self._corners)
        else:
            opt = StaticPoseOptimizer(self.field, qp, emb_task, guidance, settings, self._corners,
                                      use_graph=backend == "cuda_graph")
            tr, q, loss, info = opt.run(tr, q)
        res.stats[f"{tag}optimizer"] = backend + ("" if backend != "cuda_graph" or info.get("graph")
                                                  else " (not captured)")
        res.stats["folded_head"] = bool(info.get("folded"))
        if info.get("graph_error"):
            res.stats["optimizer_graph_error"] = info["graph_error"]
        res.stats[f"{tag}optimised"] = int(tr.shape[0])
        # best-first: only as many as will be checked need the collision checks, so they run on blocks of the
        # best poses by loss until enough are free (the same top grasps as checking all)
        fin = torch.isfinite(loss)
        R, tr, loss = quat_to_matrix_torch(q)[fin], tr[fin], loss[fin]
        by_loss = torch.argsort(loss)
        R, tr, loss = R[by_loss], tr[by_loss], loss[by_loss]
        need = max(c.max_grasps, c.antipodal_candidates) if c.max_grasps > 0 else tr.shape[0]
        keep, checked, _ = self.verifier(c).first_free(R, tr, torch.arange(tr.shape[0], device=tr.device), need,
                                                       max(64, 2 * need), floor, clearance=c.demo_clearance_first)
        res.stats[f"{tag}final_checked"] = checked
        R, tr, loss = R[keep], tr[keep], loss[keep]
        res.stats[f"{tag}final_free"] = int(tr.shape[0])
        return R, tr, loss

    def _geometric_candidates(self, vox: torch.Tensor, cos: torch.Tensor, ref_cos: float, floor: float | None,
                              gen: torch.Generator, c: PlannerConfig, res: PlanResult
                              ) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Zero-shot antipodal candidates on the selected voxels that match the query well enough (grasp/
        geometric.py), free with the clearance margin, best pre-score first, at most ``geometric_verify``."""
        seeds = vox
        bar = c.geometric_seed_min_relative * c.contact_min_relative * ref_cos
        if bar > 0 and vox.shape[0] > c.geometric_min_seeds:
            ok = cos >= bar
            if int(ok.sum()) < c.geometric_min_seeds:
                ok = torch.zeros_like(ok)
                ok[torch.topk(cos, c.geometric_min_seeds).indices] = True
            seeds = vox[ok]
        res.stats["geometric_seeds"] = int(seeds.shape[0])
        if seeds.shape[0] > c.geometric_max_seeds:
            pick = torch.randperm(seeds.shape[0], generator=gen)[:c.geometric_max_seeds].to(self.device)
            seeds = seeds[pick]
        st = GeometricSettings(max_width=float(self.gripper.max_opening) - 2 * c.clearance_m,
                               level=c.surface_alpha, delta=c.voxel_size_m, step=c.antipodal_step_m,
                               h=c.antipodal_normal_step_m, max_pair_deg=c.geometric_max_pair_deg,
                               approach_angles=c.geometric_approach_angles,
                               depths=tuple(float(d) for d in c.geometric_depths_m),
                               max_candidates=c.geometric_max_candidates, chunk_points=c.chunk_points,
                               march_block=EARLY_EXIT_SAMPLES if c.early_exit else 0)
        g = geometric_candidates(self.field, seeds, st, gen)
        # the fingers are what a geometric candidate most often drives into its object: check the whole gripper
        # with the clearance margin (the final criterion), in blocks in pre-score order, until geometric_verify
        # are free (the best pre-scores can all be one kind of grasp that collides, e.g. pinches under a lid)
        order = torch.argsort(g.prescore, descending=True)
        keep, checked, n_free = self.verifier(c).first_free(g.R, g.t, order, c.geometric_verify,
                                                            max(256, 4 * c.geometric_verify), floor, clearance=True)
        g.stats["checked"], g.stats["free"] = checked, n_free
        res.stats["geometric"] = g.stats
        return g.R[keep], g.t[keep], g.stats

    # --- planning ------------------------------------------------------------------------------------
    def plan(self, text: str, workspace: tuple[Sequence[float], Sequence[float]] | None = None,
             options: PlanOptions | None = None) -> PlanResult:
        """Plan grasps for a text query; never raises for "nothing to grasp" (see ``PlanResult.reason``).

        Args:
            text: what to grasp ("mug handle").
            workspace: (lo, hi) world box for this request (default ``workspace_min_m/max_m``); also
                ``options.workspace``.
            options: per-request settings (negatives, max grasps, an explicit task, candidate sources).
        """
        o = options or PlanOptions()
        if o.sources is not None and o.sources not in ("auto", *SOURCES):
            raise ValueError(f"PlanOptions.sources must be 'auto', 'demo' or 'geometric', got {o.sources!r}")
        if o.workspace is not None:
            workspace = o.workspace
        c = self.config
        changes = {k: v for k, v in (("negatives", None if o.negatives is None else tuple(o.negatives)),
                                     ("max_grasps", o.max_grasps), ("sources", o.sources)) if v is not None}
        if changes:
            c = dataclasses.replace(c, **changes)
        t_start = time.perf_counter()
        text = normalise_query(text)
        res = PlanResult(query=text)
        timing = res.timing

        def done(reason: str = "") -> PlanResult:
            res.reason = reason
            timing["total"] = time.perf_counter() - t_start
            return res

        def lap(name: str, t0: float) -> float:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            now = time.perf_counter()
            timing[name] = timing.get(name, 0.0) + now - t0
            return now

        tasks = self.tasks
        if o.task:
            tasks = [t for t in self.tasks if t.name == o.task]
            if not tasks:
                raise ValueError(f"unknown task {o.task!r}; known tasks: {[t.name for t in self.tasks]}")
        if not text:
            return done("empty query: say what to grasp, e.g. 'mug handle'")
        if is_negative_only(text, c.negatives):
            return done(f"query {text!r} names no object: it is made only of the negative phrases "
                        f"{list(c.negatives)} the similarity compares against")
        if not self.has_features or self.text_encoder is None:
            return done("the field has no feature field (trained without 2D features), so it cannot be "
                        "queried by text; train it with a feature extractor")
        if not tasks and c.sources == "demo":
            return done("no grasp tasks (demonstrations) are loaded, and geometric grasps are off (sources 'demo')")

        t0 = time.perf_counter()
        pts, counts = self.surface(workspace)
        res.stats.update(counts)
        t0 = lap("surface", t0)
        if pts.shape[0] == 0:
            return done("no surface in the workspace box: nothing there to grasp (is the box right, and the "
                        "field trained?)")

        emb = encode_texts(self.text_encoder, [text, *c.negatives], self.device)
        pos, negs = emb[0], emb[1:]
        feats = query_features_chunked(self.field, pts, c.chunk_points)
        f_unit = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        sims = pairwise_softmax(f_unit, pos, negs, c.similarity_temperature)
        if o.heatmap:
            res.heatmap_points = pts.cpu().numpy().astype(np.float32)
            res.heatmap_similarity = sims.cpu().numpy().astype(np.float32)
        best = float(sims.max())
        res.stats["best_similarity"] = best
        gen = torch.Generator().manual_seed(c.seed)
        mask = language_mask(f_unit, pos, negs, c.mask_temperature, c.mask_sampling, gen) \
            & (sims >= c.min_similarity)
        res.stats["masked"] = int(mask.sum())
        t0 = lap("language", t0)
        if best < c.min_similarity:
            return done(f"{text!r} not found in the workspace: best similarity {best:.3f} is below the "
                        f"threshold {c.min_similarity:.3f}")
        if int(mask.sum()) < c.min_masked_voxels:
            return done(f"{text!r} not found: only {int(mask.sum())} surface voxels match it (need "
                        f"{c.min_masked_voxels})")
        vox = pts[mask]
        cos = f_unit[mask] @ pos

        # which demonstrations fit (retrieval score >= task_fit_min), best first
        fitting: list[tuple[Task, float]] = []
        if tasks and c.sources != "geometric":
            scene_feat = f_unit[mask].mean(dim=0) if c.retrieval == "text+scene" else None
            _, task_sims = retrieve_task(pos, tasks, scene_feature=scene_feat)
            res.stats["task_similarities"] = {t.name: float(s) for t, s in zip(tasks, task_sims, strict=True)}
            order = torch.argsort(task_sims, descending=True).tolist()
            fitting = [(tasks[i], float(task_sims[i])) for i in order
                       if o.task or float(task_sims[i]) >= c.task_fit_min][:max(1, c.max_tasks_tried)]
        res.stats["tasks_fitting"] = [t.name for t, _ in fitting]
        t0 = lap("retrieval", t0)
        floor = self.floor_z(workspace)
        verifier = self.verifier(c)
        failures: Counter = Counter()
        checked = 0
        # each entry: (source, task name, R, t, passed verdict arrays, base score)
        passed: list[tuple[str, str, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []

        ref_cos = float(torch.quantile(cos.float(), 0.9)) if cos.numel() else 0.0

        def contact_test(contacts: torch.Tensor) -> torch.Tensor:  # [N, 2, 3] -> [N] bool
            n = contacts.shape[0]
            if n == 0 or c.contact_min_relative <= 0:
                return torch.ones(n, dtype=torch.bool, device=self.device)
            f = query_features_chunked(self.field, torch.nan_to_num(contacts, nan=0.0).reshape(-1, 3), c.chunk_points)
            cc = (f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12) @ pos).reshape(n, 2)
            return (cc >= c.contact_min_relative * ref_cos).all(dim=1)

        def accept(source: str, task_name: str, R: torch.Tensor, t: torch.Tensor, bonus: torch.Tensor,
                   quality_weight: float = 1.0, free_with_clearance: bool = False) -> int:
            nonlocal checked
            v = verifier.verify(R, t, floor, vox, contact_test=contact_test, free_with_clearance=free_with_clearance)
            checked += R.shape[0]
            failures.update(v.stats["failures"])
            res.stats.setdefault("verified", []).append({"source": source, "task": task_name, **v.stats})
            k = torch.nonzero(v.passed)[:, 0]
            if k.numel():
                lang = self._contact_similarity(v.contacts[k], pos, negs, c)
                angle_q = (1.0 - v.angle_deg[k] / max(c.antipodal_max_deg, 1e-6)).clamp(0.0, 1.0)
                quality = 0.6 * angle_q + 0.4 * ((lang - 0.5) * 2.0).clamp(0.0, 1.0)
                passed.append((source, task_name, v.R[k], v.t[k], torch.stack([v.angle_deg[k], v.width[k], lang], 1),
                               quality_weight * quality + bonus[k], quality))
            return int(k.numel())

        gstats: dict = {}

        def geometric() -> None:
            nonlocal t0, gstats
            Rg, tg, gstats = self._geometric_candidates(vox, cos, ref_cos, floor, gen, c, res)
            t0 = lap("geometric", t0)
            accept("geometric", "", Rg, tg, torch.zeros(Rg.shape[0], device=self.device), free_with_clearance=True)
            t0 = lap("verify", t0)

        # geometric_only_if_needed: the demonstrations first; the geometric source only when the grasps that passed
        # do not already fill max_grasps with scores above any geometric grasp's (at most 1: quality, no bonus)
        geometric_later = c.geometric_only_if_needed and c.max_grasps > 0 and bool(fitting)
        if c.sources != "demo" and not geometric_later:
            geometric()
        for i, (task, _fit) in enumerate(fitting):
            tag = "" if i == 0 else f"task{i}_"
            # its own generator: the demonstrations' rotations do not depend on the geometric source's settings
            R, tr, loss = self._demo_candidates(task, vox, cos, pos, floor, torch.Generator().manual_seed(c.seed),
                                                c, res, tag)
            t0 = lap("optimise", t0)
            # among themselves, demonstration-guided grasps that pass keep F3RM's order (by the demonstrations' loss;
            # quality only breaks near-ties): the field's contact estimate is the noisier of the two on a rough field
            fit_term = (-loss).clamp(0.0, 2.0) / 2.0
            n_ok = accept("demo", task.name, R, tr, c.demo_preference + fit_term, quality_weight=0.1,
                          free_with_clearance=c.demo_clearance_first)
            t0 = lap("verify", t0)
            if n_ok:
                break
        if c.sources != "demo" and geometric_later:
            top = torch.cat([p[5] for p in passed]) if passed else torch.zeros(0, device=self.device)
            if top.numel() >= c.max_grasps and float(torch.topk(top, c.max_grasps).values[-1]) > 1.0:
                res.stats["geometric_skipped"] = f"{int(top.numel())} demonstration-guided grasps passed"
            else:  # as if it had run first: its grasps first in the ranking's input (the same order of ties)
                n_demo = len(passed)
                geometric()
                passed[:] = passed[n_demo:] + passed[:n_demo]
        res.stats["checked"] = checked
        if not passed and not fitting and c.sources == "demo":
            return done(f"{text!r} found, but no demonstration fits it (best task score below task_fit_min "
                        f"{c.task_fit_min}) and geometric grasps are off (sources 'demo')")
        if not passed:
            return done(f"{text!r} found, but no grasp was returned: "
                        + explain_failures(failures, checked, gstats.get("no_opposite_face", 0),
                                           gstats.get("on_surface", 0), gstats.get("antipodal_pairs"),
                                           gstats.get("checked", 0)))
        score = torch.cat([p[5] for p in passed])
        order = torch.argsort(score, descending=True)
        if c.max_grasps > 0:
            order = order[:c.max_grasps]
        R_all = torch.cat([p[2] for p in passed])[order].cpu().double().numpy()
        t_all = torch.cat([p[3] for p in passed])[order].cpu().double().numpy()
        terms = torch.cat([p[4] for p in passed])[order].cpu().double().numpy()
        qual = torch.cat([p[6] for p in passed])[order].cpu().double().numpy()
        sc = score[order].cpu().double().numpy()
        src = [(p[0], p[1]) for p in passed for _ in range(p[2].shape[0])]
        src = [src[i] for i in order.tolist()]
        for rank in range(len(src)):
            T = np.eye(4)
            T[:3, :3] = R_all[rank]
            T[:3, 3] = t_all[rank]
            source, task_name = src[rank]
            res.grasps.append(Grasp(
                T_world_gripper=T, score=float(sc[rank]), width=float(c.opening_m), task=task_name, rank=rank,
                T_world_tool=self.gripper.to_tool(T), source=source,
                quality={"antipodal_deg": float(terms[rank, 0]), "contact_width_m": float(terms[rank, 1]),
                         "contact_similarity": float(terms[rank, 2]), "clearance_m": float(c.clearance_m),
                         "quality": float(qual[rank])}))
        res.task = res.grasps[0].task or None
        res.source = res.grasps[0].source
        return done("")
