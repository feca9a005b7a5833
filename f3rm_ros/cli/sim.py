"""f3rm-sim: the synthetic tabletop world from the command line.

Examples::

    f3rm-sim list
    f3rm-sim render mug_bowl_box --out /tmp/mbb --num-views 50
    f3rm-sim render my_scene.yaml --out /tmp/mine --width 320 --height 240 --set.trajectory.radius_m 0.5
    f3rm-sim check mug_bowl_box --pose 0.0 0.1 0.05 0 0 0 1      # x y z qx qy qz qw of the gripper
    f3rm-sim generate --seed 3 --out data/gen3                      # a random scene + its queries
    f3rm-sim generate --seed 3 --out data/gen3 --set.max_objects 4 --set.lying_prob 0.5
    f3rm-sim generate --list-families
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from f3rm_ros.core.config import ConfigError, add_cli_args, apply_cli_args, load_yaml, replace


def _cmd_list(args: argparse.Namespace) -> int:
    from f3rm_ros.core.sim.scene import builtin_scene_names, builtin_scene_path, load_scene

    for name in builtin_scene_names():
        s = load_scene(builtin_scene_path(name))
        objs = ", ".join(f"{o.name} ({o.category})" for o in s.objects)
        print(f"{name}: {s.description}\n    objects: {objs}\n    file: {builtin_scene_path(name)}")
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    from f3rm_ros.core.sim.export import SimDatasetConfig, render_dataset
    from f3rm_ros.core.sim.scene import resolve_scene

    cfg = load_yaml(SimDatasetConfig, args.config) if args.config else SimDatasetConfig()
    quick = {"width": args.width, "height": args.height, "seed": args.seed, "fov_y_deg": args.fov,
             "trajectory.num_views": args.num_views, "trajectory.radius_m": args.radius,
             "render.image_noise_std": args.image_noise, "pose_noise_deg": args.pose_noise_deg,
             "pose_noise_m": args.pose_noise_m}
    changes = {k: v for k, v in quick.items() if v is not None}
    if args.no_shadows:
        changes["render.shadows"] = False
    if changes:
        cfg = replace(cfg, **changes)
    cfg = apply_cli_args(cfg, args, prefix="set.")
    scene = resolve_scene(args.scene)

    def progress(i: int, n: int, dt: float) -> None:
        if not args.quiet:
            print(f"\rframe {i + 1}/{n} ({dt:.2f} s)", end="" if i + 1 < n else "\n", flush=True)

    res = render_dataset(scene, args.out, cfg, overwrite=args.overwrite, progress=progress)
    print(f"wrote {res['num_frames']} frames of {scene.name!r} to {res['path']} "
          f"({cfg.width}x{cfg.height}, {res['render_s_per_image']:.3f} s render per image, "
          f"{res['total_s']:.1f} s total)")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    import numpy as np

    from f3rm_ros.core.geometry import pose_to_matrix
    from f3rm_ros.core.sim.grasp_check import GraspChecker
    from f3rm_ros.core.sim.scene import resolve_scene

    scene = resolve_scene(args.scene)
    p = np.asarray(args.pose, dtype=np.float64)
    res = GraspChecker(scene).check(pose_to_matrix(p[:3], p[3:]), opening=args.opening)
    print(("SUCCESS " if res.success else "FAIL ") + res.reason)
    if res.between:
        print("between the fingers: " + ", ".join(f"{o}/{pt}: {n} rays" for (o, pt), n in res.between.items()))
    return 0 if res.success else 1


def _cmd_generate(args: argparse.Namespace) -> int:
    from f3rm_ros.core.sim.families import GeneratorConfig, family_table, generate_scene, write_generated

    if args.list_families:
        print(family_table())
        return 0
    if args.seed is None or args.out is None:
        raise ValueError("generate needs --seed and --out (or --list-families)")
    cfg = load_yaml(GeneratorConfig, args.config) if args.config else GeneratorConfig()
    cfg = apply_cli_args(cfg, args, prefix="set.")
    out = Path(args.out)
    if (out / "scene.yaml").exists() and not args.overwrite:
        raise FileExistsError(f"{out / 'scene.yaml'} exists (pass --overwrite)")
    g = generate_scene(args.seed, cfg)
    witnesses = None
    if args.witness:
        from f3rm_ros.core.sim.families import find_witnesses

        witnesses = find_witnesses(g)
        exp = [w is not None for q, w in zip(g.queries, witnesses, strict=True) if q.present and q.expect_grasp]
        print(f"ground-truth witnesses for {sum(exp)}/{len(exp)} present queries that expect a grasp")
    ys, qs = write_generated(g, out, witnesses)
    n_abs = len(g.absent_queries)
    print(f"seed {g.seed} ({g.split} split): {len(g.scene.objects)} objects: "
          + ", ".join(f"{o.name} ({o.pose}, {o.placement})" for o in g.objects))
    print(f"wrote {ys} and {qs} ({len(g.queries) - n_abs} present queries, {n_abs} absent)")
    if g.split == "eval":
        print("note: an evaluation seed: report results on it only in aggregate, never tune on it")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from f3rm_ros.core.sim.families import GeneratorConfig
    from f3rm_ros.core.sim.export import SimDatasetConfig

    ap = argparse.ArgumentParser(prog="f3rm-sim", description="Synthetic tabletop scenes: render datasets, "
                                 "list built-in scenes, check grasps against ground truth, generate random scenes.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list the built-in scenes")
    r = sub.add_parser("render", help="render a scene into a transforms.json dataset with label images")
    r.add_argument("scene", help="built-in scene name (see `f3rm-sim list`) or a scene YAML path")
    r.add_argument("--out", required=True, type=Path, help="output dataset folder")
    r.add_argument("--num-views", type=int, help="number of images (default 50)")
    r.add_argument("--width", type=int, help="image width (default 640)")
    r.add_argument("--height", type=int, help="image height (default 480)")
    r.add_argument("--fov", type=float, help="vertical field of view, degrees (default 42.5)")
    r.add_argument("--radius", type=float, help="horizontal camera distance from the target, m (default 0.55)")
    r.add_argument("--seed", type=int, help="random seed (jitter and noise)")
    r.add_argument("--image-noise", type=float, help="std of pixel noise, 8-bit levels (default 0)")
    r.add_argument("--pose-noise-deg", type=float, help="std of the rotation error of written poses")
    r.add_argument("--pose-noise-m", type=float, help="std of the translation error of written poses")
    r.add_argument("--no-shadows", action="store_true", help="render without shadows")
    r.add_argument("--config", type=Path, help="YAML file of SimDatasetConfig settings")
    r.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    r.add_argument("--quiet", action="store_true", help="no per-frame progress")
    add_cli_args(r, SimDatasetConfig, prefix="set.")
    c = sub.add_parser("check", help="ground-truth check of one gripper pose")
    c.add_argument("scene", help="built-in scene name or a scene YAML path")
    c.add_argument("--pose", nargs=7, type=float, required=True, metavar=("X", "Y", "Z", "QX", "QY", "QZ", "QW"),
                   help="gripper pose in the world frame (gripper frame: +z towards the wrist, fingers along y)")
    c.add_argument("--opening", type=float, default=None, help="approach opening, m (default: maximum)")
    g = sub.add_parser("generate", help="a random tabletop scene from a seed: scene.yaml + queries.json")
    g.add_argument("--seed", type=int, help="scene seed (>= 0; see f3rm_ros.core.sim.families for the dev/eval split)")
    g.add_argument("--out", type=Path, help="output folder (scene.yaml, queries.json)")
    g.add_argument("--config", type=Path, help="YAML file of GeneratorConfig settings")
    g.add_argument("--overwrite", action="store_true", help="replace an existing scene.yaml in --out")
    g.add_argument("--list-families", action="store_true", help="list the object families and their parameters")
    g.add_argument("--witness", action="store_true", help="also search a gripper pose per query that passes the "
                   "ground-truth check (seconds per scene)")
    add_cli_args(g, GeneratorConfig, prefix="set.")
    return ap


def main(argv: list[str] | None = None) -> int:
    from f3rm_ros.core.sim.yamlnodes import SceneError

    args = build_parser().parse_args(argv)
    try:
        return {"list": _cmd_list, "render": _cmd_render, "check": _cmd_check,
                "generate": _cmd_generate}[args.cmd](args)
    except (SceneError, ConfigError, FileExistsError, ValueError) as e:
        print(f"f3rm-sim: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
