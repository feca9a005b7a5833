"""Grasp generalisation on generated scenes nobody tuned on (issue 17), in three halves.

1. ``render`` (here: needs open3d): generate scenes from seeds of one split (``f3rm_ros.core.sim.families``;
   evaluation seeds are only ever reported in aggregate) and render a posed RGB-D + label dataset of each:
   ``ROOT/seed-XXXXX/{scene.yaml, queries.json, transforms.json, images/, labels/, depth/}``.
2. ``plan`` (torch only: runs on the GPU machine): per scene, train a field (label features, preset
   ``small+synthetic+depth``, 2000 steps; or reuse one from ``--ckpt-dir``), then run every query of
   ``queries.json`` through :class:`GraspPlanner` (reference planner defaults, the synthetic table's workspace)
   and write the top grasps, reasons, sources and timings to JSON. ``--jobs N`` trains N scenes at a time
   (subprocesses on one GPU); query latency is then measured under contention, so ``--ckpt-dir`` with
   ``--jobs 1`` re-times the queries alone on the saved fields.
3. ``judge`` (here: needs open3d): judge each top grasp with the ground-truth check and print/save the table:
   top-1 success with its 95 % Wilson interval, by family, by query kind and by pose/placement, absent (and
   too-big) rejection, which source won, latency. A present query whose top grasp fails is then searched on the
   ground truth (:mod:`f3rm_ros.core.sim.grasp_feasible`, cached in ``<results>.feasibility.json``): when no pose
   of the gripper holds that object (part) without touching something, "no grasp" is the right answer and the
   query is counted under "no grasp exists -> none" instead of "present" (the generator's width rule alone is
   kept as "present, as generated"; ``--no-feasibility`` skips the search).

    python benchmarks/bench_grasp_generalization.py render --split eval --num 30 --out .gpudata/gen-eval
    python benchmarks/bench_grasp_generalization.py plan --data-root .gpudata/gen-eval --out results.json
    python benchmarks/bench_grasp_generalization.py judge results.json --data-root .gpudata/gen-eval

Small CPU variant: ``render --num 3 --width 240 --height 180``, ``plan --device cpu --planner-cpu --steps 2000
--rays 1024 --preset small+synthetic+depth+error_map``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from f3rm_ros.core.presets import PLANNER_CPU  # noqa: E402 - the demo's CPU query settings (no torch import)

WORKSPACE = ((-0.35, -0.3, 0.005), (0.35, 0.3, 0.3))  # the synthetic table, world frame, metres


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k / n."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


# --------------------------------------------------------------------------------------------- render
def render(a: argparse.Namespace) -> int:
    from f3rm_ros.core.config import replace  # noqa: PLC0415
    from f3rm_ros.core.sim.export import SimDatasetConfig, render_dataset  # noqa: PLC0415
    from f3rm_ros.core.sim.families import dev_seeds, eval_seeds, generate_scene, write_generated  # noqa: PLC0415

    seeds = [int(s) for s in a.seeds.split(",")] if a.seeds else \
        (eval_seeds(a.num, a.start) if a.split == "eval" else dev_seeds(a.num, a.start))
    cfg = replace(SimDatasetConfig(), width=a.width, height=a.height, image_format=a.image_format,
                  **{"trajectory.num_views": a.views})
    a.out.mkdir(parents=True, exist_ok=True)
    for s in seeds:
        d = a.out / f"seed-{s:05d}"
        if (d / "transforms.json").exists():
            continue
        t0 = time.perf_counter()
        gen = generate_scene(s)
        render_dataset(gen.scene, d, cfg, overwrite=True)
        write_generated(gen, d)
        print(f"seed {s} ({gen.split}): {len(gen.scene.objects)} objects, {len(gen.present_queries)} present / "
              f"{len(gen.absent_queries)} absent queries, {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


# ----------------------------------------------------------------------------------------------- plan
def _scene_dirs(root: Path, shard: str | None, limit: int = 0) -> list[Path]:
    dirs = sorted(p for p in root.iterdir() if (p / "queries.json").exists())
    if limit:
        dirs = dirs[:limit]
    if shard:
        i, n = (int(x) for x in shard.split("/"))
        dirs = dirs[i::n]
    return dirs


def _query_row(q, res, wall: float) -> dict:
    g = res.best
    return {**q.to_dict(), "found": bool(res.found), "reason": res.reason, "seconds": wall,
            "source": g.source if g else None, "task": g.task if g else None, "quality": g.quality if g else None,
            "timing": {k: float(v) for k, v in res.timing.items()}, "tasks_fitting": res.stats.get("tasks_fitting"),
            "verified": res.stats.get("verified"), "T_world_gripper": g.T_world_gripper.tolist() if g else None}


def oracle(a: argparse.Namespace) -> int:
    """The planner on the analytic oracle field of each scene (no training; CPU): for developing the planner
    on development seeds, and a quick check that generated scenes have findable grasps."""
    import torch  # noqa: PLC0415

    from f3rm_ros.core.features.configs import LabelFeatureConfig  # noqa: PLC0415
    from f3rm_ros.core.features.labels import LabelFeatureExtractor  # noqa: PLC0415
    from f3rm_ros.core.grasp import GraspPlanner, PlannerConfig, load_default_tasks  # noqa: PLC0415
    from f3rm_ros.core.grasp.oracle import OracleField  # noqa: PLC0415
    from f3rm_ros.core.sim.families import load_queries  # noqa: PLC0415
    from f3rm_ros.core.sim.scene import load_scene  # noqa: PLC0415

    torch.set_num_threads(a.threads)
    overrides = {kv.split("=", 1)[0]: json.loads(kv.split("=", 1)[1]) for kv in a.set}
    out: dict = {"device": "cpu", "gpu": None, "commit": os.environ.get("F3RM_COMMIT", "unknown"), "preset": "oracle",
                 "steps": 0, "planner": PLANNER_CPU if a.planner_cpu else "reference defaults",
                 "planner_overrides": overrides, "scenes": {}}
    tasks = load_default_tasks()
    for d in _scene_dirs(a.data_root, a.shard):
        scene = load_scene(d / "scene.yaml")
        table, _ = scene.label_table()
        ex = LabelFeatureExtractor(LabelFeatureConfig(), table=table)
        field = OracleField.from_extractor(scene, ex, resolution=0.004)
        pc = PlannerConfig(workspace_min_m=WORKSPACE[0], workspace_max_m=WORKSPACE[1],
                           **{**(PLANNER_CPU if a.planner_cpu else {}), **overrides})
        planner = GraspPlanner(field, ex, tasks, config=pc)
        rows = []
        for q in load_queries(d / "queries.json"):
            if a.queries and q.text not in a.queries.split(","):
                continue
            t1 = time.perf_counter()
            res = planner.plan(q.text)
            rows.append(_query_row(q, res, time.perf_counter() - t1))
            g = res.best
            print(f"  {d.name} {q.text!r:28s} {q.kind:9s} {rows[-1]['seconds']:5.2f}s "
                  f"{(g.source + ':' + g.task) if g else res.reason[:100]}", flush=True)
        out["scenes"][d.name] = {"field": {"oracle": True}, "queries": rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1))
    a.results = a.out
    return judge(a)


def plan(a: argparse.Namespace) -> int:
    if a.jobs > 1:  # shards in subprocesses, then merge
        procs, parts = [], []
        for i in range(a.jobs):
            part = a.out.with_suffix(f".part{i}.json")
            parts.append(part)
            cmd = [sys.executable, __file__, "plan", "--data-root", str(a.data_root), "--out", str(part),
                   "--device", a.device, "--preset", a.preset, "--steps", str(a.steps), "--rays", str(a.rays),
                   "--seed", str(a.seed), "--shard", f"{i}/{a.jobs}", "--jobs", "1", "--limit", str(a.limit)]
            cmd += ["--planner-cpu"] if a.planner_cpu else []
            cmd += [x for kv in a.set for x in ("--set", kv)]
            cmd += ["--ckpt-dir", str(a.ckpt_dir)] if a.ckpt_dir else []
            procs.append(subprocess.Popen(cmd))
        rc = max(p.wait() for p in procs)
        merged: dict = {}
        for part in parts:
            d = json.loads(part.read_text())
            scenes = merged.setdefault("scenes", {})
            scenes.update(d.pop("scenes"))
            merged.update({k: v for k, v in d.items() if k not in merged})
        merged["jobs"] = a.jobs
        a.out.write_text(json.dumps(merged, indent=1))
        print(f"merged {len(parts)} shards -> {a.out}")
        return rc

    import torch  # noqa: PLC0415

    from f3rm_ros.core.device import resolve_device  # noqa: PLC0415
    from f3rm_ros.core.features import create_extractor  # noqa: PLC0415
    from f3rm_ros.core.field_api import load_trained_field  # noqa: PLC0415
    from f3rm_ros.core.grasp import GraspPlanner, PlannerConfig, load_default_tasks  # noqa: PLC0415
    from f3rm_ros.core.presets import trainer_config  # noqa: PLC0415
    from f3rm_ros.core.sim.families import load_queries  # noqa: PLC0415
    from f3rm_ros.core.workflows.train_scene import TrainSceneRequest, train_scene  # noqa: PLC0415

    device = resolve_device(a.device)
    overrides = {kv.split("=", 1)[0]: json.loads(kv.split("=", 1)[1]) for kv in a.set}
    out: dict = {"device": str(device), "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
                 "commit": os.environ.get("F3RM_COMMIT", "unknown"), "preset": a.preset, "steps": a.steps,
                 "rays": a.rays, "seed": a.seed, "planner": PLANNER_CPU if a.planner_cpu else "reference defaults",
                 "planner_overrides": overrides, "scenes": {}}
    tasks = load_default_tasks()
    for d in _scene_dirs(a.data_root, a.shard, a.limit):
        ex = create_extractor({"extractor": "labels", "labels": {"dataset": str(d)}})
        ck = (a.ckpt_dir / d.name) if a.ckpt_dir else Path(f"/tmp/f3rm_gen_{d.name}")
        meta_path = ck / "bench.json"
        trained_with = {"preset": a.preset, "steps": a.steps, "rays": a.rays, "seed": a.seed}
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        if (ck / "field.ckpt").exists() and meta.get("trained_with") == trained_with:  # same settings only
            print(f"{d.name}: reusing {ck}", flush=True)
        else:
            cfg = trainer_config(a.preset, seed=a.seed, rays_per_batch=a.rays, eval_every=0, eval_num_images=0,
                                 checkpoint_every=0)
            t0 = time.perf_counter()
            r = train_scene(TrainSceneRequest(d, num_steps=a.steps, trainer=cfg, features=ex, device=str(device),
                                              run_dir=ck, feature_cache=Path(f"/tmp/f3rm_gen_cache_{d.name}")))
            meta = {"psnr": r.eval.get("psnr"), "feature_mse": r.eval.get("feature_mse"),
                    "depth_median_error_m": r.eval.get("depth_median_error_m"), "train_s": r.train_s,
                    "build_s": time.perf_counter() - t0, "trained_with": trained_with}
            meta_path.write_text(json.dumps(meta))
            print(f"{d.name}: trained in {meta['build_s']:.1f} s, PSNR {meta['psnr']}", flush=True)
        field = load_trained_field(ck / "field.ckpt", device)
        pc = PlannerConfig(workspace_min_m=WORKSPACE[0], workspace_max_m=WORKSPACE[1], device=str(device),
                           **{**(PLANNER_CPU if a.planner_cpu else {}), **overrides})
        planner = GraspPlanner(field, ex, tasks, config=pc)
        planner.plan("object zzz warm-up")  # kernels, graphs, the surface cache: not timed
        rows = []
        for q in load_queries(d / "queries.json"):
            t1 = time.perf_counter()
            res = planner.plan(q.text)
            wall = time.perf_counter() - t1
            g = res.best
            rows.append(_query_row(q, res, wall))
            print(f"  {d.name} {q.text!r:28s} {q.kind:9s} found={res.found} {wall:5.2f}s "
                  f"{(g.source + ':' + g.task) if g else res.reason[:90]}", flush=True)
        out["scenes"][d.name] = {"field": meta, "queries": rows}
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out}")
    return 0


# ---------------------------------------------------------------------------------------------- judge
def _feasibility_one(job: tuple[str, str, tuple[str, ...], str | None]) -> dict:
    from f3rm_ros.core.sim.grasp_check import GraspChecker  # noqa: PLC0415
    from f3rm_ros.core.sim.grasp_feasible import find_feasible_grasp  # noqa: PLC0415
    from f3rm_ros.core.sim.scene import load_scene  # noqa: PLC0415

    root, name, objects, part = job
    t0 = time.perf_counter()
    r = find_feasible_grasp(GraspChecker(load_scene(Path(root) / name / "scene.yaml")), objects, part)
    return {"feasible": r.feasible, "pairs": r.pairs, "checked": r.checked, "reason": r.reason,
            "T_world_gripper": None if r.T_world_gripper is None else r.T_world_gripper.tolist(),
            "seconds": time.perf_counter() - t0}


def feasibility(a: argparse.Namespace, root: Path, todo: list[tuple[str, tuple[str, ...], str | None]]) -> dict:
    """Ground-truth search for a grasp of each (scene, objects, part) (:mod:`f3rm_ros.core.sim.grasp_feasible`),
    cached in ``<results>.feasibility.json`` (the search depends on the scene only, not on the planner)."""
    from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415

    cache_path = a.results.with_suffix(".feasibility.json")
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    key = lambda n, objs, part: f"{n}|{','.join(objs)}|{part or ''}"  # noqa: E731
    jobs = [(str(root), n, objs, part) for n, objs, part in todo if key(n, objs, part) not in cache]
    if jobs:
        print(f"searching the ground truth for a grasp on {len(jobs)} failed (scene, object, part) "
              f"({len(todo) - len(jobs)} cached) ...", flush=True)
        with ProcessPoolExecutor(max_workers=max(1, getattr(a, "feasibility_jobs", 2))) as pool:
            for (_, n, objs, part), r in zip(jobs, pool.map(_feasibility_one, jobs), strict=True):
                cache[key(n, objs, part)] = r
        cache_path.write_text(json.dumps(cache, indent=1))
    return {(n, objs, part): cache[key(n, objs, part)] for n, objs, part in todo}


def judge(a: argparse.Namespace) -> int:
    import numpy as np  # noqa: PLC0415

    from f3rm_ros.core.sim.families import SceneQuery, judge_query  # noqa: PLC0415
    from f3rm_ros.core.sim.grasp_check import GraspChecker  # noqa: PLC0415
    from f3rm_ros.core.sim.scene import load_scene  # noqa: PLC0415

    data = json.loads(a.results.read_text())
    root = a.data_root
    splits = {json.loads((root / n / "queries.json").read_text()).get("split") for n in data["scenes"]}
    if "eval" in splits and not getattr(a, "per_query_eval", False):
        a.aggregate_only = True  # evaluation seeds are only ever reported in aggregate
    groups: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    lat, sources, fails = [], defaultdict(lambda: [0, 0]), []
    judged: list[tuple[str, dict, SceneQuery, bool, dict]] = []
    for name, sc in sorted(data["scenes"].items()):
        info = json.loads((root / name / "queries.json").read_text())
        checker = GraspChecker(load_scene(root / name / "scene.yaml"))
        for row in sc["queries"]:
            q = SceneQuery.from_dict(row)
            saved = SimpleNamespace(found=row["found"], reason=row["reason"], best=SimpleNamespace(
                T_world_gripper=np.asarray(row["T_world_gripper"])) if row["found"] else None)
            ok, detail = judge_query(checker, saved, q)
            row["success"], row["detail"] = bool(ok), detail
            judged.append((name, row, q, bool(ok), info))
    # a failed present query whose object (part) no pose of the gripper can hold: "no grasp" is the right answer
    # there (as for an object wider than the opening); a top grasp that passes is itself the proof that one exists
    todo = sorted({(n, q.objects, q.part) for n, _, q, ok, _ in judged if q.present and q.expect_grasp and not ok},
                  key=str)
    exists = feasibility(a, root, todo) if getattr(a, "feasibility", True) else {}
    for name, row, q, ok, info in judged:
        fam_of = {o["name"]: o for o in info["objects"]}
        if q.present and q.expect_grasp:
            groups["all"]["present, as generated (width rule)"].append(ok)
        feasible = exists.get((name, q.objects, q.part), {"feasible": True})["feasible"]
        row["grasp_exists"] = bool(feasible) if not ok else True
        if q.present and q.expect_grasp and not feasible:
            ok = not row["found"]
            row["success"] = ok
            groups["all"]["no grasp exists -> none"].append(ok)
            lat.append(row["seconds"])
            continue
        detail = row["detail"]
        if q.present and q.expect_grasp:
            groups["all"]["present"].append(ok)
            groups["kind"][q.kind].append(ok)
            objs = [fam_of[o] for o in q.objects if o in fam_of]
            if objs:
                groups["family"][objs[0]["family"]].append(ok)
                groups["pose"][objs[0]["pose"]].append(ok)
                groups["placement"][objs[0]["placement"]].append(ok)
            n_obj = len(info["objects"])
            groups["clutter"]["1 object" if n_obj == 1 else "2-4 objects" if n_obj <= 4 else "5-8 objects"]\
                .append(ok)
            lat.append(row["seconds"])
            if row["found"]:
                sources[row["source"]][0] += 1
                sources[row["source"]][1] += int(ok)
            if not ok:
                fails.append(f"{name} {q.text!r} ({q.kind}): {detail}")
        elif q.present:
            groups["all"]["too big -> none"].append(ok)
        else:
            groups["all"]["absent -> none"].append(ok)

    def line(label: str, v: list[bool]) -> str:
        k, n = sum(v), len(v)
        lo, hi = wilson(k, n)
        return f"  {label:24s} {k:4d}/{n:<4d} {100 * k / max(n, 1):5.1f}%   95% CI [{100 * lo:5.1f}, {100 * hi:5.1f}]"

    lines = [f"grasp generalisation: {len(data['scenes'])} scenes, {data.get('gpu') or data['device']}, preset "
             f"{data['preset']}, {data['steps']} steps, planner {data['planner']} "
             f"{data.get('planner_overrides') or ''}"]
    for grp in ("all", "kind", "family", "pose", "placement", "clutter"):
        lines.append(f"{grp}:")
        for k in sorted(groups[grp]):
            lines.append(line(k, groups[grp][k]))
    lines.append("winning source (top grasp returned on a present query): " + ", ".join(
        f"{s} {n} ({ok} pass)" for s, (n, ok) in sorted(sources.items())))
    if lat:
        lines.append(f"query latency, present queries: median {statistics.median(lat):.3f} s, p90 "
                     f"{float(np.percentile(lat, 90)):.3f} s, n={len(lat)}" + (f" (under {data['jobs']} concurrent "
                     f"jobs)" if data.get("jobs", 1) > 1 else ""))
    psnr = [s["field"].get("psnr") for s in data["scenes"].values() if s["field"].get("psnr") is not None]
    if psnr:
        lines.append(f"held-out PSNR: median {statistics.median(psnr):.2f} dB (min {min(psnr):.2f})")
    if not a.aggregate_only:
        lines.append("failures:")
        lines += [f"  {f}" for f in fails]
    text = "\n".join(lines)
    print(text)
    summary = {g: {k: {"k": sum(v), "n": len(v), "rate": sum(v) / max(len(v), 1), "wilson95": wilson(sum(v), len(v))}
                   for k, v in groups[g].items()} for g in groups}
    data["summary"] = summary
    data["latency_median_s"] = statistics.median(lat) if lat else None
    out = a.results.with_suffix(".judged.json")
    out.write_text(json.dumps(data, indent=1))
    a.results.with_suffix(".table.txt").write_text(text + "\n")
    print(f"wrote {out} and {a.results.with_suffix('.table.txt')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="generate and render scenes (needs open3d)")
    r.add_argument("--split", choices=("dev", "eval"), default="dev")
    r.add_argument("--num", type=int, default=10)
    r.add_argument("--start", type=int, default=0, help="first seed to consider")
    r.add_argument("--seeds", default="", help="explicit comma-separated seeds instead of --split/--num")
    r.add_argument("--width", type=int, default=240)
    r.add_argument("--height", type=int, default=180)
    r.add_argument("--views", type=int, default=60)
    r.add_argument("--image-format", default="jpg", choices=("jpg", "png"),
                   help="colour images (jpg: small enough to carry 30+ scenes to the GPU machine)")
    r.add_argument("--out", type=Path, required=True)
    pl = sub.add_parser("plan", help="train and query (torch only)")
    pl.add_argument("--data-root", type=Path, required=True)
    pl.add_argument("--out", type=Path, required=True)
    pl.add_argument("--device", default="auto")
    pl.add_argument("--preset", default="small+synthetic+depth")
    pl.add_argument("--steps", type=int, default=2000)
    pl.add_argument("--rays", type=int, default=4096)
    pl.add_argument("--seed", type=int, default=1, help="training seed")
    pl.add_argument("--planner-cpu", action="store_true", help="the demo's CPU planner settings")
    pl.add_argument("--set", action="append", default=[], help="planner override KEY=JSON")
    pl.add_argument("--ckpt-dir", type=Path, default=None, help="keep/reuse trained fields here")
    pl.add_argument("--jobs", type=int, default=1)
    pl.add_argument("--limit", type=int, default=0, help="only the first N scenes (0 = all)")
    pl.add_argument("--shard", default=None, help=argparse.SUPPRESS)
    o = sub.add_parser("oracle", help="plan on the scenes' analytic oracle fields and judge (CPU, needs open3d)")
    o.add_argument("--data-root", type=Path, required=True)
    o.add_argument("--out", type=Path, required=True)
    o.add_argument("--planner-cpu", action="store_true", help="the demo's CPU planner settings")
    o.add_argument("--set", action="append", default=[], help="planner override KEY=JSON")
    o.add_argument("--queries", default="", help="only these query texts (comma-separated)")
    o.add_argument("--threads", type=int, default=1)
    o.add_argument("--shard", default=None)
    o.add_argument("--aggregate-only", action="store_true")
    j = sub.add_parser("judge", help="ground-truth check of the top grasps (needs open3d)")
    j.add_argument("results", type=Path)
    j.add_argument("--data-root", type=Path, required=True)
    j.add_argument("--aggregate-only", action="store_true", help="no per-query lines (always so for evaluation "
                   "seeds unless --per-query-eval)")
    j.add_argument("--no-feasibility", dest="feasibility", action="store_false",
                   help="skip the ground-truth search for a grasp on failed present queries (then every present "
                   "query counts as graspable, as the generator's width rule says)")
    j.add_argument("--feasibility-jobs", type=int, default=2)
    j.add_argument("--per-query-eval", action="store_true", help="list failed queries of evaluation seeds too "
                   "(for debugging the benchmark itself, never for tuning)")
    a = p.parse_args(argv)
    return {"render": render, "plan": plan, "oracle": oracle, "judge": judge}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
