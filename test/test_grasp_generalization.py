"""Issue 17: each new path of the grasp planner doing its job where the planner before it failed.

On analytic oracle fields of small synthetic scenes (no training; grasp/oracle.py) with label features
and the default tasks, every outcome judged by the ground-truth checker (sim/grasp_check.py):

* a demonstration that cannot fit (the mug-by-rim pinch on a mug with a lid, or lying on its side): the
  rim task alone returns no grasp rather than one that fails, and the default planner falls back to a
  grasp that passes, saying where it came from;
* an object no demonstration covers (a bottle): no task fits, demonstrations alone give nothing, the
  zero-shot geometric candidates give a grasp that passes;
* a sub-millimetre penetration (a palm corner 0.8 mm into a neighbour): the final check with the
  clearance margin rejects it, the check without the margin accepts it;
* an object wider than the gripper opens: no grasp, and the reason says why;
* two touching objects: the grasp closes on the queried one;
* geometric candidates on a box and a can: widths and closing axes match the true geometry.

Settings: the reference planner defaults except the workspace box (the synthetic table) and 50 Adam
steps (CPU time). One torch thread (see test_grasp_success_oracle.py). Each oracle field is built once.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from f3rm_ros.core.features.configs import LabelFeatureConfig
from f3rm_ros.core.features.labels import LabelFeatureExtractor
from f3rm_ros.core.grasp import GraspPlanner, PlannerConfig, load_default_tasks
from f3rm_ros.core.grasp.geometric import GeometricSettings, geometric_candidates
from f3rm_ros.core.grasp.oracle import OracleField
from f3rm_ros.core.grasp.result import PlanOptions, PlanResult
from f3rm_ros.core.sim.grasp_check import GraspChecker, GraspCheckResult
from f3rm_ros.core.sim.scene import Scene, load_scene_text

STEPS = 50
WORKSPACE = ((-0.35, -0.3, 0.005), (0.35, 0.3, 0.3))


@dataclass
class World:
    """A scene, its oracle field, a planner on it and the ground-truth checker; plan results memoised
    (several tests look at the same query)."""

    scene: Scene
    planner: GraspPlanner
    checker: GraspChecker
    results: dict = field(default_factory=dict)

    def plan(self, text: str, **options) -> PlanResult:
        key = (text, tuple(sorted(options.items())))
        if key not in self.results:
            t0 = time.perf_counter()
            r = self.planner.plan(text, options=PlanOptions(**options))
            self.results[key] = r
            print(f"\n[{self.scene.name}] plan({text!r}, {options}) in {time.perf_counter() - t0:.1f} s: "
                  + describe(r))
        return self.results[key]

    def check(self, r: PlanResult) -> list[GraspCheckResult]:
        out = [self.checker.check(g.T_world_gripper) for g in r.grasps]
        for g, c in zip(r.grasps, out, strict=True):
            print(f"  #{g.rank} {g.source}{' ' + g.task if g.task else ''} score {g.score:.3f} "
                  f"antipodal {g.quality.get('antipodal_deg', float('nan')):.1f} deg -> {c.reason}")
        return out


def describe(r: PlanResult) -> str:
    verified = [(v["source"], v["task"], v["checked"], v["passed"], v["failures"]) for v in r.stats.get("verified", [])]
    return (f"found={r.found} source={r.source} task={r.task} reason={r.reason!r}; tasks fitting "
            f"{r.stats.get('tasks_fitting')}; verified (source, task, checked, passed, failures) {verified}")


def make_world(yaml_text: str) -> World:
    scene = load_scene_text(yaml_text)
    table, _ = scene.label_table()
    extractor = LabelFeatureExtractor(LabelFeatureConfig(), table=table)
    t0 = time.perf_counter()
    f = OracleField.from_extractor(scene, extractor, resolution=0.004)
    cfg = PlannerConfig(workspace_min_m=WORKSPACE[0], workspace_max_m=WORKSPACE[1], num_steps=STEPS)
    world = World(scene, GraspPlanner(f, extractor, load_default_tasks(), config=cfg), GraspChecker(scene))
    print(f"\nworld {scene.name}: oracle field {f.shape}, checker, {time.perf_counter() - t0:.1f} s")
    return world


def scene_yaml(name: str, objects: str) -> str:
    return f"name: {name}\nobjects:\n{objects}"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the planner's many small ops stall on a busy 2-core machine with two threads
    (test_grasp_success_oracle.py); restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --- scenes (one field each, built once) -----------------------------------------------------------
@pytest.fixture(scope="module")
def lidded_mug():  # the default mug (82 mm across: only its handle fits the gripper) with a closed top
    return make_world(scene_yaml("lidded_mug", """
  - name: mug
    mesh: {generator: mug, params: {lid: true}}
    pose: {position: [0.0, 0.0, 0.0], yaw_deg: 40}
"""))


@pytest.fixture(scope="module")
def narrow_lidded_mug():  # 64 mm across, closed top, no handle: only across the body (or the lid)
    return make_world(scene_yaml("narrow_lidded_mug", """
  - name: mug
    mesh: {generator: mug, params: {radius: 0.032, handle: false, lid: true}}
    pose: {position: [0.0, 0.0, 0.0]}
"""))


@pytest.fixture(scope="module")
def lying_mug():  # on its side, opening towards -y, handle up
    return make_world(scene_yaml("lying_mug", """
  - name: mug
    mesh: {generator: mug}
    pose: {position: [0.0, 0.0, 0.041], rpy_deg: [90, 0, 30]}
"""))


@pytest.fixture(scope="module")
def bottle():
    return make_world(scene_yaml("bottle", """
  - name: bottle
    mesh: {generator: bottle}
    pose: {position: [0.0, 0.0, 0.0]}
"""))


@pytest.fixture(scope="module")
def wide_box():  # 120 x 120 x 50 mm: wider than the 80 mm opening in every horizontal direction
    return make_world(scene_yaml("wide_box", """
  - name: box
    mesh: {generator: box, params: {size: [0.12, 0.12, 0.05]}}
    pose: {position: [0.0, 0.0, 0.0], yaw_deg: 20}
"""))


@pytest.fixture(scope="module")
def can_box():  # a can touching a box (the box's +-y faces at y = 0.033 and 0.083)
    return make_world(scene_yaml("can_box", """
  - name: can
    mesh: {generator: can}
    pose: {position: [0.0, 0.0, 0.0]}
  - name: box
    mesh: {generator: box}
    pose: {position: [0.0, 0.058, 0.0]}
"""))


# a 40 x 50 x 60 mm box at the origin and a taller crate diagonally behind it: a top-down grasp across the box's
# 50 mm (gripper at z = 0.04, palm bottom at z = 0.084) has its palm corner (x 31.5 mm, y -102 mm) 0.8 mm inside
# the crate's corner (x >= 30.7 mm, y <= -101.2 mm, top at z = 84.8 mm) in x, y and z
GRAZE_T = np.eye(4)
GRAZE_T[:3, 3] = (0.0, 0.0, 0.04)


@pytest.fixture(scope="module")
def graze():
    return make_world(scene_yaml("graze", """
  - name: box
    mesh: {generator: box, params: {size: [0.04, 0.05, 0.06]}}
    pose: {position: [0.0, 0.0, 0.0]}
  - name: crate
    category: crate
    mesh: {generator: box, params: {size: [0.05, 0.05, 0.0848]}}
    pose: {position: [0.0557, -0.1262, 0.0]}
"""))


def assert_source_consistent(w: World, r: PlanResult) -> None:
    """The top grasp says where it came from, and the result agrees."""
    best = r.best
    names = {t.name for t in w.planner.tasks}
    assert best.source in ("demo", "geometric")
    assert r.source == best.source
    if best.source == "geometric":
        assert best.task == "" and r.task is None
    else:
        assert best.task in names and r.task == best.task
    for key in ("antipodal_deg", "contact_width_m", "contact_similarity", "clearance_m", "quality"):
        assert math.isfinite(best.quality[key]), (key, best.quality)
    assert best.quality["antipodal_deg"] <= w.planner.config.antipodal_max_deg


# --- 1. a demonstration that cannot fit ------------------------------------------------------------
def test_closed_mug_rim_demo_cannot_fit_default_falls_back(lidded_mug):
    w = lidded_mug
    # the demonstrations alone, forced to the rim pinch: no grasp, or only grasps that really hold
    rim = w.plan("mug", task="grasp mug by rim", sources="demo")
    assert rim.stats["checked"] > 0, "the rim task's candidates never reached the final checks"
    gts = w.check(rim)
    assert all(c.success for c in gts), "the planner returned a rim grasp on a closed mug that does not hold"
    if not rim.found:
        assert "no grasp" in rim.reason
    # the default planner: the rim task is retrieved for "mug", yet the top grasp holds (handle or body)
    r = w.plan("mug")
    assert "grasp mug by rim" in r.stats["tasks_fitting"], r.stats.get("task_similarities")
    assert r.found, r.reason
    top = w.check(r)[0]
    assert top.success and top.object == "mug", top.reason
    assert_source_consistent(w, r)
    print(f"closed mug: top grasp from {r.source} ({r.task or 'no task'}) on the {top.part}")


def test_closed_mug_without_handle_geometric(narrow_lidded_mug):
    w = narrow_lidded_mug
    r = w.plan("mug", sources="geometric")
    print("geometric stats:", r.stats.get("geometric"))
    assert r.found, r.reason
    top = w.check(r)[0]
    assert top.success and top.object == "mug", top.reason
    assert r.source == "geometric"


def test_lying_mug_rim_demo_returns_only_grasps_that_hold(lying_mug):
    """On a lying mug the rim task's grasps with an outer pad on the curved wall's corner: the 3 x 7 pad rays read
    3-4 deg where the true normals are 27-30 deg off (their patch takes rays further in), so the final checks pass
    them again with 7 x 15 rays (``antipodal_check_grid``); without that check such grasps are returned."""
    w = lying_mug
    assert tuple(w.planner.config.antipodal_check_grid) == (7, 15)
    r = w.plan("mug", task="grasp mug by rim", sources="demo")
    assert r.stats["checked"] > 0 and r.found, r.reason
    gts = w.check(r)
    bad = [f"#{i}: {c.reason}" for i, c in enumerate(gts) if not c.success]
    assert not bad, bad
    for v in r.stats["verified"]:  # every candidate the dense estimate turned away is counted (not_antipodal)
        assert v["checked"] == v["passed"] + sum(v["failures"].values()), v
    cfg = w.planner.config
    w.planner.config = dataclasses.replace(cfg, antipodal_check_grid=(0, 0))
    try:
        coarse = w.planner.plan("mug", options=PlanOptions(task="grasp mug by rim", sources="demo"))
    finally:
        w.planner.config = cfg
    assert any(not c.success for c in w.check(coarse)), "the coarse estimate alone returned only holding grasps"


# --- 2. an object no demonstration covers ----------------------------------------------------------
def test_uncovered_object_geometric(bottle):
    w = bottle
    c = w.planner.config
    demo = w.plan("bottle", sources="demo")
    sims = demo.stats["task_similarities"]
    print("task retrieval scores for 'bottle':", {k: round(v, 3) for k, v in sims.items()})
    assert max(sims.values()) < c.task_fit_min, "a demonstration claims to fit a bottle"
    assert demo.stats["tasks_fitting"] == []
    assert not demo.found and demo.reason, "demonstrations alone returned a grasp on a bottle"
    r = w.plan("bottle")
    assert r.found, r.reason
    top = w.check(r)[0]
    assert top.success and top.object == "bottle", top.reason
    assert r.source == "geometric" and r.best.task == "" and r.task is None
    assert_source_consistent(w, r)


# --- 3. a sub-millimetre penetration ---------------------------------------------------------------
def test_submillimetre_penetration_rejected_by_clearance(graze):
    w = graze
    p = w.planner
    v = p.verifier()
    floor = p.floor_z()
    pts, sim = p.similarity_map("box")
    target = torch.as_tensor(pts[sim > 0.9])

    def as_torch(T):
        return (torch.as_tensor(T[None, :3, :3], dtype=torch.float32),
                torch.as_tensor(T[None, :3, 3], dtype=torch.float32))

    bad = GRAZE_T
    gt = w.checker.check(bad)
    print("penetrating pose, ground truth:", gt.reason, gt.collisions)
    assert not gt.success and gt.collisions and gt.collisions[0][1] == "crate"
    depth = gt.collisions[0][3]
    assert 0.0005 < depth <= 0.001, depth
    R, t = as_torch(bad)
    with_margin = bool(v.collides(R, t, floor, clearance=True)[0])
    without = bool(v.collides(R, t, floor, clearance=False)[0])
    verdict = v.verify(R, t, floor, target, refine=False)
    print(f"verifier: clearance {with_margin}, no margin {without}, verify {verdict.code}")
    assert with_margin, "the clearance check misses a 0.8 mm palm penetration"
    assert not without, "the check without margin already rejects it (this case no longer shows the margin)"
    assert verdict.code == ["collision"]
    # control: the same grasp 2.8 mm further from the crate holds, and the planner's checks accept it
    ok = bad.copy()
    ok[0, 3] -= 0.0028
    gt_ok = w.checker.check(ok)
    R, t = as_torch(ok)
    verdict_ok = v.verify(R, t, floor, target, refine=False)
    print("control pose:", gt_ok.reason, "verify", verdict_ok.code)
    assert gt_ok.success and gt_ok.object == "box"
    assert verdict_ok.code == [""], verdict_ok.code


# --- 4. wider than the gripper opens ---------------------------------------------------------------
def test_too_wide_no_grasp_with_reason(wide_box):
    w = wide_box
    r = w.plan("box")
    print("reason:", r.reason)
    assert not r.found, [c.reason for c in w.check(r)]
    assert "found, but no grasp" in r.reason
    assert any(k in r.reason for k in ("wider than the gripper", "finger would start inside"))


def test_no_mug_task_fits_a_box(wide_box):
    r = wide_box.plan("box")
    sims = r.stats["task_similarities"]
    print("task retrieval scores for 'box':", {k: round(v, 3) for k, v in sims.items()})
    assert r.stats["tasks_fitting"] == ["grasp box from above"]


# --- 5. the queried object, not its neighbour ------------------------------------------------------
@pytest.mark.parametrize("query, other", [("can", "box"), ("box", "can")])
def test_touching_neighbour_not_grasped(can_box, query, other):
    w = can_box
    r = w.plan(query)
    assert r.found, r.reason
    gts = w.check(r)
    assert gts[0].success and gts[0].object == query, gts[0].reason
    wrong = [f"#{i}: {c.reason}" for i, c in enumerate(gts) if c.object == other or "two objects" in c.reason]
    assert not wrong, wrong


# --- 6. geometric candidates on simple shapes ------------------------------------------------------
def _candidates(w: World, query: str):
    p = w.planner
    c = p.config
    pts, sim = p.similarity_map(query)
    seeds = torch.as_tensor(pts[sim > 0.9])
    st = GeometricSettings(max_width=p.gripper.max_opening - 2 * c.clearance_m, level=c.surface_alpha,
                           delta=c.voxel_size_m, step=c.antipodal_step_m, h=c.antipodal_normal_step_m,
                           approach_angles=1, depths=(0.0,), max_candidates=0)  # depth 0: t = the contacts' midpoint
    g = geometric_candidates(p.field, seeds, st, torch.Generator().manual_seed(0))
    print(f"{query}: {g.stats}")
    return g


def _halo(w: World) -> float:
    """How far outside the true surface the planner's surface (alpha = surface_alpha at delta = voxel_size_m)
    lies on the oracle field: density sigma_max * sigmoid(-sdf / softness) reaches -ln(1 - alpha) / delta there."""
    f, c = w.planner.field, w.planner.config
    d_level = -math.log(1.0 - c.surface_alpha) / c.voxel_size_m
    return f.softness * math.log(f.sigma_max / d_level - 1.0)


def test_geometric_pairs_on_a_box(graze):
    g = _candidates(graze, "box")  # 40 (x) by 50 (y) by 60 mm, axis-aligned at the origin
    halo = _halo(graze)
    assert g.R.shape[0] >= 50, g.stats
    y = g.R[:, :, 1].numpy()  # closing axes
    w = g.width.numpy()
    mid = g.t.numpy()
    face = np.abs(y[:, :2]).argmax(axis=1)  # 0: across x (faces +-x), 1: across y
    dev = np.degrees(np.arccos(np.clip(np.abs(y[np.arange(len(y)), face]), 0.0, 1.0)))
    true = np.where(face == 0, 0.040, 0.050)
    err = np.abs(w - true - 2 * halo)
    print(f"box: {len(w)} pairs, {np.mean(face == 0):.2f} across x; axis off the face normal: median "
          f"{np.median(dev):.1f}, 95% {np.percentile(dev, 95):.1f}, max {dev.max():.1f} deg; width - true width: "
          f"median {np.median(w - true) * 1000:.1f} mm (the planner's surface lies {halo * 1000:.1f} mm outside the "
          f"true one); error against true + 2 x that: 95% {np.percentile(err, 95) * 1000:.2f}, max "
          f"{err.max() * 1000:.2f} mm")
    assert {0, 1} <= set(face.tolist()), "pairs across only one of the two widths"
    assert np.median(dev) <= 1.0 and np.percentile(dev, 95) <= 3.0 and dev.max() <= 12.0, \
        "closing axes off the box's face normals"
    assert np.percentile(err, 95) <= 0.0025 and err.max() <= 0.004, f"widths off by up to {err.max() * 1000:.1f} mm"
    assert abs(np.median(w - true) - 2 * halo) <= 0.0015
    assert np.all(np.abs(mid[:, 0]) <= 0.021) and np.all(np.abs(mid[:, 1]) <= 0.026), "a pair outside the box"


def test_geometric_pairs_on_a_can(can_box):
    g = _candidates(can_box, "can")  # radius 33 mm, body from z 6 to 114 mm, axis at the origin; box touches +y
    r = 0.033 + _halo(can_box)  # the planner's surface: a cylinder that much wider
    y = g.R[:, :, 1].numpy()
    mid = g.t.numpy()
    w = g.width.numpy()
    body = (mid[:, 2] > 0.015) & (mid[:, 2] < 0.105)
    assert body.sum() >= 50, g.stats
    y, mid, w = y[body], mid[body], w[body]
    vertical = np.abs(y[:, 2])
    # the chord through the midpoint along the closing axis: its offset from the can's axis, its true length
    yh = y[:, :2] / np.linalg.norm(y[:, :2], axis=1, keepdims=True)
    off = np.abs(mid[:, 0] * yh[:, 1] - mid[:, 1] * yh[:, 0])
    chord = 2 * np.sqrt(np.clip(r ** 2 - off ** 2, 0.0, None))
    err = np.abs(w - chord)
    # angle between each contact's true (radial) normal and the closing axis
    a = mid[:, :2] + 0.5 * w[:, None] * yh
    b = mid[:, :2] - 0.5 * w[:, None] * yh
    cos_a = np.abs(np.sum(a / np.linalg.norm(a, axis=1, keepdims=True) * yh, axis=1))
    cos_b = np.abs(np.sum(b / np.linalg.norm(b, axis=1, keepdims=True) * yh, axis=1))
    ang = np.degrees(np.arccos(np.clip(np.minimum(cos_a, cos_b), -1, 1)))
    print(f"can: {len(w)} pairs on the body; axis vertical component max {vertical.max():.3f}; width error "
          f"against the chord of the planner's surface: 95% {np.percentile(err, 95) * 1000:.2f}, max "
          f"{err.max() * 1000:.2f} mm; true normals off the axis: max {ang.max():.1f} deg; widths (min, median, "
          f"max) {np.percentile(w, [0, 50, 100]).round(4)}")
    assert np.all(vertical <= math.sin(math.radians(5.0))), "a closing axis across the can's body not horizontal"
    assert np.percentile(err, 95) <= 0.0025 and err.max() <= 0.004, f"widths off by up to {err.max() * 1000:.1f} mm"
    assert np.all(ang <= 30.0 + 3.0), "a pair whose true normals are not opposite"
    assert np.all(mid[:, 1] < 0.033), "a pair reaching into the touching box"


def test_geometric_seeds_only_where_the_query_matches(can_box):
    """The language mask of a trained field also samples voxels of neighbours (their features match the query a
    little); geometric candidates started there only used up the verify budget (the contact test rejects them
    later: dev scenes had balls and jars with 'none of 64 candidates passes: off target'). Seeds are kept where
    the cosine reaches geometric_seed_min_relative x the contact test's bar."""
    from f3rm_ros.core.grasp.field_utils import query_features_chunked  # noqa: PLC0415
    from f3rm_ros.core.grasp.language import encode_texts  # noqa: PLC0415

    p = can_box.planner
    c = p.config
    pts, _ = p.surface()
    pos = encode_texts(p.text_encoder, ["can"], p.device)[0]
    f = query_features_chunked(p.field, pts, c.chunk_points)
    cos = (f / f.norm(dim=-1, keepdim=True)) @ pos
    on_box = pts[:, 1] > 0.036  # the box's side of the contact plane (y = 0.033) and a voxel of halo
    assert float(cos[on_box].max()) < 0.2 < float(cos[~on_box].median()), "scene not as the test assumes"
    ref = float(torch.quantile(cos[~on_box], 0.9))

    def centres(**over) -> tuple[np.ndarray, dict]:
        res = PlanResult(query="can")
        cfg = dataclasses.replace(c, **over)
        _, t, _ = p._geometric_candidates(pts, cos, ref, p.floor_z(), torch.Generator().manual_seed(0), cfg, res)
        return t.numpy(), res.stats

    t_all, st_all = centres(geometric_seed_min_relative=0.0)  # every surface voxel of the scene a seed
    t_can, st_can = centres()
    print(f"seeds all {st_all['geometric_seeds']} -> {st_can['geometric_seeds']}; box-side centres "
          f"{int((t_all[:, 1] > 0.04).sum())} of {len(t_all)} -> {int((t_can[:, 1] > 0.04).sum())} of {len(t_can)}")
    assert st_can["geometric_seeds"] == int((cos >= c.geometric_seed_min_relative * c.contact_min_relative * ref).sum())
    assert (t_all[:, 1] > 0.04).sum() > 0, "without the filter the box gets candidates (the case this guards)"
    assert len(t_can) and (t_can[:, 1] > 0.04).sum() == 0, "a geometric candidate started on the touching box"


def test_refusal_says_when_every_formed_pose_collides():
    """A query whose candidate poses were all formed but every one collides is told so (a crowded cup on the
    development seeds used to read "no candidate grasp could be formed")."""
    from collections import Counter  # noqa: PLC0415

    from f3rm_ros.core.grasp.verify import explain_failures  # noqa: PLC0415

    msg = explain_failures(Counter(), 0, too_wide=2, seeds=90, pairs=295, unfree=7080)
    assert msg.startswith("every one of the 7080 candidate grasp poses would touch the scene"), msg
    assert explain_failures(Counter(), 0) == "no candidate grasp could be formed"
    wide = explain_failures(Counter(), 0, too_wide=90, seeds=90, pairs=0, unfree=40)  # too wide wins: it is the cause
    assert "wider than the gripper opens" in wide, wide
