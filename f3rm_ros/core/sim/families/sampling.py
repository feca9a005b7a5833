"""Random draws of :mod:`f3rm_ros.core.sim.families`: a family, its generator parameters (box sizes, oversize
balls and boxes, mug handle / lid) and its material (colour, texture, specular, part colours)."""

from __future__ import annotations

from typing import Any

import numpy as np

from f3rm_ros.core.sim.families.catalogue import _GENERAL, FAMILIES, PALETTE, Family
from f3rm_ros.core.sim.families.records import GeneratorConfig


def _box_size(rng: np.random.Generator, oversize: bool) -> tuple[float, float, float]:
    """Box edge lengths: flat, tall, long or cube-like; one horizontal edge <= 72 mm unless ``oversize``."""
    if oversize:
        return tuple(float(round(x, 4)) for x in rng.uniform(0.09, 0.16, 3))  # type: ignore[return-value]
    kind = rng.choice(["tall", "flat", "long", "cube"])
    narrow = rng.uniform(0.03, 0.072)
    if kind == "tall":
        size = (narrow, rng.uniform(0.04, 0.12), rng.uniform(0.12, 0.25))
    elif kind == "flat":
        size = (narrow, rng.uniform(0.08, 0.2), rng.uniform(0.025, 0.05))
    elif kind == "long":
        size = (narrow, rng.uniform(0.15, 0.25), rng.uniform(0.03, 0.08))
    else:
        size = (narrow, narrow * rng.uniform(0.9, 1.1), narrow * rng.uniform(0.9, 1.1))
    size = list(size)
    if rng.random() < 0.5:
        size[0], size[1] = size[1], size[0]
    return tuple(float(round(x, 4)) for x in size)  # type: ignore[return-value]


def _sample_params(fam: Family, rng: np.random.Generator, cfg: GeneratorConfig) -> tuple[dict, bool]:
    params: dict[str, Any] = {k: float(round(rng.uniform(lo, hi), 4)) for k, (lo, hi) in fam.ranges.items()}
    oversize = False
    if fam.name == "box":
        oversize = bool(rng.random() < cfg.oversize_prob)
        params["size"] = _box_size(rng, oversize)
    elif fam.name == "ball" and rng.random() < cfg.oversize_prob:
        oversize = True
        params["radius"] = float(round(rng.uniform(0.045, 0.065), 4))
    elif fam.name == "mug":
        params["handle"] = bool(rng.random() < 0.85)
        params["lid"] = bool(params["handle"] and rng.random() < 0.2)
    elif fam.name == "bowl":
        params["foot_radius"] = min(params["foot_radius"], 0.55 * params["radius"])
    return params, oversize


def _material(fam: Family, colour: str, params: dict, rng: np.random.Generator,
              cfg: GeneratorConfig) -> dict[str, Any]:
    base = np.clip(np.array(PALETTE[colour]) + rng.uniform(-0.04, 0.04, 3), 0.0, 1.0)
    out: dict[str, Any] = {"color": [round(float(c), 3) for c in base]}
    if fam.name not in ("glass", "banana") and rng.random() < cfg.texture_prob:
        other = [c for c in _GENERAL if c != colour]
        c2 = PALETTE[str(rng.choice(other))] if rng.random() < 0.6 else tuple(min(1.0, 0.55 * c + 0.45) for c in base)
        out["texture"] = {"type": str(rng.choice(["checker", "stripes", "noise"])),
                          "color2": [round(float(c), 3) for c in c2],
                          "scale": round(float(rng.uniform(0.006, 0.03)), 4)}
    out["specular"] = round(float(rng.uniform(0.6, 0.9) if fam.name == "glass" else rng.uniform(0.1, 0.6)), 3)
    part_colors = {k: list(v) for k, v in fam.part_colors.items()}
    lids = {"bottle": ("cap",), "jar": ("lid",), "mug": ("lid",) if params.get("lid") else ()}
    for part in lids.get(fam.name, ()):  # caps and lids in another colour
        part_colors[part] = list(PALETTE[str(rng.choice([c for c in _GENERAL if c != colour]))])
    return out | ({"part_colors": part_colors} if part_colors else {})


def _pick_family(rng: np.random.Generator, weights: dict[str, float]) -> str:
    names = [n for n in FAMILIES if weights.get(n, 0.0) > 0]
    w = np.array([weights[n] for n in names], dtype=np.float64)
    return names[int(rng.choice(len(names), p=w / w.sum()))]
