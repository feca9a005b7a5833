"""Language-guided 6-DoF grasp planner on a field (f3rm-method.md s. 3-4).

Pipeline of :meth:`GraspPlanner.plan`:

1. checks: empty text, text made only of negatives, field without features, no tasks -> no grasp
   and a reason;
2. coarse proposals: alpha on a dense grid over the workspace box, surface voxels, voxel
   downsampling, statistical outlier removal (cached per field and workspace: it does not depend on
   the text);
3. language: pairwise-softmax similarity of each surface point to the query; if the best one is
   below ``min_similarity`` the thing is "not found" (ours: the reference always returns something);
   the language mask (softmax over [query + negatives] at temperature 0.001) keeps the query's voxels;
4. the task whose embedding best matches the text; ``rotations_per_voxel`` random rotations per
   voxel; poses in collision dropped; batched Adam with pruning; collision check again; ranking by
   final loss; best-first grasps in the world frame.

Everything runs on the field's device (CUDA or CPU); field queries are chunked (``chunk_points``)
so memory stays bounded.
"""

from __future__ import annotations

import time
from typing import Any
from collections.abc import Sequence

import numpy as np
import torch

from f3rm_ros.core.device import resolve_device
from f3rm_ros.core.gripper import Gripper
from f3rm_ros.core.grasp.antipodal import AntipodalSettings, align_to_contacts, estimate_antipodal
from f3rm_ros.core.grasp.collision import gripper_corner_points, gripper_shell_points, in_collision, lowest_point_z
from f3rm_ros.core.grasp.config import PlannerConfig
from f3rm_ros.core.grasp.field_utils import field_has_features, query_features_chunked
from f3rm_ros.core.grasp.language import (encode_texts, is_negative_only, language_mask, normalise_query,
                                          pairwise_softmax, similarity_map)
from f3rm_ros.core.grasp.optimize import (FoldedTaskLoss, LanguageGuidance, OptimizeSettings, StaticPoseOptimizer,
                                          optimize_poses, pose_losses)
from f3rm_ros.core.grasp.proposals import (alpha_grid, dense_grid, quat_to_matrix_torch, random_quaternions,
                                           remove_statistical_outliers, surface_voxels, voxel_downsample)
from f3rm_ros.core.grasp.result import Grasp, PlanResult
from f3rm_ros.core.grasp.task import Task, adapt_task, retrieve_task, task_embedding

__all__ = ["GraspPlanner"]


class GraspPlanner:
    """Plans grasps for text queries on one field.

    Args:
        field: object with the field query API (contracts.md), world frame.
        text_encoder: object with ``encode_text(list[str]) -> Tensor[N, D]`` (the feature extractor
            the field was distilled from), or None for a field without features.
        tasks: grasp tasks (e.g. :func:`f3rm_ros.core.grasp.task.load_default_tasks`).
        gripper: gripper model (default Panda).
        config: planner settings.

    Raises:
        ExtractorMismatchError: a task was made with another extractor than the field's.
    """

    def __init__(self, field: Any, text_encoder: Any, tasks: Sequence[Task], gripper: Gripper | None = None,
                 config: PlannerConfig | None = None):
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
        self._surface_cache: dict = {}

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
        self._surface_cache.clear()

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
        if key in self._surface_cache:
            return self._surface_cache[key]
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
        self._surface_cache[key] = (pts, counts)
        return pts, counts

    # --- similarity map ------------------------------------------------------------------------------
    def similarity_map(self, text: str, points: torch.Tensor | np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
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
        emb = encode_texts(self.text_encoder, [text, *self.config.negatives], self.device)
        feats = query_features_chunked(self.field, pts, self.config.chunk_points)
        sim = similarity_map(feats, emb[0], emb[1:], self.config.similarity_temperature)
        return pts.cpu().numpy(), sim.cpu().numpy().astype(np.float32)

    # --- antipodal re-ranking ------------------------------------------------------------------------
    def antipodal_settings(self) -> AntipodalSettings:
        c, g = self.config, self.gripper
        return AntipodalSettings(opening=float(g.max_opening), pad_x=float(g.config.finger_size_m[0]),
                                 pad_z=tuple(float(z) for z in g.finger_z_range), ray_grid=tuple(c.antipodal_ray_grid),
                                 step=c.antipodal_step_m, delta=c.voxel_size_m, level=c.surface_alpha,
                                 h=c.antipodal_normal_step_m, chunk_points=c.chunk_points)

    def _antipodal_rerank(self, R, tr, loss, order, floor, qp, emb_task, guidance, res):
        """Estimate, refine and re-rank the best ``antipodal_candidates`` grasps (PlannerConfig help)."""
        c = self.config
        s = self.antipodal_settings()
        top = order[:c.antipodal_candidates]
        Rk, tk, lk = R[top], tr[top], loss[top]
        est = estimate_antipodal(self.field, Rk, tk, s)
        ang = est.angle_deg
        before = ang.clone()
        improved = 0
        for _ in range(c.antipodal_refine_iters):
            R2, t2 = align_to_contacts(Rk, tk, est)
            if floor is not None:  # keep the refined gripper above the floor, as the optimiser does
                low = lowest_point_z(R2, t2, self._corners)
                t2 = t2.clone()
                t2[:, 2] += torch.where(low < floor, floor + 1e-4 - low, torch.zeros_like(low))
            moved = (R2 - Rk).abs().amax(dim=(1, 2)) > 1e-6
            if not bool(moved.any()):
                break
            idx = torch.nonzero(moved)[:, 0]
            coll = in_collision(self.field, R2[idx], t2[idx], self._gripper_points, c.collision_voxel_m,
                                c.collision_alpha, c.collision_min_points, c.chunk_points, floor)
            if c.fine_check_after:
                coll |= in_collision(self.field, R2[idx], t2[idx], self._fine_points, c.collision_voxel_m,
                                     c.collision_alpha, c.fine_min_points, c.chunk_points, floor)
            est2 = estimate_antipodal(self.field, R2[idx], t2[idx], s)
            better = ~coll & (est2.angle_deg < ang[idx])
            if not bool(better.any()):
                break
            j = idx[better]
            improved += int(better.sum())
            Rk, tk = Rk.clone(), tk.clone()
            Rk[j], tk[j], ang[j] = R2[j], t2[j], est2.angle_deg[better]
            for name in ("angles_deg", "contacts", "normals", "valid"):
                getattr(est, name)[j] = getattr(est2, name)[better]
            est.angle_deg = ang
        if improved:
            from f3rm_ros.core.geometry import matrix_to_quat

            q = torch.as_tensor(matrix_to_quat(Rk.cpu().double().numpy()), dtype=torch.float32, device=self.device)
            with torch.no_grad():
                folded = FoldedTaskLoss.build(self.field, emb_task, guidance) if c.fold_feature_head else None
                lk = pose_losses(self.field, tk, q, qp, emb_task, guidance, c.voxel_size_m, folded)
        res.stats["antipodal_refined"] = improved
        res.stats["antipodal_ok"] = int((ang <= c.antipodal_max_deg).sum())
        res.stats["antipodal_deg_before"] = [round(float(x), 1) for x in before[:5]]
        # new order: estimated antipodal first (by loss), then the other candidates by estimated angle,
        # then the rest by loss
        good = ang <= c.antipodal_max_deg
        key = torch.where(good, lk, 1e3 + ang)
        sub = torch.argsort(key)
        R, tr, loss = R.clone(), tr.clone(), loss.clone()
        R[top], tr[top], loss[top] = Rk, tk, lk
        new_order = torch.cat([top[sub], order[c.antipodal_candidates:]])
        res.stats["antipodal_deg_best"] = round(float(ang[sub[0]]), 1) if len(sub) else None
        return R, tr, loss, new_order

    # --- planning ------------------------------------------------------------------------------------
    def plan(self, text: str, workspace: tuple[Sequence[float], Sequence[float]] | None = None) -> PlanResult:
        """Plan grasps for a text query; never raises for "nothing to grasp" (see ``PlanResult.reason``)."""
        c = self.config
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
            timing[name] = now - t0
            return now

        if not text:
            return done("empty query: say what to grasp, e.g. 'mug handle'")
        if is_negative_only(text, c.negatives):
            return done(f"query {text!r} names no object: it is made only of the negative phrases "
                        f"{list(c.negatives)} the similarity compares against")
        if not self.has_features or self.text_encoder is None:
            return done("the field has no feature field (trained without 2D features), so it cannot be "
                        "queried by text; train it with a feature extractor")
        if not self.tasks:
            return done("no grasp tasks (demonstrations) are loaded")

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

        scene_feat = f_unit[mask].mean(dim=0) if c.retrieval == "text+scene" else None
        idx, task_sims = retrieve_task(pos, self.tasks, scene_feature=scene_feat)
        task = self.tasks[idx]
        res.task = task.name
        res.stats["task_similarities"] = {t.name: float(s) for t, s in zip(self.tasks, task_sims, strict=True)}
        emb_task = task_embedding(task, delta=c.voxel_size_m, device=self.device)
        qp = torch.as_tensor(task.query_points, dtype=torch.float32, device=self.device)
        t0 = lap("retrieval", t0)

        tr = vox.repeat_interleave(c.rotations_per_voxel, dim=0)
        q = random_quaternions(tr.shape[0], gen, self.device)
        res.stats["proposals_all"] = int(tr.shape[0])
        if 0 < c.max_proposals < tr.shape[0]:  # uniform random subset (see PlannerConfig.max_proposals)
            keep = torch.randperm(tr.shape[0], generator=gen)[:c.max_proposals].sort().values.to(self.device)
            tr, q = tr[keep], q[keep]
        floor = self.floor_z(workspace)
        coll = in_collision(self.field, quat_to_matrix_torch(q), tr, self._gripper_points, c.collision_voxel_m,
                            c.collision_alpha, c.collision_min_points, c.chunk_points, floor)
        tr, q = tr[~coll], q[~coll]
        res.stats["proposals"] = int(coll.numel())
        res.stats["proposals_free"] = int(tr.shape[0])
        t0 = lap("collision_before", t0)
        if tr.shape[0] == 0:
            return done(f"{text!r} found, but every gripper pose around it collides with the scene")

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
        res.stats["optimizer"] = backend + ("" if backend != "cuda_graph" or info.get("graph") else " (not captured)")
        res.stats["folded_head"] = bool(info.get("folded"))
        if info.get("graph_error"):
            res.stats["optimizer_graph_error"] = info["graph_error"]
        res.stats["optimised"] = int(tr.shape[0])
        t0 = lap("optimise", t0)

        # best-first: only as many grasps as will be returned (or re-ranked) need the final checks, so
        # they run on blocks of the best poses by loss until enough are free (same top grasps as checking all)
        fin = torch.isfinite(loss)
        R, tr, loss = quat_to_matrix_torch(q)[fin], tr[fin], loss[fin]
        by_loss = torch.argsort(loss)
        R, tr, loss = R[by_loss], tr[by_loss], loss[by_loss]
        need = max(c.max_grasps, c.antipodal_candidates) if c.max_grasps > 0 else tr.shape[0]
        block = max(64, 2 * need)
        ok = torch.zeros(tr.shape[0], dtype=torch.bool, device=tr.device)
        fine_only, checked = 0, 0
        while checked < tr.shape[0] and int(ok.sum()) < need:
            sl = slice(checked, min(checked + block, tr.shape[0]))
            coll = in_collision(self.field, R[sl], tr[sl], self._gripper_points, c.collision_voxel_m,
                                c.collision_alpha, c.collision_min_points, c.chunk_points, floor)
            if c.fine_check_after:
                fine = in_collision(self.field, R[sl], tr[sl], self._fine_points, c.collision_voxel_m,
                                    c.collision_alpha, c.fine_min_points, c.chunk_points, floor)
                fine_only += int((fine & ~coll).sum())
                coll = coll | fine
            ok[sl] = ~coll
            checked = sl.stop
        res.stats["fine_check_collisions"] = fine_only
        res.stats["final_checked"] = checked
        R, tr, loss = R[ok], tr[ok], loss[ok]
        res.stats["final_free"] = int(tr.shape[0])
        t0 = lap("collision_after", t0)
        if tr.shape[0] == 0:
            return done(f"{text!r} found, but every optimised grasp collides with the scene")

        order = torch.argsort(loss)
        if c.antipodal_candidates > 0:
            R, tr, loss, order = self._antipodal_rerank(R, tr, loss, order, floor, qp, emb_task, guidance, res)
            t0 = lap("antipodal", t0)
        if c.max_grasps > 0:
            order = order[:c.max_grasps]
        R_np, t_np, l_np = R[order].cpu().double().numpy(), tr[order].cpu().double().numpy(), \
            loss[order].cpu().double().numpy()
        for rank in range(len(order)):
            T = np.eye(4)
            T[:3, :3] = R_np[rank]
            T[:3, 3] = t_np[rank]
            res.grasps.append(Grasp(T_world_gripper=T, score=float(-l_np[rank]), width=float(c.opening_m),
                                    task=task.name, rank=rank, T_world_tool=self.gripper.to_tool(T)))
        return done("")
