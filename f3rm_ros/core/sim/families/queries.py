"""The queries of a generated scene (:mod:`f3rm_ros.core.sim.families`): graspable parts, unambiguous
synonyms and absent things (rules in the package docstring)."""

from __future__ import annotations

import numpy as np

from f3rm_ros.core.sim.families.catalogue import FAMILIES, GRIPPER_MAX_WIDTH_M, OTHER_THINGS, Family
from f3rm_ros.core.sim.families.placement import _Placed
from f3rm_ros.core.sim.families.records import GeneratorConfig, ObjectInfo, SceneQuery


def _part_ok(fam: Family, params: dict, part: str) -> bool:
    """Extra conditions on a graspable part: a rim a Panda can hold, a jar lid narrow enough."""
    if part == "rim":
        return not params.get("lid") and _rim_ok(fam, params)
    if fam.name == "jar" and part == "lid":
        return 2 * (params["radius"] - 0.002) <= GRIPPER_MAX_WIDTH_M
    return True


def _rim_ok(fam: Family, params: dict) -> bool:
    """Can a Panda at full opening hold this open object's rim: a pinch whose inner finger clears the far
    wall, or closing around the whole object near its top?"""
    import inspect

    from f3rm_ros.core.sim.grasps import RIM_PINCH_MIN_DIAMETER_M
    from f3rm_ros.core.sim.meshes import GENERATORS

    p = {k: v.default for k, v in inspect.signature(GENERATORS[fam.generator]).parameters.items()} | params
    slope = p["radius"] * (1 - p.get("taper", 1.0)) / p["height"]
    wall_c = p["radius"] - slope * 0.02 - p["wall"] / 2
    return 2 * wall_c - p["wall"] / 2 > RIM_PINCH_MIN_DIAMETER_M or 2 * p["radius"] <= GRIPPER_MAX_WIDTH_M


def _graspable_parts(o: _Placed, mesh_parts: list[str]) -> list[str]:
    """The parts of a placed object worth a part query: present, holdable in its pose."""
    out = []
    for part in o.family.grasp_parts:
        if part not in mesh_parts or (o.lying and part in o.family.standing_only_parts):
            continue
        if not _part_ok(o.family, o.params, part):
            continue
        out.append(part)
    return out


def _tails(phrase: str) -> list[str]:
    w = phrase.split()
    return [" ".join(w[k:]) for k in range(len(w))]


def _synonyms_for(present: list[str]) -> dict[str, list[str]]:
    """Per present family, the synonyms that stay unambiguous in this scene (see the module docstring)."""
    out = {}
    for f in present:
        keep = []
        for s in FAMILIES[f].synonyms:
            clash = False
            for g in present:
                if g == f:
                    continue
                other = {g} | {t for syn in FAMILIES[g].synonyms for t in _tails(syn)}
                if any(t in other for t in _tails(s)):
                    clash = True
            if not clash:
                keep.append(s)
        out[f] = keep
    return out


def _words(text: str) -> set[str]:
    out = set()
    for w in text.lower().replace("-", " ").split():
        out |= {w, w.rstrip("s"), w[:-2] if w.endswith("es") else w}
    return out


def _queries(objs: list[_Placed], names: list[str], infos: list[ObjectInfo], synonyms: dict[str, list[str]],
             rng: np.random.Generator, cfg: GeneratorConfig, mesh_parts: list[list[str]]) -> list[SceneQuery]:
    qs: list[SceneQuery] = []
    by_family: dict[str, list[int]] = {}
    for i, o in enumerate(objs):
        by_family.setdefault(o.family.name, []).append(i)
    for fname, idx in by_family.items():
        single = len(idx) == 1
        if single:
            i = idx[0]
            qs.append(SceneQuery(fname, "object", (names[i],), None, infos[i].expect_grasp))
        for i in idx:
            qs.append(SceneQuery(names[i], "attribute", (names[i],), None, infos[i].expect_grasp))
            for part in _graspable_parts(objs[i], mesh_parts[i]):
                qs.append(SceneQuery(f"{fname if single else names[i]} {part}", "part", (names[i],), part, True))
        if synonyms[fname]:
            syn = str(rng.choice(synonyms[fname]))
            if single:
                qs.append(SceneQuery(syn, "synonym", (names[idx[0]],), None, infos[idx[0]].expect_grasp))
            else:
                i = idx[int(rng.integers(len(idx)))]
                qs.append(SceneQuery(f"{objs[i].colour} {syn}", "synonym", (names[i],), None, infos[i].expect_grasp))
    # absent: families not related to any present one, then other things; no word shared with the scene
    present = set(by_family)
    used_words: set[str] = set()
    for i, o in enumerate(objs):
        for text in [names[i], o.family.name, *synonyms[o.family.name], *mesh_parts[i]]:
            used_words |= _words(text)
    fam_cands = [f for f in FAMILIES if f not in present and not (set(FAMILIES[f].related) & present)
                 and not any(f in FAMILIES[p].related for p in present)]
    other_cands = list(OTHER_THINGS)
    n_fam = min(len(fam_cands), (cfg.absent_queries + 1) // 2)
    picks = [fam_cands[int(k)] for k in rng.permutation(len(fam_cands))[:n_fam]]
    picks += [other_cands[int(k)] for k in rng.permutation(len(other_cands))]
    for text in picks:
        if len([q for q in qs if not q.present]) >= cfg.absent_queries:
            break
        if _words(text) & used_words:
            continue
        qs.append(SceneQuery(text, "absent", (), None, False))
    return qs
