"""Settings of the grasp planner and of task recording (reference defaults: f3rm-method.md s. 3-4).

Where a number differs from the reference, or is ours (the reference has no "not found" answer),
the help text says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from f3rm_ros.core.config import param

__all__ = ["PlannerConfig", "TaskConfig", "DEFAULT_NEGATIVES"]

DEFAULT_NEGATIVES = ("object", "things", "stuff", "texture")


@dataclass
class TaskConfig:
    """How a task's query points are made when recording demonstrations."""

    num_query_points: int = param(100, "query points per task (reference 100)", range=(1, 10000))
    query_std_m: float = param(0.0075, "std of the isotropic Gaussian the query points are drawn from, metres "
                                       "(reference 0.0075-0.014)", range=(1e-4, 0.2))
    voxel_size_m: float = param(0.01, "delta of alpha = 1 - exp(-density * delta) used for the stored "
                                      "alpha-weighted features (reference: the proposal voxel size)",
                                range=(1e-4, 0.2))
    seed: int = param(0, "random seed of the query points", range=(0, 2**31 - 1))


@dataclass
class PlannerConfig:
    """Language-guided 6-DoF grasp planner. Reference defaults unless the help text says otherwise."""

    # --- workspace and coarse proposals ------------------------------------------------------------
    workspace_min_m: tuple[float, float, float] = param(
        (0.1, -0.45, 0.005), "workspace box lower corner in the world frame, metres (reference robot base box)")
    workspace_max_m: tuple[float, float, float] = param(
        (0.8, 0.45, 0.35), "workspace box upper corner in the world frame, metres")
    voxel_size_m: float = param(0.01, "spacing of the dense alpha grid, also alpha's delta and the "
                                      "downsampling voxel, metres", range=(1e-3, 0.1))
    surface_alpha: float = param(0.1, "alpha level of the surface (reference: marching cubes at 0.1; here: "
                                      "occupied voxels with a free 6-neighbour)", range=(1e-4, 1.0))
    downsample_voxel_m: float = param(0.01, "voxel size of the voxel downsampling, metres", range=(1e-3, 0.1))
    outlier_neighbors: int = param(50, "statistical outlier removal: neighbours (k)", range=(1, 1000))
    outlier_std_ratio: float = param(4.0, "statistical outlier removal: std ratio", range=(0.0, 100.0))
    negatives: tuple[str, ...] = param(DEFAULT_NEGATIVES, "negative phrases of the language mask/similarity")
    mask_temperature: float = param(0.001, "softmax temperature of the language mask over [query + negatives]",
                                    range=(1e-6, 10.0))
    mask_sampling: bool = param(False, "sample each voxel's label from the softmax as the reference does "
                                       "(False: take the argmax, deterministic; the same at temperature 0.001 "
                                       "except for near-ties)")
    similarity_temperature: float = param(0.1, "temperature of the pairwise softmax similarity (LERF)",
                                          range=(1e-6, 10.0))
    min_similarity: float = param(0.6, "ours: the best pairwise-softmax similarity over the surface must reach "
                                       "this, else 'not found'. Calibrated on the synthetic world's label "
                                       "features (present things score >= 0.99 on the oracle field, unknown "
                                       "text exactly 0.5); CLIP relevancies sit closer to 0.5, so recalibrate "
                                       "this on real scenes",
                                  range=(0.0, 1.0))
    min_masked_voxels: int = param(3, "ours: fewer voxels than this left by the language mask means "
                                      "'not found'", range=(1, 100000))
    retrieval: str = param("text+scene", "task retrieval: 'text' (reference: text vs task embeddings) or "
                                         "'text+scene' (adds the similarity of the task embeddings to the "
                                         "mean feature of the voxels the query selected)",
                           choices=("text", "text+scene"))
    rotations_per_voxel: int = param(8, "uniformly random rotations per voxel", range=(1, 1000))
    max_proposals: int = param(8192, "ours: at most this many (voxel, rotation) proposals enter the first "
                                     "collision check and the optimisation; when there are more, a uniform "
                                     "random (seeded) subset is kept, so spatial coverage and the rotation "
                                     "distribution stay as they were (the optimisation's pruning then selects "
                                     "by task loss). Bounds a CPU query whatever the mask selects; the oracle "
                                     "scenes' queries have <= ~3000 proposals, so the reference run is "
                                     "unchanged. 0 = no cap", range=(0, 10**8))
    # --- optimisation ------------------------------------------------------------------------------
    num_steps: int = param(200, "Adam steps", range=(0, 100000))
    lr: float = param(2e-3, "Adam learning rate (translation in metres and the scaled quaternion)",
                      range=(0.0, 10.0))
    quat_scale: float = param(0.1, "the quaternion is optimised multiplied by this", range=(1e-4, 10.0))
    prune_after_step: int = param(10, "prune after this step", range=(0, 100000))
    keep_fraction: float = param(0.975, "fraction of poses kept at each pruning", range=(0.0, 1.0))
    min_poses: int = param(2048, "prune only while more poses than this remain", range=(1, 10**7))
    optimizer_backend: str = param("auto", "ours: how the Adam loop runs. 'plain': the reference loop (the batch "
                                           "shrinks at each pruning); 'static': fixed shapes, pruned poses frozen "
                                           "behind a mask (same result); 'cuda_graph': 'static' with one step "
                                           "captured in a CUDA graph and replayed (CUDA only, else 'static'); "
                                           "'auto': cuda_graph on CUDA, plain on the CPU",
                                   choices=("auto", "plain", "static", "cuda_graph"))
    fold_feature_head: bool = param(True, "ours: compute the task loss in the feature MLP's hidden space (the "
                                          "linear head folded into the loss: no poses x points x D tensors; the "
                                          "same loss up to float rounding) when the field exposes its head and "
                                          "its features are wider than the hidden layer (CLIP: 768 vs 64)")
    # --- collision ---------------------------------------------------------------------------------
    collision_voxel_m: float = param(0.0075, "gripper voxel size for collision points; also alpha's delta",
                                     range=(1e-4, 0.1))
    collision_alpha: float = param(0.2, "a gripper point with alpha >= this is occupied", range=(0.0, 1.0))
    collision_min_points: int = param(10, "a pose collides if at least this many points are occupied",
                                      range=(1, 100000))
    collision_include_fingers: bool = param(False, "count the fingers with the rest of the gripper in both "
                                                   "checks (reference: no)")
    early_exit: bool = param(False, "ours: stop each field walk once its answer is known: collision checks visit "
                                    "the gripper points in growing blocks (each spread over the whole gripper) and "
                                    "drop a pose once it collides, the fine check runs only where the coarse one "
                                    "passed, the final checks take candidates in blocks sized by the free fraction "
                                    "seen so far and skip poses already found free, the refinement checks a step "
                                    "for collisions only where it lowers the angle, and the geometric search's "
                                    "chords stop at their first free sample. The same answers with a fraction of "
                                    "the field queries; pays on the CPU (PLANNER_CPU), where a query is bound by "
                                    "the field's evaluations, not on a GPU, where each block costs host round "
                                    "trips. Off: every point of every pose at once (as before)")
    demo_clearance_first: bool = param(False, "ours: take the demonstration-guided candidates best by loss among "
                                              "the poses free with the clearance margin (the final criterion, as the "
                                              "geometric candidates are) instead of among those free without it "
                                              "(coarse and fine checks), which the final check then tests with it: "
                                              "a candidate that only the margin rejects no longer takes a place, and "
                                              "a free one is checked once (the Panda at the default spacings: 8090 "
                                              "field queries instead of 1740 + 6752 + 8090). PLANNER_CPU; off: as "
                                              "before")
    floor: str = param("workspace", "ours: where the floor is. Space below it counts as occupied in both "
                                    "collision checks, and each optimisation step lifts a pose whose gripper "
                                    "(fingers at the maximum opening included) dips below it. A trained field "
                                    "is empty under the table top (only its visible skin is dense), so "
                                    "without a floor a palm through the table reads as free. 'workspace': "
                                    "the lower z of the workspace box in use (workspace_min_m, or the box "
                                    "passed to plan()); 'floor_z_m': the floor_z_m value; 'none': no floor",
                       choices=("workspace", "floor_z_m", "none"))
    floor_z_m: float = param(0.0, "ours: floor height in the world frame, metres, used when floor = "
                                  "'floor_z_m' (e.g. the table top plus a safety margin)", range=(-100.0, 100.0))
    fine_check_after: bool = param(True, "ours: after optimisation, check the whole gripper again (fingers at the "
                                         "maximum opening included) with finer points and a lower count; the "
                                         "reference ignores the fingers, and at its 0.0075 m / 10-point setting a "
                                         "palm corner through a 5 mm rim or a fingertip 3 mm into the table "
                                         "goes unseen")
    fine_voxel_m: float = param(0.004, "ours: spacing of the fine check's gripper surface points, metres",
                                range=(1e-4, 0.1))
    fine_min_points: int = param(4, "ours: fine-check points with alpha >= collision_alpha that make a collision",
                                 range=(1, 100000))
    antipodal_candidates: int = param(32, "ours: the best this many collision-free demonstration-guided grasps (by "
                                          "loss) get an antipodal estimate from the density (contact normals seen by "
                                          "rays across the finger pads, see grasp/antipodal.py), a refinement that "
                                          "turns the closing axis onto the estimated normals and centres a round "
                                          "bar closed off its axis, and the final checks (grasp/verify.py); at "
                                          "least max_grasps are checked when that is larger. At least 1 (0 used "
                                          "to mean 'rank by loss alone'; every returned grasp is now checked)",
                                    range=(1, 100000))
    antipodal_max_deg: float = param(15.0, "ours: estimated contact-normal angle (larger finger) up to which a "
                                           "grasp counts as antipodal in the final checks; well below the 26.6 "
                                           "deg friction cone of mu = 0.5: the field's normals differ from the true "
                                           "ones by up to ~10 deg on thin tapered walls",
                                     range=(0.0, 180.0))
    antipodal_refine_iters: int = param(2, "ours: closing-axis alignment steps per candidate (each kept only if "
                                           "collision-free and its estimated angle drops)", range=(0, 20))
    antipodal_ray_grid: tuple[int, int] = param((3, 7), "ours: rays per finger pad (across its width, along its "
                                                        "length) of the antipodal estimate")
    antipodal_check_grid: tuple[int, int] = param((7, 15), "ours: rays per finger pad (across, along) of a "
                                                           "second, denser estimate that a grasp passing the final "
                                                           "checks must pass too (a pad on an edge or a curved "
                                                           "wall's corner the coarse rays miss); (0, 0) = off")
    antipodal_check_max_deg: float = param(26.6, "ours: the denser estimate's angle limit: the friction cone of "
                                                 "mu = 0.5 itself (its rays sit where the contact is; a thin "
                                                 "plate's lip reads 16-22 deg there, a lying mug's rim corner "
                                                 "36-41)", range=(0.0, 180.0))
    antipodal_step_m: float = param(0.001, "ours: sample spacing along the antipodal estimate's rays, metres",
                                    range=(1e-4, 0.01))
    antipodal_normal_step_m: float = param(0.003, "ours: finite-difference step of the log-density gradient "
                                                  "that gives contact normals, metres", range=(1e-4, 0.02))
    # --- generalisation: geometric candidates, fallback, the final checks (all ours) ---------------------
    sources: str = param("auto", "ours: where candidates come from. 'auto': demonstration-guided candidates of the "
                                 "fitting tasks and zero-shot geometric ones, in one ranking; 'demo': only tasks "
                                 "(the reference); 'geometric': only geometric candidates",
                         choices=("auto", "demo", "geometric"))
    task_fit_min: float = param(0.3, "ours: a task is used only when its retrieval score (text cosine, plus the "
                                     "scene cosine with retrieval 'text+scene') reaches this; below it no "
                                     "demonstration fits the query and the geometric candidates stand alone. "
                                     "Calibrated on the synthetic world's label features (a demonstrated kind "
                                     "scores 0.8-1.6, an undemonstrated one ~0); recalibrate for CLIP",
                                range=(-2.0, 2.0))
    max_tasks_tried: int = param(2, "ours: fitting tasks tried in turn, best first, while no candidate of the "
                                    "earlier ones passes the checks", range=(0, 100))
    geometric_only_if_needed: bool = param(False, "ours: with sources 'auto', plan the demonstration-guided candidates "
                                                  "first and the geometric ones only when the grasps that passed do "
                                                  "not already fill max_grasps with scores above 1 (the most a "
                                                  "geometric grasp scores): the same grasps, without the geometric "
                                                  "search when a fitting demonstration gives enough (PLANNER_CPU); "
                                                  "off: both sources always (their stats always reported)")
    geometric_max_seeds: int = param(512, "ours: surface voxels of the selected region used as first contacts of "
                                          "geometric candidates (a seeded random subset when there are more)",
                                     range=(1, 10**6))
    geometric_seed_min_relative: float = param(
        0.8, "ours: geometric candidates start only from selected voxels whose features match the query (cosine) "
             "at least this fraction of contact_min_relative x the 90th percentile over the selected voxels (the "
             "contact test's own bar, slightly lowered): the language mask also samples voxels of neighbours, and "
             "candidates there only use up geometric_verify before the contact test rejects them (0 = all seeds; "
             "at least geometric_min_seeds are kept, best first)", range=(0.0, 1.0))
    geometric_min_seeds: int = param(16, "ours: the fewest seeds geometric_seed_min_relative keeps (best cosine "
                                          "first)", range=(1, 10**6))
    geometric_approach_angles: int = param(8, "ours: approach directions per antipodal pair, evenly turned about "
                                              "the closing axis starting from 'from above'", range=(1, 64))
    geometric_depths_m: tuple[float, ...] = param((-0.005, 0.006, 0.018), "ours: gripper z of the contacts' midpoint "
                                                                  "(depth on the finger pads), metres")
    geometric_max_pair_deg: float = param(30.0, "ours: a (surface point, opposite face) pair is a candidate when "
                                                "their normals are opposite within this angle", range=(0.0, 90.0))
    geometric_max_candidates: int = param(8192, "ours: most geometric poses collision-checked per query (in blocks, "
                                                "best pre-score first, until geometric_verify are free; 0 = no cap)",
                                          range=(0, 10**7))
    geometric_verify: int = param(64, "ours: collision-free geometric poses, best pre-score first, that get the "
                                      "final checks", range=(0, 10**6))
    clearance_m: float = param(0.003, "ours: margin of the final collision check: every gripper box (fingers at "
                                      "the maximum opening, palm, wrist) grown by this on each side must be free",
                               range=(0.0, 0.03))
    clearance_min_points: int = param(2, "ours: occupied points of the grown gripper that make a collision",
                                      range=(1, 100000))
    contact_radius_m: float = param(0.012, "ours: both contact patches must lie within this of a surface voxel "
                                           "the language selected (the fingers close on the queried thing)",
                                    range=(0.0, 1.0))
    contact_min_relative: float = param(0.65, "ours: the field's features 3 mm inside both contacts must match the "
                                              "query (cosine) at least this fraction of the 90th percentile over "
                                              "the selected voxels; keeps the fingers off a touching neighbour and "
                                              "off the body next to a named part (0 = off)", range=(0.0, 1.0))
    demo_preference: float = param(1.0, "ours: score bonus of a demonstration-guided grasp that passes the "
                                        "checks over a geometric one (a geometric grasp scores its quality, "
                                        "0..1; a demonstration-guided one this plus its fit, 0..1, plus 0.1 x "
                                        "its quality)",
                                   range=(0.0, 100.0))
    max_grasps: int = param(10, "best grasps returned (0 = all survivors)", range=(0, 10**6))
    opening_m: float = param(0.08, "finger opening reported with each grasp, metres", range=(0.0, 1.0))
    chunk_points: int = param(2**18, "points per field query chunk (bounds memory: ~1 GB at 768-dim features)",
                              range=(1024, 2**30))
    device: str = param("auto", "torch device: auto, cpu, cuda, cuda:N")
    seed: int = param(0, "random seed of rotations (and of mask sampling)", range=(0, 2**31 - 1))
