#!/usr/bin/env python3
"""Points gradient of the Triton hash-grid kernel against the reference, interpreted and compiled, in one call.

Issue 21: on the GPU machine (torch 2.11, Triton 3.6) ``test_points_gradient_matches_reference`` failed in
every interpreter case while the compiled kernels passed. This script shows, on whatever machine runs it:

* the versions (Python, torch, Triton, numpy) and ``torch.clamp``'s own backward at 0, 0.5 and 1 (1 at
  the bounds up to torch 2.13, 0 from 2.14; the reference pins 0 with ``reference.clamp_unit``);
* per case of ``test/test_ops_hashgrid_triton.py`` (its shapes, dtypes and tolerances; inputs made as its
  worker makes them, points exactly on the cube's faces and outside it included) the max abs error of the
  kernel's points gradient (table frozen, the planner's case) against :func:`hash_grid_encode_torch`'s
  autograd, for the interpreter (CPU, a child process with ``TRITON_INTERPRET=1``) and the compiled kernel
  (CUDA, if present): over all coordinates, over those strictly inside (0, 1) and over those exactly on a
  bound; and ``plain``, the error against the reference with ``torch.clamp``'s own backward instead of
  ``clamp_unit`` (nonzero on the bounds with torch <= 2.13: the cause of issue 21's failures).

The pass rule is the test's: ``err <= tol * max(scale, 1)`` (tol 1e-5 fp32, 2e-3 fp16, 1.6e-2 bf16); the
exit status is 1 if a path fails a case.

Usage (GPU machine or here; ~30 s for the interpreter part):
    python3 benchmarks/check_triton_interp.py [--no-interp] [--no-compiled] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

TEST_FILE = ROOT / "test" / "test_ops_hashgrid_triton.py"


def _test_module():
    """CASES and TOL of the interpreter test (one source of truth); importing it runs no test."""
    spec = importlib.util.spec_from_file_location("_hashgrid_triton_test", TEST_FILE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def versions() -> dict:
    import numpy

    try:
        import triton
        tv = triton.__version__
    except Exception as e:  # noqa: BLE001 - report, do not fail
        tv = f"not importable ({type(e).__name__})"
    x = torch.tensor([0.0, 0.5, 1.0], requires_grad=True)
    x.clamp(0.0, 1.0).sum().backward()
    return {"python": platform.python_version(), "torch": torch.__version__, "triton": tv,
            "numpy": numpy.__version__, "torch_clamp_grad_at_0_0.5_1": x.grad.tolist(),
            "TRITON_INTERPRET": os.environ.get("TRITON_INTERPRET", "")}


def measure(device: str) -> dict:
    """Per case: the kernel's points gradient vs the reference's (clamp_unit) and vs torch.clamp's own."""
    from f3rm_ros.core.hashgrid import grid_resolutions, hash_grid_encode_torch
    from f3rm_ros.core.hashgrid import reference as ref_mod
    from f3rm_ros.core.hashgrid.triton_op import hash_grid_encode_triton

    mod = _test_module()
    gen = torch.Generator().manual_seed(1234)
    out = {}
    for name, (n, L, T, F, dt, base, mx) in mod.CASES.items():
        dtype = getattr(torch, dt)
        res = grid_resolutions(L, base, mx)
        # inputs made on the CPU (same numbers on every device), as the test's worker makes them
        x = torch.rand(n, 3, generator=gen) * 1.2 - 0.1
        x[:4] = torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.5], [0.5, 1.0, 0.0]])
        table = (torch.rand(L, T, F, generator=gen) * 2 - 1).to(dtype)
        g = torch.randn(n, L * F, generator=gen).to(dtype)
        x, table, g = x.to(device), table.to(device), g.to(device)
        grads = {}
        for key, fn in (("triton", hash_grid_encode_triton), ("ref", hash_grid_encode_torch), ("plain", None)):
            p = x.clone().requires_grad_(True)
            if fn is None:  # the reference with torch.clamp's own backward (the torch-release-dependent one)
                saved = ref_mod.clamp_unit
                ref_mod.clamp_unit = lambda v: v.clamp(0.0, 1.0)
                try:
                    hash_grid_encode_torch(p, table, res).backward(g)
                finally:
                    ref_mod.clamp_unit = saved
            else:
                fn(p, table, res).backward(g)
            grads[key] = p.grad.float().cpu()
        xc = x.cpu()
        bound = (xc == 0.0) | (xc == 1.0)
        inside = (xc > 0.0) & (xc < 1.0)
        d = (grads["triton"] - grads["ref"]).abs()
        scale = float(grads["ref"].abs().max())
        err = float(d.max())
        out[name] = {"err": err, "err_inside": float(d[inside].max()), "err_bounds": float(d[bound].max()),
                     "plain_err": float((grads["triton"] - grads["plain"]).abs().max()),
                     "scale": scale, "bound_coords": int(bound.sum()),
                     "ok": err <= mod.TOL[dt] * max(scale, 1.0)}
    return out


def _interp_child() -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child-interp"], env=env,
                          capture_output=True, text=True, timeout=900)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"error": f"interpreter child failed (rc={proc.returncode}): {proc.stderr[-3000:]}"}
    return json.loads(lines[-1][len("RESULT "):])


def _print_path(label: str, r: dict) -> None:
    print(f"\n{label}: versions {r['versions']}")
    if "error" in r:
        print("  " + r["error"])
        return
    print(f"  {'case':28s} {'err':>10s} {'inside':>10s} {'bounds':>10s} {'plain':>10s} {'scale':>9s}  pass")
    for name, c in r["cases"].items():
        print(f"  {name:28s} {c['err']:10.3g} {c['err_inside']:10.3g} {c['err_bounds']:10.3g} "
              f"{c['plain_err']:10.3g} {c['scale']:9.3g}  {'ok' if c['ok'] else 'FAIL'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-interp", action="store_true", help="skip the interpreter (CPU) path")
    ap.add_argument("--no-compiled", action="store_true", help="skip the compiled (CUDA) path")
    ap.add_argument("--json", help="also write the results to this file")
    ap.add_argument("--child-interp", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child_interp:
        assert os.environ.get("TRITON_INTERPRET") == "1"
        print("RESULT " + json.dumps({"versions": versions(), "cases": measure("cpu")}))
        return 0
    results = {}
    if not a.no_interp:
        results["interpreter"] = _interp_child()
    if not a.no_compiled:
        if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1":
            results["compiled"] = {"versions": versions(), "device": torch.cuda.get_device_name(),
                                   "cases": measure("cuda")}
        else:
            print("compiled path: no CUDA device here (or TRITON_INTERPRET=1 set): skipped")
    for label, r in results.items():
        _print_path(label + (f" ({r['device']})" if "device" in r else ""), r)
    failed = [f"{label}/{name}" for label, r in results.items() for name, c in r.get("cases", {}).items()
              if not c["ok"]] + [label for label, r in results.items() if "error" in r]
    print("\nerr/inside/bounds: max |kernel - reference| over all / strictly inside (0, 1) / exactly-on-bound "
          "coordinates; plain: vs the reference with torch.clamp's own backward")
    print("FAILED: " + ", ".join(failed) if failed else "all cases pass")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
        print(f"wrote {a.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
