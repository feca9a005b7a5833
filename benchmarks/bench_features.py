#!/usr/bin/env python3
"""Dense CLIP (MaskCLIP) extraction throughput: images/s for ViT-L-14-336 at 1280x720.

Random weights (no CLIP weights exist on the project's machines; the cost does not depend on the
weights' values). Two rows per batch size:

* ``end_to_end``: ``ClipExtractor.extract(list of uint8 HxWx3 numpy images)`` - upload, resize to
  597x336, normalise, MaskCLIP forward, float32 copy back to the CPU: what
  ``extract_dataset_features`` pays per image apart from reading files;
* ``forward``: ``maskclip_dense_features`` on an already preprocessed device tensor (the network).

Timing: ``--warmup`` untimed calls, then ``--reps`` timed calls of ``--num-images`` images each
(CUDA synchronised), median; images/s = num_images / median time. Peak GPU memory is
``max_memory_allocated`` during the timed calls. fp16 on CUDA (``--precision auto``).

Usage (GPU): ``python benchmarks/bench_features.py [--batch-sizes 1 8 16 32]`` -> prints a table and
writes ``benchmarks/results/features_<device>_<commit>.json``. ``--quick`` runs a tiny CPU smoke
test (ViT-B-16, 2 small images) that checks the script works.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from f3rm_ros.core.features.clip import ClipExtractor, maskclip_dense_features  # noqa: E402
from f3rm_ros.core.features.configs import ClipConfig  # noqa: E402


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:
        return "unknown"


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _time(fn, dev: torch.device, warmup: int, reps: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(dev)
    times = []
    for _ in range(reps):
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="ViT-L-14-336")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 16, 32])
    ap.add_argument("--num-images", type=int, default=64, help="images per timed call")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"))
    ap.add_argument("--quick", action="store_true", help="tiny CPU smoke test (ViT-B-16, 2 small images)")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    if args.quick:
        args.model, args.width, args.height = "ViT-B-16", 320, 180
        args.batch_sizes, args.num_images, args.warmup, args.reps = [2], 2, 0, 1
        args.device = "cpu" if args.device == "auto" else args.device

    t0 = time.perf_counter()
    ext = ClipExtractor(ClipConfig(model_name=args.model, random_weights=True, device=args.device,
                                   precision=args.precision))
    build_s = time.perf_counter() - t0
    dev = ext.device
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8) for _ in range(args.num_images)]
    grid = ext.grid_shape(args.height, args.width)
    meta = {"commit": git_commit(),
            "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or "cpu"),
            "torch": torch.__version__, "model": args.model, "weights": "random",
            "dtype": str(ext.dtype).replace("torch.", ""), "image": [args.width, args.height],
            "resized": list(ext.preprocess(images[:1]).shape[-2:])[::-1], "grid": [*grid, ext.feature_dim],
            "num_images": args.num_images, "reps": args.reps, "warmup": args.warmup, "build_s": round(build_s, 2),
            "quick": args.quick}
    try:
        import open_clip

        meta["open_clip"] = open_clip.__version__
    except Exception:
        pass
    print(f"{meta['model']} ({meta['dtype']}, random weights) on {meta['device']}; {args.width}x{args.height} -> "
          f"{meta['resized'][0]}x{meta['resized'][1]} -> grid {grid[0]}x{grid[1]}x{ext.feature_dim}; "
          f"build {build_s:.1f} s; commit {meta['commit'][:10]}", flush=True)

    rows = []
    for bs in args.batch_sizes:
        ext.config.batch_size = bs
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        t_e2e = _time(lambda: ext.extract(images), dev, args.warmup, args.reps)
        mem_e2e = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
        x = ext.preprocess(images[:bs])
        n_calls = -(-args.num_images // bs)

        def fwd(x=x, n_calls=n_calls):
            with torch.inference_mode():
                for _ in range(n_calls):
                    maskclip_dense_features(ext.model.visual, x, ext._pos_cache)

        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        t_fwd = _time(fwd, dev, args.warmup, args.reps)
        mem_fwd = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
        for name, times, n, mem in (("end_to_end", t_e2e, args.num_images, mem_e2e),
                                    ("forward", t_fwd, n_calls * bs, mem_fwd)):
            med = statistics.median(times)
            rows.append({"row": name, "batch_size": bs, "images": n, "median_s": med, "min_s": min(times),
                         "images_per_s": n / med, "ms_per_image": 1e3 * med / n,
                         "peak_mem_gib": None if mem is None else round(mem, 3)})

    print(f"\n{'row':<11} {'batch':>5} {'images/s':>10} {'ms/image':>9} {'peak GiB':>9}")
    for r in rows:
        mem = "-" if r["peak_mem_gib"] is None else f"{r['peak_mem_gib']:.2f}"
        print(f"{r['row']:<11} {r['batch_size']:>5} {r['images_per_s']:>10.2f} {r['ms_per_image']:>9.2f} {mem:>9}")

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = "".join(c if c.isalnum() else "-" for c in meta["device"]).strip("-") or "cpu"
    path = out_dir / f"features_{name}_{meta['commit'][:10]}{'_quick' if args.quick else ''}.json"
    from f3rm_ros.core.io import atomic_write_json

    atomic_write_json(path, {"meta": meta, "rows": rows})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
