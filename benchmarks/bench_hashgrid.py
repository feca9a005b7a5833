#!/usr/bin/env python3
"""Hash-grid encoding and feature-path benchmarks, every backend side by side in one run.

Rows (issue 10), at 8192 rays x 48 samples = 393,216 points, forward + backward:

* ``rgb_grid``  : 16 levels x 2 features, T = 2^19, resolutions 16..2048 (fp32 and fp16 tables);
* ``feat_grid`` : 12 levels x 8 features, T = 2^19, resolutions 16..128 (fp32 and fp16 tables);
* ``feat_path`` : feature grid (fp32 table) + 6-frequency PE -> MLP 64 x 64 -> 768 (fp16 autocast),
  rendering weights x features summed over the 48 samples of each ray, MSE to a random target.

Backends: ``eager`` (the plain-PyTorch reference ``hash_grid_encode_torch``), ``compiled`` (the same
under ``torch.compile``), ``triton`` (``hash_grid_encode_triton``, default launch configs),
``triton_best`` (best launch configs of the sweep in this run), ``tcnn`` (tiny-cuda-nn, when it
imports; its hash differs, so timing only). Feature-path variants: ``eager``/``compiled`` (reference,
per-sample 768-d features), ``triton_unfused`` (Triton grid, rest eager), ``triton_fused`` (Triton
grid + rendering through the linear head, see ``f3rm_ros.core.ops.feature_render``),
``triton_fused_compiled`` (same, the part after the grid under torch.compile), and
``compiled_fused`` (torch grid + fused head, all under torch.compile).

Timing: CUDA events around each step (zeroing grads, forward, backward), warm-up first, median of
``--reps`` steps; peak memory is ``max_memory_allocated`` during one step above what was allocated
before it. Points are samples along random rays through the unit cube (``--points rays``), as the
trainer produces; ``uniform`` rows (random points, cache-hostile) are added for the grids.

Usage (GPU): ``python benchmarks/bench_hashgrid.py`` -> prints a table and writes
``benchmarks/results/hashgrid_<gpu>_<commit>.json``. ``--quick`` runs a tiny CPU smoke test in
Triton's interpreter (``TRITON_INTERPRET=1`` is set by the script).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

if "--quick" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from f3rm_ros.core.hashgrid import grid_resolutions, hash_grid_encode_torch  # noqa: E402
from f3rm_ros.core.hashgrid import triton_op as HT  # noqa: E402
from f3rm_ros.core.ops.feature_render import render_linear_head_fused  # noqa: E402

GRIDS = {  # name: (levels, features per level, log2 T, base res, max res)
    "rgb_grid": (16, 2, 19, 16, 2048),
    "feat_grid": (12, 8, 19, 16, 128),
}
LOSS_SCALE = 2.0**16  # fixed loss scale, as a GradScaler would apply (fp16 gradients underflow otherwise)
SWEEP = [(64, 2), (128, 4), (256, 4), (256, 8), (512, 8)]


# ----------------------------------------------------------------------------------------- utils
def git_commit() -> str:
    env = os.environ.get("F3RM_COMMIT")
    if env:
        return env
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:
        return "unknown"


def files_sha256() -> dict:
    """Hashes of the measured sources (the working tree may differ from the commit)."""
    import hashlib
    out = {}
    for rel in ("f3rm_ros/core/hashgrid/reference.py", "f3rm_ros/core/hashgrid/triton_op.py",
                "f3rm_ros/core/hashgrid/_triton_kernels.py", "f3rm_ros/core/ops/feature_render.py",
                "benchmarks/bench_hashgrid.py"):
        p = ROOT / rel
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()[:16] if p.exists() else None
    return out


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_steps(step, dev, reps: int, warmup: int) -> dict:
    """Median/p10/p90 milliseconds of ``step()`` over ``reps`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        step()
    sync(dev)
    ms = []
    if dev.type == "cuda":
        evs = []
        for _ in range(reps):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            step()
            e.record()
            evs.append((s, e))
        sync(dev)
        ms = [s.elapsed_time(e) for s, e in evs]
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            step()
            ms.append((time.perf_counter() - t0) * 1e3)
    ms.sort()
    q = lambda p: ms[min(len(ms) - 1, int(p * len(ms)))]  # noqa: E731
    return {"median_ms": statistics.median(ms), "p10_ms": q(0.1), "p90_ms": q(0.9), "reps": reps}


def peak_mem_mb(step, dev) -> float | None:
    if dev.type != "cuda":
        return None
    sync(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    step()
    sync(dev)
    return (torch.cuda.max_memory_allocated(dev) - base) / 2**20


def make_graphed(step, params, dev):
    """Capture ``step`` (forward + backward) in a CUDA graph; returns a replay function."""
    s = torch.cuda.Stream(dev)
    s.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(s):
        for _ in range(3):
            for p in params:
                p.grad = None
            step()
    torch.cuda.current_stream(dev).wait_stream(s)
    for p in params:
        p.grad = None
    err = None
    for mode in ("thread_local", "relaxed", "global"):
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, capture_error_mode=mode):
                out = step()
            print(f"    (graph captured with capture_error_mode={mode})")
            break
        except Exception as e:  # noqa: PERF203
            err = e
            print(f"    (graph capture failed with capture_error_mode={mode}: {e!r}"[:300] + ")")
            torch.cuda.synchronize(dev)
            for p in params:
                p.grad = None
    else:
        raise RuntimeError(f"CUDA graph capture failed: {err!r}")

    def replay():
        graph.replay()
        return out
    return replay


def rel_err(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def ray_points(n_rays: int, n_samples: int, dev, gen) -> torch.Tensor:
    """[n_rays * n_samples, 3] sorted samples along random rays through the unit cube."""
    o = torch.rand(n_rays, 3, generator=gen, device=dev) * 0.6 + 0.2
    d = torch.nn.functional.normalize(torch.randn(n_rays, 3, generator=gen, device=dev), dim=-1)
    t = torch.sort(torch.rand(n_rays, n_samples, generator=gen, device=dev), dim=-1).values * 0.7 - 0.35
    return (o[:, None, :] + t[..., None] * d[:, None, :]).clamp(0, 1).reshape(-1, 3).contiguous()


def try_tcnn():
    try:
        import tinycudann as tcnn  # noqa: F401
        return tcnn
    except Exception as e:  # absent, or built for another torch
        return repr(e)


# ----------------------------------------------------------------------------------------- grids
def grid_rows(args, dev, gen, records, meta):
    n = args.rays * args.samples
    tcnn = try_tcnn()
    meta["tcnn"] = tcnn if isinstance(tcnn, str) else "available"
    for gname, (L, F, log2t, base, mx) in GRIDS.items():
        if args.quick:
            L, log2t = min(L, 4), 10
        T = 2**log2t
        res = grid_resolutions(L, base, mx)
        for dt in args.dtypes:
            dtype = getattr(torch, dt)
            for points in args.points:
                row = f"{gname}_{dt}" + ("" if points == "rays" else f"_{points}")
                x = ray_points(args.rays, args.samples, dev, gen) if points == "rays" else \
                    torch.rand(n, 3, generator=gen, device=dev)
                table = ((torch.rand(L, T, F, generator=gen, device=dev) * 2 - 1) * 1e-4).to(dtype).requires_grad_(True)
                g = torch.randn(n, L * F, generator=gen, device=dev).to(dtype)
                backends = {"eager": lambda x, t, res=res: hash_grid_encode_torch(x, t, res),
                            "triton": lambda x, t, res=res: HT.hash_grid_encode_triton(x, t, res)}
                if points == "rays" and args.compile and (dt == "float32" or args.compile_fp16):
                    cfn = torch.compile(hash_grid_encode_torch, dynamic=False)
                    backends["compiled"] = lambda x, t, cfn=cfn, res=res: cfn(x, t, res)
                if points == "rays" and args.seg_sweep and dev.type == "cuda":
                    best_seg = seg_sweep(x, table, g, res, dev, args, records, row)
                    if best_seg:
                        SEG_STATE["value"] = best_seg  # read by step() for this backend
                        backends["triton_seg"] = lambda x, t, res=res: HT.hash_grid_encode_triton(x, t, res)
                if points == "rays" and args.sweep:
                    best = sweep(x, table, g, res, dev, args, records, row)
                    backends["triton_best"] = (lambda x, t, b=best, res=res:
                                               HT.hash_grid_encode_triton(x, t, res, b[0], b[1]))
                if points == "rays" and not isinstance(tcnn, str) and dev.type == "cuda":
                    enc = tcnn.Encoding(3, {"otype": "HashGrid", "n_levels": L, "n_features_per_level": F,
                                            "log2_hashmap_size": log2t, "base_resolution": base,
                                            "per_level_scale": math.exp((math.log(mx) - math.log(base)) / (L - 1))},
                                        dtype=dtype).to(dev)
                    backends["tcnn"] = lambda x, t, enc=enc: enc(x)

                if points == "rays" and dev.type == "cuda" and args.graphs:
                    backends["triton_graph"] = "graph"
                outs = {}
                for bname, fn in backends.items():
                    def step(fn=fn, bname=bname, x=x, table=table, g=g):
                        table.grad = None
                        with with_seg_ctx(SEG_STATE["value"] if bname == "triton_seg" else
                                          os.environ.get("F3RM_HASHGRID_SEG_MAX_RES", "")):
                            y = fn(x, table)
                            y.backward(g if y.dtype == g.dtype else g.to(y.dtype))
                        return y
                    try:
                        t0 = time.perf_counter()
                        if fn == "graph":
                            def body(x=x, table=table, g=g, res=res):
                                y = HT.hash_grid_encode_triton(x, table, res)
                                y.backward(g)
                                return y
                            step = make_graphed(body, [table], dev)
                            del body
                        y = step()
                        sync(dev)
                        first_s = time.perf_counter() - t0
                    except Exception as e:  # keep the other backends' numbers
                        print(f"  {row:28s} {bname:22s} FAILED: {e!r}"[:400], flush=True)
                        records.append({"row": row, "backend": bname, "error": repr(e)[:2000]})
                        torch.cuda.synchronize(dev) if dev.type == "cuda" else None
                        continue
                    if bname != "tcnn":
                        outs[bname] = (y.detach().clone(), table.grad.detach().clone())
                    tm = time_steps(step, dev, args.reps, args.warmup)
                    rec = {"row": row, "backend": bname, "n_points": n, "levels": L, "T": T, "F": F,
                           "dtype": dt, "resolutions": res, "points": points, "first_call_s": first_s, **tm,
                           "peak_mem_mb": peak_mem_mb(step, dev)}
                    if bname in ("triton", "triton_best"):
                        rec["config"] = {"fwd": list(HT.DEFAULT_FWD_CONFIG), "bwd": list(HT.DEFAULT_BWD_CONFIG)} \
                            if bname == "triton" else {"fwd": list(best[0]), "bwd": list(best[1])}
                    if bname != "eager" and bname in outs:
                        rec["out_rel_err_vs_eager"] = rel_err(outs[bname][0], outs["eager"][0])
                        rec["grad_rel_err_vs_eager"] = rel_err(outs[bname][1], outs["eager"][1])
                    records.append(rec)
                    print(f"  {row:28s} {bname:22s} {tm['median_ms']:8.3f} ms  first call {first_s:6.1f} s  "
                          + (f"err out {rec.get('out_rel_err_vs_eager', 0):.1e} "
                             f"grad {rec.get('grad_rel_err_vs_eager', 0):.1e}"
                             if bname in outs and bname != "eager" else ""), flush=True)
                del table, g, x, outs, step  # step binds table, g and x


class with_seg_ctx:
    def __init__(self, v):
        self.v = v

    def __enter__(self):
        self.old = os.environ.get("F3RM_HASHGRID_SEG_MAX_RES")
        os.environ["F3RM_HASHGRID_SEG_MAX_RES"] = str(self.v)

    def __exit__(self, *a):
        if self.old is None:
            os.environ.pop("F3RM_HASHGRID_SEG_MAX_RES", None)
        else:
            os.environ["F3RM_HASHGRID_SEG_MAX_RES"] = self.old


SEG_STATE = {"value": None}


def seg_sweep(x, table, g, res, dev, args, records, row):
    """Backward kernel alone with the segmented pre-sum at levels R <= thr; returns the best thr (0 = off)."""
    meta = HT._meta(res, table.shape[1], dev)
    times = {}
    for thr in (0, 24, 48, 96, 192, 100000):
        step = lambda thr=thr: HT._launch_bwd(x, g, meta, tuple(table.shape), HT.DEFAULT_BWD_CONFIG, thr)  # noqa: E731
        tm = time_steps(step, dev, args.reps, max(2, args.warmup // 2))
        times[thr] = tm["median_ms"]
        records.append({"row": row, "backend": "sweep_seg_bwd", "seg_max_res": thr, **tm})
    best = min(times, key=times.get)
    print(f"  {row:28s} seg sweep bwd: " + ", ".join(f"R<={t}: {m:.3f}" for t, m in times.items()) + f" -> best {best}",
          flush=True)
    return best


def sweep(x, table, g, res, dev, args, records, row):
    """Time the Triton forward and backward kernels alone for each (BLOCK, num_warps); return the best."""
    meta = HT._meta(res, table.shape[1], dev)
    best = {}
    for kind in ("fwd", "bwd"):
        times = {}
        for cfg in (SWEEP if not args.quick else SWEEP[:2]):
            if kind == "fwd":
                step = lambda cfg=cfg: HT._launch_fwd(x, table.detach(), meta, cfg)  # noqa: E731
            else:
                step = lambda cfg=cfg: HT._launch_bwd(x, g, meta, tuple(table.shape), cfg)  # noqa: E731
            tm = time_steps(step, dev, args.reps, max(2, args.warmup // 2))
            times[cfg] = tm["median_ms"]
            records.append({"row": row, "backend": f"sweep_{kind}", "config": list(cfg), **tm})
        best[kind] = min(times, key=times.get)
        print(f"  {row:28s} sweep {kind}: " + ", ".join(f"{c[0]}/{c[1]}w {t:.3f}" for c, t in times.items())
              + f"  -> best {best[kind]}", flush=True)
    return best["fwd"], best["bwd"]


# ---------------------------------------------------------------------------------- feature path
class FeatMLP(torch.nn.Module):
    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__()
        self.l1 = torch.nn.Linear(d_in, hidden)
        self.l2 = torch.nn.Linear(hidden, hidden)
        self.l3 = torch.nn.Linear(hidden, d_out)


def pe_freqs(n_freq: int, dev):  # as f3rm_ros.core.fields.encodings.FrequencyEncoding: pi * 2^k
    return math.pi * 2.0 ** torch.linspace(0.0, n_freq - 1.0, n_freq, device=dev)


def freq_encode(x, n_freq: int):  # [N, 3] -> [N, 3*2*n_freq]: [sin(dims x freqs), cos(dims x freqs)]
    xb = (x[:, :, None] * pe_freqs(n_freq, x.device)).reshape(x.shape[0], -1)  # [N, 3*n_freq]
    return torch.cat([torch.sin(xb), torch.cos(xb)], -1)


def mlp_hidden(inp, mlp):
    return torch.relu(mlp.l2(torch.relu(mlp.l1(inp))))


def hidden_of(enc, x, mlp, n_freq):
    return mlp_hidden(torch.cat([enc, freq_encode(x, n_freq).to(enc.dtype)], -1), mlp)


def loss_fused_inp(inp, w, target, mlp):
    """Fused head rendering from a ready MLP input (grid + PE already in one buffer)."""
    R, S = w.shape
    h = mlp_hidden(inp, mlp).reshape(R, S, -1)
    r = render_linear_head_fused(h, w, mlp.l3.weight, mlp.l3.bias)
    return torch.nn.functional.mse_loss(r.float(), target)


def loss_unfused(enc, x, w, target, mlp, n_freq):
    R, S = w.shape
    f = mlp.l3(hidden_of(enc, x, mlp, n_freq)).reshape(R, S, -1)  # [R, S, 768] per-sample features
    r = (w[..., None] * f).sum(1)
    return torch.nn.functional.mse_loss(r.float(), target)


def loss_fused(enc, x, w, target, mlp, n_freq):
    R, S = w.shape
    h = hidden_of(enc, x, mlp, n_freq).reshape(R, S, -1)  # [R, S, 64]
    r = render_linear_head_fused(h, w, mlp.l3.weight, mlp.l3.bias)
    return torch.nn.functional.mse_loss(r.float(), target)


def feature_path_rows(args, dev, gen, records):
    L, F, log2t, base, mx = GRIDS["feat_grid"]
    if args.quick:
        L, log2t = 4, 10
    T, D, n_freq = 2**log2t, (32 if args.quick else 768), 6
    res = grid_resolutions(L, base, mx)
    R, S = args.rays, args.samples
    x = ray_points(R, S, dev, gen)
    w = torch.rand(R, S, generator=gen, device=dev)
    w = w / w.sum(-1, keepdim=True) * 0.95
    target = torch.randn(R, D, generator=gen, device=dev)
    table = ((torch.rand(L, T, F, generator=gen, device=dev) * 2 - 1) * 1e-4).requires_grad_(True)
    mlp = FeatMLP(L * F + 6 * n_freq, 64, D).to(dev)
    params = [table, *mlp.parameters()]
    amp_dtype = torch.float16 if dev.type == "cuda" else torch.bfloat16

    def full_ref(x, w, target):
        return loss_unfused(hash_grid_encode_torch(x, table, res), x, w, target, mlp, n_freq)

    def full_ref_fused(x, w, target):
        return loss_fused(hash_grid_encode_torch(x, table, res), x, w, target, mlp, n_freq)

    post_fused_c = torch.compile(loss_fused, dynamic=False) if args.compile else None
    enc_h = lambda x: HT.hash_grid_encode_triton(x, table, res, out_dtype=amp_dtype)  # noqa: E731
    freqs = pe_freqs(n_freq, dev)
    inp_h = lambda x: HT.hash_grid_freq_encode_triton(x, table, res, freqs, out_dtype=amp_dtype)  # noqa: E731
    post_inp_c = torch.compile(loss_fused_inp, dynamic=False) if args.compile else None
    variants = {
        "eager": full_ref,
        "triton_unfused": lambda x, w, t: loss_unfused(HT.hash_grid_encode_triton(x, table, res), x, w, t, mlp, n_freq),
        "triton_fused": lambda x, w, t: loss_fused(HT.hash_grid_encode_triton(x, table, res), x, w, t, mlp, n_freq),
        "triton_fused_h": lambda x, w, t: loss_fused(enc_h(x), x, w, t, mlp, n_freq),
        "triton_fused_pe": lambda x, w, t: loss_fused_inp(inp_h(x), w, t, mlp),
    }
    if args.seg:
        variants["triton_fused_pe_seg"] = ("seg", variants["triton_fused_pe"])
    if args.compile:
        variants["compiled"] = torch.compile(full_ref, dynamic=False)
        variants["compiled_fused"] = torch.compile(full_ref_fused, dynamic=False)
        variants["triton_fused_compiled"] = lambda x, w, t: post_fused_c(HT.hash_grid_encode_triton(x, table, res),
                                                                          x, w, t, mlp, n_freq)
        variants["triton_fused_h_compiled"] = lambda x, w, t: post_fused_c(enc_h(x), x, w, t, mlp, n_freq)
        variants["triton_fused_pe_compiled"] = lambda x, w, t: post_inp_c(inp_h(x), w, t, mlp)
    if dev.type == "cuda" and args.graphs:  # last: a failed capture can leave the process unusable
        variants["triton_fused_pe_graph"] = ("graph", variants["triton_fused_pe"])
        if args.compile:
            variants["compiled_reduce_overhead"] = ("ro", torch.compile(full_ref, dynamic=False,
                                                                        mode="reduce-overhead"))
    ref = None
    steps = {}
    for vname, fn in variants.items():
        mode = None
        if isinstance(fn, tuple):
            mode, fn = fn

        def body(fn=fn):
            with torch.autocast(dev.type, dtype=amp_dtype, cache_enabled=False):
                loss = fn(x, w, target)
            (loss * LOSS_SCALE).backward()
            return loss

        def step(body=body, mode=mode):
            if mode == "ro":
                torch.compiler.cudagraph_mark_step_begin()
            for p in params:
                p.grad = None
            if mode == "seg":
                with with_seg_ctx(args.seg):
                    return body()
            return body()
        try:
            t0 = time.perf_counter()
            if mode == "graph":
                step = make_graphed(body, params, dev)
            loss = step()
            sync(dev)
            first_s = time.perf_counter() - t0
            loss_val = loss.item()
            grads = [p.grad.detach().clone() for p in params]
            tm = time_steps(step, dev, args.reps, args.warmup)
        except Exception as e:  # keep the other variants' numbers
            print(f"  {'feat_path':28s} {vname:22s} FAILED: {e!r}"[:400], flush=True)
            records.append({"row": "feat_path", "backend": vname, "error": repr(e)[:2000]})
            continue
        steps[vname] = step
        rec = {"row": "feat_path", "backend": vname, "n_points": R * S, "rays": R, "samples": S, "feature_dim": D,
               "levels": L, "T": T, "F": F, "dtype": "float32 table, fp16 autocast", "first_call_s": first_s, **tm,
               "peak_mem_mb": peak_mem_mb(step, dev), "loss": loss_val}
        if ref is None:
            ref = (loss_val, grads)
        else:
            rec["loss_rel_err_vs_eager"] = abs(loss_val - ref[0]) / abs(ref[0])
            rec["table_grad_rel_err_vs_eager"] = rel_err(grads[0], ref[1][0])
            rec["mlp_grad_rel_err_vs_eager"] = max(rel_err(a, b) for a, b in zip(grads[1:], ref[1][1:], strict=True))
            rec["grad_rel_err_per_param"] = [rel_err(a, b) for a, b in zip(grads, ref[1], strict=True)]
        records.append(rec)
        print(f"  {'feat_path':28s} {vname:22s} {tm['median_ms']:8.3f} ms  first call {first_s:6.1f} s  "
              + (f"loss err {rec['loss_rel_err_vs_eager']:.1e} table grad {rec['table_grad_rel_err_vs_eager']:.1e} "
                 f"mlp grad {rec['mlp_grad_rel_err_vs_eager']:.1e}" if "loss_rel_err_vs_eager" in rec else ""),
              flush=True)
    if args.diag and dev.type == "cuda":
        for vname in ("triton_fused_pe", "triton_fused_pe_compiled"):
            if vname in steps:
                profile_step(steps[vname], vname)


def profile_step(step, name, n=3):
    """Print the top kernels of ``n`` steps by device time (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile
    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            step()
        torch.cuda.synchronize()
    ka = prof.key_averages()
    for key in ("self_device_time_total", "self_cuda_time_total"):
        try:
            print(f"\n--- profile {name} ({n} steps), by {key}\n"
                  + ka.table(sort_by=key, row_limit=18, max_name_column_width=60))
            break
        except Exception as e:  # noqa: PERF203
            print("profile sort failed:", key, repr(e)[:200])


def diag_kernels(dev, gen):
    """Atomic instructions in the backward PTX and per-level kernel times for the RGB grid."""
    from f3rm_ros.core.hashgrid import _triton_kernels as K
    n = 393216
    x = ray_points(8192, 48, dev, gen)
    for gname, (L, F, log2t, base, mx) in GRIDS.items():
        T = 2**log2t
        res = grid_resolutions(L, base, mx)
        table = (torch.rand(L, T, F, generator=gen, device=dev) * 2 - 1) * 1e-4
        meta = HT._meta(res, T, dev)
        g = torch.randn(n, L * F, generator=gen, device=dev)
        gt = torch.zeros_like(table)
        import re
        from collections import Counter

        def ops(kern, pat):
            return dict(Counter(m.group(0) for m in re.finditer(pat, kern.asm.get("ptx", ""))))
        k = K.hash_bwd[((n + 127) // 128, L)](x, g, meta, gt, n, L * F, 0, T=T, L=L, F=F, BLOCK=128, POW2=True,
                                               SEG=False, num_warps=4)
        kv = None
        kf = K.hash_fwd[((n + 127) // 128, L)](x, table, meta, torch.empty(n, L * F, device=dev), n, L * F, T=T, L=L,
                                                F=F, BLOCK=128, POW2=True, num_warps=4)
        pat_at = r"\b(atom|red)\.[a-z0-9.:_]+"
        pat_ld = r"ld\.global[a-z0-9.:_]*"
        print(f"  {gname}: bwd atomics {ops(k, pat_at)}; vec bwd {ops(kv, pat_at) if kv else None}; "
              f"fwd loads {ops(kf, pat_ld)}; regs fwd/bwd/vec {getattr(kf, 'n_regs', '?')}/"
              f"{getattr(k, 'n_regs', '?')}/{getattr(kv, 'n_regs', '?')} spills {getattr(kf, 'n_spills', '?')}/"
              f"{getattr(k, 'n_spills', '?')}/{getattr(kv, 'n_spills', '?')}", flush=True)
        per = []
        for lvl in range(L):
            t1 = table[lvl:lvl + 1].contiguous()
            m1 = HT._meta(res[lvl:lvl + 1], T, dev)
            g1 = g[:, lvl * F:(lvl + 1) * F].contiguous()
            f = time_steps(lambda t1=t1, m1=m1: HT._launch_fwd(x, t1, m1, (128, 4)), dev, 20, 3)["median_ms"]
            b = time_steps(lambda g1=g1, m1=m1, T=T, F=F: HT._launch_bwd(x, g1, m1, (1, T, F), (128, 4)),
                           dev, 20, 3)["median_ms"]
            per.append((res[lvl], round(f, 4), round(b, 4)))
        print(f"  {gname} per level (R, fwd ms, bwd ms incl. zeroing the level's grad): {per}", flush=True)


# -------------------------------------------------------------------------------------- report
def table_text(records) -> str:
    rows = {}
    for r in records:
        if r["backend"].startswith("sweep") or "median_ms" not in r:
            continue
        rows.setdefault(r["row"], {})[r["backend"]] = r
    lines = [f"{'row':28s} {'backend':22s} {'median ms':>10s} {'p10':>8s} {'p90':>8s} {'peak MB':>9s} "
             f"{'x eager':>8s} {'x compiled':>10s}"]
    for row, bs in rows.items():
        e = bs.get("eager", {}).get("median_ms")
        c = bs.get("compiled", {}).get("median_ms")
        for b, r in bs.items():
            m = r["median_ms"]
            pk = r.get("peak_mem_mb")
            lines.append(f"{row:28s} {b:22s} {m:10.3f} {r['p10_ms']:8.3f} {r['p90_ms']:8.3f} "
                         f"{(f'{pk:9.1f}' if pk is not None else '      n/a')} "
                         f"{(f'{e / m:8.2f}' if e else '     n/a')} {(f'{c / m:10.2f}' if c else '       n/a')}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rays", type=int, default=8192)
    ap.add_argument("--samples", type=int, default=48)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float16"])
    ap.add_argument("--points", nargs="+", default=["rays", "uniform"])
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--compile-fp16", action="store_true", help="also torch.compile the fp16-table grid rows")
    ap.add_argument("--no-sweep", dest="sweep", action="store_false")
    ap.add_argument("--only", nargs="+", default=["grids", "feat_path"])
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--quick", action="store_true", help="tiny CPU smoke test in Triton's interpreter")
    ap.add_argument("--diag", action="store_true", help="PTX atomics, per-level kernel times, profiles")
    ap.add_argument("--graphs", action="store_true", help="also time the grid rows captured in a CUDA graph")
    ap.add_argument("--seg-sweep", action="store_true", help="time the backward's segmented pre-sum thresholds")
    ap.add_argument("--seg", type=int, default=None, help="F3RM_HASHGRID_SEG_MAX_RES for the feature path variant "
                    "triton_fused_pe_seg")
    args = ap.parse_args(argv)
    if args.quick:
        args.rays, args.samples, args.reps, args.warmup, args.compile = 8, 4, 2, 1, False
        args.points = ["rays"]
    dev = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    if dev.type == "cpu" and not args.quick:
        print("no CUDA device: run with --quick for a CPU smoke test")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    gen = torch.Generator(device=dev).manual_seed(0)
    import triton
    meta = {"commit": git_commit(), "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
            "argv": sys.argv[1:], "n_points": args.rays * args.samples,
            "triton_default_config": {"fwd": list(HT.DEFAULT_FWD_CONFIG), "bwd": list(HT.DEFAULT_BWD_CONFIG),
                                      "seg_max_res": {str(k): v for k, v in HT.DEFAULT_SEG_MAX_RES.items()},
                                      "seg_max_res_other": HT.DEFAULT_SEG_MAX_RES_OTHER},
            "files_sha256": files_sha256()}
    print(f"commit {meta['commit']}  device {meta['device']}  torch {meta['torch']}  triton {meta['triton']}",
          flush=True)
    records: list = []
    t0 = time.perf_counter()
    if args.diag and dev.type == "cuda":
        diag_kernels(dev, gen)
    if "grids" in args.only:
        grid_rows(args, dev, gen, records, meta)
    if "feat_path" in args.only:
        feature_path_rows(args, dev, gen, records)
    meta["bench_wall_s"] = time.perf_counter() - t0
    text = table_text(records)
    print("\n" + text)
    out_dir = Path(args.out_dir)
    gpu = meta["device"].replace(" ", "_").replace("/", "_")[:40]
    path = out_dir / f"hashgrid_{gpu}_{meta['commit'][:10]}{'_quick' if args.quick else ''}.json"
    from f3rm_ros.core.io import atomic_write_json
    atomic_write_json(path, {"meta": meta, "records": records, "table": text.splitlines()})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
