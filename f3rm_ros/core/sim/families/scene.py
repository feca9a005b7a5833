""":func:`generate_scene` (seed -> scene, objects and queries) and its files (:func:`write_generated`,
:func:`load_queries`) of :mod:`f3rm_ros.core.sim.families`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from f3rm_ros.core.geometry import matrix_to_quat
from f3rm_ros.core.sim.families.catalogue import FAMILIES, GENERATOR_VERSION, GRIPPER_MAX_WIDTH_M
from f3rm_ros.core.sim.families.placement import _hull2d, _min_width, _place, _Placed, _pose
from f3rm_ros.core.sim.families.queries import _graspable_parts, _queries, _synonyms_for
from f3rm_ros.core.sim.families.records import GeneratedScene, GeneratorConfig, ObjectInfo, SceneQuery
from f3rm_ros.core.sim.families.sampling import _material, _pick_family, _sample_params
from f3rm_ros.core.sim.families.seeds import split_of
from f3rm_ros.core.sim.meshes import generate
from f3rm_ros.core.sim.scene import load_scene_text


def _scene_dict(seed: int, table: dict, objs: list[_Placed], names: list[str], materials: list[dict],
                synonyms: dict[str, list[str]]) -> dict[str, Any]:
    entries = []
    for o, name, mat in zip(objs, names, materials, strict=True):
        q = matrix_to_quat(o.R)
        params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in o.params.items()}
        e = {"name": name, "category": o.family.name,
             "synonyms": [f"{o.colour} {s}" for s in synonyms[o.family.name]],
             "mesh": {"generator": o.family.generator, "params": params},
             "pose": {"position": [float(o.t[0]), float(o.t[1]), float(o.z) + 0.0],
                      "quat_xyzw": [float(x) for x in q]}}
        e.update(mat)
        entries.append(e)
    return {"name": f"generated_{seed}",
            "description": f"f3rm_ros.core.sim.families seed {seed} (generator version {GENERATOR_VERSION}): "
                           + ", ".join(names),
            "table": table, "objects": entries}


def _table(rng: np.random.Generator) -> dict[str, Any]:
    woods = [((0.62, 0.47, 0.33), (0.50, 0.36, 0.24)), ((0.55, 0.42, 0.30), (0.42, 0.30, 0.20)),
             ((0.75, 0.62, 0.45), (0.62, 0.50, 0.35)), ((0.40, 0.28, 0.18), (0.30, 0.20, 0.12))]
    r = rng.random()
    if r < 0.7:
        c, c2 = woods[int(rng.integers(len(woods)))]
        tex = {"type": "wood", "color2": list(c2), "scale": round(float(rng.uniform(0.02, 0.04)), 4)}
    else:
        g = float(rng.uniform(0.55, 0.85))
        c = (g, g, g * 0.97)
        tex = {"type": "noise" if r < 0.9 else "checker", "color2": [round(0.8 * g, 3)] * 3,
               "scale": round(float(rng.uniform(0.01, 0.05)), 4)}
    return {"size": [1.0, 0.8, 0.04], "color": list(c), "texture": tex}


def generate_scene(seed: int, config: GeneratorConfig | None = None) -> GeneratedScene:
    """Make the scene and queries of ``seed`` (see the module docstring).

    Args:
        seed: any non-negative integer; :func:`split_of` tells whether it is a development or an
            evaluation seed.
        config: scene family settings (default :class:`GeneratorConfig`).

    Returns:
        :class:`GeneratedScene` with the scene, per-object facts, queries and the YAML text.

    Raises:
        ValueError: negative seed, unknown family in ``family_weights``, no family with positive
            weight, or min_objects > max_objects.

    Example::

        g = generate_scene(3)
        print(g.scene.name, [o.name for o in g.scene.objects])
        for q in g.queries:
            print(q.kind, q.text, q.objects, q.part, q.expect_grasp)
    """
    cfg = config or GeneratorConfig()
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    unknown = sorted(set(cfg.family_weights) - set(FAMILIES))
    if unknown:
        raise ValueError(f"family_weights: unknown famil(ies) {unknown}; valid ones are {list(FAMILIES)}")
    if any(float(w) < 0 for w in cfg.family_weights.values()) or not any(
            float(w) > 0 for w in cfg.family_weights.values()):
        raise ValueError("family_weights: weights must be >= 0 and at least one > 0")
    if cfg.min_objects > cfg.max_objects:
        raise ValueError(f"min_objects ({cfg.min_objects}) > max_objects ({cfg.max_objects})")
    rng = np.random.default_rng([GENERATOR_VERSION, int(seed)])
    table = _table(rng)
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    weights = {k: float(v) for k, v in cfg.family_weights.items()}
    objs: list[_Placed] = []
    used_colours: dict[str, list[str]] = {}
    mesh_parts: list[list[str]] = []
    for _ in range(n):
        for _attempt in range(3):
            fam = FAMILIES[_pick_family(rng, weights)]
            free_colours = [c for c in fam.colours if c not in used_colours.get(fam.name, [])]
            if not free_colours:
                continue
            colour = str(rng.choice(free_colours))
            params, oversize = _sample_params(fam, rng, cfg)
            mesh = generate(fam.generator, **params)
            lying = fam.lying != "none" and bool(rng.random() < cfg.lying_prob)
            R = _pose(fam, mesh, params, lying, rng)
            v = mesh.vertices @ R.T
            o = _Placed(fam, colour, params, oversize, lying, R, float(-v[:, 2].min()), _hull2d(v[:, :2]))
            if _place(o, objs, rng, cfg):
                objs.append(o)
                used_colours.setdefault(fam.name, []).append(colour)
                mesh_parts.append(list(mesh.part_names))
                break
    if not objs:  # cannot happen with the default limits (any single object fits the workspace)
        raise ValueError(f"seed {seed}: no object could be placed; check x_limit_m / y_limit_m")
    names = [f"{o.colour} {o.family.name}" for o in objs]
    counts: dict[str, int] = {}
    for o in objs:
        counts[o.family.name] = counts.get(o.family.name, 0) + 1
    infos = []
    for o, name, parts in zip(objs, names, mesh_parts, strict=True):
        width = _min_width(o.poly)
        expect = bool(_graspable_parts(o, parts) or width <= GRIPPER_MAX_WIDTH_M)
        infos.append(ObjectInfo(name, o.family.name, o.colour, "lying" if o.lying else "standing", o.placement,
                                o.oversize, round(width, 4), expect))
    synonyms = _synonyms_for(list(dict.fromkeys(o.family.name for o in objs)))
    materials = [_material(o.family, o.colour, o.params, rng, cfg) for o in objs]
    queries = _queries(objs, names, infos, synonyms, rng, cfg, mesh_parts)
    text = yaml.safe_dump(_scene_dict(seed, table, objs, names, materials, synonyms), sort_keys=False,
                          default_flow_style=None, width=120)
    header = (f"# generated by f3rm_ros.core.sim.families: seed {seed} ({split_of(seed)} split), "
              f"generator version {GENERATOR_VERSION}\n")
    scene = load_scene_text(header + text, file=f"<generated seed {seed}>")
    return GeneratedScene(int(seed), split_of(seed), scene, infos, queries, header + text, cfg)


def write_generated(gen: GeneratedScene, out_dir: str | Path,
                    witnesses: list[np.ndarray | None] | None = None) -> tuple[Path, Path]:
    """Write ``out_dir/scene.yaml`` and ``out_dir/queries.json`` atomically; returns both paths."""
    from f3rm_ros.core.io import atomic_write_json, atomic_write_text

    out = Path(out_dir)
    ys = atomic_write_text(out / "scene.yaml", gen.yaml_text)
    qs = atomic_write_json(out / "queries.json", gen.queries_json(witnesses))
    return ys, qs


def load_queries(path: str | Path) -> list[SceneQuery]:
    """The queries of a ``queries.json`` written by :func:`write_generated` (or its folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / "queries.json"
    with open(p) as f:
        data = json.load(f)
    return [SceneQuery.from_dict(d) for d in data["queries"]]
