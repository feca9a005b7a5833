"""Training benchmark: steps/s, held-out PSNR at step milestones, scene build time, peak GPU memory.

Per hash-grid backend (side by side in one process, same data, same seed):
  1. 2D feature extraction for the dataset (timed; CLIP ViT-L-14-336 with random weights by default,
     since no weights exist on our machines: the timing is real, the features are not semantic),
  2. training to each milestone (default 2000 and 5000 steps) with the reference config
     (4096 rays, proposal sampling 256/96 -> 48 samples, RGB + feature field),
  3. at each milestone: held-out PSNR and feature MSE; throughout: median step time (CUDA-synchronised
     per step over a window), steps/s over the whole run, peak GPU memory.
Scene build = extraction + training to the first milestone.

    python benchmarks/bench_train.py --data ../shared/data/fox --downscale 4
    python benchmarks/bench_train.py --data DIR --quick        # CPU smoke test (tiny config)

Prints a table and writes JSON to benchmarks/results/train_<device>_<commit>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from f3rm_ros.core.config import replace  # noqa: E402
from f3rm_ros.core.training import TrainerConfig  # noqa: E402
from f3rm_ros.core.workflows.train_scene import FeatureMaps, build_trainer, load_scene, scene_features  # noqa: E402


def commit() -> str:
    env = os.environ.get("F3RM_COMMIT")
    if env:
        return env[:10]
    try:
        return subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


def extract(dataset, kind: str, device: torch.device, quick: bool) -> FeatureMaps:
    """Feature maps (or None), the seconds of the extraction itself (the model is built before the clock starts),
    and their extractor info, via the train_scene workflow's feature stage."""
    if kind == "none":
        return scene_features(None, dataset)
    t0 = time.perf_counter()
    if kind == "synthetic":  # smooth random target, no model (CPU smoke tests)
        g = torch.Generator().manual_seed(0)
        n = len(dataset)
        maps = torch.nn.functional.interpolate(torch.randn(n, 16, 4, 4, generator=g), size=(12, 16),
                                               mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
        return FeatureMaps(maps.contiguous(), {"name": "synthetic"}, time.perf_counter() - t0)
    from f3rm_ros.core.features import create_extractor

    cfg = {"extractor": "clip", "clip": {"random_weights": True, "allow_download": False}}
    if quick:
        cfg["clip"]["model_name"] = "ViT-B-32"
    ex = create_extractor(cfg) if kind == "clip-random" else create_extractor({"extractor": kind})
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    feats = scene_features(ex, dataset, cache_dir=None)
    if device.type == "cuda":
        torch.cuda.synchronize()
    feats.seconds = time.perf_counter() - t0
    return feats


def run_backend(args, dataset, feats: FeatureMaps, backend: str, device: torch.device, cuda_graphs: str = "auto",
                seed: int = 0) -> dict:
    cfg = TrainerConfig()
    changes = {"model.rgb.grid.backend": backend, "model.proposal_1.grid.backend": backend,
               "model.proposal_2.grid.backend": backend, "model.feature.grid.backend": backend,
               "eval_every": 0, "checkpoint_every": 0, "progress_every": 1_000_000, "seed": seed,
               "eval_num_images": args.eval_images, "cuda_graphs": cuda_graphs}
    if args.quick:
        changes.update({"rays_per_batch": 256, "model.rgb.grid.num_levels": 4, "model.rgb.grid.log2_hashmap_size": 12,
                        "model.feature.grid.num_levels": 2, "model.feature.grid.log2_hashmap_size": 10})
    try:
        cfg = replace(cfg, **changes)
    except Exception as e:  # config field names differ: say so instead of measuring something else
        return {"backend": backend, "error": f"config: {e}"}
    if device.type == "cuda":
        import gc
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = build_trainer(cfg, dataset, feats, device=device)
    label = backend if cuda_graphs == "auto" and len(args.cuda_graphs) == 1 else f"{backend}/graphs={cuda_graphs}"
    if len(args.seeds) > 1 or seed != 0:
        label += f"/seed={seed}"
    out = {"backend": label, "seed": seed, "grid_backends": trainer.model.hashgrid_backends(), "milestones": [],
           "cuda_graphs_setting": cuda_graphs, "cuda_graphs": trainer.cuda_graphs_reason}
    print(f"  [{label}] training step: {trainer.cuda_graphs_reason}", flush=True)
    backend = label
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    step_times = []
    t_train = 0.0
    for milestone in args.steps:
        while trainer.step < milestone:
            sync()
            t0 = time.perf_counter()
            trainer.train_step()
            sync()
            dt = time.perf_counter() - t0
            t_train += dt
            if args.window[0] <= trainer.step < args.window[1]:
                step_times.append(dt)
        if "peak_train_gpu_mb" not in out and device.type == "cuda":  # training only, before any eval render
            out["peak_train_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
            out["peak_train_gpu_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
        ev = trainer.evaluate(save_images=False)
        out["milestones"].append({"step": milestone, "train_s": t_train, "steps_per_s": trainer.step / t_train,
                                  "eval_psnr": ev["psnr"], "eval_feature_mse": ev.get("feature_mse"),
                                  "eval_frames": ev["frames"]})
        print(f"  [{backend}] step {milestone}: {t_train:.1f} s, {trainer.step / t_train:.1f} steps/s, "
              f"PSNR {ev['psnr']:.2f} dB, feature MSE {ev.get('feature_mse')}", flush=True)
    out["median_step_ms"] = 1000 * statistics.median(step_times) if step_times else None
    out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    out["peak_gpu_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20 if device.type == "cuda" else None
    out["cuda_graphs_final"] = trainer.cuda_graphs_reason  # differs from cuda_graphs if a capture failed
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "fox"))
    p.add_argument("--downscale", type=int, default=4)
    p.add_argument("--steps", default="2000,5000", help="comma-separated milestones")
    p.add_argument("--backends", default="torch,triton")
    p.add_argument("--features", default="clip-random", choices=("clip-random", "labels", "synthetic", "none"))
    p.add_argument("--eval-images", type=int, default=0, help="held-out images per evaluation (0 = all)")
    p.add_argument("--window", default="50,250", help="steps whose time gives the median step time")
    p.add_argument("--seeds", default="0",
                   help="comma-separated trainer seeds (run-to-run spread of PSNR / feature MSE)")
    p.add_argument("--cuda-graphs", default="auto",
                   help="comma-separated trainer cuda_graphs settings to run per backend (auto,on,off)")
    p.add_argument("--quick", action="store_true", help="tiny config for a CPU smoke test")
    p.add_argument("--tag", default="", help="added to the JSON file name")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    args.steps = [int(s) for s in args.steps.split(",")]
    args.window = [int(s) for s in args.window.split(",")]
    args.cuda_graphs = [s for s in args.cuda_graphs.split(",") if s]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dataset = load_scene(args.data, downscale=args.downscale)
    W, H = dataset.intrinsics[0].width, dataset.intrinsics[0].height
    print(f"{args.data}: {len(dataset)} images at {W}x{H}, {len(dataset.eval_indices)} held out; device {device}")
    feats = extract(dataset, args.features, device, args.quick)
    maps, t_extract = feats.maps, feats.seconds
    print(f"feature extraction ({args.features}): {t_extract:.2f} s"
          + (f", maps {tuple(maps.shape)}" if maps is not None else ""), flush=True)
    rows = []
    for backend in args.backends.split(","):
        for seed in args.seeds:
            for graphs in args.cuda_graphs:
                try:
                    r = run_backend(args, dataset, feats, backend, device, graphs, seed)
                except Exception as e:  # report and go on with the next backend
                    r = {"backend": f"{backend}/graphs={graphs}/seed={seed}", "error": f"{type(e).__name__}: {e}"}
                    print(f"  [{r['backend']}] failed: {r['error']}", flush=True)
                if r.get("milestones"):
                    r["scene_build_s"] = t_extract + r["milestones"][0]["train_s"]
                rows.append(r)
    w = max([8] + [len(r["backend"]) for r in rows])
    print(f"\n{'backend':{w}} {'median step ms':>14} {'steps/s':>8} {'build s':>8} {'peak MB':>8} {'train MB':>8}"
          f"  PSNR/featMSE per milestone")
    for r in rows:
        if "error" in r:
            print(f"{r['backend']:{w}} error: {r['error']}")
            continue
        ms = "  ".join(f"{m['step']}: {m['eval_psnr']:.2f} dB / "
                       f"{m['eval_feature_mse'] if m['eval_feature_mse'] is None else round(m['eval_feature_mse'], 5)}"
                       for m in r["milestones"])
        print(f"{r['backend']:{w}} {r['median_step_ms'] or float('nan'):14.2f} "
              f"{r['milestones'][-1]['steps_per_s']:8.1f} "
              f"{r['scene_build_s']:8.1f} {r['peak_gpu_mb'] or 0:8.0f} {r.get('peak_train_gpu_mb') or 0:8.0f}  {ms}")
    groups: dict = {}
    for r in rows:
        if "error" not in r and len(args.seeds) > 1:
            groups.setdefault(r["backend"].rsplit("/seed=", 1)[0], []).append(r["milestones"][0])
    for name, ms in groups.items():  # spread over seeds at the first milestone
        ps = [m["eval_psnr"] for m in ms]
        fs = [m["eval_feature_mse"] for m in ms if m["eval_feature_mse"] is not None]
        print(f"{name} over {len(ms)} seeds at step {ms[0]['step']}: PSNR {statistics.mean(ps):.2f} "
              f"(min {min(ps):.2f}, max {max(ps):.2f}) dB" + (f", feature MSE {statistics.mean(fs):.4f} "
                                                              f"(min {min(fs):.4f}, max {max(fs):.4f})" if fs else ""))
    ok = [r for r in rows if "error" not in r and r.get("median_step_ms")]
    if len(ok) > 1:
        ref = ok[0]
        for r in ok[1:]:
            print(f"ratio {ref['backend']} / {r['backend']}: "
                  f"median step {ref['median_step_ms'] / r['median_step_ms']:.2f}x, "
                  f"scene build {ref['scene_build_s'] / r['scene_build_s']:.2f}x")
    dev_name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    result = {"commit": commit(), "device": dev_name, "torch": torch.__version__, "data": args.data,
              "image_size": [W, H], "num_images": len(dataset), "features": args.features,
              "extract_s": t_extract, "extractor": args.features, "quick": args.quick, "rows": rows}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tag = (f"_{args.tag}" if args.tag else "") + ("_quick" if args.quick else "")
    name = f"train_{dev_name.replace(' ', '_')}_{result['commit']}{tag}.json"
    (out / name).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {out / name}")
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
