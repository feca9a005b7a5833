"""Profile full training steps (fox at 1/4 resolution, reference config, 768-d feature targets).

Builds a :class:`~f3rm_ros.core.trainer.Trainer` with random 768-d feature maps (the timing of the
feature path does not depend on the values; no CLIP model is needed), runs ``--warmup`` steps, then
times ``--steps`` steps two ways:

* ``synced``: ``torch.cuda.synchronize()`` around every step (what bench_train's median measures),
* ``pipelined``: one sync at the end (what ``Trainer.train`` gets when nothing syncs inside a step),

and profiles ``--profile-steps`` steps with torch.profiler: the top ops by device time and by host
time, kernel launches per step, device busy time per step and host-device syncs.

    python benchmarks/profile_train.py --data .gpudata/fox --out-dir $OUT
    python benchmarks/profile_train.py --data ../shared/data/fox --quick     # CPU smoke test
    python benchmarks/profile_train.py --data .gpudata/fox --variants plain,graphs --profile-steps 0
    python benchmarks/profile_train.py --data .gpudata/fox --profile-steps 0 \
        --variants tritongrid+graphs,torchgrid+plain,torchgrid+plain+compile_all   # ours / eager / compiled

Variants (``--variants base,nosync,fused_adam``) run one after the other in the same process, each on a
fresh trainer with the same seed. A variant is a name from ``VARIANTS`` (config changes) or from
``PATCHES`` (experimental code changes, tried here before they go into the library); patches stay
applied for the variants after them (so the list measures each change on top of the ones before).

Caveat (seen on an H200, see NOTES_train.md): once torch.profiler has run in a process, later steps in
that process are slower (35 -> 40-45 ms/step for unchanged code), so only the first variant's
timings are clean when profiling; compare variants with ``--profile-steps 0`` or one process each.
The "device kernel time" includes the ``phase::`` annotation ranges: subtract them (see the notes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from f3rm_ros.core.config import replace  # noqa: E402
from f3rm_ros.core.trainer import Trainer, TrainerConfig  # noqa: E402
from f3rm_ros.core.workflows.train_scene import FeatureMaps, build_trainer, load_scene  # noqa: E402

# name -> config changes (dotted keys of TrainerConfig); unknown keys make the variant fail loudly
VARIANTS: dict[str, dict] = {
    "base": {},
    "plain": {"cuda_graphs": "off"},  # the eager reference step
    "graphs": {"cuda_graphs": "on"},  # the step captured as CUDA graphs (training.graphs.CudaGraphStep)
    # hash grid backend of every grid, per variant (``--backend`` sets it for all variants instead)
    "torchgrid": {f"model.{k}.grid.backend": "torch" for k in ("rgb", "proposal_1", "proposal_2", "feature")},
    "tritongrid": {f"model.{k}.grid.backend": "triton" for k in ("rgb", "proposal_1", "proposal_2", "feature")},
}

# Experimental patches (applied in the order given, cumulatively, before a variant's trainer is built);
# they try out a change before it goes into the library.  name -> function(trainer | None).
PATCHES: dict = {}


def _patch(name):
    def deco(fn):
        PATCHES[name] = fn
        return fn
    return deco


@_patch("nosync")
def _p_nosync(tr):
    """train_step without the per-step float() of every loss; appearance check without .any() sync."""
    if tr is not None:
        return
    from f3rm_ros.core.fields import rgb_field

    def appearance_for(self, camera_idx, num_rays):
        w = self.appearance.weight
        fallback = w.mean(0) if self.config.average_appearance_for_eval else torch.zeros_like(w[0])
        if camera_idx is None:
            return fallback.expand(num_rays, -1)
        idx = camera_idx.long()
        emb = self.appearance(idx.clamp_min(0))
        return torch.where((idx >= 0)[:, None], emb, fallback.expand_as(emb))
    rgb_field.RGBField.appearance_for = appearance_for

    # the library's own sync-free step (Trainer._train_step_tensors) replaces the float-returning one
    Trainer.train_step = Trainer._train_step_tensors


@_patch("fused_adam")
def _p_fused_adam(tr):
    if tr is None or tr.device.type != "cuda":
        return
    cfg = tr.config
    tr.optimizer = torch.optim.Adam(tr.model.parameters(), lr=cfg.lr, eps=cfg.adam_eps, fused=True)
    ratio = cfg.lr_final / cfg.lr
    tr.scheduler = torch.optim.lr_scheduler.LambdaLR(
        tr.optimizer, lambda s: ratio ** min(s / cfg.lr_decay_steps, 1.0))


@_patch("fused_feat")
def _p_fused_feat(tr):
    """feature field input: hash grid + sin/cos written into one fp16 buffer (hash_grid_freq_encode_triton)."""
    if tr is not None:
        return
    from f3rm_ros.core.fields import feature_field
    from f3rm_ros.core.fields.common import contract_to_unit
    old = feature_field.FeatureField.hidden

    def hidden(self, positions):
        if self.grid.backend != "triton" or self.pe is None or positions.requires_grad:
            return old(self, positions)
        from f3rm_ros.core.hashgrid.triton_op import hash_grid_freq_encode_triton
        u = contract_to_unit(positions).reshape(-1, 3)
        dt = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else torch.float32
        x = hash_grid_freq_encode_triton(u, self.grid.table, self.grid.resolutions, self.pe.freqs, out_dtype=dt)
        return self.trunk(x.reshape(*positions.shape[:-1], -1))
    feature_field.FeatureField.hidden = hidden


@_patch("compile")
def _p_compile(tr):
    """torch.compile (static shapes) on the pure-PyTorch pieces: rendering weights, losses, pdf resampling,
    contraction, SH encoding."""
    if tr is not None:
        return
    import f3rm_ros.core.fields.common as common
    import f3rm_ros.core.fields.density_field as dfield
    import f3rm_ros.core.fields.encodings as enc
    import f3rm_ros.core.fields.feature_field as ffield
    import f3rm_ros.core.fields.model as model
    import f3rm_ros.core.fields.rgb_field as rfield
    import f3rm_ros.core.fields.sampler as sampler
    import f3rm_ros.core.training.trainer as trainer
    c = lambda f: torch.compile(f, dynamic=False)  # noqa: E731
    rw = c(sampler.render_weights)
    sampler.render_weights = rw
    model.render_weights = rw
    sampler.pdf_s_edges = c(sampler.pdf_s_edges)
    ctu = c(common.contract_to_unit)
    for m in (dfield, ffield, rfield):
        m.contract_to_unit = ctu
    enc.spherical_harmonics = c(enc.spherical_harmonics)
    trainer.interlevel_loss = c(trainer.interlevel_loss)
    trainer.distortion_loss = c(trainer.distortion_loss)
    import f3rm_ros.core.fields.losses as losses
    losses.interlevel_loss = trainer.interlevel_loss
    losses.distortion_loss = trainer.distortion_loss


@_patch("compile_all")
def _p_compile_all(tr):
    """The compiled reference of the step: the "compile" pieces plus the plain-PyTorch hash grid under
    torch.compile (default mode, static shapes). Compiling the model's whole ``render_rays`` was tried: it
    graph-breaks on the seeded ``torch.rand(generator=...)`` jitter and the appearance range check, and the
    resumed frames recompile until dynamo's limit and run eagerly (4x slower than eager on the CPU)."""
    if tr is None:
        # four grids x (grad, no grad for the proposal nets when they are not updated) x sample counts:
        # more static variants than dynamo's default limit of 8 per function
        torch._dynamo.config.recompile_limit = 64
        _p_compile(None)
        import f3rm_ros.core.hashgrid.module as hgm
        hgm.hash_grid_encode_torch = torch.compile(hgm.hash_grid_encode_torch, dynamic=False)


def build(args, dataset, maps, device, changes: dict) -> Trainer:
    cfg = TrainerConfig()
    base = {"eval_every": 0, "checkpoint_every": 0, "progress_every": 1_000_000, "seed": 0}
    if args.quick:
        base.update({"rays_per_batch": 128, "model.rgb.grid.num_levels": 4, "model.rgb.grid.log2_hashmap_size": 12,
                     "model.feature.grid.num_levels": 2, "model.feature.grid.log2_hashmap_size": 10})
    if args.backend:
        for k in ("rgb", "proposal_1", "proposal_2", "feature"):
            base[f"model.{k}.grid.backend"] = args.backend
    base.update(changes)
    cfg = replace(cfg, **base)
    return build_trainer(cfg, dataset, FeatureMaps(maps, {"name": "random"}), device=device)


def time_steps(trainer: Trainer, n: int, synced: bool, device) -> list[float]:
    """Per-step times with a sync around each step (``train_step``, losses as floats), or one
    pipelined mean (``_train_step_tensors``: nothing waits for the GPU until the end)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    step = trainer.train_step if synced else trainer._train_step_tensors
    out = []
    sync()
    t_all = time.perf_counter()
    for _ in range(n):
        if synced:
            sync()
        t0 = time.perf_counter()
        step()
        if synced:
            sync()
        out.append(time.perf_counter() - t0)
    sync()
    if not synced:
        return [(time.perf_counter() - t_all) / n]
    return out


_PHASES = (("sample_batch", "f3rm_ros.core.training.batcher", "RayBatcher", "sample"),
           ("sampler", "f3rm_ros.core.fields.sampler", "ProposalSampler", "__call__"),
           ("rgb_field", "f3rm_ros.core.fields.rgb_field", "RGBField", "forward"),
           ("feature_render", "f3rm_ros.core.fields.feature_field", "FeatureField", "render"),
           ("backward", "torch", "Tensor", "backward"),
           ("scaler_step", "torch.amp", "GradScaler", "step"),
           ("scaler_update", "torch.amp", "GradScaler", "update"))


def _label_phases():
    """Wrap a few methods in record_function labels (host time incl. children; undone by the returned fn)."""
    import importlib

    undo = []
    for label, mod, cls, meth in _PHASES:
        klass = getattr(importlib.import_module(mod), cls)
        orig = getattr(klass, meth)

        def wrapped(*a, __orig=orig, __label=label, **k):
            with torch.profiler.record_function("phase::" + __label):
                return __orig(*a, **k)
        setattr(klass, meth, wrapped)
        undo.append((klass, meth, orig))
    return lambda: [setattr(k, m, o) for k, m, o in undo]


def profile(trainer: Trainer, n: int, device, out_dir: Path, tag: str) -> dict:
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile as tprofile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    undo = _label_phases()
    sync()
    try:
        t0 = time.perf_counter()
        with tprofile(activities=acts, record_shapes=False) as prof:
            for _ in range(n):
                trainer.train_step()
            sync()
        wall = (time.perf_counter() - t0) / n
    finally:
        undo()
    ka = prof.key_averages()
    rows = []
    for e in ka:
        is_dev = getattr(e, "device_type", None) == DeviceType.CUDA
        dev = getattr(e, "self_device_time_total", None)
        if dev is None:
            dev = getattr(e, "self_cuda_time_total", 0.0)
        tot = getattr(e, "device_time_total", None)
        if tot is None:
            tot = getattr(e, "cuda_time_total", 0.0)
        rows.append({"name": e.key, "kernel": is_dev, "count": e.count / n, "self_cpu_us": e.self_cpu_time_total / n,
                     "cpu_us": e.cpu_time_total / n, "self_dev_us": dev / n, "dev_us": tot / n})
    kernels = [r for r in rows if r["kernel"]]
    launches = sum(r["count"] for r in rows if "LaunchKernel" in r["name"])
    syncs = {r["name"]: r["count"] for r in rows
             if any(s in r["name"] for s in ("Synchronize", "cudaMemcpy", "aten::item", "aten::nonzero",
                                              "aten::is_nonzero"))}
    dev_total = sum(r["self_dev_us"] for r in kernels)
    ops = [r for r in rows if not r["kernel"] and r["name"].startswith(("aten::", "triton", "_"))]
    phases = [r for r in rows if r["name"].startswith(("phase::", "Optimizer.step"))]
    n_aten = sum(r["count"] for r in rows if r["name"].startswith("aten::"))
    host_self = sum(r["self_cpu_us"] for r in rows if not r["kernel"])
    print(f"\n[{tag}] profile over {n} steps (wall {1000 * wall:.2f} ms/step under the profiler): "
          f"{launches:.0f} kernel launches/step, {n_aten:.0f} aten ops/step, device kernel time "
          f"{dev_total / 1000:.2f} ms/step, {len(kernels)} distinct kernels; syncs/step: "
          + ", ".join(f"{k} {v:.1f}" for k, v in syncs.items()))
    print(f"[{tag}] phases (host incl. children / device incl. children, us/step):")
    for r in phases:
        print(f"   host {r['cpu_us']:8.1f}  dev {r['dev_us']:8.1f}  x{r['count']:4.1f}  {r['name'][:80]}")
    print(f"[{tag}] top kernels by device time (us/step):")
    for r in sorted(kernels, key=lambda r: -r["self_dev_us"])[:18]:
        print(f"   {r['self_dev_us']:8.1f}  x{r['count']:6.1f}  {r['name'][:110]}")
    print(f"[{tag}] top ops by self host time (us/step):")
    for r in sorted(ops, key=lambda r: -r["self_cpu_us"])[:18]:
        print(f"   {r['self_cpu_us']:8.1f}  x{r['count']:6.1f}  dev {r['dev_us']:8.1f}  {r['name'][:90]}")
    return {"profiled_wall_ms": 1000 * wall, "launches_per_step": launches, "aten_ops_per_step": n_aten,
            "device_kernel_ms_per_step": dev_total / 1000, "host_self_ms_per_step": host_self / 1000,
            "syncs_per_step": syncs, "phases": phases,
            "top_kernels": sorted(kernels, key=lambda r: -r["self_dev_us"])[:40],
            "top_ops_host": sorted(ops, key=lambda r: -r["self_cpu_us"])[:40]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "fox"))
    p.add_argument("--downscale", type=int, default=4)
    p.add_argument("--variants", default="base")
    p.add_argument("--backend", default="", help="hash grid backend of all grids (default: the config's)")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--profile-steps", type=int, default=10)
    p.add_argument("--feature-dim", type=int, default=768)
    p.add_argument("--map-hw", default="42,24", help="feature map rows,cols (CLIP ViT-L-14-336 on fox 1/4: 42,24)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--tag", default="")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = load_scene(args.data, downscale=args.downscale)
    g = torch.Generator().manual_seed(0)
    H, W = dataset.intrinsics[0].height, dataset.intrinsics[0].width
    h, w = (int(v) for v in args.map_hw.split(","))
    maps = torch.randn(len(dataset), h, w, args.feature_dim, generator=g) * 0.5
    print(f"{args.data}: {len(dataset)} images {W}x{H}, feature maps {tuple(maps.shape)}, device {device}")
    results = {}
    active: list = []
    for name in args.variants.split(","):
        changes = {}
        for part in name.split("+"):
            if part in VARIANTS:
                changes.update(VARIANTS[part])
            elif part not in active:
                PATCHES[part](None)
                active.append(part)
        try:
            results[name] = run_variant(args, dataset, maps, device, name, changes, active, out_dir)
        except Exception as e:  # noqa: BLE001 - report and go on with the next variant
            import traceback
            traceback.print_exc()
            print(f"[{name}] failed: {type(e).__name__}: {e}", flush=True)
    print(f"\n{'variant':34} {'synced ms':>10} {'piped ms':>9} {'dev ms':>7} {'launch':>7} {'peak MB':>8} "
          f"{'resv MB':>8} {'warm s':>7}  step")
    first = next(iter(results.values()), None)
    for n, r in results.items():
        print(f"{n:34} {r['median_synced_ms']:10.2f} {r['pipelined_ms']:9.2f} {r['device_kernel_ms_per_step']:7.2f} "
              f"{r['launches_per_step']:7.0f} {r['peak_mb'] or 0:8.0f} {r.get('peak_reserved_mb') or 0:8.0f} "
              f"{r['warmup_s']:7.1f}  {r.get('cuda_graphs', '')}")
    if first is not None and len(results) > 1:
        for n, r in results.items():
            print(f"ratio {first['variant']} / {n}: synced {first['median_synced_ms'] / r['median_synced_ms']:.2f}x, "
                  f"pipelined {first['pipelined_ms'] / r['pipelined_ms']:.2f}x")
    dev = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    (out_dir / f"profile_train{('_' + args.tag) if args.tag else ''}.json").write_text(
        json.dumps({"device": dev, "torch": torch.__version__, "results": results}, indent=1, default=str))
    return 0


def run_variant(args, dataset, maps, device, name, changes, active, out_dir) -> dict:
    if device.type == "cuda":
        import gc
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    tr = build(args, dataset, maps, device, changes)
    for part in active:
        PATCHES[part](tr)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    time_steps(tr, args.warmup, False, device)
    t_warm = time.perf_counter() - t0
    synced = time_steps(tr, args.steps, True, device)
    piped = time_steps(tr, args.steps, False, device)[0]
    prof = profile(tr, args.profile_steps, device, out_dir, f"{args.tag}{name}") if args.profile_steps > 0 else \
        {"launches_per_step": float("nan"), "device_kernel_ms_per_step": float("nan")}
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    peak_res = torch.cuda.max_memory_reserved() / 2**20 if device.type == "cuda" else None
    loss = {k: float(v) for k, v in tr.train_step().items()}
    r = {"variant": name, "patches": list(active), "changes": changes, "trainer_init_s": t_build,
         "warmup_s": t_warm, "cuda_graphs": getattr(tr, "cuda_graphs_reason", None), "peak_reserved_mb": peak_res,
         "median_synced_ms": 1000 * statistics.median(synced), "pipelined_ms": 1000 * piped,
         "peak_mb": peak, "loss": loss, **prof}
    print(f"[{name}] synced median {r['median_synced_ms']:.2f} ms, pipelined {r['pipelined_ms']:.2f} ms/step, "
          f"peak {peak} MB, init {t_build:.1f} s, warm-up {t_warm:.1f} s, loss {loss}", flush=True)
    del tr
    return r


if __name__ == "__main__":
    sys.exit(main())
