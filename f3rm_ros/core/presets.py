"""Named training presets: settings as data (flat dotted keys of :class:`~f3rm_ros.core.trainer.TrainerConfig`).

A preset only lists what differs from the reference defaults, so ``TrainerConfig()`` stays the one source of
the defaults and a preset reads as "the reference, except ...". Presets combine with ``+`` in
:func:`trainer_preset` ("small+synthetic"); ROS nodes take the same keys under their ``trainer.`` prefix.

- ``reference``: nerfacto + F3RM's feature field as published (a GPU, real scenes, 5k-30k steps).
- ``small``: the same networks at a size a 2-core CPU trains in minutes (fewer hash levels, smaller tables,
  32/16 proposal samples, 16 field samples, a 6x2 feature grid).
- ``synthetic``: scene settings for the synthetic tabletop world. Measured over 7 seeds x 3 built-in scenes,
  500 steps of ``small`` at 1024 rays (``benchmarks/NOTES_robustness.md``): with the reference
  near 0.05 / far 1000 / feature weight 1e-3, about half of the fields come out "see-through" (the table and
  objects left semi-transparent, their colours painted on the far end of the rays: median held-out depth
  error of hundreds of metres) and one in 21 collapses onto the cameras (held-out PSNR ~14 dB). With
  near 0.2 (nothing in these views is closer than ~0.25 m), far 5 (the world ends ~1 m from the table: the
  last sample's interval no longer makes any density opaque) and feature weight 0.1 (label features
  disagree with a see-through table), 2 of 42 runs failed and the median depth error of the rest is 9 mm.
- ``depth``: depth supervision (``losses.depth_mult`` 0.1) for datasets with depth images (RGB-D cameras;
  the simulator writes them). Not part of F3RM. On the built-in scenes (``small+synthetic``, 2000 steps,
  H200, ``benchmarks/NOTES_grasp_trained.md``) it brings the median held-out depth error from 6-14 mm to
  0.5-0.7 mm and removes the "lid" colour-only fields put over the uniform inside of a mug, which made
  every rim grasp collide; weight 1.0 is too strong (held-out PSNR drops, one sphere run diverged).
- ``error_map``: half of each ray batch drawn by the per-pixel RGB error map (``error_sampling`` 0.5), half
  uniformly. Not part of F3RM. 2000 steps x 1024 rays is less than one pass over the pixels of 60 views at
  240x180, and a 10 mm mug handle is 2-3 pixels thick there: drawn uniformly, the CPU-trained fields hold
  only part of it and every "mug handle" query failed; with the error map all of them passed
  (``small+synthetic+depth+error_map`` on the CPU, ``benchmarks/NOTES_grasp_trained.md``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["TRAINER_PRESETS", "PLANNER_CPU", "REFRESH_CPU", "trainer_preset", "trainer_config"]

# The demo's CPU query settings (PlannerConfig fields), shared by the demo, the CPU benchmarks and tests, so that a
# query takes a second or two on one CPU core. early_exit (collision checks and chords that stop once their answer
# is known) and geometric_only_if_needed (no geometric search when the demonstrations already fill the answer)
# give the same grasps with fewer field queries (test_grasp_cpu_fast.py); the rest trades candidates for time
# against the reference (200 steps, 8 rotations per voxel, no proposal cap, pruning by 0.975 per step above 2048
# poses, 32 demonstration-guided and 64 geometric candidates checked, 512 geometric seeds, 2 refinement steps):
# 20 Adam steps, 3 rotations, at most 768 proposals, pruning by 0.8 per step from step 3 down to 64 poses, 16 + 16
# candidates checked, 96 seeds, one refinement step. Before issue 21 (25 steps, 4 rotations, pruning above 512
# poses, 32 + 32 candidates, 192 seeds) the top grasp passed 24 of 29 present queries on the trained fields of the
# three built-in scenes and the demo's (absent ones: 22 of 22 got none); with these settings 27 of 29 (22 of 22),
# the median query taking 2.2 instead of 9.3 s of CPU time (max 4.3 instead of 27.6; benchmarks/bench_cpu_demo.py
# query, one thread; benchmarks/NOTES_cpu_demo.md). demo_clearance_first (the demonstration-guided candidates chosen
# among the poses free with the clearance margin, each checked once) and the exact batching of the field queries
# after that: 27 of 29 and 22 of 22 still, median 2.28 -> 1.86 s against 916a044 in the same run at load 4-5
# (results/cpu_query_table_6b27b4a.json).
PLANNER_CPU: dict[str, Any] = {"num_steps": 20, "rotations_per_voxel": 3, "max_proposals": 768, "prune_after_step": 3,
                               "keep_fraction": 0.8, "min_poses": 64, "antipodal_candidates": 16,
                               "antipodal_refine_iters": 1, "geometric_max_seeds": 96,
                               "geometric_max_candidates": 1024, "geometric_verify": 16, "early_exit": True,
                               "geometric_only_if_needed": True, "demo_clearance_first": True}

# The refresh on a 2-core CPU (RefreshConfig fields, f3rm_ros.core.workflows.refresh): its 500-step fields and 400-step
# refreshes keep the old views' colour near the changed places and the checkpoint's rate x 0.1. The GPU's defaults
# (near_m 0.08, lr_scale 0.2: 8/10 refreshes within 1 dB of a full retrain on the H100 against 3/10) cost an unmoved
# bottle's grasp and an edit's through the CPU bench's sequence, where these pass every check (refresh_field's
# docstring; benchmarks/results/scene_edits_cpu_*). No colour grids for the moved things (colour_voxel_m 0, the
# default too): on the CPU bench they moved the refreshes' PSNR by +0.05 / +0.09 dB, cost ~3-4 s of a refresh, and
# the unmoved bottle lost its grasp beside them after the first refresh (scene_edits_cpu_432af02_colour*; a loaded
# machine).
REFRESH_CPU: dict[str, Any] = {"near_m": 0.0, "lr_scale": 0.1, "colour_voxel_m": 0.0}

_SMALL: dict[str, Any] = {
    "model.rgb.grid.num_levels": 8, "model.rgb.grid.log2_hashmap_size": 15,
    "model.rgb.grid.max_res": 512, "model.rgb.appearance_embedding_dim": 8,
    "model.proposal_1.grid.num_levels": 4, "model.proposal_1.grid.log2_hashmap_size": 12,
    "model.proposal_1.grid.max_res": 64,
    "model.proposal_2.grid.num_levels": 4, "model.proposal_2.grid.log2_hashmap_size": 12,
    "model.proposal_2.grid.max_res": 128,
    "model.feature.grid.num_levels": 6, "model.feature.grid.features_per_level": 2,
    "model.feature.grid.log2_hashmap_size": 14, "model.feature.grid.max_res": 128,
    "model.sampler.num_proposal_samples": [32, 16], "model.sampler.num_samples": 16,
}

_SYNTHETIC: dict[str, Any] = {
    "model.sampler.near": 0.2, "model.sampler.far": 5.0, "losses.feature_mult": 0.1,
}

TRAINER_PRESETS: dict[str, dict[str, Any]] = {
    "reference": {},
    "small": _SMALL,
    "synthetic": _SYNTHETIC,
    "depth": {"losses.depth_mult": 0.1},
    "error_map": {"error_sampling": 0.5},
}


def trainer_preset(name: str, prefix: str = "") -> dict[str, Any]:
    """Flat settings of a preset, or of several joined by ``+`` (later ones win).

    Args:
        name: e.g. ``"small"``, ``"small+synthetic"``.
        prefix: put in front of every key (the ROS train node's parameters are ``"trainer." + key``).
    Returns:
        ``{dotted key: value}`` (a fresh dict).
    Raises:
        ValueError: an unknown preset name (the message lists the known ones).
    """
    out: dict[str, Any] = {}
    for part in (p.strip() for p in str(name).split("+")):
        if part not in TRAINER_PRESETS:
            raise ValueError(f"unknown trainer preset {part!r} in {name!r}; known: {', '.join(TRAINER_PRESETS)}")
        out.update(TRAINER_PRESETS[part])
    return {prefix + k: (list(v) if isinstance(v, list) else v) for k, v in out.items()}


def trainer_config(name: str = "reference", **overrides: Any):
    """A :class:`TrainerConfig` from a preset plus flat dotted overrides (``**{"seed": 1}``); unknown keys
    are errors, as everywhere."""
    from f3rm_ros.core.config import from_dict, unflatten  # noqa: PLC0415
    from f3rm_ros.core.trainer import TrainerConfig  # noqa: PLC0415

    return from_dict(TrainerConfig, unflatten({**trainer_preset(name), **overrides}))
