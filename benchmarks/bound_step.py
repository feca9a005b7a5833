"""What bounds a training step and a grasp query (issue 21): bytes and FLOPs counted from the real objects,
the card's measured ceilings, and kernel time by category from torch.profiler, in one process.

1. Ceilings: HBM bandwidth (a large device-to-device copy, bytes read + written, median of repeats) and dense
   GEMM rates (fp16 and fp32 matrix products), beside the datasheet figures of the card.
2. Counts of one training step (fox at 1/4, 4096 rays, reference networks, 768-d random feature targets as in
   ``profile_train.py``), taken from an eager trainer of the same config (``cuda_graphs: off``) with forward hooks
   on every hash grid and a dispatch mode over every aten op; for a step that updates the proposal nets and one
   that does not:
   * optimiser bytes: per parameter group (module) its size, parameter / gradient / Adam-state dtypes, and
     fused Adam's traffic over the parameters that have a gradient that step (read param, grad, exp_avg,
     exp_avg_sq; write param, exp_avg, exp_avg_sq); the grad scaler's inf check (reads every gradient) apart;
   * hash grid bytes, the issue's count: points x levels x 8 corners x F x dtype for the forward gathers and
     the backward's scatter-adds, with the points each grid really got (256 / 96 / 48 samples per ray from the
     proposal sampler); apart from it the streams around them (points in, encodings out, upstream gradient in,
     the zero-filled gradient table) and a cache-aware floor (every table row a step can touch, once);
   * GEMM FLOPs and operand bytes of every matrix product (forward and backward) by dtype, and the naive
     traffic of the eager step (every aten op reading its inputs and writing its outputs once);
   so that ``bound (ms) = (optimiser bytes + grid bytes) / measured bandwidth + GEMM FLOPs / measured peak``,
   with the proposal-update fraction of the measured steps.
3. The trainer's default fast path (CUDA graphs on CUDA), as ``bench_train.py`` times it: median step with a
   synchronize around each step, and pipelined; peak memory; then torch.profiler over ``--profile-steps``
   steady-state steps of a fresh trainer (its CUDA graphs captured after the profiler first ran: kernels of a graph
   made before may be missing from a trace): kernels per step, kernel time by category (kernel-name patterns,
   ``CATEGORIES``), the kernel sum and the busy time (union of kernel intervals) beside the step's wall time, the
   top kernels.
4. A grasp query: a field of a built-in scene trained in the same call (``--query-preset``, label features of
   the dataset, as ``bench_grasp_trained.py plan``), the default planner (reference settings; the demo's CPU
   settings with ``--quick``): median latency and stages, the optimiser iterations it ran, and one query under
   the profiler: kernels and time by category for the whole query and for the optimiser loop alone, per
   iteration.
5. Where the eager step's kernel time goes by phase (batch, sampler, RGB field, render, feature render, losses,
   backward of each, optimiser): a profile of a few eager steps, kernels attributed to the ``bound::`` range
   that launched them (backward kernels to the phase of the forward op of their autograd node).

Every unprofiled timing runs before the first profiler (once torch.profiler has run, a process stays slower;
NOTES_train.md). Prints a summary last and writes JSON (``--out``, default
``benchmarks/results/bound_step_<gpu>.json``). Needs torch only (no open3d, ROS, open_clip).

    python3 benchmarks/bound_step.py --out $OUT/bound_step_H100.json                 # GPU machine
    python benchmarks/bound_step.py --device cpu --quick --out /tmp/bound_step_cpu.json  # smoke test here
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LABEL = "bound::"  # prefix of this script's record_function ranges
MB = 1e6

# Dense (no sparsity) datasheet peaks; the bounds use the measured ceilings, these are for comparison.
DATASHEET = (
    # (name, substrings of torch.cuda.get_device_name that all must appear, figures)
    ("H100 SXM5 80GB HBM3", ("H100", "HBM3"), {"hbm_GBps": 3350.0, "fp16_TFLOPS": 989.4, "tf32_TFLOPS": 494.7,
                                               "fp32_TFLOPS": 66.9}),
    ("H100 PCIe", ("H100", "PCIe"), {"hbm_GBps": 2000.0, "fp16_TFLOPS": 756.0, "tf32_TFLOPS": 378.0,
                                     "fp32_TFLOPS": 51.2}),
    ("H200", ("H200",), {"hbm_GBps": 4800.0, "fp16_TFLOPS": 989.4, "tf32_TFLOPS": 494.7, "fp32_TFLOPS": 66.9}),
)

# Kernel (CUDA) or leaf aten op (CPU runs) name -> category; the first pattern that matches wins.
CATEGORIES: tuple[tuple[str, str, str], ...] = (
    ("hash_fwd", "hash grid forward: Triton corner gathers (+ sin/cos PE)", r"\bhash_fwd\b|\bfreq_fwd\b"),
    ("hash_bwd_points", "hash grid gradient w.r.t. the points (queries)", r"\bhash_bwd_x\b"),
    ("hash_bwd", "hash grid backward: Triton scatter-adds", r"\bhash_bwd\b"),
    ("grad_scaler", "AMP grad scaler: inf check / unscale, scale update",
     r"non_finite_check|amp_update_scale|_amp_foreach|aten::_amp"),
    ("adam", "optimiser: fused Adam (multi-tensor kernels)",
     r"FusedOptimizerTensorListMetadata|[Ff]used_?[Aa]dam|_foreach_|multi_tensor_apply"),
    ("gemm", "GEMM (cuBLAS nvjet / CUTLASS / xmma)",
     r"gemm|gemv|nvjet|xmma|cutlass|cublas|splitKreduce|\bdot_kernel|"
     r"^aten::(mm|addmm|bmm|baddbmm|_addmm_activation|addmv|mv|dot)$"),
    ("sort_scan_search", "sort / scan / searchsorted (the sampler's pdf resampling; a query's pruning rank)",
     r"[Ss]ort|[Ss]can|searchsorted|[Rr]adix|cub::|^aten::(cumsum|topk|kthvalue|quantile)$"),
    ("gather_scatter", "gather / scatter / index / embedding", r"[Ss]catter|[Gg]ather|[Ii]ndex|[Ee]mbedding|"
                                                             r"^aten::(take|masked_select|nonzero)$"),
    ("copy_cast", "copies, dtype casts (autocast), cat / stack", r"Memcpy|[Cc]opy|CatArray|^aten::(cat|stack|clone)$"),
    ("fill", "fills and zeroing (gradient tables, zeros_like), memset", r"Memset|FillFunctor|^aten::(fill_|zero_)$"),
    ("reduction", "reductions (sum, mean, max, norm)", r"reduce_kernel|[Rr]educe|^aten::(sum|mean|max|min|amax|amin|"
                                                       r"norm|linalg_vector_norm|prod|all|any)$"),
    ("elementwise", "element-wise (render, losses, sampler maths, SH, contraction, activations, Adam on poses)",
     r"elementwise|[Ff]unctor|^aten::"),
)
_CAT_RE = [(k, re.compile(p)) for k, _, p in CATEGORIES]
# the issue's coarse groups over the categories above
COARSE = {"hash_fwd": "hash grid fwd", "hash_bwd": "hash grid bwd", "hash_bwd_points": "hash grid bwd",
          "adam": "optimiser", "grad_scaler": "optimiser", "gemm": "GEMM", "sort_scan_search": "sampler (sort/scan)",
          "gather_scatter": "render/loss element-wise", "reduction": "render/loss element-wise",
          "elementwise": "render/loss element-wise", "copy_cast": "copies", "fill": "copies", "other": "other"}

# planner workspace of the built-in scenes (bench_grasp_trained.WORKSPACE): the synthetic table, world frame
WORKSPACE = ((-0.35, -0.3, 0.005), (0.35, 0.3, 0.3))


def categorize(name: str) -> str:
    """The category key of a kernel / leaf op name (``CATEGORIES``), ``other`` if none matches."""
    for key, rx in _CAT_RE:
        if rx.search(name):
            return key
    return "other"


def union_us(intervals: Iterable[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals (the time at least one kernel ran)."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def commit() -> str:
    env = os.environ.get("F3RM_COMMIT")
    if env:
        return env[:10]
    try:
        return subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except Exception:
        return "unknown"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------ byte counts
def adam_traffic(named_params: Iterable[tuple[str, torch.Tensor]], optimizer: torch.optim.Optimizer,
                 with_grad: set[str] | None = None) -> dict[str, Any]:
    """Bytes one Adam step moves over the parameters that have a gradient: read param, grad and every state
    tensor of the parameter's size (exp_avg, exp_avg_sq, max_exp_avg_sq), write param and those states.

    Args:
        named_params: ``model.named_parameters()``.
        optimizer: the Adam optimiser (its state gives the state dtypes; before its first step they are
            taken to be the parameter's dtype).
        with_grad: names of the parameters that get a gradient (None: those whose ``.grad`` is set now).
    Returns:
        {"bytes", "params", "groups": {group: {numel, dtype, grad_dtype, state_dtypes, bytes, with_grad}}}
    """
    groups: dict[str, dict] = {}
    total_b = total_n = 0
    for name, p in named_params:
        has = (p.grad is not None) if with_grad is None else (name in with_grad)
        st = optimizer.state.get(p, {})
        states = [v for k, v in st.items() if isinstance(v, torch.Tensor) and v.numel() == p.numel() and k != "step"]
        state_dt = [str(v.dtype).replace("torch.", "") for v in states] or [str(p.dtype).replace("torch.", "")] * 2
        state_b = sum(v.element_size() for v in states) if states else 2 * p.element_size()
        grad_b = p.grad.element_size() if p.grad is not None else p.element_size()
        b = p.numel() * (2 * p.element_size() + grad_b + 2 * state_b) if has else 0
        g = groups.setdefault(param_group_name(name), {"numel": 0, "dtype": str(p.dtype).replace("torch.", ""),
                                                       "grad_dtype": str(p.grad.dtype).replace("torch.", "")
                                                       if p.grad is not None else None,
                                                       "state_dtypes": state_dt, "bytes": 0, "with_grad": has})
        g["numel"] += p.numel()
        g["bytes"] += b
        total_b += b
        total_n += p.numel() if has else 0
    return {"bytes": total_b, "params": total_n, "groups": groups}


def param_group_name(name: str) -> str:
    """``rgb_field.geo_mlp.0.weight`` -> ``rgb_field.geo_mlp``; ``proposal_nets.0.grid.table`` ->
    ``proposal_nets.0.grid`` (a module's parameters, MLP layers together)."""
    parts = name.split(".")[:-1] or [name]
    while len(parts) > 1 and parts[-1].isdigit():
        parts.pop()
    return ".".join(parts)


def grid_call_bytes(n: int, resolutions: list[int], T: int, F: int, table_bytes: int, out_bytes: int,
                    backward: bool, points_grad: bool = False) -> dict[str, float]:
    """Bytes of one hash grid encoding of ``n`` points (``L = len(resolutions)`` levels, ``T`` rows of ``F``
    features per level).

    Returns (bytes):
        gather: the forward's corner reads, ``n * L * 8 * F * table_bytes`` (the issue's count; no cache reuse)
        scatter: the backward's scatter-adds into the fp32 gradient table, ``n * L * 8 * F * 4`` (0 without one)
        points_grad: the points-gradient kernel's second gather (queries), ``n * L * 8 * F * table_bytes``
        stream: points in (x2 with a backward), encodings out, the upstream gradient in, the gradient table
            zero-filled (``L * T * F * 4``)
        floor_rows: a cache-aware floor: every row the step can touch (``min(T, (R+1)^3, 8n)`` per level) read
            once in the forward and, with a backward, written once
    """
    L = len(resolutions)
    corner = n * L * 8 * F
    rows = sum(min(T, (int(r) + 1) ** 3, 8 * n) for r in resolutions)
    out = {"gather": corner * table_bytes, "scatter": corner * 4 if backward else 0,
           "points_grad": corner * table_bytes if points_grad else 0,
           "stream": n * 3 * 4 + n * L * F * out_bytes, "floor_rows": rows * F * table_bytes,
           "table_bytes": L * T * F * table_bytes}
    if backward:
        out["stream"] += n * 3 * 4 + n * L * F * out_bytes + L * T * F * 4
        out["floor_rows"] += rows * F * 4
    return out


def _tensor_bytes(t: Any) -> int:
    """Bytes a strided tensor spans (an expanded tensor counts its storage once)."""
    if not isinstance(t, torch.Tensor) or t.numel() == 0:
        return 0
    if t.layout != torch.strided:
        return t.numel() * t.element_size()
    span = 1 + sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride(), strict=True))
    return min(t.numel(), span) * t.element_size()


def _leaves(x: Any) -> list:
    from torch.utils._pytree import tree_leaves  # noqa: PLC0415

    return [v for v in tree_leaves(x) if isinstance(v, torch.Tensor)]


_GEMM_OPS = {"mm", "addmm", "bmm", "baddbmm", "_addmm_activation", "addmv", "mv", "dot"}
_NO_TRAFFIC = {"empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "_local_scalar_dense",
               "set_", "detach", "alias", "lift_fresh", "resize_", "record_stream", "_to_copy_meta"}


def gemm_flops(name: str, args: tuple) -> tuple[int, int, int, int]:
    """(flops, m, n, k) of a matrix-product aten op (``_GEMM_OPS``) from its arguments."""
    if name in ("addmm", "_addmm_activation", "baddbmm"):
        a, b = args[1], args[2]
    elif name == "addmv":
        a, b = args[1], args[2]
    else:
        a, b = args[0], args[1]
    if name in ("bmm", "baddbmm"):
        B, m, k = a.shape
        n = b.shape[-1]
        return 2 * B * m * n * k, B * m, n, k
    if name in ("mv", "addmv"):
        m, k = a.shape
        return 2 * m * k, m, 1, k
    if name == "dot":
        return 2 * a.numel(), 1, 1, a.numel()
    m, k = a.shape
    n = b.shape[-1]
    return 2 * m * n * k, m, n, k


class OpCounter:
    """A dispatch mode over every aten op (forward and backward): the naive traffic of the op-by-op step (each op
    reads its tensor arguments and writes its outputs / mutated arguments once; views and allocations move
    nothing) and every matrix product's FLOPs and operand bytes by dtype."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode  # noqa: PLC0415

        counter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                try:
                    counter._record(func, args, kwargs, out)
                except Exception as e:  # counting must never change the step
                    counter.errors.append(f"{func}: {type(e).__name__}: {e}")
                return out

        self.mode = _Mode()
        self.ops = 0
        self.read = 0
        self.written = 0
        self.by_op: dict[str, dict[str, float]] = {}
        self.gemms: list[dict[str, Any]] = []
        self.errors: list[str] = []

    def _record(self, func, args, kwargs, out) -> None:
        name = func.overloadpacket.__name__
        if getattr(func, "is_view", False) or name in _NO_TRAFFIC:
            return
        schema = func._schema
        read = sum(_tensor_bytes(t) for t in _leaves((args, kwargs)))
        written = 0
        for i, a in enumerate(schema.arguments):
            val = args[i] if i < len(args) else kwargs.get(a.name)
            if a.alias_info is not None and a.alias_info.is_write:
                written += sum(_tensor_bytes(t) for t in _leaves(val))
        rets = out if isinstance(out, tuple) else (out,)
        for r, rs in zip(rets, schema.returns, strict=False):
            if rs.alias_info is None:
                written += sum(_tensor_bytes(t) for t in _leaves(r))
        self.ops += 1
        self.read += read
        self.written += written
        o = self.by_op.setdefault(name, {"count": 0, "bytes": 0})
        o["count"] += 1
        o["bytes"] += read + written
        if name in _GEMM_OPS:
            flops, m, n, k = gemm_flops(name, args)
            a = args[1] if name in ("addmm", "_addmm_activation", "baddbmm", "addmv") else args[0]
            self.gemms.append({"op": name, "m": m, "n": n, "k": k, "flops": flops, "dtype": str(a.dtype).replace(
                "torch.", ""), "bytes": read + written})

    def __enter__(self) -> OpCounter:
        self.mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.mode.__exit__(*exc)

    def gemm_summary(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for g in self.gemms:
            d = out.setdefault(g["dtype"], {"count": 0, "flops": 0, "bytes": 0})
            d["count"] += 1
            d["flops"] += g["flops"]
            d["bytes"] += g["bytes"]
        return out


# ------------------------------------------------------------------------------------------------ ceilings
def _time_op(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 3) -> list[float]:
    """Seconds per call of ``fn`` (CUDA events on CUDA, a host clock on the CPU), after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            fn()
            e1.record()
            e1.synchronize()
            out.append(e0.elapsed_time(e1) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return out


def measure_bandwidth(device: torch.device, nbytes: int, repeats: int) -> dict[str, Any]:
    """A device-to-device copy of ``nbytes`` (random data), counting bytes read + written."""
    n = nbytes // 4
    src = torch.rand(n, device=device)
    dst = torch.full_like(src, float("nan"))
    times = _time_op(lambda: dst.copy_(src), device, repeats)
    ok = bool(torch.equal(dst[:: max(1, n // 4096)], src[:: max(1, n // 4096)]))
    moved = 2 * n * 4
    med = statistics.median(times)
    return {"bytes_per_copy": moved, "repeats": repeats, "median_s": med, "GBps": moved / med / 1e9,
            "max_GBps": moved / min(times) / 1e9, "copy_checked": ok}


def measure_gemm(device: torch.device, n: int, dtype: torch.dtype, repeats: int) -> dict[str, Any]:
    """An ``n x n x n`` matrix product of random inputs in ``dtype``: achieved TFLOPS (median)."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    c = torch.empty(n, n, device=device, dtype=dtype)
    times = _time_op(lambda: torch.mm(a, b, out=c), device, repeats)
    ref = a[:64].double() @ b[:, :64].double()
    err = float((c[:64, :64].double() - ref).norm() / ref.norm())
    med = statistics.median(times)
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "median_s": med, "TFLOPS": 2 * n ** 3 / med / 1e12,
            "rel_err_vs_fp64": err,
            "allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32) if dtype == torch.float32 else None}


def datasheet(name: str) -> dict[str, Any] | None:
    for label, keys, figs in DATASHEET:
        if all(k in name for k in keys):
            return {"card": label, **figs}
    return None


# ------------------------------------------------------------------------------------------------ trainers
def fox_maps(dataset, feature_dim: int, map_hw: tuple[int, int]) -> torch.Tensor:
    """Random feature targets of CLIP ViT-L-14-336's shape on fox 1/4 (values do not change the cost)."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(len(dataset), map_hw[0], map_hw[1], feature_dim, generator=g) * 0.5


def train_config(args, cuda_graphs: str):
    """The reference config (``--quick``: the ``small`` preset), no evaluations or checkpoints."""
    from f3rm_ros.core.presets import trainer_config  # noqa: PLC0415

    return trainer_config("small" if args.quick else "reference", eval_every=0, checkpoint_every=0,
                          progress_every=1_000_000, seed=0, cuda_graphs=cuda_graphs, rays_per_batch=args.rays)


def build(args, dataset, maps, device, cuda_graphs: str):
    from f3rm_ros.core.workflows.train_scene import FeatureMaps, build_trainer  # noqa: PLC0415

    return build_trainer(train_config(args, cuda_graphs), dataset, FeatureMaps(maps, {"name": "random"}),
                         device=device)


def record_updates(trainer) -> list[tuple[int, bool]]:
    """Record ``(step, update_proposals)`` of every step the trainer takes from now on."""
    sampler = trainer.model.sampler
    orig = sampler.should_update
    log: list[tuple[int, bool]] = []

    def should_update(step: int) -> bool:
        u = orig(step)
        log.append((int(step), bool(u)))
        return u

    sampler.should_update = should_update
    return log


def update_fraction(sampler_config, steps: int) -> float:
    """Fraction of steps 0..steps-1 that update the proposal nets (a fresh sampler's schedule)."""
    from f3rm_ros.core.fields.sampler import ProposalSampler  # noqa: PLC0415

    s = ProposalSampler(sampler_config)
    return sum(s.should_update(i) for i in range(steps)) / max(1, steps)


def count_step(args, dataset, maps, device) -> dict[str, Any]:
    """Counts of one step with and one without proposal updates, on an eager trainer of the same config."""
    from f3rm_ros.core.hashgrid import HashGrid  # noqa: PLC0415

    tr = build(args, dataset, maps, device, "off")
    names = {m: n for n, m in tr.model.named_modules() if isinstance(m, HashGrid)}
    calls: list[dict[str, Any]] = []

    def hook(mod, inputs, output):
        x = inputs[0]
        table = mod.table
        calls.append({"grid": names[mod], "points": int(x.numel() // 3), "levels": len(mod.resolutions),
                      "F": int(mod.config.features_per_level), "T": 1 << int(mod.config.log2_hashmap_size),
                      "resolutions": [int(r) for r in mod.resolutions], "backend": mod.backend,
                      "table_bytes": table.element_size() if table is not None else 4,
                      "out_bytes": output.element_size(),
                      "backward": bool(torch.is_grad_enabled() and table is not None and table.requires_grad),
                      "points_grad": bool(torch.is_grad_enabled() and x.requires_grad)})

    handles = [m.register_forward_hook(hook) for m in names]
    out: dict[str, Any] = {"hashgrid_backends": tr.model.hashgrid_backends(),
                           "sampler": {"num_proposal_samples": list(tr.model.sampler.config.num_proposal_samples),
                                       "num_samples": tr.model.sampler.config.num_samples},
                           "rays_per_batch": tr.config.rays_per_batch,
                           "optimizer": {"class": type(tr.optimizer).__name__,
                                         "param_groups": len(tr.optimizer.param_groups),
                                         **{k: tr.optimizer.defaults.get(k) for k in ("fused", "foreach", "capturable",
                                                                                      "amsgrad")}},
                           "amp": tr.use_amp, "model_params": sum(p.numel() for p in tr.model.parameters())}
    try:
        tr._forward_backward(True)  # Adam's state exists from here on (its lazy zeros are not a step's traffic)
        _sync(device)
        for update in (True, False):
            calls.clear()
            with OpCounter() as oc:
                tr._forward_backward(update)
                _sync(device)
            with_grad = {n for n, p in tr.model.named_parameters() if p.grad is not None}
            adam = adam_traffic(tr.model.named_parameters(), tr.optimizer, with_grad)
            grids = []
            for c in calls:
                b = grid_call_bytes(c["points"], c["resolutions"], c["T"], c["F"], c["table_bytes"], c["out_bytes"],
                                    c["backward"], c["points_grad"])
                grids.append({**{k: v for k, v in c.items() if k != "resolutions"},
                              "points_per_ray": c["points"] / tr.config.rays_per_batch, **b})
            grad_bytes = sum(p.grad.numel() * p.grad.element_size() for n, p in tr.model.named_parameters()
                             if n in with_grad)
            out["update" if update else "no_update"] = {
                "adam": adam, "grids": grids,
                "grid_gather_bytes": sum(g["gather"] for g in grids),
                "grid_scatter_bytes": sum(g["scatter"] for g in grids),
                "grid_stream_bytes": sum(g["stream"] for g in grids),
                "grid_floor_rows_bytes": sum(g["floor_rows"] for g in grids),
                "scaler_inf_check_bytes": grad_bytes if tr.use_amp else 0,
                "gemm": oc.gemm_summary(), "gemm_list": oc.gemms,
                "op_traffic": {"ops": oc.ops, "read_bytes": oc.read, "written_bytes": oc.written,
                               "top_ops": dict(sorted(oc.by_op.items(), key=lambda kv: -kv[1]["bytes"])[:25])},
                "counter_errors": oc.errors[:10]}
    finally:
        for h in handles:
            h.remove()
        del tr
    return out


def warm_trainer(args, dataset, maps, device) -> tuple[Any, list, dict[str, Any]]:
    """A trainer on the default fast path (CUDA graphs on CUDA), after ``--warmup`` steps (incl. the captures)."""
    if device.type == "cuda":
        import gc  # noqa: PLC0415

        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    tr = build(args, dataset, maps, device, "auto")
    flags = record_updates(tr)
    t_init = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        tr._train_step_tensors()
    _sync(device)
    return tr, flags, {"trainer_init_s": t_init, "warmup_steps": args.warmup, "warmup_s": time.perf_counter() - t0,
                       "cuda_graphs": tr.cuda_graphs_reason, "hashgrid_backends": tr.model.hashgrid_backends()}


def time_training(args, dataset, maps, device) -> dict[str, Any]:
    """The default fast path, timed as bench_train.py (synchronize around each step) and pipelined."""
    tr, flags, res = warm_trainer(args, dataset, maps, device)
    first = len(flags)
    synced = []
    for _ in range(args.steps):
        _sync(device)
        t0 = time.perf_counter()
        tr.train_step()
        _sync(device)
        synced.append(time.perf_counter() - t0)
    mid = len(flags)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        tr._train_step_tensors()
    _sync(device)
    piped = (time.perf_counter() - t0) / max(1, args.steps)
    res.update({"timed_steps": args.steps, "median_synced_ms": 1e3 * statistics.median(synced),
                "p10_synced_ms": 1e3 * sorted(synced)[len(synced) // 10],
                "p90_synced_ms": 1e3 * sorted(synced)[(9 * len(synced)) // 10],
                "pipelined_ms": 1e3 * piped,
                "update_fraction_synced": sum(u for _, u in flags[first:mid]) / max(1, mid - first),
                "update_fraction_pipelined": sum(u for _, u in flags[mid:mid + args.steps]) / max(1, args.steps),
                "loss": tr.loss_floats(tr._train_step_tensors())})
    if device.type == "cuda":
        res["peak_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        res["peak_reserved_mb"] = torch.cuda.max_memory_reserved(device) / 2**20
    return res


# ------------------------------------------------------------------------------------------------ profiles
def device_events(prof, device: torch.device) -> list[tuple[str, float, float]]:
    """``(name, start_us, duration_us)`` of every kernel / memcpy / memset (CUDA), or ``(name, start_us,
    self_time_us)`` of every aten op (CPU runs, where there are no kernels: a stand-in that exercises the same
    code; its "busy" union is not meaningful)."""
    from torch.autograd import DeviceType  # noqa: PLC0415

    out = []
    for e in prof.events():
        dt = getattr(e, "device_type", None)
        if device.type == "cuda":
            if dt != DeviceType.CUDA or getattr(e, "is_user_annotation", False) or e.name.startswith(LABEL):
                continue
            out.append((e.name, float(e.time_range.start), float(e.time_range.end - e.time_range.start)))
        elif dt == DeviceType.CPU and e.name.startswith("aten::"):
            out.append((e.name, float(e.time_range.start), float(e.self_cpu_time_total)))
    return out


def summarize(events: list[tuple[str, float, float]], units: float, unit: str = "step", top: int = 25
              ) -> dict[str, Any]:
    """Kernel count, kernel time, busy time (union) and time by category, per ``unit`` (divided by ``units``)."""
    units = max(units, 1e-12)
    cats: dict[str, dict[str, Any]] = {}
    by_name: dict[str, list] = {}
    for name, _s, d in events:
        c = cats.setdefault(categorize(name), {"us": 0.0, "count": 0})
        c["us"] += d
        c["count"] += 1
        bn = by_name.setdefault(name, [0.0, 0])
        bn[0] += d
        bn[1] += 1
    total = sum(d for _, _, d in events)
    busy = union_us((s, s + d) for _, s, d in events)
    span = (max(s + d for _, s, d in events) - min(s for _, s, _ in events)) if events else 0.0
    coarse: dict[str, float] = {}
    for k, v in cats.items():
        coarse[COARSE.get(k, "other")] = coarse.get(COARSE.get(k, "other"), 0.0) + v["us"] / units
    return {"unit": unit, "units": units, f"kernels_per_{unit}": len(events) / units,
            f"kernel_us_per_{unit}": total / units, f"busy_us_per_{unit}": busy / units,
            f"first_to_last_us_per_{unit}": span / units,
            "categories": {k: {"us_per_unit": v["us"] / units, "count_per_unit": v["count"] / units,
                               "share": v["us"] / total if total else 0.0}
                           for k, v in sorted(cats.items(), key=lambda kv: -kv[1]["us"])},
            "coarse_us_per_unit": dict(sorted(coarse.items(), key=lambda kv: -kv[1])),
            "top_kernels": [{"name": n, "us_per_unit": v[0] / units, "count_per_unit": v[1] / units,
                             "category": categorize(n)}
                            for n, v in sorted(by_name.items(), key=lambda kv: -kv[1][0])[:top]]}


def profile_training(args, dataset, maps, device) -> dict[str, Any]:
    """``--profile-steps`` steady-state steps of a fresh trainer under torch.profiler (pipelined, as Trainer.train
    runs). Its CUDA graphs are captured after the profiler first ran in this process: kernels of a graph made
    before that may be missing from the trace (torch.profiler._utils._init_for_cuda_graphs, pytorch#100441)."""
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    try:
        from torch.profiler._utils import _init_for_cuda_graphs  # noqa: PLC0415

        _init_for_cuda_graphs()
    except Exception:  # private API: without it the trace may lack the graphs' kernels (checked below)
        pass
    with profile(activities=acts):  # and once with the device activities, before the graphs are captured
        torch.ones(8, device=device).sum()
        _sync(device)
    tr, flags, info = warm_trainer(args, dataset, maps, device)
    n = args.profile_steps
    _sync(device)
    first = len(flags)
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        for _ in range(n):
            tr._train_step_tensors()
        _sync(device)
    wall = (time.perf_counter() - t0) / max(1, n)
    ev = device_events(prof, device)
    res = summarize(ev, n, "step")
    res.update({"trainer": info, "profiled_steps": n, "wall_ms_per_step_under_profiler": 1e3 * wall,
                "update_flags": [u for _, u in flags[first:first + n]]})
    res["update_fraction"] = sum(res["update_flags"]) / max(1, len(res["update_flags"]))
    if device.type == "cuda" and res["kernels_per_step"] < 100:
        res["warning"] = (f"only {res['kernels_per_step']:.0f} kernels per step traced: the CUDA graphs' kernels are "
                          "probably missing from the trace; the categories are incomplete")
        print(f"[profile] WARNING: {res['warning']}", flush=True)
    return res


_PHASES = (("batch", "f3rm_ros.core.training.batcher", "RayBatcher", "sample"),
           ("error_map", "f3rm_ros.core.training.batcher", "RayBatcher", "record_pixel_error"),
           ("render", "f3rm_ros.core.fields.model", "FieldModel", "render_rays"),
           ("sampler", "f3rm_ros.core.fields.sampler", "ProposalSampler", "__call__"),
           ("rgb_field", "f3rm_ros.core.fields.rgb_field", "RGBField", "forward"),
           ("feature_render", "f3rm_ros.core.fields.feature_field", "FeatureField", "render"),
           ("backward", "torch", "Tensor", "backward"),
           ("optimizer", "torch.amp", "GradScaler", "step"),
           ("optimizer", "torch.amp", "GradScaler", "update"))
_LOSS_FUNCS = ("rgb_mse", "interlevel_loss", "distortion_loss", "feature_mse", "depth_loss")


def _label_phases() -> Callable[[], None]:
    """Wrap the step's parts in ``bound::<phase>`` ranges; returns the function that undoes it."""
    import importlib  # noqa: PLC0415

    undo = []

    def wrap(obj, attr, label):
        orig = getattr(obj, attr)

        def wrapped(*a, __orig=orig, __label=LABEL + label, **k):
            with torch.profiler.record_function(__label):
                return __orig(*a, **k)
        setattr(obj, attr, wrapped)
        undo.append((obj, attr, orig))

    for label, mod, cls, meth in _PHASES:
        wrap(getattr(importlib.import_module(mod), cls), meth, label)
    tmod = importlib.import_module("f3rm_ros.core.training.trainer")
    for fn in _LOSS_FUNCS:
        if hasattr(tmod, fn):
            wrap(tmod, fn, "losses")
    return lambda: [setattr(o, a, f) for o, a, f in reversed(undo)]


def _is_bwd_node(e) -> bool:
    """An autograd node's range in the backward (it carries the forward op's sequence number and thread)."""
    return getattr(e, "sequence_nr", -1) >= 0 and bool(getattr(e, "fwd_thread", 0))


def phase_breakdown(prof, device: torch.device, units: int) -> dict[str, Any]:
    """Kernel time (CUDA; self time of aten ops on the CPU) by the ``bound::`` phase that launched it; kernels of
    the backward go to ``bwd:<phase of the forward op of their autograd node>``."""
    import bisect  # noqa: PLC0415

    from torch.autograd import DeviceType  # noqa: PLC0415

    cpu = [e for e in prof.events() if getattr(e, "device_type", None) == DeviceType.CPU]
    # every forward op records the autograd sequence number current at its start; the node numbered N was made by
    # the latest op that recorded N and started before the node ran (earlier ones, e.g. under no_grad, made no
    # node; an outer composite op starts before the inner op that makes it)
    fwd: dict[tuple[int, int], list] = {}
    for e in cpu:
        if getattr(e, "sequence_nr", -1) >= 0 and not getattr(e, "fwd_thread", 0) and not e.name.startswith(LABEL):
            fwd.setdefault((e.thread, e.sequence_nr), []).append((float(e.time_range.start), e))
    for v in fwd.values():
        v.sort(key=lambda t: t[0])

    def forward_op(node):
        cands = fwd.get((node.fwd_thread, node.sequence_nr), [])
        i = bisect.bisect_left([t for t, _ in cands], float(node.time_range.start))
        return cands[i - 1][1] if i > 0 else None

    def label_of(e, depth: int = 0) -> str:
        p = e
        while p is not None:
            if p.name.startswith(LABEL):
                return p.name[len(LABEL):]
            if _is_bwd_node(p) and depth == 0:
                f = forward_op(p)
                return "bwd:" + (label_of(f, 1) if f is not None else "?")
            p = p.cpu_parent
        return "unlabelled"

    phases: dict[str, dict[str, Any]] = {}
    for e in cpu:
        if device.type == "cuda":
            items = [(k.name, float(k.duration)) for k in getattr(e, "kernels", [])]
        else:
            items = [(e.name, float(e.self_cpu_time_total))] if e.name.startswith("aten::") else []
        if not items:
            continue
        lab = label_of(e)
        ph = phases.setdefault(lab, {"us": 0.0, "count": 0, "categories": {}})
        for name, d in items:
            ph["us"] += d
            ph["count"] += 1
            c = categorize(name)
            ph["categories"][c] = ph["categories"].get(c, 0.0) + d
    total = sum(p["us"] for p in phases.values())
    return {"steps": units, "kernel_us_per_step": total / max(1, units),
            "phases": {k: {"us_per_step": v["us"] / units, "kernels_per_step": v["count"] / units,
                           "share": v["us"] / total if total else 0.0,
                           "categories_us_per_step": {c: u / units for c, u in sorted(
                               v["categories"].items(), key=lambda kv: -kv[1])}}
                       for k, v in sorted(phases.items(), key=lambda kv: -kv[1]["us"])}}


def eager_phases(args, dataset, maps, device) -> dict[str, Any]:
    """A few eager steps (``cuda_graphs: off``, the same kernels the graphs replay) profiled by phase."""
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    tr = build(args, dataset, maps, device, "off")
    try:
        for _ in range(1 if args.quick else 3):
            tr._train_step_tensors()
        _sync(device)
        undo = _label_phases()
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        try:
            with profile(activities=acts) as prof:
                for _ in range(args.phase_steps):
                    tr._train_step_tensors()
                _sync(device)
        finally:
            undo()
        return phase_breakdown(prof, device, args.phase_steps)
    finally:
        del tr


# ------------------------------------------------------------------------------------------------ the query
# --quick: planner settings that make a CPU query take seconds (on top of the demo's CPU settings)
QUICK_PLANNER = {"num_steps": 3, "sources": "demo", "max_proposals": 256, "min_poses": 64, "rotations_per_voxel": 2,
                 "max_tasks_tried": 1}


def build_query(args, device) -> tuple[Any, dict[str, Any]]:
    """Train a field of a built-in scene (label features) and make the default planner on it (``--query-field
    oracle``: the scene's analytic oracle field instead, as bench_query.py; no training)."""
    from f3rm_ros.core.grasp import GraspPlanner, PlannerConfig, load_default_tasks  # noqa: PLC0415
    from f3rm_ros.core.presets import PLANNER_CPU  # noqa: PLC0415

    field, ex, info = (oracle_field if args.query_field == "oracle" else trained_field)(args, device)
    overrides = {**PLANNER_CPU, **QUICK_PLANNER} if args.quick else {}
    pc = PlannerConfig(workspace_min_m=WORKSPACE[0], workspace_max_m=WORKSPACE[1], device=str(device), **overrides)
    info["planner"] = "the demo's CPU settings, fewer poses and steps (--quick)" if args.quick else "reference defaults"
    info["planner_overrides"] = overrides
    info["planner_num_steps"] = pc.num_steps
    return GraspPlanner(field, ex, load_default_tasks(), config=pc), info


def oracle_field(args, device) -> tuple[Any, Any, dict[str, Any]]:
    from f3rm_ros.core.features.configs import LabelFeatureConfig  # noqa: PLC0415
    from f3rm_ros.core.features.labels import LabelFeatureExtractor  # noqa: PLC0415
    from f3rm_ros.core.grasp.oracle import OracleField  # noqa: PLC0415
    from f3rm_ros.core.sim.scene import resolve_scene  # noqa: PLC0415

    scene = resolve_scene(args.scene)
    ex = LabelFeatureExtractor(LabelFeatureConfig(), table=scene.label_table()[0])
    t0 = time.perf_counter()
    res = 0.006 if args.quick else 0.003
    field = OracleField.from_extractor(scene, ex, resolution=res, device=device, backend="scipy")
    return field, ex, {"scene": args.scene, "field": f"oracle (scipy, {res} m)", "preset": "oracle", "train_steps": 0,
                       "rays": 0, "feature_dim": int(ex.feature_dim), "train_s": time.perf_counter() - t0}


def trained_field(args, device) -> tuple[Any, Any, dict[str, Any]]:
    from f3rm_ros.core.features import create_extractor  # noqa: PLC0415
    from f3rm_ros.core.field_api import load_trained_field  # noqa: PLC0415
    from f3rm_ros.core.presets import trainer_config  # noqa: PLC0415
    from f3rm_ros.core.workflows.train_scene import TrainSceneRequest, train_scene  # noqa: PLC0415

    data = Path(args.sim_root) / args.scene
    ex = create_extractor({"extractor": "labels", "labels": {"dataset": str(data)}})
    cfg = trainer_config(args.query_preset, seed=args.query_seed, rays_per_batch=args.query_rays, eval_every=0,
                         eval_num_images=1, checkpoint_every=0)
    t0 = time.perf_counter()
    res = train_scene(TrainSceneRequest(data, num_steps=args.query_train_steps, trainer=cfg, features=ex,
                                        device=device, keep_trainer=True))
    info = {"scene": args.scene, "field": "trained", "data": str(data), "preset": args.query_preset,
            "train_steps": args.query_train_steps,
            "rays": args.query_rays, "seed": args.query_seed, "feature_dim": int(ex.feature_dim),
            "train_s": res.train_s, "train_total_s": time.perf_counter() - t0, "eval_psnr": res.eval.get("psnr"),
            "hashgrid_backends": res.trainer.model.hashgrid_backends()}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "field.ckpt"
        res.trainer.save_checkpoint(ckpt, include_optimizer=False)
        res = None  # the trainer's memory back before the queries
        field = load_trained_field(ckpt, device)
    return field, ex, info


def watch_optimiser() -> tuple[list[dict[str, Any]], Callable[[], None]]:
    """Record every run of the planner's Adam loop (poses, iterations, CUDA graph or not) in a ``bound::optimise``
    range; returns the list and the function that undoes the wrapping."""
    import f3rm_ros.core.grasp.planner as pmod  # noqa: PLC0415
    from f3rm_ros.core.grasp.optimize import StaticPoseOptimizer  # noqa: PLC0415

    runs: list[dict[str, Any]] = []
    orig_run, orig_plain = StaticPoseOptimizer.run, pmod.optimize_poses

    def run(self, t0, q0):
        with torch.profiler.record_function(LABEL + "optimise"):
            out = orig_run(self, t0, q0)
        runs.append({"loop": "static", "poses": int(t0.shape[0]), "iterations": int(out[3].get("steps", 0)),
                     "cuda_graph": bool(out[3].get("graph")), "graph_error": out[3].get("graph_error")})
        return out

    def plain(field, t0, q0, *a, **k):
        with torch.profiler.record_function(LABEL + "optimise"):
            out = orig_plain(field, t0, q0, *a, **k)
        runs.append({"loop": "plain", "poses": int(t0.shape[0]), "iterations": int(out[3].get("steps", 0)),
                     "cuda_graph": False})
        return out

    StaticPoseOptimizer.run = run
    pmod.optimize_poses = plain

    def undo():
        StaticPoseOptimizer.run = orig_run
        pmod.optimize_poses = orig_plain
    return runs, undo


def time_query(planner, query: str, repeats: int, device: torch.device, runs: list) -> dict[str, Any]:
    _sync(device)
    t0 = time.perf_counter()
    planner.plan(query)  # cold: alpha grid, surface, Triton specialisations, first capture
    _sync(device)
    cold = time.perf_counter() - t0
    planner.plan(query)
    out = []
    for _ in range(repeats):
        runs.clear()
        _sync(device)
        t0 = time.perf_counter()
        r = planner.plan(query)
        _sync(device)
        out.append((time.perf_counter() - t0, r, list(runs)))
    med = statistics.median(s for s, _, _ in out)
    last = out[-1][1]
    iters = [sum(x["iterations"] for x in rr) for _, _, rr in out]
    stages = {k: statistics.median(r.timing.get(k, 0.0) for _, r, _ in out) for k in last.timing}
    return {"query": query, "cold_s": cold, "median_s": med, "runs_s": [s for s, _, _ in out], "stages_s": stages,
            "found": bool(last.found), "reason": last.reason, "task": last.task,
            "optimiser_runs": out[-1][2], "optimiser_iterations": statistics.median(iters),
            "optimise_stage_s_per_iteration": stages.get("optimise", 0.0) / max(1, statistics.median(iters)),
            "stats": {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                      for k, v in last.stats.items() if k in ("proposals", "proposals_free", "optimised", "masked",
                                                              "optimizer", "folded_head", "tasks_fitting",
                                                              "checked", "surface", "optimizer_graph_error")}}


def profile_query(planner, query: str, device: torch.device, runs: list) -> dict[str, Any]:
    from torch.autograd import DeviceType  # noqa: PLC0415
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    runs.clear()
    _sync(device)
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        r = planner.plan(query)
        _sync(device)
    wall = time.perf_counter() - t0
    iters = sum(x["iterations"] for x in runs)
    ev = device_events(prof, device)
    windows = [(float(e.time_range.start), float(e.time_range.end)) for e in prof.events()
               if getattr(e, "device_type", None) == DeviceType.CPU and e.name == LABEL + "optimise"]
    inside = [x for x in ev if any(s <= x[1] <= e for s, e in windows)]
    opt = summarize(inside, max(1, iters), "iteration")
    opt["window_wall_us_per_iteration"] = sum(e - s for s, e in windows) / max(1, iters)
    return {"query": query, "wall_s_under_profiler": wall, "found": bool(r.found),
            "optimise_stage_s": r.timing.get("optimise"), "optimiser_runs": list(runs), "optimiser_iterations": iters,
            "whole_query": summarize(ev, 1, "query"), "optimiser_loop": opt}


# ------------------------------------------------------------------------------------------------ the bound
def bound_summary(counts: dict, ceilings: dict, train: dict | None, prof: dict | None, f_update: float,
                  f_2000: float) -> dict[str, Any]:
    """The step's bound from the counts at the measured ceilings, and how far the measured step is from it."""
    bw = ceilings["bandwidth"]["GBps"] * 1e9
    peaks = {d: ceilings["gemm"][d]["TFLOPS"] * 1e12 for d in ceilings.get("gemm", {})}

    def mix(key_fn, f):
        return f * key_fn(counts["update"]) + (1 - f) * key_fn(counts["no_update"])

    def gemm_s(c):
        return sum(v["flops"] / peaks.get(d, peaks.get("float16" if d == "bfloat16" else "float32", float("inf")))
                   for d, v in c["gemm"].items())

    def at(f: float) -> dict[str, Any]:
        adam = mix(lambda c: c["adam"]["bytes"], f)
        gather = mix(lambda c: c["grid_gather_bytes"], f)
        scatter = mix(lambda c: c["grid_scatter_bytes"], f)
        stream = mix(lambda c: c["grid_stream_bytes"], f)
        floor_rows = mix(lambda c: c["grid_floor_rows_bytes"], f)
        inf_check = mix(lambda c: c["scaler_inf_check_bytes"], f)
        gemm_bytes = mix(lambda c: sum(v["bytes"] for v in c["gemm"].values()), f)
        flops = mix(lambda c: sum(v["flops"] for v in c["gemm"].values()), f)
        g_s = mix(gemm_s, f)
        naive = mix(lambda c: c["op_traffic"]["read_bytes"] + c["op_traffic"]["written_bytes"], f)
        issue = (adam + gather + scatter) / bw + g_s
        return {"update_fraction": f, "adam_MB": adam / MB, "grid_gather_MB": gather / MB,
                "grid_scatter_MB": scatter / MB, "grid_stream_MB": stream / MB, "grid_floor_rows_MB": floor_rows / MB,
                "scaler_inf_check_MB": inf_check / MB, "gemm_operand_MB": gemm_bytes / MB, "gemm_GFLOP": flops / 1e9,
                "gemm_ms_at_peak": 1e3 * g_s, "naive_op_traffic_MB": naive / MB,
                "bound_ms": 1e3 * issue,
                "bound_ms_parts": {"adam": 1e3 * adam / bw, "grid_gathers": 1e3 * gather / bw,
                                   "grid_scatters": 1e3 * scatter / bw, "gemm_at_peak": 1e3 * g_s},
                "bound_with_streams_ms": 1e3 * ((adam + gather + scatter + stream + inf_check + gemm_bytes) / bw + g_s),
                "floor_cache_aware_ms": 1e3 * ((adam + floor_rows) / bw + g_s),
                "naive_op_traffic_ms": 1e3 * naive / bw}

    out: dict[str, Any] = {"bandwidth_GBps": bw / 1e9, "gemm_peak_TFLOPS": {d: p / 1e12 for d, p in peaks.items()},
                           "at_measured_steps": at(f_update), "at_2000_step_mean": at(f_2000)}
    b = out["at_measured_steps"]
    if train:
        out["measured_median_ms"] = train["median_synced_ms"]
        out["measured_pipelined_ms"] = train["pipelined_ms"]
        out["median_over_bound"] = train["median_synced_ms"] / b["bound_ms"]
        out["median_over_floor"] = train["median_synced_ms"] / b["floor_cache_aware_ms"]
    if prof:
        cats = prof["categories"]
        fp = prof.get("update_fraction", f_update)
        bp = at(fp)

        def us(*keys):
            return sum(cats.get(k, {}).get("us_per_unit", 0.0) for k in keys)
        out["profiled_update_fraction"] = fp
        out["kernel_ms_per_step"] = prof["kernel_us_per_step"] / 1e3
        out["busy_ms_per_step"] = prof["busy_us_per_step"] / 1e3
        def rate(amount: float, t_us: float) -> float | None:  # amount per second of measured kernel time
            return amount / (t_us * 1e-6) if t_us > 0 else None

        rest = prof["kernel_us_per_step"] - us("adam", "hash_fwd", "hash_bwd", "gemm")
        out["by_part"] = {
            "adam": {"measured_ms": us("adam") / 1e3, "bound_ms": bp["bound_ms_parts"]["adam"],
                     "achieved_GBps": rate(bp["adam_MB"] * MB / 1e9, us("adam"))},
            "grid_fwd": {"measured_ms": us("hash_fwd") / 1e3, "bound_ms": bp["bound_ms_parts"]["grid_gathers"],
                         "corner_GBps": rate(bp["grid_gather_MB"] * MB / 1e9, us("hash_fwd"))},
            "grid_bwd": {"measured_ms": us("hash_bwd") / 1e3, "bound_ms": bp["bound_ms_parts"]["grid_scatters"],
                         "corner_GBps": rate(bp["grid_scatter_MB"] * MB / 1e9, us("hash_bwd"))},
            "gemm": {"measured_ms": us("gemm") / 1e3, "bound_ms": bp["gemm_ms_at_peak"],
                     "achieved_TFLOPS": rate(bp["gemm_GFLOP"] / 1e3, us("gemm"))},
            "everything_else": {"measured_ms": rest / 1e3, "bound_ms": 0.0}}
    return out


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    fox = ROOT / ".gpudata" / "fox"
    p.add_argument("--data", default=str(fox if fox.exists() else ROOT.parent / "shared" / "data" / "fox"))
    p.add_argument("--downscale", type=int, default=4)
    p.add_argument("--rays", type=int, default=0, help="rays per step (default: the reference 4096; quick 128)")
    p.add_argument("--feature-dim", type=int, default=768)
    p.add_argument("--map-hw", default="42,24", help="feature map rows,cols (CLIP ViT-L-14-336 on fox 1/4: 42,24)")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--steps", type=int, default=100, help="timed steps (synced; as many again pipelined)")
    p.add_argument("--profile-steps", type=int, default=20)
    p.add_argument("--phase-steps", type=int, default=5, help="eager steps profiled by phase")
    p.add_argument("--sim-root", default=str(ROOT / ".gpudata" / "sim"), help="rendered built-in scenes")
    p.add_argument("--scene", default="mug_bowl_box")
    p.add_argument("--query", default="bowl")
    p.add_argument("--query-preset", default="small+synthetic+depth")
    p.add_argument("--query-train-steps", type=int, default=500)
    p.add_argument("--query-rays", type=int, default=4096)
    p.add_argument("--query-seed", type=int, default=1)
    p.add_argument("--query-repeats", type=int, default=3)
    p.add_argument("--query-field", default="", choices=("", "trained", "oracle"),
                   help="trained (default) or the scene's analytic oracle (default with --quick: no CPU training)")
    p.add_argument("--bandwidth-mb", type=int, default=0, help="bytes per copy buffer (default 1024; quick 64)")
    p.add_argument("--sections", default="ceilings,count,train,query,profile,phases",
                   help="comma-separated subset to run")
    p.add_argument("--device", default="auto", help="cuda, cpu or auto")
    p.add_argument("--quick", action="store_true", help="tiny sizes (CPU smoke test)")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.quick:
        args.warmup, args.steps = min(args.warmup, 2), min(args.steps, 3)
        args.profile_steps, args.phase_steps = min(args.profile_steps, 2), min(args.phase_steps, 1)
        args.query_train_steps, args.query_rays = min(args.query_train_steps, 20), min(args.query_rays, 256)
        args.query_repeats = min(args.query_repeats, 1)
    args.query_field = args.query_field or ("oracle" if args.quick else "trained")
    args.rays = args.rays or (128 if args.quick else 4096)
    sections = {s for s in args.sections.split(",") if s}
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    tag = re.sub(r"[^A-Za-z0-9]+", "_", gpu) + ("_quick" if args.quick else "")
    out_path = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"bound_step_{tag}.json"
    res: dict[str, Any] = {"commit": commit(), "device": gpu, "torch": torch.__version__,
                           "python": platform.python_version(), "args": vars(args), "errors": {}}
    print(f"bound_step: device {gpu}, torch {torch.__version__}, commit {res['commit']}, sections {sorted(sections)}",
          flush=True)

    def section(name: str, fn: Callable[[], Any], key: str = "") -> Any:
        if name not in sections:
            return None
        key = key or name
        t0 = time.perf_counter()
        try:
            val = fn()
            print(f"[{key}] done in {time.perf_counter() - t0:.1f} s", flush=True)
            return val
        except Exception as e:  # report and go on with the next section
            traceback.print_exc()
            res["errors"][key] = f"{type(e).__name__}: {e}"
            print(f"[{key}] FAILED: {type(e).__name__}: {e}", flush=True)
            return None

    # 1. ceilings
    def ceilings():
        mb = args.bandwidth_mb or (64 if args.quick else 1024)
        bw = measure_bandwidth(device, mb * 2**20, 5 if args.quick else 30)
        n = 512 if args.quick else 8192
        gemm = {str(d).replace("torch.", ""): measure_gemm(device, n, d, 3 if args.quick else 10)
                for d in ((torch.float16, torch.float32) if device.type == "cuda" else (torch.float32,))}
        if device.type != "cuda":
            gemm["float16"] = gemm["float32"]  # the CPU step has no fp16 GEMMs (no autocast)
        out = {"bandwidth": bw, "gemm": gemm, "datasheet": datasheet(gpu)}
        print(f"[ceilings] copy {bw['GBps']:.0f} GB/s (read + write, median of {bw['repeats']}, "
              f"{bw['bytes_per_copy'] / 2**30:.2f} GiB per copy); GEMM "
              + ", ".join(f"{d} {g['TFLOPS']:.4g} TFLOPS" for d, g in gemm.items())
              + (f"; datasheet {out['datasheet']}" if out["datasheet"] else ""), flush=True)
        return out

    res["ceilings"] = section("ceilings", ceilings)

    from f3rm_ros.core.workflows.train_scene import load_scene  # noqa: PLC0415

    dataset = maps = None
    if sections & {"count", "train", "profile", "phases"}:
        t0 = time.perf_counter()
        dataset = load_scene(args.data, downscale=args.downscale)
        maps = fox_maps(dataset, args.feature_dim, tuple(int(v) for v in args.map_hw.split(",")))
        K = dataset.intrinsics[0]
        res["data"] = {"path": args.data, "images": len(dataset), "size": [K.width, K.height],
                       "feature_maps": list(maps.shape), "load_s": time.perf_counter() - t0}
        print(f"{args.data}: {len(dataset)} images {K.width}x{K.height}, feature maps {tuple(maps.shape)}", flush=True)

    # 2. counts (eager trainer, same config)
    res["counts"] = section("count", lambda: count_step(args, dataset, maps, device))
    if res["counts"]:
        for key in ("update", "no_update"):
            c = res["counts"][key]
            print(f"[count] {key}: Adam {c['adam']['params'] / 1e6:.1f} M params with grad, "
                  f"{c['adam']['bytes'] / MB:.0f} MB; grids gathers {c['grid_gather_bytes'] / MB:.0f} MB, scatter-adds "
                  f"{c['grid_scatter_bytes'] / MB:.0f} MB, streams {c['grid_stream_bytes'] / MB:.0f} MB; GEMM "
                  + ", ".join(f"{d} {v['flops'] / 1e9:.2f} GFLOP in {v['count']}" for d, v in c["gemm"].items())
                  + f"; {c['op_traffic']['ops']} aten ops moving "
                  f"{(c['op_traffic']['read_bytes'] + c['op_traffic']['written_bytes']) / MB:.0f} MB", flush=True)

    # 3. the fast path, timed (no profiler has run yet)
    def train():
        r = time_training(args, dataset, maps, device)
        print(f"[train] {r['cuda_graphs']}; grids {r['hashgrid_backends']}; median {r['median_synced_ms']:.2f} ms "
              f"(p10 {r['p10_synced_ms']:.2f}, p90 {r['p90_synced_ms']:.2f}), pipelined {r['pipelined_ms']:.2f} "
              f"ms/step, peak {r.get('peak_allocated_mb', 0):.0f} MB allocated", flush=True)
        return r

    res["train"] = section("train", train)

    # 4. the query, timed
    planner = runs = undo_watch = None

    def query():
        nonlocal planner, runs, undo_watch
        planner, info = build_query(args, device)
        runs, undo_watch = watch_optimiser()
        info["timing"] = time_query(planner, args.query, args.query_repeats, device, runs)
        q = info["timing"]
        print(f"[query] field {info['scene']} {info['preset']} {info['train_steps']} x {info['rays']} rays "
              f"({info['train_s']:.1f} s); {args.query!r}: median {q['median_s']:.3f} s (cold {q['cold_s']:.2f} s), "
              f"found {q['found']}, {q['optimiser_iterations']:.0f} optimiser iterations, optimise stage "
              f"{q['stages_s'].get('optimise', 0):.3f} s", flush=True)
        return info

    res["query"] = section("query", query)

    # 5. profiles (after every unprofiled timing)
    def prof_train():
        r = profile_training(args, dataset, maps, device)
        print(f"[profile] {r['kernels_per_step']:.0f} kernels/step, kernel sum {r['kernel_us_per_step'] / 1e3:.3f} ms, "
              f"busy {r['busy_us_per_step'] / 1e3:.3f} ms, wall under profiler "
              f"{r['wall_ms_per_step_under_profiler']:.2f} ms/step", flush=True)
        return r

    res["train_profile"] = section("profile", prof_train, "train_profile")

    def prof_query():
        if planner is None:
            raise RuntimeError("the query section did not run")
        return profile_query(planner, args.query, device, runs)

    if "query" in sections and "profile" in sections:
        res["query_profile"] = section("profile", prof_query, "query_profile")
    if undo_watch is not None:
        undo_watch()
    planner = None
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # 6. eager phases
    res["eager_phases"] = section("phases", lambda: eager_phases(args, dataset, maps, device))

    # 7. the bound
    if res["counts"] and res["ceilings"]:
        try:
            f_meas = (res["train"] or {}).get("update_fraction_synced")
            f_2000 = update_fraction(train_config(args, "off").model.sampler, 2000)
            res["bound"] = bound_summary(res["counts"], res["ceilings"], res["train"], res.get("train_profile"),
                                         f_meas if f_meas is not None else f_2000, f_2000)
        except Exception as e:
            traceback.print_exc()
            res["errors"]["bound"] = f"{type(e).__name__}: {e}"

    print_summary(res)
    from f3rm_ros.core.io import atomic_write_json  # noqa: PLC0415

    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_path, json.loads(json.dumps(res, default=str)))
    print(f"wrote {out_path}")
    return 0 if not res["errors"] else 1


def _cat_table(summary: dict, unit: str, width: int = 100) -> list[str]:
    lines = [f"  {'category':18s} {'us/' + unit:>12s} {'kernels/' + unit:>14s} {'share':>6s}  what"]
    desc = {k: d for k, d, _ in CATEGORIES}
    for k, v in summary["categories"].items():
        lines.append(f"  {k:18s} {v['us_per_unit']:12.1f} {v['count_per_unit']:14.1f} {100 * v['share']:5.1f}%  "
                     f"{desc.get(k, '')[:width - 60]}")
    return lines


def print_summary(res: dict[str, Any]) -> None:
    L: list[str] = ["", "=" * 100, f"bound_step summary: {res['device']}, commit {res['commit']}"]
    c = res.get("ceilings")
    if c:
        L.append(f"ceilings: copy {c['bandwidth']['GBps']:.0f} GB/s; GEMM "
                 + ", ".join(f"{d} {g['TFLOPS']:.4g} TFLOPS" for d, g in c["gemm"].items())
                 + (f" (datasheet {c['datasheet']['hbm_GBps']:.0f} GB/s, fp16 {c['datasheet']['fp16_TFLOPS']} / fp32 "
                    f"{c['datasheet']['fp32_TFLOPS']} TFLOPS)" if c.get("datasheet") else ""))
    cnt = res.get("counts")
    if cnt:
        u = cnt["update"]
        L.append(f"model {cnt['model_params'] / 1e6:.1f} M params; grids {cnt['hashgrid_backends']}; sampler "
                 f"{cnt['sampler']}; {cnt['rays_per_batch']} rays")
        L.append("  Adam per group (update step): " + "; ".join(
            f"{g} {v['numel'] / 1e6:.2f}M {v['dtype']}/{v['grad_dtype']}/{'+'.join(v['state_dtypes'])} "
            f"{v['bytes'] / MB:.0f} MB" for g, v in u["adam"]["groups"].items()))
        L.append(f"  {'grid call':24s} {'points':>9s} {'pts/ray':>7s} {'L':>3s} {'F':>2s} {'gather MB':>10s} "
                 f"{'scatter MB':>10s} {'stream MB':>10s} {'floor MB':>9s}")
        for g in u["grids"]:
            L.append(f"  {g['grid']:24s} {g['points']:9d} {g['points_per_ray']:7.1f} {g['levels']:3d} {g['F']:2d} "
                     f"{g['gather'] / MB:10.1f} {g['scatter'] / MB:10.1f} {g['stream'] / MB:10.1f} "
                     f"{g['floor_rows'] / MB:9.1f}")
    b = res.get("bound")
    if b:
        m = b["at_measured_steps"]
        L.append(f"bound per step (update fraction {m['update_fraction']:.2f}; bytes at {b['bandwidth_GBps']:.0f} "
                 "GB/s):")
        L.append(f"  Adam {m['adam_MB']:.0f} MB -> {m['bound_ms_parts']['adam']:.3f} ms; grid gathers "
                 f"{m['grid_gather_MB']:.0f} MB -> {m['bound_ms_parts']['grid_gathers']:.3f} ms; scatter-adds "
                 f"{m['grid_scatter_MB']:.0f} MB -> {m['bound_ms_parts']['grid_scatters']:.3f} ms; GEMM "
                 f"{m['gemm_GFLOP']:.1f} GFLOP at peak -> {m['gemm_ms_at_peak']:.3f} ms")
        L.append(f"  BOUND {m['bound_ms']:.3f} ms (issue's count); with streams (grid in/out, zero-filled grad tables, "
                 f"inf check, GEMM operands) {m['bound_with_streams_ms']:.3f} ms; cache-aware floor "
                 f"{m['floor_cache_aware_ms']:.3f} ms; the eager op-by-op traffic {m['naive_op_traffic_MB']:.0f} MB = "
                 f"{m['naive_op_traffic_ms']:.2f} ms")
        a2 = b["at_2000_step_mean"]
        L.append(f"  over a 2000-step build (update fraction {a2['update_fraction']:.2f}): bound "
                 f"{a2['bound_ms']:.3f} ms -> {2000 * a2['bound_ms'] / 1e3:.1f} s of training at the bound")
        if "measured_median_ms" in b:
            L.append(f"  measured: median {b['measured_median_ms']:.3f} ms, pipelined {b['measured_pipelined_ms']:.3f} "
                     f"ms = {b['median_over_bound']:.2f}x the bound, {b['median_over_floor']:.2f}x the floor")
        for k, v in b.get("by_part", {}).items():
            extra = {kk: None if vv is None else round(vv, 1) for kk, vv in v.items()
                     if kk not in ("measured_ms", "bound_ms")}
            L.append(f"  {k:16s} measured {v['measured_ms']:.3f} ms vs bound {v['bound_ms']:.3f} ms {extra or ''}")
    tp = res.get("train_profile")
    if tp:
        L.append(f"training step profile ({tp['profiled_steps']} steps, update fraction {tp['update_fraction']:.2f}): "
                 f"{tp['kernels_per_step']:.0f} kernels/step, kernel sum {tp['kernel_us_per_step'] / 1e3:.3f} ms, "
                 f"busy {tp['busy_us_per_step'] / 1e3:.3f} ms, wall {tp['wall_ms_per_step_under_profiler']:.3f} ms "
                 f"under the profiler" + (f", {res['train']['median_synced_ms']:.3f} ms median without"
                                          if res.get("train") else ""))
        if tp.get("warning"):
            L.append(f"  WARNING: {tp['warning']}")
        L += _cat_table(tp, "step")
    ep = res.get("eager_phases")
    if ep:
        L.append(f"eager step by phase ({ep['kernel_us_per_step'] / 1e3:.3f} ms of kernels/step):")
        for k, v in list(ep["phases"].items())[:16]:
            top = ", ".join(f"{c} {u:.0f}" for c, u in list(v["categories_us_per_step"].items())[:3])
            L.append(f"  {k:22s} {v['us_per_step']:9.1f} us {v['kernels_per_step']:7.1f} kernels  ({top})")
    q = res.get("query")
    if q:
        t = q["timing"]
        L.append(f"query {t['query']!r} on {q['scene']} ({q['preset']}, {q['train_steps']} steps, {q['feature_dim']}-d "
                 f"labels; planner {q['planner']}): median {t['median_s']:.3f} s, found {t['found']}, "
                 f"{t['optimiser_iterations']:.0f} optimiser iterations ({[r['poses'] for r in t['optimiser_runs']]} "
                 f"poses, graph {[r['cuda_graph'] for r in t['optimiser_runs']]}), optimise stage "
                 f"{t['stages_s'].get('optimise', 0):.3f} s = {1e3 * t['optimise_stage_s_per_iteration']:.3f} "
                 "ms/iteration")
        L.append("  stages (median s): " + " ".join(f"{k}={v:.3f}" for k, v in t["stages_s"].items()))
    qp = res.get("query_profile")
    if qp:
        w, o = qp["whole_query"], qp["optimiser_loop"]
        L.append(f"query profile: {w['kernels_per_query']:.0f} kernels, kernel sum "
                 f"{w['kernel_us_per_query'] / 1e3:.1f} ms, busy {w['busy_us_per_query'] / 1e3:.1f} ms, wall "
                 f"{qp['wall_s_under_profiler']:.3f} s under the profiler")
        L += _cat_table(w, "query")
        L.append(f"  optimiser loop, per iteration ({qp['optimiser_iterations']} iterations): "
                 f"{o['kernels_per_iteration']:.0f} kernels, kernel sum {o['kernel_us_per_iteration']:.1f} us, busy "
                 f"{o['busy_us_per_iteration']:.1f} us, window {o['window_wall_us_per_iteration']:.1f} us")
        L += _cat_table(o, "iteration")
    if res["errors"]:
        L.append(f"ERRORS: {res['errors']}")
    print("\n".join(L), flush=True)


if __name__ == "__main__":
    sys.exit(main())
