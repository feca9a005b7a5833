"""Randomised tabletop scenes from a seed, with the queries a user would type (issue 17).

:func:`generate_scene` turns ``(seed, GeneratorConfig)`` into a :class:`GeneratedScene`: a
:class:`~f3rm_ros.core.sim.scene.Scene` (the same one the YAML loader makes from
``GeneratedScene.yaml_text``), the per-object facts (family, pose kind, placement, graspability) and
a list of :class:`SceneQuery`. Same seed and config -> the same scene, bit for bit, in every process
(one ``numpy.random.default_rng(seed)`` drives everything; nothing iterates over a set).

Families (:data:`FAMILIES`; the category is the family name, the object name is ``"<colour> <family>"``)
    mug (handle or not, lid or not), cup, glass, bowl, plate, pot, bottle, can, jar, box (many aspect
    ratios), ball, screwdriver, hammer, spatula, brush, banana. Each samples its generator's parameters
    uniformly from ranges (:func:`family_table` lists them), a colour from a named palette (distinct
    within a family in one scene, so names are unique), a texture with probability
    ``texture_prob``, a specular strength, and fixed colours for metal parts.

Poses
    Standing with a random yaw; revolved objects (mug, cup, glass, bottle, can, jar) lie on their side with
    probability ``lying_prob`` (rotated so the longest side edge of their silhouette's convex hull
    rests on the table, rolled at random (a mug: handle up or sideways), then lowered until the lowest
    vertex is at z = 0); boxes lie on another face. Tools and the banana are made lying. Placement works
    on footprints (convex hull of the posed object's xy vertices, a conservative outline): a new object
    is put at random, or touching an object already placed (``clutter_prob``: moved in from a random
    direction until the footprints touch), or near the workspace edge (``edge_prob``: its footprint
    within ``edge_margin_m`` of a limit); footprints may touch but not overlap (0.1 mm), and all stay in
    ``|x| <= x_limit_m``, ``|y| <= y_limit_m`` (defaults 0.33 / 0.28, inside the planners' workspace
    box). An object that does not fit after ``max_tries`` positions is dropped.

Queries (:class:`SceneQuery`: text, kind, objects that count, part or None, expect_grasp)
    * ``object``: the category ("mug") when exactly one object has it;
    * ``attribute``: colour + category ("red mug"), every object;
    * ``part``: "<mug|red mug> <part>" for parts a gripper can hold (mug handle and rim, cup / glass /
      bowl / plate / pot rim, pot handle, bottle neck and cap, jar lid, screwdriver / hammer / spatula /
      brush handle, hammer head); rims, caps and lids only of standing objects, rims only where a pinch
      at full opening clears the far wall or the object is narrow enough to close around;
    * ``synonym``: one synonym per category ("cup" for mugs, "saucepan" for a pot), or colour +
      synonym when several objects share the category. Objects list colour-prefixed synonyms
      ("red cup"); a synonym is left out of a scene where another present family lists it or it
      names another present category, since the label vocabulary resolves a synonym to every
      object listing it;
    * ``absent``: families not in the scene and not easily confused with one that is (no "cup" when
      a mug is there), and other things ("teapot", "scissors"); none shares a word with the scene's
      names, categories, synonyms or parts, so the label features parse them as unknown.

    ``expect_grasp`` says whether a Panda grasp should exist: a part query always (parts are only
    queried where they are graspable); an object query when the object has a graspable part or its
    footprint is at most 74 mm wide in some direction (the Panda opens 80 mm). ``oversize_prob`` makes
    a deliberate small share of balls and boxes too big for the gripper (``expect_grasp: False``: the
    right answer is "no feasible grasp"); :func:`judge_query` judges a planner result accordingly.

Seed split (defined once, here)
    A seed is an evaluation seed when the first 8 bytes of SHA-256 of ``"f3rm_ros/sim-families/split:<seed>"``,
    read little-endian, are 0 mod 5 (about 20% of seeds); every other seed is a development seed.
    :func:`is_eval_seed`, :func:`dev_seeds`, :func:`eval_seeds`. Develop and tune on development
    seeds only; evaluation seeds are only ever reported in aggregate (success rates over many
    seeds), never looked at one by one or tuned on.

Files (``f3rm-sim generate --seed N --out DIR``; :func:`write_generated`): ``DIR/scene.yaml`` (loadable
by :func:`~f3rm_ros.core.sim.scene.load_scene`, so ``f3rm-sim render DIR/scene.yaml`` works) and
``DIR/queries.json`` (``{"seed", "split", "generator_version", "config", "scene", "objects",
"queries"}``; with ``--witness`` each query also gets ``witness``: a gripper pose that passes the
ground-truth check in this scene, found by :func:`find_witnesses`, or null). The label features need
``labels.dim`` >= #concepts + 4; a scene of 8 objects has at most about 50 concepts (43 seen over 400
seeds), within the default 64.

Modules: :mod:`.catalogue` (families, palette, :func:`family_table`), :mod:`.seeds` (the split),
:mod:`.records` (:class:`GeneratorConfig`, :class:`SceneQuery`, :class:`ObjectInfo`, :class:`GeneratedScene`),
:mod:`.sampling` (parameters, materials), :mod:`.placement` (footprints, poses, placement), :mod:`.queries`,
:mod:`.scene` (:func:`generate_scene`, files) and :mod:`.judging` (:func:`judge_query`, :func:`find_witnesses`);
the public names are importable from this package.
"""

# everything public stays importable from here, as when this was one module (tests use _sample_params)
from f3rm_ros.core.sim.families.catalogue import (
    DEFAULT_WEIGHTS,  # noqa: F401
    FAMILIES, GENERATOR_VERSION, GRIPPER_MAX_WIDTH_M,
    OTHER_THINGS,  # noqa: F401
    PALETTE, Family, family_table,
)
from f3rm_ros.core.sim.families.judging import find_witnesses, judge_query
from f3rm_ros.core.sim.families.records import (
    QUERY_KINDS,  # noqa: F401
    GeneratedScene, GeneratorConfig, ObjectInfo, SceneQuery,
)
from f3rm_ros.core.sim.families.sampling import _sample_params  # noqa: F401
from f3rm_ros.core.sim.families.scene import generate_scene, load_queries, write_generated
from f3rm_ros.core.sim.families.seeds import dev_seeds, eval_seeds, is_eval_seed, split_of

__all__ = [
    "GENERATOR_VERSION", "FAMILIES", "PALETTE", "Family", "GeneratorConfig", "SceneQuery", "ObjectInfo",
    "GeneratedScene", "generate_scene", "write_generated", "load_queries", "judge_query", "family_table",
    "find_witnesses",
    "is_eval_seed", "split_of", "dev_seeds", "eval_seeds", "GRIPPER_MAX_WIDTH_M",
]
