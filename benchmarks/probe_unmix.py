"""The name's unmix on CPU-trained fields of the scene-edit bench's scenes (issue 18): per scene, the first move's
edit without and with ``edit.unmix_ring_m``, and what a query for the moved thing finds at its old place (the held
voxels of its old box: the best cosine with the name and the best relevancy) and the other objects' top grasps.

    python benchmarks/bench_scene_edits.py render --scenes 10 --moves 3 --full-moves 1 --out .gpudata/edits10c
    python benchmarks/probe_unmix.py --data-root .gpudata/edits10c --seeds 9,11 --steps 1500 --work /tmp/probe_unmix

Fields are trained once per scene into ``--work`` (1500 steps of ``small+synthetic+depth`` at 2048 rays: ~4-5 min
each on 2 cores) and reused. Prints one line per scene and setting and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", type=Path, required=True, help="bench_scene_edits.py render's output")
    ap.add_argument("--seeds", default="9,11")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--ring", type=float, default=0.03, help="edit.unmix_ring_m of the second edit")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/f3rm_probe_unmix"))
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON (default benchmarks/results/probe_unmix_cpu_<commit>.json)")
    a = ap.parse_args(argv)

    import torch  # noqa: PLC0415

    from bench_grasp_generalization import WORKSPACE  # noqa: PLC0415
    from bench_scene_edits import FAST  # noqa: PLC0415
    from f3rm_ros.core.config import replace  # noqa: PLC0415
    from f3rm_ros.core.features.factory import create_extractor  # noqa: PLC0415
    from f3rm_ros.core.field_api import load_trained_field  # noqa: PLC0415
    from f3rm_ros.core.grasp.config import PlannerConfig  # noqa: PLC0415
    from f3rm_ros.core.grasp.language import encode_texts, pairwise_softmax  # noqa: PLC0415
    from f3rm_ros.core.grasp.session import QueryConfig, QuerySession  # noqa: PLC0415
    from f3rm_ros.core.presets import trainer_config  # noqa: PLC0415
    from f3rm_ros.core.workflows.scene_edits import EditConfig, EditRequest, edit_field, session_with_field  # noqa: PLC0415
    from f3rm_ros.core.workflows.train_scene import TrainSceneRequest, train_scene  # noqa: PLC0415

    torch.set_num_threads(a.threads)
    pc = PlannerConfig(workspace_min_m=WORKSPACE[0], workspace_max_m=WORKSPACE[1], device="cpu", **FAST)
    commit = os.environ.get("F3RM_COMMIT", "unknown")
    out: dict = {"commit": commit, "args": {k: str(v) for k, v in vars(a).items()}, "scenes": {}}

    def session(field, ex):
        s = QuerySession(QueryConfig(tasks_dir="", use_default_tasks=False, device="cpu"), pc)
        s.load_tasks()
        s.use_field(field, ex)
        return s

    for seed in [int(x) for x in a.seeds.split(",") if x.strip()]:
        d = a.data_root / f"seed-{seed:05d}"
        info = json.loads((d / "moves.json").read_text())
        ex = create_extractor({"extractor": "labels", "labels": {"dataset": str(d / "data")}})
        ck = a.work / d.name / "run0" / "field.ckpt"
        if not ck.exists():
            t0 = time.perf_counter()
            tcfg = trainer_config("small+synthetic+depth", seed=1, rays_per_batch=2048, eval_every=0,
                                  eval_num_images=0, checkpoint_every=0)
            ck = train_scene(TrainSceneRequest(d / "data", num_steps=a.steps, trainer=tcfg, features=ex, device="cpu",
                                               run_dir=a.work / d.name / "run0")).field
            print(f"{d.name}: trained {a.steps} steps in {time.perf_counter() - t0:.0f} s", flush=True)
        s0 = session(load_trained_field(ck, "cpu"), ex)
        s0.plan("object zzz warm-up")
        target = info["target"]["text"]
        mv = info["moves"][0]
        T, box = np.asarray(mv["T_world_new_old"], np.float64), np.asarray(mv["old_box"], np.float64)
        g = np.mgrid[box[0, 0]:box[1, 0]:0.005, box[0, 1]:box[1, 1]:0.005,
                     max(box[0, 2], 0.003):box[1, 2]:0.005].reshape(3, -1).T
        x = torch.as_tensor(g, dtype=torch.float32)
        emb = encode_texts(s0.encoder, [target, *pc.negatives], torch.device("cpu"))
        rows = {}
        for name, ring in (("off", 0.0), ("name", a.ring)):
            t0 = time.perf_counter()
            res = edit_field(s0, EditRequest(text=target, T_world_new_old=T), replace(EditConfig(), unmix_ring_m=ring))
            dt = time.perf_counter() - t0
            s = session_with_field(s0, res.field, session(res.field, ex))
            with torch.no_grad():
                held = (1 - torch.exp(-res.field.query_density(x) * 0.005)) >= 0.5
                f = torch.nn.functional.normalize(res.field.query_features(x[held]), dim=-1)
                sims = pairwise_softmax(f, emb[0], emb[1:], pc.similarity_temperature)
            at_old = s.plan(target, workspace=tuple(map(tuple, box))).found
            others = {}
            for o in info["others"]:
                r = s.plan(o["text"])
                others[o["text"]] = (np.round(np.asarray(r.grasps[0].T_world_gripper)[:3, 3], 4).tolist()
                                     if r.found else None)
            u = res.field.edits[-1].unmix
            rows[name] = {"edit_s": dt, "held_voxels": int(held.sum()),
                          "best_cos": float((f @ emb[0]).max()) if len(f) else None,
                          "best_relevancy": float(sims.max()) if len(f) else None, "found_at_old_place": at_old,
                          "others_top_grasp_xyz": others, "floor": None if u is None else u.floor,
                          "message": res.message}
            print(f"{d.name} {target!r} unmix {name}: edit {dt:.3f} s; old box: {rows[name]['held_voxels']} held "
                  f"voxels, best cosine {rows[name]['best_cos']:.3f}, best relevancy "
                  f"{rows[name]['best_relevancy']:.3f}, a grasp there: {at_old}; floor {rows[name]['floor']}; others "
                  f"{others}", flush=True)
        rows["others_unchanged"] = rows["off"]["others_top_grasp_xyz"] == rows["name"]["others_top_grasp_xyz"]
        out["scenes"][d.name] = rows
    path = a.out or Path(__file__).resolve().parent / "results" / f"probe_unmix_cpu_{commit}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=1))
    tmp.replace(path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
