"""Where a refreshed field differs from a full retrain, object by object (issue 18 diagnosis; CPU or GPU).

For fields of one move of ``bench_scene_edits.py`` (its ``--work`` folder keeps ``refreshK.ckpt``, the variants'
``refreshK_vI.ckpt`` and ``fullK/field.ckpt``), every held-out view of ``move-K/heldout`` is rendered and, per object
of the scene's label table, the colour's mean squared error, the median |z-depth error| (metres) and the share of its
pixels whose depth is more than 1 cm off are printed and saved as JSON::

    python benchmarks/diag_scene_edit_parts.py --scene .gpudata/edits10c/seed-00010 --move 1 \\
        --work /tmp/s32/work_s10/seed-00010 --out benchmarks/results/diag_scene_edit_parts_s10.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from f3rm_ros.core.dataset import load_dataset
from f3rm_ros.core.field_api import load_trained_field


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scene", type=Path, required=True, help="a rendered scene folder of bench_scene_edits.py")
    p.add_argument("--move", type=int, default=1)
    p.add_argument("--work", type=Path, required=True, help="the plan step's work folder of that scene")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    held = load_dataset(a.scene / f"move-{a.move}" / "heldout", eval_every=0)
    table = json.loads((a.scene / "data" / "transforms.json").read_text()).get("f3rm_labels") or {}
    objects: dict[str, list[int]] = {}
    for i, v in table.items():
        objects.setdefault(v["object"], []).append(int(i))
    fields = {"full": a.work / f"full{a.move}" / "field.ckpt", "refresh": a.work / f"refresh{a.move}.ckpt",
              **{f"variant {c.stem.split('_v')[-1]}": c for c in sorted(a.work.glob(f"refresh{a.move}_v*.ckpt"))}}
    out: dict = {"scene": str(a.scene), "move": a.move, "fields": {}}
    for name, path in fields.items():
        if not path.is_file():
            continue
        f = load_trained_field(path)
        sums: dict[str, list] = {o: [] for o in objects}
        for i in range(len(held)):
            with torch.no_grad():
                r = f.render(held.c2w[i], held.intrinsics[i], with_features=False)
            gt = np.asarray(held.get_image(i), np.float32) / 255.0
            se = ((r["rgb"].clamp(0, 1).cpu().numpy() - gt) ** 2).mean(-1)
            dz = np.abs(r["z_depth"].cpu().numpy() - held.get_depth(i))
            lab = held.get_labels(i)
            for o, ids in objects.items():
                m = np.isin(lab, ids)
                if m.any():
                    sums[o].append((float(se[m].mean()), float(np.median(dz[m])), float((dz[m] > 0.01).mean()),
                                    int(m.sum())))
        res = {}
        for o, rows in sums.items():
            if rows:
                r_ = np.asarray(rows)
                res[o] = {"colour_mse": round(float(r_[:, 0].mean()), 5),
                          "depth_median_m": round(float(r_[:, 1].mean()), 4),
                          "depth_off_1cm": round(float(r_[:, 2].mean()), 3), "pixels": int(r_[:, 3].sum())}
                print(f"{name:12s} {o:14s} colour mse {res[o]['colour_mse']:.4f}  depth median "
                      f"{res[o]['depth_median_m']:.4f} m  > 1 cm off {res[o]['depth_off_1cm']:.3f}  "
                      f"({res[o]['pixels']} px)")
        out["fields"][name] = {"checkpoint": str(path), "objects": res}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
