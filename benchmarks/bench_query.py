#!/usr/bin/env python3
"""Grasp-query latency of the planner with the reference defaults (f3rm-method.md s. 4).

Field: the analytic oracle field of a built-in synthetic scene with label features (no training,
so the number measures the planner, not a field's network), or a trained checkpoint with
``--checkpoint`` (needs ``load_trained_field`` from the fields package). Planner: every
``PlannerConfig`` default (0.01 m grid, 8 rotations per voxel, 200 Adam steps, pruning to 2048,
collision checks) except the workspace box, which has the reference's size (0.7 x 0.9 x 0.345 m)
but is centred on the synthetic table instead of in front of a robot base.

Reports per query the median over ``--repeats`` runs of the total latency with the surface cached
("warm": the surface does not depend on the text and is computed once per field) and the latency of
the very first query ("cold": includes the alpha grid); stage medians too. Prints a table and
writes JSON (``--out``).

Examples::

    python benchmarks/bench_query.py --device cpu --out /tmp/bench_query_cpu.json
    python benchmarks/bench_query.py --device cuda --repeats 5 --out bench_query_cuda.json

The oracle is built with scipy when open3d is missing (the GPU machine has none).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch

DEFAULT_QUERIES = ("mug handle", "bowl", "box", "mug rim", "banana")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="cpu, cuda or auto")
    ap.add_argument("--scene", default="mug_bowl_box", help="built-in scene name")
    ap.add_argument("--queries", nargs="+", default=list(DEFAULT_QUERIES))
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per query")
    ap.add_argument("--steps", type=int, default=None, help="override num_steps (default: reference 200)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    ap.add_argument("--oracle-backend", default="auto", choices=("auto", "open3d", "scipy"))
    ap.add_argument("--oracle-resolution", type=float, default=0.003, help="oracle grid spacing, metres")
    ap.add_argument("--checkpoint", default=None, help="trained field checkpoint instead of the oracle")
    ap.add_argument("--optimizer-backends", nargs="+", default=None,
                    help="PlannerConfig.optimizer_backend values to compare in one run (plain, static, cuda_graph, "
                         "auto); queries interleave the backends on the same warm field")
    ap.add_argument("--planner-variants", nargs="+", default=None, metavar="KEY=JSON[,KEY=JSON]",
                    help="planner settings to compare in one run instead of --optimizer-backends, e.g. "
                         "fold_feature_head=true fold_feature_head=false; queries interleave them")
    ap.add_argument("--grid-backend", default=None, choices=("torch", "levels", "triton"),
                    help="with --checkpoint: run every hash grid of the loaded field on this backend (same tables)")
    ap.add_argument("--profile-query", default=None,
                    help="after the timings, run this query once per optimizer backend under torch.profiler and print "
                         "kernels per optimiser step and the top kernels by device time (CUDA)")
    ap.add_argument("--out", default=None, help="JSON output path")
    args = ap.parse_args(argv)

    from f3rm_ros.core.config import replace
    from f3rm_ros.core.device import resolve_device
    from f3rm_ros.core.features.configs import LabelFeatureConfig
    from f3rm_ros.core.features.labels import LabelFeatureExtractor
    from f3rm_ros.core.grasp import GraspPlanner, PlannerConfig, load_default_tasks
    from f3rm_ros.core.sim.scene import resolve_scene

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    scene = resolve_scene(args.scene)
    table, _ = scene.label_table()
    extractor = LabelFeatureExtractor(LabelFeatureConfig(), table=table)
    t0 = time.perf_counter()
    if args.checkpoint:
        from f3rm_ros.core.field_api import load_trained_field  # type: ignore[import-not-found]

        field = load_trained_field(args.checkpoint, device)
        field_kind = f"trained:{args.checkpoint}"
        if args.grid_backend:
            from f3rm_ros.core.hashgrid import HashGrid

            grids = [m for m in field.model.modules() if isinstance(m, HashGrid)]
            for g in grids:
                g.backend = args.grid_backend
            field_kind += f" (grid backend {args.grid_backend}, {len(grids)} grids)"
    else:
        from f3rm_ros.core.grasp.oracle import OracleField

        field = OracleField.from_extractor(scene, extractor, resolution=args.oracle_resolution, device=device,
                                           backend=args.oracle_backend)
        field_kind = f"oracle:{field.backend}"
    build_s = time.perf_counter() - t0

    ref = PlannerConfig()
    size = np.array(ref.workspace_max_m) - np.array(ref.workspace_min_m)
    cfg = replace(ref, workspace_min_m=[-size[0] / 2, -size[1] / 2, ref.workspace_min_m[2]],
                  workspace_max_m=[size[0] / 2, size[1] / 2, ref.workspace_max_m[2]], device=str(device))
    if args.steps is not None:
        cfg = replace(cfg, num_steps=args.steps)
    planner = GraspPlanner(field, extractor, load_default_tasks(), config=cfg)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sync()
    t0 = time.perf_counter()
    first = planner.plan(args.queries[0])
    sync()
    cold_s = time.perf_counter() - t0
    if args.planner_variants:
        variants = {v: {kv.split("=", 1)[0]: json.loads(kv.split("=", 1)[1]) for kv in v.split(",")}
                    for v in args.planner_variants}
    else:
        variants = {b: {"optimizer_backend": b} for b in (args.optimizer_backends or [cfg.optimizer_backend])}
    backends = list(variants)
    per_backend = {b: {} for b in backends}
    for q in args.queries:
        for b in backends:
            planner.config = replace(cfg, **variants[b])
            runs = []
            for _ in range(args.repeats):
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                sync()
                t0 = time.perf_counter()
                r = planner.plan(q)
                sync()
                runs.append((time.perf_counter() - t0, r))
            stages = {k: statistics.median(r.timing.get(k, 0.0) for _, r in runs) for k in runs[0][1].timing}
            last = runs[-1][1]
            per_backend[b][q] = {
                "median_s": statistics.median(s for s, _ in runs), "runs_s": [s for s, _ in runs], "stages_s": stages,
                "found": last.found, "reason": last.reason, "task": last.task, "optimizer": last.stats.get("optimizer"),
                "proposals": last.stats.get("proposals"), "proposals_free": last.stats.get("proposals_free"),
                "masked_voxels": last.stats.get("masked"), "best_score": last.best.score if last.found else None,
                "peak_cuda_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            }
    planner.config = cfg
    profiles = {}
    if args.profile_query:
        for b in backends:
            planner.config = replace(cfg, **variants[b])
            profiles[b] = _profile_query(planner, args.profile_query, cfg.num_steps, device, b)
        planner.config = cfg
    results = per_backend[backends[0]]
    found = [v["median_s"] for v in results.values() if v["found"]]
    out = {
        "benchmark": "grasp query latency", "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "scene": args.scene, "field": field_kind,
        "field_build_s": build_s, "config": {k: getattr(cfg, k) for k in (
            "workspace_min_m", "workspace_max_m", "voxel_size_m", "rotations_per_voxel", "num_steps", "lr",
            "min_poses", "keep_fraction", "chunk_points")},
        "surface_stats": {k: v for k, v in first.stats.items() if k in ("grid", "occupied", "surface", "inliers")},
        "cold_first_query_s": cold_s, "queries": results,
        "median_found_query_s": statistics.median(found) if found else None,
        "median_all_queries_s": statistics.median(v["median_s"] for v in results.values()),
    }
    if profiles:
        out["profiles"] = profiles
    if len(backends) > 1:
        out["backends"] = {b: {"queries": res, "median_found_query_s": statistics.median(
            [v["median_s"] for v in res.values() if v["found"]] or [float("nan")])} for b, res in per_backend.items()}
    print(f"device {out['device']} ({out['device_name']}), torch {out['torch']}, {out['threads']} threads, "
          f"field {field_kind} built in {build_s:.1f} s, scene {args.scene}")
    print(f"cold first query ({args.queries[0]!r}, incl. alpha grid + surface): {cold_s:.2f} s")
    print(f"{'query':16s} {'median s':>9s} {'found':>6s} {'proposals':>10s} {'free':>6s}  stages (median s)")
    for q, v in results.items():
        st = " ".join(f"{k}={s:.2f}" for k, s in v["stages_s"].items() if k != "total")
        print(f"{q!r:16s} {v['median_s']:9.2f} {str(v['found']):>6s} {str(v['proposals']):>10s} "
              f"{str(v['proposals_free']):>6s}  {st}")
    print(f"median latency over queries that found a grasp: {out['median_found_query_s']}")
    for b, v in out.get("backends", {}).items():
        qs = " ".join(f"{q!r}={x['median_s']:.3f}s(optimise {x['stages_s'].get('optimise', 0):.3f})"
                      for q, x in v["queries"].items())
        print(f"backend {b:10s} median found {v['median_found_query_s']:.3f} s: {qs}")
    if args.out:
        from f3rm_ros.core.io import atomic_write_json

        atomic_write_json(args.out, out)
        print(f"wrote {args.out}")
    return 0


def _profile_query(planner, query: str, num_steps: int, device, tag: str) -> dict:
    """One query under torch.profiler: kernel launches and device time per optimiser step, top kernels."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    planner.plan(query)  # warm (kernels compiled, graphs for this shape made once)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        r = planner.plan(query)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    kernels = []
    for e in prof.key_averages():
        if getattr(e, "device_type", None) == DeviceType.CUDA:
            dev = getattr(e, "self_device_time_total", None)
            dev = getattr(e, "self_cuda_time_total", 0.0) if dev is None else dev
            kernels.append({"name": e.key, "count": e.count, "dev_us": dev})
    total_us = sum(k["dev_us"] for k in kernels)
    n_k = sum(k["count"] for k in kernels)
    top = sorted(kernels, key=lambda k: -k["dev_us"])[:25]
    print(f"\n[profile {tag}] {query!r}: wall {wall:.3f} s under the profiler (optimise "
          f"{r.timing.get('optimise', 0):.3f} s), {n_k} kernels, {n_k / max(1, num_steps):.0f} per optimiser step, "
          f"device kernel time {total_us / 1e3:.1f} ms ({total_us / max(1, num_steps):.0f} us per step), "
          f"optimizer {r.stats.get('optimizer')}")
    for k in top:
        print(f"   {k['dev_us'] / 1e3:8.2f} ms  x{k['count']:6d}  {k['name'][:110]}")
    return {"wall_s": wall, "kernels": n_k, "kernels_per_step": n_k / max(1, num_steps), "device_ms": total_us / 1e3,
            "optimise_s": r.timing.get("optimise"), "top": top}


if __name__ == "__main__":
    raise SystemExit(main())
