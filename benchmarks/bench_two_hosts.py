"""Two hosts: what the camera costs on the link (raw vs compressed) and the chain's end-to-end time, split over a
robot host and a GPU host (two network namespaces, f3rm_ros/ros/twohost.py) beside the same chain on one host.

    python benchmarks/bench_two_hosts.py                    # bandwidth + both chains (CPU demo preset), JSON out
    python benchmarks/bench_two_hosts.py --bandwidth-only   # seconds: message sizes only

1. Bandwidth: frames of the simulated RGB-D camera (built-in scene, its scanning trajectory) as the messages
   that would cross the link: raw (``sensor_msgs/Image`` rgb8 + 16UC1 depth + mono16 labels) and compressed as
   the camera relay sends them (JPEG q90 colour, compressedDepth PNG, 16-bit PNG labels); bytes per second at
   the sim camera's default rate (config/sim_camera_node.yaml: 320x240 at 2 Hz), at the demo's CPU preset
   (240x180 at 6 Hz) and for a RealSense-like stream (640x480 at 30 Hz); relay encode time per frame.
2. End to end (unless --bandwidth-only): the demo's chain with the CPU preset, once on one host
   (``config/bringup_sim.yaml``, raw images) and once on two (``bringup_sim_robot_host.yaml`` +
   ``bringup_sim_gpu_host.yaml``, multicast discovery), each from the nodes' start to the last checked grasp;
   the bytes the robot host sent over the veth during the two-host run are measured too (DDS overhead and
   all). Needs root and ``ip netns``.

Prints a table and writes ``benchmarks/results/two_hosts_<host>_<commit>.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STREAMS = {"default sim camera (320x240, 2 Hz)": (320, 240, 2.0),
           "demo CPU preset (240x180, 6 Hz)": (240, 180, 6.0),
           "RealSense-like (640x480, 30 Hz)": (640, 480, 30.0)}


def bandwidth(frames: int) -> dict:
    from f3rm_ros.core.sim import resolve_scene
    from f3rm_ros.core.sim.camera import SimCamera
    from f3rm_ros.core.sim.render import intrinsics_from_fov
    from f3rm_ros.core.sim.trajectory import TrajectoryConfig, scan_poses
    from f3rm_ros.ros.conversions import (depth_to_compressed, depth_to_image, labels_to_compressed, labels_to_image,
                                          rgb_to_compressed, rgb_to_image)

    scene = resolve_scene("mug_bowl_box")
    poses = scan_poses(TrajectoryConfig())
    out = {}
    for name, (w, h, rate) in STREAMS.items():
        cam = SimCamera(scene, intrinsics_from_fov(w, h, 42.5), poses)
        idx = np.linspace(0, len(cam) - 1, frames).round().astype(int)
        raw = {"colour": [], "depth": [], "labels": []}
        comp = {"colour": [], "depth": [], "labels": []}
        enc_s = []
        for i in idx:
            fr = cam.capture(int(i))
            raw["colour"].append(len(rgb_to_image(fr.image).data))
            raw["depth"].append(len(depth_to_image(fr.depth).data))
            raw["labels"].append(len(labels_to_image(fr.label).data))
            t0 = time.perf_counter()
            c = rgb_to_compressed(fr.image, "jpeg", 90)
            d = depth_to_compressed(fr.depth)
            lab = labels_to_compressed(fr.label)
            enc_s.append(time.perf_counter() - t0)
            comp["colour"].append(len(c.data))
            comp["depth"].append(len(d.data))
            comp["labels"].append(len(lab.data))
        per = {k: {"raw_bytes": float(np.mean(raw[k])), "compressed_bytes": float(np.mean(comp[k]))} for k in raw}
        rgbd_raw = per["colour"]["raw_bytes"] + per["depth"]["raw_bytes"]
        rgbd_comp = per["colour"]["compressed_bytes"] + per["depth"]["compressed_bytes"]
        out[name] = {"width": w, "height": h, "rate_hz": rate, "frames": int(frames), "per_frame": per,
                     "rgbd_raw_MBps": rgbd_raw * rate / 1e6, "rgbd_compressed_MBps": rgbd_comp * rate / 1e6,
                     "colour_raw_MBps": per["colour"]["raw_bytes"] * rate / 1e6,
                     "colour_compressed_MBps": per["colour"]["compressed_bytes"] * rate / 1e6,
                     "labels_raw_MBps": per["labels"]["raw_bytes"] * rate / 1e6,
                     "labels_compressed_MBps": per["labels"]["compressed_bytes"] * rate / 1e6,
                     "encode_ms_per_frame": 1000 * float(np.median(enc_s))}
    fox = ROOT.parent / "shared" / "data" / "fox" / "images"
    if fox.is_dir():  # real photographs compress far less than the synthetic world: colour at 640x480, 30 Hz
        from PIL import Image

        sizes, enc_s = [], []
        for f in sorted(fox.glob("*.jpg"))[:frames]:
            with Image.open(f) as im:
                rgb = np.asarray(im.convert("RGB").resize((640, 480), Image.BILINEAR))
            t0 = time.perf_counter()
            sizes.append(len(rgb_to_compressed(rgb, "jpeg", 90).data))
            enc_s.append(time.perf_counter() - t0)
        if sizes:
            out["real photos (fox, colour only, 640x480, 30 Hz)"] = {
                "width": 640, "height": 480, "rate_hz": 30.0, "frames": len(sizes),
                "per_frame": {"colour": {"raw_bytes": 640 * 480 * 3.0, "compressed_bytes": float(np.mean(sizes))}},
                "colour_raw_MBps": 640 * 480 * 3 * 30 / 1e6, "colour_compressed_MBps": float(np.mean(sizes)) * 30 / 1e6,
                "encode_ms_per_frame": 1000 * float(np.median(enc_s))}
    return out


def _params(run: Path) -> Path:
    from f3rm_ros.ros.demo import node_overrides, write_overrides

    ov = node_overrides("cpu", run)
    ov["capture_node"]["max_pending"] = 128
    return write_overrides(ov, run / "params.yaml")


def one_host(run: Path) -> dict:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "f3rm_ros.ros.demo", "--preset", "cpu", "--out", str(run)],
                       cwd=str(ROOT), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    s = json.loads((run / "summary.json").read_text())
    return {"wall_s": wall, "exit": r.returncode, "summary": _brief(s)}


def two_hosts(run: Path) -> dict:
    from f3rm_ros.ros.twohost import TwoHosts

    run.mkdir(parents=True, exist_ok=True)
    params = _params(run)
    cfg = ROOT / "config"
    t0 = time.perf_counter()
    with TwoHosts("multicast") as hosts:
        gpu = hosts.bringup("gpu", cfg / "bringup_sim_gpu_host.yaml", params, run / "gpu.log", run / "g.ready")
        client = hosts.popen("gpu", [sys.executable, "-m", "f3rm_ros.ros.demo", "--attach", "--preset", "cpu",
                                     "--out", str(run)], run / "client.log", cwd=str(ROOT))
        robot = hosts.bringup("robot", cfg / "bringup_sim_robot_host.yaml", params, run / "robot.log",
                              run / "r.ready")
        hosts.wait_ready(gpu, run / "g.ready", 180, run / "gpu.log")
        hosts.wait_ready(robot, run / "r.ready", 180, run / "robot.log")
        tx0, t_cap = hosts.tx_bytes("robot"), time.perf_counter()
        ds = run / "data" / "sim_capture"
        # the capture is over when the client has stopped it (summary written at the end; poll the client's log)
        while client.poll() is None and "captured" not in (run / "client.log").read_text(errors="replace"):
            time.sleep(0.2)
        capture_s, tx = time.perf_counter() - t_cap, hosts.tx_bytes("robot") - tx0
        client.wait()
        wall = time.perf_counter() - t0
    s = json.loads((run / "summary.json").read_text())
    frames = len(json.loads((ds / "transforms.json").read_text())["frames"])
    return {"wall_s": wall, "exit": client.returncode, "summary": _brief(s), "robot_tx_bytes_during_capture": tx,
            "capture_phase_s": capture_s, "robot_tx_MBps_during_capture": tx / capture_s / 1e6, "frames": frames}


def _brief(s: dict) -> dict:
    return {"capture_s": s.get("capture", {}).get("seconds"), "frames": s.get("capture", {}).get("frames"),
            "train_s": s.get("train", {}).get("seconds"), "psnr": s.get("train", {}).get("psnr"),
            "queries": {q: {"top_passes": v["top_passes"], "latency_s": v["latency_s"]}
                        for q, v in s.get("queries", {}).items()},
            "all_checks_pass": s.get("all_checks_pass"), "demo_wall_s": s.get("wall_time_s"),
            "error": s.get("error")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=8, help="frames per stream for the bandwidth figures")
    ap.add_argument("--bandwidth-only", action="store_true")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/two_hosts_<host>_<commit>.json)")
    args = ap.parse_args(argv)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    res: dict = {"commit": commit, "host": platform.node(), "cpus": __import__("os").cpu_count(),
                 "bandwidth": bandwidth(args.frames)}
    print(f"{'stream':36s} {'colour raw':>11s} {'jpeg q90':>9s} {'depth raw':>10s} {'PNG':>7s} "
          f"{'RGB-D raw':>10s} {'compressed':>10s}  ratio  encode")
    for name, b in res["bandwidth"].items():
        p = b["per_frame"]
        if "depth" not in p:
            c = p["colour"]
            print(f"{name:36s} {c['raw_bytes'] / 1e3:8.1f} kB {c['compressed_bytes'] / 1e3:6.1f} kB {'':20s}"
                  f" {b['colour_raw_MBps']:6.2f} MB/s {b['colour_compressed_MBps']:6.3f} MB/s "
                  f"{b['colour_raw_MBps'] / b['colour_compressed_MBps']:5.1f}x {b['encode_ms_per_frame']:5.1f} ms")
            continue
        print(f"{name:36s} {p['colour']['raw_bytes'] / 1e3:8.1f} kB {p['colour']['compressed_bytes'] / 1e3:6.1f} kB "
              f"{p['depth']['raw_bytes'] / 1e3:7.1f} kB {p['depth']['compressed_bytes'] / 1e3:4.1f} kB "
              f"{b['rgbd_raw_MBps']:6.2f} MB/s {b['rgbd_compressed_MBps']:6.3f} MB/s "
              f"{b['rgbd_raw_MBps'] / b['rgbd_compressed_MBps']:5.1f}x {b['encode_ms_per_frame']:5.1f} ms")
    if not args.bandwidth_only:
        from f3rm_ros.ros.twohost import netns_usable

        ok, why = netns_usable()
        if not ok:
            print(f"two-host chain skipped: {why}")
        else:
            base = ROOT / "runs" / time.strftime("bench-two-hosts-%Y%m%d-%H%M%S")
            res["one_host"] = one_host(base / "one_host")
            res["two_hosts"] = two_hosts(base / "two_hosts")
            for k in ("one_host", "two_hosts"):
                r = res[k]
                s = r["summary"]
                print(f"{k:9s}: wall {r['wall_s']:6.1f} s (capture {s['capture_s'] or 0:5.1f} s, {s['frames']} frames; "
                      f"train {s['train_s'] or 0:5.1f} s, PSNR {s['psnr'] or 0:.2f} dB); checks pass: "
                      f"{s['all_checks_pass']}; queries {s['queries']}")
            t = res["two_hosts"]
            print(f"robot host sent {t['robot_tx_bytes_during_capture'] / 1e6:.2f} MB over the link in the "
                  f"{t['capture_phase_s']:.1f} s capture phase ({t['robot_tx_MBps_during_capture']:.3f} MB/s)")
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"two_hosts_{platform.node()}_{commit}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
