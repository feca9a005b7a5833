"""Training robustness sweep: how often a short training run gives a usable field, per setting and seed.

For each (setting, seed, scene) it trains a field from scratch on a synthetic-world dataset (rendered with
depth, e.g. ``f3rm-sim render mug_bowl_box --out DIR --num-views 60 --width 240 --height 180
--set.write_depth true``) and measures on the held-out views:

- ``psnr``: held-out PSNR (dB);
- ``depth_med_mm``: median |rendered depth - true depth| over pixels that hit something, where the
  rendered depth is the *median* of the ray's weights (where they sum to 0.5), so a surface left
  semi-transparent shows as a large error (the weights reach 0.5 only at the far plane);
- ``depth_bad3cm``: fraction of those pixels off by more than 3 cm;
- ``bg_near``: fraction of background pixels whose depth is under 1 m (floaters / collapse onto the cameras);
- ``fmse``: feature MSE.

A run counts as failed when its held-out PSNR is under 20 dB or its median depth error is over 1 m.
Jobs run in parallel processes (``--procs``; on a GPU several small trainings share it well).

    python benchmarks/sweep_robustness.py --data-root DIR_WITH_SCENES --settings base,synthetic --seeds 0-6

One JSON line per run goes to ``benchmarks/results/robustness_<tag>.jsonl``; a per-setting table is printed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
import traceback
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# setting name -> (trainer preset, flat overrides). Every setting trains the "small" networks at 1024 rays.
SETTINGS: dict[str, tuple[str, dict]] = {
    "base": ("small", {}),
    "near0.2": ("small", {"model.sampler.near": 0.2}),
    "near0.2+far5": ("small", {"model.sampler.near": 0.2, "model.sampler.far": 5.0}),
    "near0.2+far5+dist0.01": ("small", {"model.sampler.near": 0.2, "model.sampler.far": 5.0,
                                        "losses.distortion_mult": 0.01}),
    "synthetic": ("small+synthetic", {}),
    "synthetic+white": ("small+synthetic", {"model.background": "white"}),
    "synthetic-300": ("small+synthetic", {"_steps": 300}),
    "synthetic-r512": ("small+synthetic", {"rays_per_batch": 512}),
}


def run_one(job: tuple) -> dict:
    setting, seed, scene_dir, steps, device, threads = job
    import torch  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415

    from f3rm_ros.core.cameras import generate_rays, intrinsics_tensor, pixel_centres  # noqa: PLC0415
    from f3rm_ros.core.presets import trainer_config  # noqa: PLC0415
    from f3rm_ros.core.workflows.train_scene import TrainSceneRequest, train_scene  # noqa: PLC0415

    torch.set_num_threads(threads)
    data = Path(scene_dir)
    preset, overrides = SETTINGS[setting]
    overrides = dict(overrides)
    steps = overrides.pop("_steps", steps)
    cfg = trainer_config(preset, **{"seed": seed, "rays_per_batch": 1024, "eval_every": 0, "eval_num_images": 0,
                                    "checkpoint_every": 0, "mixed_precision": False, **overrides})
    res = train_scene(TrainSceneRequest(data, num_steps=steps, trainer=cfg, device=device, keep_trainer=True,
                                        features={"extractor": "labels", "labels": {"dataset": str(data)}},
                                        feature_cache=Path(f"/tmp/f3rm_sweep_cache_{data.name}")))
    tr, train_s, ev = res.trainer, res.train_s, res.eval  # train_s: the training steps (synchronised at the end)
    metres_per_unit = float(np.cbrt(np.linalg.det(tr.nerf_to_world[:3, :3])))
    meta = json.loads((data / "transforms.json").read_text())
    errs, bg_near = [], []
    tr.model.eval()
    for f in (int(i) for i in tr.eval_indices):
        fr = meta["frames"][f]
        z = np.asarray(Image.open(data / fr["depth_path"]), dtype=np.float64) * fr.get("depth_scale", 0.001)
        K = tr.intrinsics[f]
        c2w = torch.as_tensor(tr.c2w_nerf[f], dtype=torch.float32, device=tr.device)
        px = pixel_centres(K.width, K.height, device=tr.device).reshape(-1, 2)
        K9 = intrinsics_tensor(K, device=tr.device)
        med = []
        with torch.no_grad():
            for s in range(0, px.shape[0], 16384):
                p = px[s:s + 16384]
                o, d = generate_rays(K9.expand(p.shape[0], -1), c2w.expand(p.shape[0], 4, 4), p)
                r = tr.model.render_rays(o, d, None, training=False, with_features=False)
                t = r["t_edges"]
                mid = 0.5 * (t[:, 1:] + t[:, :-1])
                cw = torch.cumsum(r["weights"], -1)
                i = torch.searchsorted(cw, torch.full_like(cw[:, :1], 0.5)).clamp(max=mid.shape[1] - 1)
                med.append(torch.gather(mid, 1, i)[:, 0])
        depth = torch.cat(med).reshape(K.height, K.width).float().cpu().numpy() * metres_per_unit
        u, v = np.meshgrid(np.arange(K.width) + 0.5, np.arange(K.height) + 0.5)
        ray_len = z * np.sqrt(((u - fr["cx"]) / fr["fl_x"]) ** 2 + ((v - fr["cy"]) / fr["fl_y"]) ** 2 + 1)
        hit = z > 0
        errs.append(np.abs(depth[hit] - ray_len[hit]))
        bg_near.append(float(np.mean(depth[~hit] < 1.0)) if (~hit).any() else 0.0)
    e = np.concatenate(errs)
    return {"scene": data.name, "setting": setting, "seed": seed, "steps": steps, "device": str(tr.device),
            "train_s": round(train_s, 1), "psnr": round(ev["psnr"], 2),
            "fmse": round(ev.get("feature_mse", float("nan")), 4),
            "depth_med_mm": round(1000 * float(np.median(e)), 1), "depth_bad3cm": round(float(np.mean(e > 0.03)), 3),
            "bg_near": round(float(np.mean(bg_near)), 3)}


def _safe(job: tuple) -> dict:
    try:
        return run_one(job)
    except Exception:  # noqa: BLE001 - one failed job is reported, the sweep goes on
        return {"setting": job[0], "seed": job[1], "scene": Path(job[2]).name, "error": traceback.format_exc()[-1500:]}


def failed(r: dict) -> bool:
    return "error" in r or r["psnr"] < 20.0 or r["depth_med_mm"] > 1000.0


def table(rows: list[dict]) -> str:
    by = defaultdict(list)
    for r in rows:
        by[r["setting"]].append(r)
    lines = ["| setting | failed / runs | held-out PSNR (ok runs, mean) | median depth error mm (ok, median) "
             "| >3 cm (ok, median) | failed runs (scene, seed) |", "|---|---|---|---|---|---|"]
    for name, rs in by.items():
        ok = [r for r in rs if not failed(r)]
        bad = sorted((r["scene"], r["seed"]) for r in rs if failed(r))

        def stat(k, f, ok=ok):
            return f"{f(r[k] for r in ok):.3g}" if ok else "-"
        lines.append(f"| {name} | {len(bad)} / {len(rs)} | {stat('psnr', statistics.mean)} | "
                     f"{stat('depth_med_mm', statistics.median)} | {stat('depth_bad3cm', statistics.median)} | {bad} |")
    return "\n".join(lines)


def _seeds(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b) + 1)) if b else [int(a)]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", type=Path, required=True, help="folder holding one rendered dataset per scene")
    ap.add_argument("--scenes", default="mug_bowl_box,screwdriver_mug_can,cluttered_table")
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma list of {list(SETTINGS)}")
    ap.add_argument("--seeds", default="0-6", help="e.g. 0-6 or 0,3,5")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--procs", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--tag", default=None, help="results file name tag (default: device and commit)")
    a = ap.parse_args(argv)
    from f3rm_ros.core.device import resolve_device  # noqa: PLC0415

    device = str(resolve_device(a.device))
    unknown = [s for s in a.settings.split(",") if s not in SETTINGS]
    if unknown:
        ap.error(f"unknown settings {unknown}; known: {list(SETTINGS)}")
    jobs = [(s, seed, str(a.data_root / scene), a.steps, device, a.threads)
            for s in a.settings.split(",") for seed in _seeds(a.seeds) for scene in a.scenes.split(",")]
    tag = a.tag or f"{device}_{os.environ.get('F3RM_COMMIT', 'local')}"
    out = Path(__file__).resolve().parent / "results" / f"robustness_{tag}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    t0 = time.perf_counter()
    with mp.get_context("spawn").Pool(a.procs) as pool, out.open("w") as fo:
        for r in pool.imap_unordered(_safe, jobs):
            r["elapsed_s"] = round(time.perf_counter() - t0, 1)
            rows.append(r)
            print(json.dumps(r), flush=True)
            fo.write(json.dumps(r) + "\n")
            fo.flush()
    print(table(rows))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
