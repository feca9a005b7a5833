#!/usr/bin/env python3
"""The CPU demo and a CPU grasp query, baseline and new side by side (issue 21: demo <= 60 s, query <= 2 s on 2 cores).

Two measurements, each printing a table and writing JSON under ``benchmarks/results/``:

``query``: grasp queries on trained fields (a demo run's checkpoint, or the fields of the opt-in trained-field test)
with the demo's settings. Planner variants (the baseline CPU settings, today's :data:`PLANNER_CPU`, or any
``NAME=JSON`` overrides) run interleaved, query by query, ``--repeats`` times each on the same warm field, in one
process with ``--threads`` torch threads; medians per query and variant, the planner's stage times, and each
variant's top grasp judged by the synthetic world's ground-truth check (as the demo does). A cProfile of one query
(``--profile QUERY``) says where its time goes::

    python benchmarks/bench_cpu_demo.py query --run runs/demo-XXXX --variants baseline cpu --repeats 3
    python benchmarks/bench_cpu_demo.py query --run runs/demo-XXXX --variants baseline 'ee=early_exit=true'

With ``--baseline-rev REV`` it compares code instead of settings: a ``git worktree`` of REV and this checkout,
each with its own :data:`PLANNER_CPU`, one process per field and tree, alternating field by field and round by
round (``--rounds``), medians of CPU time per query over the rounds (the success table of issue 21)::

    python benchmarks/bench_cpu_demo.py query --baseline-rev 916a044 --rounds 2 --threads 1 --all-queries \
        --run runs/demo-XXXX --fields FIELD_DIR ...

``demo``: the whole demo (``python -m f3rm_ros.ros.demo --preset cpu``), the baseline code (a ``git worktree`` of
``--baseline-rev``, run with this checkout's environment) and this checkout alternately, ``--repeats`` times each,
with the stage times the demo records (node start-up, capture, training with its final evaluation and checkpoint,
the query node's load, each query, the rest) and whether every check passed::

    python benchmarks/bench_cpu_demo.py demo --baseline-rev 4ebd89e --repeats 2

Other people's jobs share the 2 cores: only figures of one run compare (the load average is recorded).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import re
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from f3rm_ros.core.presets import PLANNER_CPU  # noqa: E402 - no torch import

# PLANNER_CPU before issue 21 (6b4b249): the baseline of every comparison here
BASELINE_CPU: dict[str, Any] = {"num_steps": 25, "rotations_per_voxel": 4, "min_poses": 512,
                                "geometric_max_seeds": 192, "geometric_max_candidates": 1024, "geometric_verify": 32}
WORKSPACE = ((-0.35, -0.3, 0.005), (0.35, 0.3, 0.3))  # the synthetic table (config/bringup_sim.yaml)
DEMO_QUERIES = ("mug handle", "bowl", "banana")


def _load() -> float:
    return os.getloadavg()[0]


def _git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _variant(spec: str) -> tuple[str, dict[str, Any]]:
    """'baseline' | 'cpu' | 'NAME=key=json,key=json' (on top of the baseline) | 'NAME+=key=json,...' (on top of
    PLANNER_CPU)."""
    if spec == "baseline":
        return spec, dict(BASELINE_CPU)
    if spec == "cpu":
        return spec, dict(PLANNER_CPU)
    name, _, rest = spec.partition("=")
    base = dict(PLANNER_CPU) if name.endswith("+") else dict(BASELINE_CPU)
    for kv in filter(None, re.split(r",(?=\w+=)", rest)):  # a comma inside a JSON value ('[0,0]') stays
        k, _, v = kv.partition("=")
        base[k] = json.loads(v)
    return name.rstrip("+"), base


def _fields(a: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(scene, checkpoint, dataset) of each field to query."""
    out = []
    for run in a.run or []:
        run = Path(run)
        summary = json.loads((run / "summary.json").read_text())
        ck = sorted(run.glob("checkpoints/*/*/field.ckpt"))[-1]
        data = json.loads((ck.parent / "run.json").read_text())["data_dir"]
        out.append((summary["scene"], str(ck), data))
    for folder in a.fields or []:
        info = json.loads((Path(folder) / "field.json").read_text())
        out.append((info["scene"], info["checkpoint"], info["data"]))
    return out


def cmd_query(a: argparse.Namespace) -> dict:
    import torch

    from f3rm_ros.core.features import create_extractor
    from f3rm_ros.core.field_api import load_trained_field
    from f3rm_ros.core.grasp import GraspPlanner, PlannerConfig, load_default_tasks
    from f3rm_ros.core.grasp.evaluate import ABSENT_IN_SCENE, ABSENT_QUERIES, PRESENT_QUERIES, judge
    from f3rm_ros.core.sim.grasp_check import GraspChecker
    from f3rm_ros.core.sim.scene import resolve_scene

    torch.set_num_threads(a.threads)
    if a.stage_clock == "cpu":  # the planner's stage laps in process CPU time (less disturbed by others' jobs)
        import types

        import f3rm_ros.core.grasp.planner as planner_module

        planner_module.time = types.SimpleNamespace(perf_counter=time.process_time)
    variants = dict(_variant(v) for v in a.variants)
    out: dict[str, Any] = {"benchmark": "cpu grasp query", "threads": a.threads, "repeats": a.repeats,
                           "stage_clock": a.stage_clock,
                           "variants": variants, "load_start": _load(), "fields": {}}
    for scene_name, ck, data in _fields(a):
        if a.queries:
            queries = [(q, *next(((o, p) for qq, o, p in PRESENT_QUERIES.get(scene_name, []) if qq == q),
                                 ((), None))) for q in a.queries]
        elif a.all_queries:
            queries = PRESENT_QUERIES[scene_name] + [(q, (), None) for q in ABSENT_QUERIES
                                                     + ABSENT_IN_SCENE.get(scene_name, ())]
        else:
            queries = [("mug handle", ("mug",), "handle"), ("bowl", ("bowl",), None), ("banana", (), None)]
        field = load_trained_field(ck, "cpu")
        ex = create_extractor({"extractor": "labels", "labels": {"dataset": data}})
        checker = GraspChecker(resolve_scene(scene_name))
        cfgs = {n: PlannerConfig(workspace_min_m=WORKSPACE[0], workspace_max_m=WORKSPACE[1], device="cpu", **kw)
                for n, kw in variants.items()}
        planner = GraspPlanner(field, ex, load_default_tasks(), config=next(iter(cfgs.values())))
        t0 = time.perf_counter()
        planner.surface()
        surface_s = time.perf_counter() - t0
        res: dict[str, Any] = {"checkpoint": ck, "surface_s": surface_s, "queries": {}}
        for q, objects, part in queries:
            row: dict[str, Any] = {}
            runs: dict[str, list] = {n: [] for n in cfgs}
            for _ in range(a.repeats):
                for n, cfg in cfgs.items():
                    planner.config = cfg
                    t0, c0 = time.perf_counter(), time.process_time()
                    r = planner.plan(q)
                    r.stats["cpu_s"] = time.process_time() - c0
                    runs[n].append((time.perf_counter() - t0, r))
            ref = runs[next(iter(cfgs))][-1][1]
            for n, rs in runs.items():
                r = rs[-1][1]
                ok, detail = (judge(checker, r, objects, part) if objects
                              else (not r.found, r.reason or "grasp returned"))
                same = (len(r.grasps) == len(ref.grasps) and all(
                    float(abs(g.T_world_gripper - h.T_world_gripper).max()) < 1e-4
                    for g, h in zip(r.grasps, ref.grasps, strict=True)))
                row[n] = {"present": bool(objects),
                          "median_s": statistics.median(s for s, _ in rs), "runs_s": [round(s, 3) for s, _ in rs],
                          "median_cpu_s": statistics.median(x.stats["cpu_s"] for _, x in rs),
                          "stages_s": {k: round(statistics.median(x.timing.get(k, 0.0) for _, x in rs), 3)
                                       for k in r.timing},
                          "top_passes": ok, "detail": detail, "num_grasps": len(r.grasps),
                          "source": r.source if r.found else None, "same_grasps_as_first": same,
                          "stats": {k: v for k, v in r.stats.items() if k not in ("verified", "task_similarities")}}
            res["queries"][q] = row
            print(f"{scene_name:20s} {q!r:22s} " + "  ".join(
                f"{n}: {v['median_s']:6.2f} s (cpu {v['median_cpu_s']:6.2f}) {'PASS' if v['top_passes'] else 'FAIL'}"
                f"{'' if v['same_grasps_as_first'] else ' (other grasps)'}" for n, v in row.items()), flush=True)
        if a.profile:
            planner.config = cfgs[list(cfgs)[-1]]
            pr = cProfile.Profile(time.process_time)
            pr.enable()
            planner.plan(a.profile)
            pr.disable()
            buf = io.StringIO()
            pstats.Stats(pr, stream=buf).sort_stats("cumulative").print_stats(40)
            res["profile"] = buf.getvalue()
            print(buf.getvalue())
        out["fields"][f"{scene_name}:{ck}"] = res
    out["summary"] = _summary(out["fields"], list(variants))
    out["load_end"] = _load()
    _print_summary(out["summary"], variants)
    return out


def _summary(fields: dict, names: list[str]) -> dict:
    """Per variant: medians and maxima over all queries, and over the present ones (the issue's figure: a query
    for a thing that is not there ends after the language step), and how many top grasps pass the check."""
    out = {}
    for n in names:
        rows = [row[n] for f in fields.values() for row in f["queries"].values()]
        pres = [r for r in rows if r.get("present", True)]
        absent = [r for r in rows if not r.get("present", True)]
        out[n] = {"median_query_s": statistics.median(r["median_s"] for r in rows),
                  "max_query_s": max(r["median_s"] for r in rows),
                  "median_query_cpu_s": statistics.median(r["median_cpu_s"] for r in rows),
                  "max_query_cpu_s": max(r["median_cpu_s"] for r in rows),
                  "checks_pass": sum(r["top_passes"] for r in rows), "queries": len(rows),
                  "present_median_cpu_s": statistics.median(r["median_cpu_s"] for r in pres) if pres else None,
                  "present_max_cpu_s": max(r["median_cpu_s"] for r in pres) if pres else None,
                  "present_pass": sum(r["top_passes"] for r in pres), "present": len(pres),
                  "absent_pass": sum(r["top_passes"] for r in absent), "absent": len(absent)}
    return out


def _print_summary(summary: dict, variants: dict) -> None:
    for n, v in summary.items():
        pm = v["present_median_cpu_s"]
        print(f"{n:12s} median {v['median_query_s']:.2f} s, max {v['max_query_s']:.2f} s (cpu time: median "
              f"{v['median_query_cpu_s']:.2f} s, max {v['max_query_cpu_s']:.2f} s), checks {v['checks_pass']}/"
              f"{v['queries']}; present: {v['present_pass']}/{v['present']}, median cpu "
              f"{'-' if pm is None else f'{pm:.2f}'} s; absent {v['absent_pass']}/{v['absent']}  ({variants.get(n)})")


def cmd_query_ab(a: argparse.Namespace) -> dict:
    """This checkout's planner against a baseline revision's, each with its own PLANNER_CPU ('cpu'): one process
    per field and tree, the trees alternating field by field and round by round (``--rounds``; the order flips
    each round), so that other jobs on the cores load both alike. Per query: the median CPU time over the rounds;
    the top grasp's check and the grasps are the last round's (every round gives the same ones)."""
    from f3rm_ros.core.grasp.evaluate import PRESENT_QUERIES

    present = {scene: {q for q, _, _ in qs} for scene, qs in PRESENT_QUERIES.items()}
    base = Path(a.work) / "baseline_tree"
    rev = _git("rev-parse", "--short", a.baseline_rev)
    if not base.exists():
        _git("worktree", "add", "--detach", str(base), rev)
    trees = {"baseline": base, "new": REPO}
    out: dict[str, Any] = {"benchmark": "cpu grasp query, baseline revision vs this checkout", "baseline_rev": rev,
                           "new_rev": _git("rev-parse", "--short", "HEAD"),
                           "new_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
                           "threads": a.threads, "rounds": a.rounds, "stage_clock": a.stage_clock,
                           "load_start": _load(), "fields": {}, "loads": []}
    sources = [("--run", r) for r in a.run or []] + [("--fields", f) for f in a.fields or []]
    qargs = (["--queries", *a.queries] if a.queries else []) + (["--all-queries"] if a.all_queries else [])
    runs: dict[str, dict[str, list]] = {}
    try:
        for rnd in range(a.rounds):
            for flag, src in sources:
                for name in (list(trees) if rnd % 2 == 0 else list(trees)[::-1]):
                    tree = trees[name]
                    tmp = Path(a.work) / f"ab_{name}_{rnd}_{Path(src).name}.json"
                    env = dict(os.environ, PYTHONPATH=f"{tree}:{os.environ.get('PYTHONPATH', '')}")
                    cmd = [sys.executable, str(tree / "benchmarks" / "bench_cpu_demo.py"), "query", flag, src,
                           *qargs, "--variants", "cpu", "--repeats", "1", "--threads", str(a.threads),
                           "--stage-clock", a.stage_clock, "--out", str(tmp)]
                    load0 = _load()
                    p = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
                    if p.returncode:
                        raise RuntimeError(f"{name} on {src} failed:\n{p.stderr[-2000:]}")
                    res = json.loads(tmp.read_text())
                    out["loads"].append((rnd, name, Path(src).name, round(load0, 2), round(_load(), 2)))
                    for key, f in res["fields"].items():
                        runs.setdefault(key, {}).setdefault(name, []).append(f)
                    print(f"round {rnd} {name:8s} {Path(src).name}: " + json.dumps(res["summary"]["cpu"]), flush=True)
    finally:
        _git("worktree", "remove", "--force", str(base))
    for key, by_tree in runs.items():
        first = next(iter(by_tree.values()))[-1]
        queries: dict[str, Any] = {}
        for q in first["queries"]:
            row = {}
            for name, fs in by_tree.items():
                last = fs[-1]["queries"][q]["cpu"]
                cpu = [f["queries"][q]["cpu"]["median_cpu_s"] for f in fs]
                wall = [f["queries"][q]["cpu"]["median_s"] for f in fs]
                row[name] = {**last, "present": q in present.get(key.split(":")[0], ()),
                             "median_cpu_s": statistics.median(cpu), "median_s": statistics.median(wall),
                             "runs_cpu_s": [round(x, 3) for x in cpu]}
            gb, gn = by_tree["baseline"][-1]["queries"][q]["cpu"], by_tree["new"][-1]["queries"][q]["cpu"]
            row["new"]["same_top_passes"] = gb["top_passes"] == gn["top_passes"]
            queries[q] = row
            print(f"{key.split(':')[0]:20s} {q!r:22s} " + "  ".join(
                f"{n}: cpu {v['median_cpu_s']:5.2f} s {v['runs_cpu_s']} {'PASS' if v['top_passes'] else 'FAIL'}"
                for n, v in row.items()), flush=True)
        out["fields"][key] = {"checkpoint": first["checkpoint"], "queries": queries}
    out["summary"] = _summary(out["fields"], list(trees))
    out["load_end"] = _load()
    _print_summary(out["summary"], {"baseline": f"PLANNER_CPU of {rev}", "new": "this checkout's PLANNER_CPU"})
    return out


def _demo_stages(run_dir: Path, wall: float) -> dict:
    s = json.loads((run_dir / "summary.json").read_text())
    log = (run_dir / "nodes.log").read_text() if (run_dir / "nodes.log").exists() else ""
    ck = sorted(run_dir.glob("checkpoints/*/*/run.json"))
    tr = json.loads(ck[-1].read_text()).get("result", {}) if ck else {}
    q = {k: round(v["latency_s"], 2) for k, v in s.get("queries", {}).items()}
    out = {"wall_s": round(s.get("wall_time_s", wall), 1), "process_s": round(wall, 1),
           "capture_s": round(s.get("capture", {}).get("seconds", float("nan")), 1),
           "train_goal_s": round(s.get("train", {}).get("seconds", float("nan")), 1),
           "train_steps_s": round(tr.get("train_s", float("nan")), 1),
           "train_eval_and_save_s": round(tr.get("elapsed_s", float("nan")) - tr.get("train_s", float("nan")), 1),
           "queries_s": q, "queries_total_s": round(sum(q.values()), 2),
           "psnr": s.get("train", {}).get("psnr"), "all_checks_pass": bool(s.get("all_checks_pass")),
           "error": s.get("error"), "scene_cloud_logged": "scene cloud" in log}
    out["other_s"] = round(out["wall_s"] - out["capture_s"] - out["train_goal_s"] - out["queries_total_s"], 1)
    return out


def _demo_runs(a: argparse.Namespace, trees: dict[str, Path], env_base: dict, out: dict) -> None:
    """``--repeats`` demos of each tree, alternating, into ``out["runs"]``."""
    for i in range(a.repeats):
        for name, tree in trees.items():
            run_dir = Path(a.work) / f"{name}-{i}"
            # a domain of its own: another demo on this machine (domain 0) would take its frames and goals
            env = dict(env_base, PYTHONPATH=f"{tree}:{env_base.get('PYTHONPATH', '')}",
                       ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_DOMAIN_ID=str(random.randint(30, 99)))
            load0 = _load()
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, "-m", "f3rm_ros.ros.demo", "--preset", "cpu", "--out", str(run_dir)],
                               cwd=tree, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            (Path(a.work) / f"{name}-{i}.log").write_text(p.stdout + p.stderr)
            st = _demo_stages(run_dir, wall) if (run_dir / "summary.json").exists() else {"error": p.stderr[-500:]}
            st.update({"exit": p.returncode, "load_before": round(load0, 2), "load_after": round(_load(), 2)})
            out["runs"][name].append(st)
            print(f"{name:8s} run {i}: " + json.dumps(st), flush=True)


def cmd_demo(a: argparse.Namespace) -> dict:
    base = Path(a.work) / "baseline_tree"
    rev = _git("rev-parse", "--short", a.baseline_rev)
    if "baseline" in a.trees and not base.exists():
        _git("worktree", "add", "--detach", str(base), rev)
    trees = {k: v for k, v in (("baseline", base), ("new", REPO)) if k in a.trees}
    env_base = dict(os.environ)
    out: dict[str, Any] = {"benchmark": "cpu demo", "baseline_rev": rev,
                           "new_rev": _git("rev-parse", "--short", "HEAD"),
                           "new_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
                           "load_start": _load(), "runs": {k: [] for k in trees}}
    try:
        _demo_runs(a, trees, env_base, out)
    finally:  # the worktree is this run's: leave no trace in the repository's metadata
        if base.exists():
            _git("worktree", "remove", "--force", str(base))
    out["summary"] = {}
    for name, runs in out["runs"].items():
        ok = [r for r in runs if "wall_s" in r]
        out["summary"][name] = {k: statistics.median(r[k] for r in ok) for k in (
            "wall_s", "capture_s", "train_goal_s", "train_steps_s", "train_eval_and_save_s", "queries_total_s",
            "other_s")} if ok else {}
        out["summary"][name]["all_checks_pass"] = f"{sum(r.get('all_checks_pass', False) for r in runs)}/{len(runs)}"
        print(f"{name:8s} medians: {out['summary'][name]}")
    out["load_end"] = _load()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("query", help="grasp queries on trained fields, planner variants interleaved")
    q.add_argument("--run", nargs="*", help="demo run folders (their field and dataset)")
    q.add_argument("--fields", nargs="*", help="folders with field.json (test_grasp_success_trained's cache)")
    q.add_argument("--variants", nargs="+", default=["baseline", "cpu"])
    q.add_argument("--queries", nargs="*", help="default: the demo's three")
    q.add_argument("--all-queries", action="store_true", help="the success table's queries of each scene")
    q.add_argument("--repeats", type=int, default=3)
    q.add_argument("--threads", type=int, default=2, help="torch threads (the query node's: 2 on 2 cores)")
    q.add_argument("--stage-clock", choices=("cpu", "wall"), default="cpu",
                   help="the planner's stage times in process CPU time (default) or wall time")
    q.add_argument("--profile", default=None, metavar="QUERY", help="cProfile this query with the last variant")
    q.add_argument("--baseline-rev", default=None,
                   help="compare this checkout's planner code and PLANNER_CPU with this revision's ('cpu' variant of "
                        "each; one process per field and tree, alternating; --rounds rounds)")
    q.add_argument("--rounds", type=int, default=2, help="with --baseline-rev: rounds over the fields")
    q.add_argument("--work", default="/tmp/bench_cpu_query", help="with --baseline-rev: worktree and round files")
    d = sub.add_parser("demo", help="the whole demo, baseline code and this checkout alternately")
    d.add_argument("--baseline-rev", default="4ebd89e")
    d.add_argument("--repeats", type=int, default=2)
    d.add_argument("--work", default="/tmp/bench_cpu_demo")
    d.add_argument("--trees", nargs="+", choices=("baseline", "new"), default=["baseline", "new"],
                   help="which code to run (both alternate)")
    for p in (q, d):
        p.add_argument("--out", default=None, help="JSON (default benchmarks/results/cpu_<cmd>_<time>.json)")
    a = ap.parse_args(argv)
    if a.cmd == "query" and a.baseline_rev:
        Path(a.work).mkdir(parents=True, exist_ok=True)
        res = cmd_query_ab(a)
    else:
        res = cmd_query(a) if a.cmd == "query" else cmd_demo(a)
    res["command"] = " ".join(sys.argv)
    res["commit"] = _git("rev-parse", "--short", "HEAD")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(a.out) if a.out else REPO / "benchmarks" / "results" / f"cpu_{a.cmd}_{stamp}.json"
    from f3rm_ros.core.io import atomic_write_json

    atomic_write_json(out, res)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
