#!/usr/bin/env python3
"""Soak and fault benchmark of the query node (issue 20): many clients, killed nodes, a full disk.

What it does (real processes over DDS, this machine):

1. **Soak.** The query node runs under ``f3rm-ros bringup --respawn`` on a trained field (``--checkpoint``, by
   default the newest ``runs/demo-*/checkpoints/**/field.ckpt`` of a CPU demo run) with the demo's CPU planner
   settings. ``--clients`` processes (10), each with its own :class:`~f3rm_ros.ros.client.F3RMClient`, send a mix
   of requests for ``--duration`` seconds: grasp queries, similarity queries, bad requests that must be refused
   with the right reason, and now and then a load of the same field. Every request's kind, outcome and latency
   are recorded; the node's RSS is sampled every second.
2. **Faults.** ``--kills`` times during the soak the query node is SIGKILLed; bringup starts it again, it
   restores its field by itself. Reported per kill: how long the clients waiting on it took to get
   ``ServerGone`` (detection), and how long until a request was served again.
3. **Training** (``--train-steps``, 0 = skip): a train node trains the demo's dataset with label features; it
   is SIGKILLed halfway, restarted, and the run is resumed through the action (``resume: latest``); an
   uninterrupted run of the same length gives the reference quality (held-out PSNR, feature MSE).
4. **Full disk** (needs root): a capture session fills a 96 KiB tmpfs; reported: frames written, write
   failures, orphan files, STOP's answer.

Outcomes: ``ok``, ``refused`` (an expected refusal with the expected reason), ``refused_wrong`` (refused with
another reason), ``busy``, ``not_ready``, ``server_gone``, ``unavailable``, ``timeout``, ``internal_error``,
``error``. Saved as JSON (``--out``): counts by kind and outcome, latency percentiles by kind (answers only),
RSS over time and MB per 1,000 requests after warm-up, detection and recovery times, the training and disk
results, the command and the commit.

    python benchmarks/bench_soak_faults.py --duration 240 --kills 2 --out benchmarks/results/soak_faults.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TEXTS = ["mug handle", "bowl", "box", "mug rim", "mug", "bowl rim"]
REFUSALS = [  # (call, its expected reason)
    ("grasp_empty", "empty query"),
    ("similarity_bad_min", "min_similarity"),
    ("load_outside", "outside the allowed root"),
    ("grasp_empty_box", "max must exceed min"),
    ("grasp_long", "characters long"),
]
WORKSPACE = ([-0.35, -0.3, 0.005], [0.35, 0.3, 0.3])  # the synthetic table (config/bringup_sim.yaml)


# --- client processes ------------------------------------------------------------------------------

def _client(idx: int, ns: str, duration: float, seed: int, weights: dict, ckpt: str, out: str, think: float) -> None:
    import rclpy

    from f3rm_ros.ros.client import (Busy, F3RMClient, NotReady, RequestFailed, ServerGone, ServiceUnavailable,
                                     Timeout)

    rclpy.init()
    c = F3RMClient(namespace=ns)
    rng = random.Random(seed)
    kinds, w = zip(*weights.items(), strict=True)
    recs = []
    t0 = time.time()  # the first calls find the services and the node's liveliness (DDS discovery): not timed
    for fn in (lambda: c.query_similarity("bowl", min_similarity=2.0, timeout=60),
               lambda: c.query_grasps("  ", timeout=60), lambda: c.load_field("/etc/passwd", timeout=60)):
        try:
            fn()
        except Exception:  # noqa: BLE001 - refusals expected
            pass
    recs.append({"client": idx, "kind": "connect", "sub": "", "outcome": "ok", "t0": t0, "t1": time.time(),
                 "latency_s": time.time() - t0, "msg": ""})
    end = time.time() + duration
    while time.time() < end:
        kind = rng.choices(kinds, w)[0]
        want, sub = "", ""
        t0 = time.time()
        try:
            if kind == "grasp":
                c.query_grasps(rng.choice(TEXTS), timeout=120)
            elif kind == "similarity":
                c.query_similarity(rng.choice(TEXTS), timeout=30)
            elif kind == "load":
                c.load_field(ckpt, timeout=120)
            else:
                sub, want = rng.choice(REFUSALS)
                if sub == "grasp_empty":
                    c.query_grasps("  ", timeout=30)
                elif sub == "similarity_bad_min":
                    c.query_similarity("bowl", min_similarity=2.0, timeout=30)
                elif sub == "load_outside":
                    c.load_field("/etc/passwd", timeout=30)
                elif sub == "grasp_empty_box":
                    c.query_grasps("mug", workspace=((0.5, 0, 0), (0.1, 1, 1)), timeout=30)
                else:
                    c.query_grasps("mug " * 300, timeout=30)
            outcome, msg = ("ok", "") if kind != "refusal" else ("refused_wrong", "answered success")
        except Busy as e:
            outcome, msg = "busy", e.reason
        except NotReady as e:
            outcome, msg = "not_ready", e.reason
        except RequestFailed as e:
            msg = e.reason
            if "internal error" in msg:
                outcome = "internal_error"
            elif kind == "refusal":
                outcome = "refused" if want in msg else "refused_wrong"
            else:
                outcome = "refused"  # e.g. "'banana' not found": an answer
        except ServerGone as e:
            outcome, msg = "server_gone", e.reason
        except ServiceUnavailable as e:
            outcome, msg = "unavailable", e.reason
        except Timeout as e:
            outcome, msg = "timeout", e.reason
        except Exception as e:  # noqa: BLE001 - counted
            outcome, msg = "error", f"{type(e).__name__}: {e}"
        t1 = time.time()
        recs.append({"client": idx, "kind": kind, "sub": sub, "outcome": outcome, "t0": t0, "t1": t1,
                     "latency_s": t1 - t0, "msg": msg[:160]})
        if think > 0:
            time.sleep(rng.uniform(0, think))
    c.close()
    rclpy.shutdown()
    Path(out).write_text(json.dumps(recs))


# --- helpers -----------------------------------------------------------------------------------------

def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _pids(log: Path, exe: str) -> list[int]:
    return [int(p) for p in re.findall(rf"started {exe} \(pid (\d+)\)", log.read_text(errors="replace"))]


def _pct(v: list[float]) -> dict:
    if not v:
        return {"n": 0}
    a = np.asarray(v)
    return {"n": len(v), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def _newest_demo_field() -> Path | None:
    found = sorted(ROOT.glob("runs/demo-*/checkpoints/**/field.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def _wait(pred, timeout: float, what: str, poll: float = 0.2):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = pred()
        if v:
            return v
        time.sleep(poll)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


# --- phases -----------------------------------------------------------------------------------------

def soak(args, work: Path, ckpt: Path) -> dict:
    from f3rm_ros.core.presets import PLANNER_CPU
    from f3rm_ros.ros.paramfile import format_value

    ns = "/soak"
    params = {"checkpoint_root": str(work / "ckpt"), "tasks_dir": str(work / "tasks"), "checkpoint_topic": "",
              "device": "cpu", "cloud_cameras": 4, "cloud_scale": 0.5, "grasp_workers": 1,
              "grasp_queue": args.grasp_queue, "planner.workspace_min_m": WORKSPACE[0],
              "planner.workspace_max_m": WORKSPACE[1], **{f"planner.{k}": v for k, v in PLANNER_CPU.items()}}
    inline = ", ".join(f"{k}: {format_value(v)}" for k, v in params.items())
    cfg = work / "bringup.yaml"
    cfg.write_text(f"namespace: {ns}\nrespawn: true\nnodes:\n  - executable: query_node\n"
                   f"    parameters: [{ROOT / 'config' / 'query_node.yaml'}, {{{inline}}}]\n")
    log, ready = work / "bringup.log", work / "ready"
    bringup = subprocess.Popen([sys.executable, "-m", "f3rm_ros.cli.ros", "bringup", str(cfg), "--ready-file",
                                str(ready)], stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=str(ROOT))
    res: dict = {}
    try:
        _wait(lambda: ready.exists() or bringup.poll() is not None, 180, "the bringup")
        import rclpy

        from f3rm_ros.ros.client import F3RMClient

        rclpy.init()
        c = F3RMClient(namespace=ns)
        t = time.time()
        info = c.load_field(str(ckpt), timeout=300)
        res["load_s"] = time.time() - t
        t = time.time()
        c.query_similarity("bowl", timeout=120)
        res["first_similarity_s"] = time.time() - t
        t = time.time()
        try:
            c.query_grasps("mug handle", timeout=300)
        except Exception as e:  # noqa: BLE001 - the answer is what matters here
            print("warm-up grasp:", e)
        res["first_grasp_s"] = time.time() - t
        c.close()
        rclpy.shutdown()
        print(f"field {info.checkpoint_path} loaded in {res['load_s']:.1f} s; warm: similarity "
              f"{res['first_similarity_s']:.2f} s, grasp {res['first_grasp_s']:.1f} s", flush=True)

        weights = {"grasp": args.grasp_weight, "similarity": 0.4, "refusal": 0.35, "load": args.load_weight}
        ctx = mp.get_context("spawn")
        outs = [work / f"client{i}.json" for i in range(args.clients)]
        procs = [ctx.Process(target=_client, args=(i, ns, args.duration, 1000 + i, weights, str(ckpt), str(o),
                                                   args.think)) for i, o in enumerate(outs)]
        t_start = time.time()
        for p in procs:
            p.start()
        rss: list[dict] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(1.0):
                pids = _pids(log, "query_node")
                if pids and (mb := _rss_mb(pids[-1])) is not None:
                    rss.append({"t": time.time() - t_start, "pid": pids[-1], "rss_mb": mb})

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        kills = []
        for k in range(args.kills):
            t_kill = t_start + args.duration * (k + 1) / (args.kills + 1)
            time.sleep(max(0.0, t_kill - time.time()))
            pid = _pids(log, "query_node")[-1]
            os.kill(pid, signal.SIGKILL)
            kills.append({"t": time.time(), "pid": pid})
            print(f"SIGKILL query node pid {pid} at {time.time() - t_start:.1f} s", flush=True)
        for p in procs:
            p.join(args.duration + 300)
        stop.set()
        th.join(5)
        recs = [r for o in outs if o.exists() for r in json.loads(o.read_text())]
        res.update(analyse(recs, kills, rss, t_start, args))
        res["clients_finished"] = sum(1 for o in outs if o.exists())
        res["respawns"] = len(_pids(log, "query_node")) - 1
    finally:
        from f3rm_ros.ros.common import stop_process

        stop_process(bringup)
    return res


def analyse(recs: list[dict], kills: list[dict], rss: list[dict], t_start: float, args) -> dict:
    out: dict = {"requests": len(recs)}
    counts: dict = {}
    for r in recs:
        counts.setdefault(r["kind"], {}).setdefault(r["outcome"], 0)
        counts[r["kind"]][r["outcome"]] += 1
    out["by_kind_and_outcome"] = counts
    answered = ("ok", "refused", "refused_wrong", "busy", "not_ready", "internal_error")
    lat = {}
    for kind in sorted({r["kind"] for r in recs}):
        lat[kind] = _pct([r["latency_s"] for r in recs if r["kind"] == kind and r["outcome"] in answered])
    # while no node was down: from the start to the first kill, and from 15 s after a kill to the next
    down = [(k["t"], k["t"] + 15.0) for k in kills]
    steady = [r for r in recs if not any(a - 1 <= r["t1"] and r["t0"] <= b for a, b in down)]
    lat_steady = {kind: _pct([r["latency_s"] for r in steady if r["kind"] == kind and r["outcome"] in answered])
                  for kind in sorted({r["kind"] for r in steady})}
    out["latency_s"] = {"all_answers": lat, "steady_state": lat_steady}
    examples = {}
    for r in recs:
        if r["outcome"] in ("refused_wrong", "internal_error", "error", "timeout"):
            examples.setdefault(r["outcome"], []).append(r["msg"])
    out["bad_outcome_examples"] = {k: v[:5] for k, v in examples.items()}
    faults = []
    for k in kills:
        inflight = [r for r in recs if r["t0"] < k["t"] < r["t1"]]
        gone = [r["t1"] - k["t"] for r in inflight if r["outcome"] == "server_gone"]
        served = [r["t1"] - k["t"] for r in recs if r["t0"] > k["t"] and r["outcome"] == "ok"
                  and r["kind"] in ("grasp", "similarity")]
        loads = [r for r in recs if k["t"] < r["t0"] and r["kind"] == "load" and (not served or
                                                                               r["t0"] < k["t"] + min(served))]
        faults.append({"pid": k["pid"], "at_s": k["t"] - t_start, "in_flight": len(inflight),
                       "in_flight_outcomes": {o: sum(1 for r in inflight if r["outcome"] == o)
                                              for o in {r["outcome"] for r in inflight}},
                       "detect_s": _pct(gone), "served_again_after_s": min(served) if served else None,
                       "loads_sent_before_served_again": len(loads)})
    out["kills"] = faults
    out["rss"] = rss
    # memory growth per 1,000 requests after warm-up, per process life (a respawn starts a new one)
    growth = []
    for pid in sorted({s["pid"] for s in rss}, key=lambda p: min(s["t"] for s in rss if s["pid"] == p)):
        ss = [s for s in rss if s["pid"] == pid]
        ss = ss[int(len(ss) * args.warmup_fraction):]
        if len(ss) < 5:
            continue
        done = [sum(1 for r in recs if r["t1"] - t_start <= s["t"]) for s in ss]
        if done[-1] - done[0] < 50:
            continue
        slope = float(np.polyfit(done, [s["rss_mb"] for s in ss], 1)[0]) * 1000.0
        growth.append({"pid": pid, "samples": len(ss), "requests": done[-1] - done[0],
                       "rss_first_mb": ss[0]["rss_mb"], "rss_last_mb": ss[-1]["rss_mb"], "mb_per_1000_requests": slope})
    out["rss_growth"] = growth
    return out


def train_phase(args, work: Path, data: Path) -> dict:
    """Kill a training, resume it through the action; an uninterrupted run of the same length for reference."""
    import rclpy

    from f3rm_ros.ros.client import F3RMClient, ServerGone
    from f3rm_ros.ros.common import stop_process

    ns = "/soak_train"
    droot, croot = work / "train_data", work / "train_ckpt"
    droot.mkdir(parents=True, exist_ok=True)
    if not (droot / data.name).exists():
        shutil.copytree(data, droot / data.name)
    from f3rm_ros.ros.demo import SMALL_MODEL

    params = {"data_root": str(droot), "checkpoint_root": str(croot), "device": "cpu", "torch_threads": 2,
              "trainer.rays_per_batch": 512, "trainer.eval_every": 0, "trainer.eval_num_images": 2,
              "trainer.checkpoint_every": max(5, args.train_steps // 6), "trainer.progress_every": 1,
              "features.extractor": "labels",
              **SMALL_MODEL}

    def start(tag: str) -> subprocess.Popen:
        argv = [sys.executable, "-m", "f3rm_ros.ros.train_node", "--ros-args", "-r", f"__ns:={ns}"]
        for k, v in params.items():
            v = json.dumps(v) if isinstance(v, (list, bool)) else v
            argv += ["-p", f"{k}:={v}"]
        return subprocess.Popen(argv, stdout=open(work / f"train_{tag}.log", "w"), stderr=subprocess.STDOUT,
                                cwd=str(ROOT))

    res: dict = {"steps": args.train_steps}
    proc = start("a")
    rclpy.init()
    c = F3RMClient(namespace=ns)
    try:
        far = threading.Event()
        box: dict = {}

        def run() -> None:
            try:
                box["out"] = c.train(data.name, args.train_steps, "labels", timeout=3600,
                                     feedback_cb=lambda f: far.set() if f.step >= args.train_steps // 2 else None)
            except Exception as e:  # noqa: BLE001
                box["err"] = e
            box["t"] = time.time()

        th = threading.Thread(target=run, daemon=True)
        th.start()
        if not far.wait(1800):
            raise RuntimeError(f"training did not get to step {args.train_steps // 2}: {box}")
        t_kill = time.time()
        proc.kill()
        proc.wait(10)
        th.join(60)
        res["detect_s"] = box.get("t", float("nan")) - t_kill
        res["kill_outcome"] = f"{type(box.get('err')).__name__}: {box.get('err')}"[:300]
        res["server_gone"] = isinstance(box.get("err"), ServerGone)
        t_restart = time.time()
        proc = start("b")
        out = c.train(data.name, 0, "", timeout=3600, resume="latest")
        res["resumed"] = {"steps_done": out.steps_done, "final_psnr": out.final_psnr,
                          "final_feature_mse": out.final_feature_mse, "message": out.message[:300],
                          "restart_to_done_s": time.time() - t_restart}
        ref = c.train(data.name, args.train_steps, "labels", timeout=3600)
        res["uninterrupted"] = {"steps_done": ref.steps_done, "final_psnr": ref.final_psnr,
                                "final_feature_mse": ref.final_feature_mse}
    finally:
        c.close()
        rclpy.shutdown()
        stop_process(proc)
    return res


def disk_phase(work: Path) -> dict:
    from f3rm_ros.core.cameras import CameraIntrinsics
    from f3rm_ros.core.capture import CaptureConfig, CaptureSession
    from f3rm_ros.core.geometry import make_transform

    NS, K = 1_000_000_000, CameraIntrinsics(fx=30.0, fy=30.0, cx=16.0, cy=12.0, width=32, height=24)

    def _pose(i: int) -> np.ndarray:  # 10 cm and 7 degrees apart: every frame is a keyframe
        a = np.radians(7.0 * i)
        R = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])
        return make_transform(R, [0.1 * i, 0.02 * i, 0.5])

    def _image(i: int) -> np.ndarray:  # sharp and incompressible
        return np.random.default_rng(1000 + i).integers(0, 256, (24, 32, 3), dtype=np.uint8)

    def _labels(i: int) -> np.ndarray:
        return np.full((24, 32), 10 + i, np.uint16)

    mnt = work / "disk"
    mnt.mkdir(exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        return {"skipped": f"cannot mount a tmpfs: {r.stderr.strip()}"}
    try:
        s = CaptureSession(CaptureConfig(data_root=str(mnt), dataset_name="scan", pose_wait_s=0.5,
                                         blur_threshold=1.0), camera_info_source="/c", labels_source="/l",
                           clock=lambda: 100.0)
        s.open_dataset("scan")
        s.start()
        s.add_camera_info(K)
        s.set_label_table({"1": {"object": "mug", "category": "mug", "part": "", "synonyms": []}})
        for i in range(60):
            s.add_pose(i * NS, _pose(i))
            s.add_labels(i * NS, _labels(i))
            s.add_image(i * NS, _image(i))
            s.write_queue.wait_idle(10)
        stop_ok, stop_msg = s.stop()
        save_ok, save_msg = s.save()
        root = mnt / "scan"
        frames = json.loads((root / "transforms.json").read_text())["frames"]
        referenced = {fr[k] for fr in frames for k in ("file_path", "label_path") if k in fr}
        on_disk = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} - {"transforms.json"}
        s.close()
        return {"frames_written": len(frames), "write_failures": s.frames_failed,
                "orphans": sorted(on_disk - referenced), "stop": [stop_ok, stop_msg], "save": [save_ok, save_msg]}
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="trained field (default: the newest CPU demo run's)")
    ap.add_argument("--dataset", default=None, help="dataset for the training phase (default: that demo's capture)")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--duration", type=float, default=240.0, help="seconds of soak")
    ap.add_argument("--kills", type=int, default=2, help="SIGKILLs of the query node during the soak")
    ap.add_argument("--grasp-weight", type=float, default=0.2, help="share of grasp queries in the mix")
    ap.add_argument("--load-weight", type=float, default=0.02, help="share of load_field requests")
    ap.add_argument("--grasp-queue", type=int, default=4, help="the query node's grasp_queue")
    ap.add_argument("--think", type=float, default=0.3, help="each client waits up to this long between requests")
    ap.add_argument("--warmup-fraction", type=float, default=0.3, help="RSS samples of a process life left out")
    ap.add_argument("--train-steps", type=int, default=120, help="training phase length (0 = skip the phase)")
    ap.add_argument("--no-disk", action="store_true", help="skip the full-disk phase")
    ap.add_argument("--work", default=None, help="work folder (default runs/bench-soak-<time>)")
    ap.add_argument("--out", default=None, help="JSON output (default <work>/soak_faults.json)")
    args = ap.parse_args(argv)

    ckpt = Path(args.checkpoint) if args.checkpoint else _newest_demo_field()
    if ckpt is None or not ckpt.is_file():
        print("no field: pass --checkpoint or run the CPU demo first (f3rm-ros demo)", file=sys.stderr)
        return 2
    work = Path(args.work or ROOT / "runs" / f"bench-soak-{time.strftime('%Y%m%d-%H%M%S')}")
    (work / "ckpt").mkdir(parents=True, exist_ok=True)
    local = work / "ckpt" / "field.ckpt"
    shutil.copyfile(ckpt, local)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=str(ROOT)).stdout.strip()
    result = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "commit": commit, "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "field": str(ckpt), "settings": vars(args)}
    t0 = time.time()
    result["soak"] = soak(args, work, local)
    if args.train_steps > 0:
        data = Path(args.dataset) if args.dataset else ckpt.parents[3] / "data" / "sim_capture"
        result["training"] = train_phase(args, work, data) if data.is_dir() else {"skipped": f"no dataset {data}"}
    if not args.no_disk:
        result["disk_full"] = disk_phase(work)
    result["wall_s"] = time.time() - t0
    out = Path(args.out or work / "soak_faults.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    s = result["soak"]
    print(json.dumps({k: s[k] for k in ("requests", "by_kind_and_outcome", "kills", "rss_growth")}, indent=1))
    print(json.dumps(s["latency_s"]["steady_state"], indent=1))
    for k in ("training", "disk_full"):
        if k in result:
            print(k, json.dumps(result[k], indent=1))
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
