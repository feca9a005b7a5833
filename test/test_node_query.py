"""query_node over real DDS (node in a child process, F3RMClient here): every bad request is answered
with a reason while the node keeps serving; loading from the train node's checkpoint topic; record_demo
writes task files atomically under the tasks folder; concurrent requests; transient-local visuals.

The field is a tiny label-feature field of the built-in scene mug_bowl_box, checkpointed after a few
training steps (it is not good enough to find a mug: the planning itself is tested by the end-to-end
test and the planner's own tests); the grasps' source and quality terms are checked on a second query node
in this process that plans on the analytic oracle field of the same scene."""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: run the tests through scripts/test.sh (env.sh)")

from rclpy.node import Node  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from node_helpers import start_node, stop_process, wait_for  # noqa: E402

NS = "/t_query"

TINY_MODEL = {
    "rgb": {"grid": {"num_levels": 4, "log2_hashmap_size": 12, "max_res": 64}, "appearance_embedding_dim": 4},
    "proposal_1": {"grid": {"num_levels": 2, "log2_hashmap_size": 10, "max_res": 32}},
    "proposal_2": {"grid": {"num_levels": 2, "log2_hashmap_size": 10, "max_res": 32}},
    "feature": {"grid": {"num_levels": 2, "log2_hashmap_size": 10, "max_res": 32}},
    "sampler": {"num_proposal_samples": [16, 8], "num_samples": 8},
}
# small planner so that a query that gets as far as planning stays quick on the CPU
PLANNER = {"planner.num_steps": 5, "planner.rotations_per_voxel": 2, "planner.min_poses": 64,
           "planner.outlier_neighbors": 8, "planner.voxel_size_m": 0.02, "planner.downsample_voxel_m": 0.02,
           "cloud_cameras": 2, "device": "cpu"}


def make_checkpoint(folder: Path, name: str, steps: int = 3) -> Path:
    """A tiny label-feature field of mug_bowl_box trained for ``steps`` steps, saved as ``folder/name``."""
    import torch

    from f3rm_ros.core.config import from_dict
    from f3rm_ros.core.dataset import load_dataset
    from f3rm_ros.core.features import create_extractor, extract_dataset_features
    from f3rm_ros.core.sim import resolve_scene
    from f3rm_ros.core.sim.export import SimDatasetConfig, render_dataset
    from f3rm_ros.core.trainer import Trainer, TrainerConfig

    torch.set_num_threads(1)
    data = folder / "data"
    if not (data / "transforms.json").exists():
        render_dataset(resolve_scene("mug_bowl_box"), data,
                       from_dict(SimDatasetConfig, {"width": 32, "height": 24, "write_depth": False,
                                                    "trajectory": {"num_views": 8}}))
    ds = load_dataset(data)
    ex = create_extractor({"extractor": "labels", "labels": {"dataset": str(data), "patch_size": 4}})
    fm = extract_dataset_features(ex, ds, folder / "cache")
    cfg = from_dict(TrainerConfig, {"rays_per_batch": 64, "eval_every": 0, "eval_num_images": 1,
                                    "checkpoint_every": 0, "model": TINY_MODEL})
    tr = Trainer(cfg, ds, fm, "cpu", extractor_info=ex.cache_key())
    tr.train(steps)
    return tr.save_checkpoint(folder / name)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Roots, a checkpoint, the query node in a child process and a client + publisher node here."""
    from rclpy.executors import SingleThreadedExecutor

    from f3rm_ros.ros.client import F3RMClient

    root = tmp_path_factory.mktemp("query")
    ckroot, tasks, outside = root / "ckpt", root / "tasks", root / "outside"
    for d in (ckroot / "run1", tasks, outside):
        d.mkdir(parents=True)
    t0 = time.perf_counter()
    good = make_checkpoint(ckroot / "run1", "step-0000003.ckpt")
    print(f"tiny checkpoint in {time.perf_counter() - t0:.1f} s: {good}")
    (ckroot / "corrupt.ckpt").write_bytes(os.urandom(2048))
    (ckroot / "truncated.ckpt").write_bytes(good.read_bytes()[:5000])
    (outside / "secret.ckpt").write_bytes(good.read_bytes())
    (ckroot / "escape").symlink_to(outside)
    params = {"checkpoint_root": str(ckroot), "tasks_dir": str(tasks),
              "checkpoint_topic": f"{NS}/train_node/checkpoint", **PLANNER}
    proc = start_node("query_node", NS, params, root / "query_node.log")
    rclpy.init()
    client = F3RMClient(namespace=NS)
    pub_node = Node("fake_train_node", namespace=NS)
    latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE)
    pub = pub_node.create_publisher(String, "train_node/checkpoint", latched)
    ex = SingleThreadedExecutor()
    ex.add_node(pub_node)
    stop = threading.Event()
    spin = threading.Thread(target=lambda: [ex.spin_once(timeout_sec=0.1) for _ in iter(stop.is_set, True)],
                            daemon=True)
    spin.start()
    yield {"proc": proc, "client": client, "pub": pub, "good": good, "root": root, "ckroot": ckroot,
           "tasks": tasks, "outside": outside}
    stop.set()
    spin.join(timeout=5)
    client.close()
    pub_node.destroy_node()
    rclpy.shutdown()
    code = stop_process(proc)
    print("query node log tail:\n" + "".join((root / "query_node.log").read_text().splitlines(True)[-15:]))
    assert code in (0, -2), f"query node exited with {code}"


def refused(fn, *args, want: str, **kw) -> str:
    """Call a client method, expect RequestFailed whose reason contains ``want``; return the reason."""
    from f3rm_ros.ros.client import RequestFailed

    with pytest.raises(RequestFailed) as e:
        fn(*args, **kw)
    print(f"  refused ({want!r}): {e.value.reason[:160]}")
    assert want.lower() in e.value.reason.lower(), e.value.reason
    return e.value.reason


def test_query_node_refusals_and_serving(env):
    c, proc = env["client"], env["proc"]
    t0 = time.perf_counter()
    # 1. before any field is loaded
    refused(c.query_grasps, "mug handle", want="no field is loaded", timeout=60)
    print(f"first answer after {time.perf_counter() - t0:.1f} s (node start included)")
    refused(c.query_similarity, "bowl", want="no field is loaded")
    refused(c.record_demo, "mug_handle", np.eye(4), want="no field is loaded")

    # 2. checkpoints: outside the root, missing, corrupt, truncated; then a good one
    refused(c.load_field, "/etc/passwd", want="outside the allowed root")
    refused(c.load_field, str(env["outside"] / "secret.ckpt"), want="outside the allowed root")
    refused(c.load_field, "../outside/secret.ckpt", want="outside the allowed root")
    refused(c.load_field, "escape/secret.ckpt", want="outside the allowed root")  # symlink out of the root
    refused(c.load_field, "nope/step-1.ckpt", want="not found")
    refused(c.load_field, "corrupt.ckpt", want="cannot load checkpoint")
    refused(c.load_field, "truncated.ckpt", want="cannot load checkpoint")
    t1 = time.perf_counter()
    info = c.load_field(str(env["good"]), timeout=120)
    print(f"load_field {time.perf_counter() - t1:.2f} s: {info.message}")
    assert info.checkpoint_path == str(env["good"]) and info.feature_dim > 0 and info.extractor == "labels"
    refused(c.load_field, "corrupt.ckpt", want="cannot load")  # a failed load keeps the loaded field
    refused(c.query_grasps, "", want="empty query")

    # 3. query texts and boxes
    refused(c.query_grasps, "", want="empty query")
    refused(c.query_grasps, "   \t ", want="empty query")
    refused(c.query_grasps, "mug " * 2500, want="10000 characters")
    refused(c.query_similarity, "x" * 10000, want="10000 characters")
    refused(c.query_grasps, "mug", negatives=["object", ""], want="empty negative phrase")
    refused(c.query_grasps, "mug", workspace=((0.5, 0, 0), (0.1, 1, 1)), want="max must exceed min")
    refused(c.query_grasps, "mug", workspace=((0, 0, 0), (0, 1, 1)), want="max must exceed min")
    refused(c.query_grasps, "mug", workspace=((math.nan, 0, 0), (1, 1, 1)), want="non-finite")
    refused(c.query_grasps, "mug", workspace=((0, 0, 0), (math.inf, 1, 1)), want="non-finite")
    refused(c.query_grasps, "mug", workspace=((-100, -100, -100), (100, 100, 100)), want="too large")
    refused(c.query_grasps, "mug", task="no such task", want="unknown task")
    refused(c.query_similarity, "bowl", min_similarity=math.nan, want="min_similarity")
    refused(c.query_similarity, "bowl", min_similarity=2.0, want="min_similarity")
    # a query that reaches the planner: answered (grasps or the planner's reason), never an internal error
    t2 = time.perf_counter()
    try:
        g = c.query_grasps("mug handle", timeout=120)
        print(f"query on the tiny field: {len(g)} grasps")
    except Exception as e:  # noqa: BLE001 - RequestFailed expected on an untrained field
        assert "internal error" not in str(e), str(e)
        print(f"query on the tiny field: {e}")
    print(f"query latency (tiny field, small planner): {time.perf_counter() - t2:.2f} s")

    # 4. demonstrations
    bad_pose = np.eye(4)
    refused(c.record_demo, "../evil", bad_pose, want="not allowed")
    refused(c.record_demo, "a" * 65, bad_pose, want="not allowed")
    refused(c.record_demo, "mug_handle", bad_pose, frame_id="map", want="world frame")
    refused(c.record_demo, "mug_handle", bad_pose, frame_id="", want="world frame")
    nan_pose = np.eye(4)
    nan_pose[0, 3] = math.nan
    refused(c.record_demo, "mug_handle", nan_pose, want="non-finite")
    T = np.eye(4)
    T[:3, 3] = (0.0, 0.0, 0.05)
    r1 = c.record_demo("my_task", T, append=False)
    r2 = c.record_demo("my_task", T @ np.diag([1, -1, -1, 1.0]), append=True)
    print(f"record_demo: {r1.message} / {r2.message}")
    assert (r1.num_demos, r2.num_demos) == (1, 2) and Path(r2.task_path) == env["tasks"] / "my_task.npz"
    from f3rm_ros.core.grasp.task import load_task

    task = load_task(r2.task_path)
    assert task.num_demos == 2 and task.extractor_info.get("type") == "labels"
    assert not [p for p in env["tasks"].iterdir() if p.name.startswith(".")], "temporary files left behind"
    assert c.record_demo("my_task", T, append=False).num_demos == 1  # replace

    assert proc.poll() is None, "the query node died"


def test_concurrent_requests_all_answered(env):
    """Twelve requests in flight at once (bad and good mixed): each gets its own answer; the node lives."""
    from f3rm_ros.srv import LoadField, QueryGrasps, QuerySimilarity

    c = env["client"]
    reqs = []
    for i in range(12):
        k = i % 4
        if k == 0:
            reqs.append((QueryGrasps, "query_grasps", QueryGrasps.Request(text=""), "empty query"))
        elif k == 1:
            reqs.append((QueryGrasps, "query_grasps", QueryGrasps.Request(text="y" * 10000), "10000 characters"))
        elif k == 2:
            reqs.append((LoadField, "load_field", LoadField.Request(checkpoint_path="/etc/hosts"), "outside"))
        else:
            reqs.append((QuerySimilarity, "query_similarity",
                         QuerySimilarity.Request(text="bowl", min_similarity=-1.0), "min_similarity"))
    futures = []
    t0 = time.perf_counter()
    for srv, leaf, req, want in reqs:
        cl = c._client(srv, c.name("query_node", leaf))
        assert cl.wait_for_service(timeout_sec=20)
        futures.append((cl.call_async(req), want))
    deadline = time.monotonic() + 60
    while not all(f.done() for f, _ in futures) and time.monotonic() < deadline:
        c._executor.spin_once(timeout_sec=0.1)
    print(f"{len(futures)} concurrent requests answered in {time.perf_counter() - t0:.2f} s")
    for f, want in futures:
        assert f.done(), "a request was not answered"
        r = f.result()
        assert not r.success and want in r.message, r.message
    assert env["proc"].poll() is None
    assert c.load_field(str(env["good"]), timeout=60).feature_dim > 0  # still serving


def test_checkpoint_topic_and_latched_visuals(env):
    """A checkpoint announced on the train node's topic is loaded (a bad one is refused and the node lives);
    the scene cloud, heat map and grasp markers reach a subscriber that joins late (transient-local)."""
    from sensor_msgs.msg import PointCloud2
    from visualization_msgs.msg import MarkerArray

    from f3rm_ros.ros.client import RequestFailed

    c = env["client"]
    second = env["ckroot"] / "run2"
    second.mkdir()
    newer = second / "step-0000003.ckpt"
    newer.write_bytes(env["good"].read_bytes())
    env["pub"].publish(String(data=str(env["outside"] / "secret.ckpt")))  # refused: outside the root
    time.sleep(1.0)
    env["pub"].publish(String(data=str(newer)))
    t0 = time.monotonic()

    def loaded_newer():
        try:  # QuerySimilarity names no path; the diagnostics say which checkpoint is loaded
            from diagnostic_msgs.msg import DiagnosticArray

            msg = c.wait_for_message(DiagnosticArray, "/diagnostics", timeout=3.0,
                                     predicate=lambda m: any(s.name.endswith("query_node") for s in m.status))
            st = [s for s in msg.status if s.name.endswith("query_node")][0]
            return {kv.key: kv.value for kv in st.values}.get("checkpoint") == str(newer)
        except Exception:  # noqa: BLE001
            return False

    wait_for(loaded_newer, 60, "the query node to load the announced checkpoint", poll=0.2)
    print(f"checkpoint from the topic loaded after {time.monotonic() - t0:.1f} s")
    try:
        c.query_grasps("bowl", timeout=120)
    except RequestFailed as e:
        print("query:", e.reason)
    cloud = c.wait_for_message(PointCloud2, f"{NS}/query_node/scene_cloud", timeout=10, transient_local=True)
    heat = c.wait_for_message(PointCloud2, f"{NS}/query_node/heatmap", timeout=10, transient_local=True)
    markers = c.wait_for_message(MarkerArray, f"{NS}/query_node/grasp_markers", timeout=10, transient_local=True)
    print(f"late joiner got: scene cloud {cloud.width} points ({[f.name for f in cloud.fields]}), heat map "
          f"{heat.width} points, {len(markers.markers)} markers")
    assert cloud.header.frame_id == heat.header.frame_id == "world"
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "rgb"]
    assert [f.name for f in heat.fields] == ["x", "y", "z", "similarity", "rgb"]
    assert markers.markers and markers.markers[0].action == markers.markers[0].DELETEALL
    assert env["proc"].poll() is None


def test_cli_on_the_client(env):
    """`f3rm-ros query/similarity/load` in another process: the node's reason on stderr, exit status 1."""
    import subprocess
    import sys

    def cli(*args):
        r = subprocess.run([sys.executable, "-m", "f3rm_ros.cli.ros", *args, "--namespace", NS, "--timeout", "60"],
                           capture_output=True, text=True, timeout=120)
        print(f"f3rm-ros {' '.join(args)[:40]!r} -> {r.returncode}: {(r.stdout + r.stderr).strip()[-200:]}")
        return r

    r = cli("query", "")
    assert r.returncode == 1 and "refused: empty query" in r.stderr
    r = cli("load", "/etc/passwd")
    assert r.returncode == 1 and "outside the allowed root" in r.stderr
    r = cli("load", str(env["good"]))
    assert r.returncode == 0 and "loaded" in r.stdout
    r = cli("similarity", "bowl", "--min", "5")
    assert r.returncode == 1 and "min_similarity" in r.stderr
    r = subprocess.run([sys.executable, "-m", "f3rm_ros.cli.ros", "query", "mug", "--namespace", "/nobody_here",
                        "--timeout", "2"], capture_output=True, text=True, timeout=60)
    print("no node:", r.returncode, r.stderr.strip())
    assert r.returncode == 2 and "not available" in r.stderr


def test_grasps_carry_their_source_and_quality_terms(env, tmp_path):
    """A query node (in this process, real DDS) planning on the analytic oracle field of mug_bowl_box, which a
    few training steps cannot replace: each returned grasp says where it came from and its quality terms, the
    heat map is the planner's surface, and the markers are coloured by source."""
    import torch
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter
    from visualization_msgs.msg import MarkerArray

    from f3rm_ros.core.features.configs import LabelFeatureConfig
    from f3rm_ros.core.features.labels import LabelFeatureExtractor
    from f3rm_ros.core.grasp.oracle import OracleField
    from f3rm_ros.core.sim.scene import resolve_scene
    from f3rm_ros.ros.client import F3RMClient
    from f3rm_ros.ros.query_node import QueryNode
    from f3rm_ros.ros.visuals import SOURCE_COLORS

    torch.set_num_threads(1)
    scene = resolve_scene("mug_bowl_box")
    table, _ = scene.label_table()
    ex = LabelFeatureExtractor(LabelFeatureConfig(), table=table)
    field = OracleField.from_extractor(scene, ex, resolution=0.006)
    params = {"tasks_dir": str(tmp_path), "checkpoint_topic": "", "cloud_cameras": 0, "device": "cpu",
              "planner.num_steps": 20, "planner.workspace_min_m": [-0.35, -0.3, 0.005],
              "planner.workspace_max_m": [0.35, 0.3, 0.3]}
    node = QueryNode("oracle_query_node", namespace=NS,
                     parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    with node._rw.write():
        node.session.use_field(field, ex)
    ex_node = MultiThreadedExecutor()
    ex_node.add_node(node)
    spin = threading.Thread(target=ex_node.spin, daemon=True)
    spin.start()
    client = F3RMClient(namespace=NS, query_node="oracle_query_node")
    try:
        t0 = time.perf_counter()
        grasps = client.query_grasps("mug handle", max_grasps=3, timeout=120)
        print(f"oracle mug handle over DDS: {time.perf_counter() - t0:.1f} s")
        for g in grasps:
            print(f"  #{g.rank} {g.score:.3f} {g.source} {g.task!r} {g.quality}")
        assert grasps and [g.rank for g in grasps] == list(range(len(grasps)))
        for g in grasps:
            assert g.source in ("demo", "geometric") and (g.task != "") == (g.source == "demo")
            q = g.quality
            assert set(q) == {"antipodal_deg", "contact_width_m", "contact_similarity", "clearance_m", "quality"}
            assert 0.0 <= q["antipodal_deg"] <= node.planner_cfg.antipodal_max_deg
            assert 0.0 < q["contact_width_m"] < 0.08 and 0.0 < q["quality"] <= 1.0
            assert q["clearance_m"] == pytest.approx(node.planner_cfg.clearance_m, rel=1e-6)
            assert g.language_similarity > 0.5
        assert node.session.planner.config is node.planner_cfg, "a request must not swap the planner's config"
        markers = client.wait_for_message(MarkerArray, f"{NS}/oracle_query_node/grasp_markers", timeout=10,
                                          transient_local=True)
        best = [m for m in markers.markers if m.ns == "grasps/best" and m.type == m.CUBE]
        rgba = (best[0].color.r, best[0].color.g, best[0].color.b, best[0].color.a)
        assert rgba == pytest.approx(SOURCE_COLORS[grasps[0].source][0], abs=1e-6)
        assert any(grasps[0].source in m.text for m in markers.markers if m.ns == "grasps/scores")
        heat = client.query_similarity("mug handle", timeout=60)
        assert len(heat.similarity) > 100 and heat.max_similarity > 0.9
    finally:
        client.close()
        ex_node.shutdown()
        spin.join(timeout=5)
        node.destroy_node()
