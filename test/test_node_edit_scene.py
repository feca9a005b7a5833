"""``~/edit_scene`` of the query node over real DDS (issue 18): a query node (in this process, planning on the
analytic oracle field of mug_bowl_box) is told through ``F3RMClient.object_moved`` that the robot moved the bowl
(the simulator moved it too); the next ``query_grasps("bowl")`` passes the ground-truth check of the moved scene and
a query limited to the old place finds nothing; undo and removal; every bad request is
answered with a reason and changes nothing; a query node with no field (a child process) refuses edits; loading a
field clears the edits."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: run the tests through scripts/test.sh (env.sh)")

from node_helpers import start_node, stop_process  # noqa: E402

NS = "/t_edit"
WS = ((-0.35, -0.3, 0.005), (0.35, 0.3, 0.3))
FAST = {"planner.sources": "geometric", "planner.num_steps": 25, "planner.rotations_per_voxel": 4,
        "planner.geometric_max_seeds": 64, "planner.geometric_max_candidates": 256, "planner.geometric_verify": 16}


def top(grasps):
    return SimpleNamespace(found=bool(grasps), reason="", best=SimpleNamespace(T_world_gripper=grasps[0].pose)
                           if grasps else None)


def test_edit_scene_over_dds(tmp_path):
    import torch
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.parameter import Parameter

    from f3rm_ros.core.features.configs import LabelFeatureConfig
    from f3rm_ros.core.features.labels import LabelFeatureExtractor
    from f3rm_ros.core.grasp.evaluate import judge
    from f3rm_ros.core.grasp.oracle import OracleField
    from f3rm_ros.core.sim.grasp_check import GraspChecker
    from f3rm_ros.core.sim.moves import footprint, free_place, move_object
    from f3rm_ros.core.sim.scene import resolve_scene
    from f3rm_ros.ros.client import F3RMClient, RequestFailed
    from f3rm_ros.ros.query_node import QueryNode
    from f3rm_ros.srv import EditScene

    torch.set_num_threads(2)
    empty_root = tmp_path / "empty"
    empty_root.mkdir()
    # a second query node, in its own process, with no field at all
    bare = start_node("query_node", NS, {"checkpoint_root": str(empty_root), "tasks_dir": str(tmp_path / "t2"),
                                          "checkpoint_topic": f"{NS}/nobody/checkpoint", "restore_last_field": False,
                                          "device": "cpu"},
                      tmp_path / "bare.log")
    rclpy.init()
    scene = resolve_scene("mug_bowl_box")
    table, _ = scene.label_table()
    ex = LabelFeatureExtractor(LabelFeatureConfig(), table=table)
    field = OracleField.from_extractor(scene, ex, resolution=0.004)
    params = {"tasks_dir": str(tmp_path / "tasks"), "checkpoint_root": str(tmp_path), "checkpoint_topic": "",
              "cloud_cameras": 0, "device": "cpu", "use_default_tasks": False, "planner.workspace_min_m": list(WS[0]),
              "planner.workspace_max_m": list(WS[1]), **FAST}
    node = QueryNode("edit_query_node", namespace=NS,
                     parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    with node._rw.write():
        node.session.use_field(field, ex)
        node.session.planner.surface()
    ex_node = MultiThreadedExecutor(num_threads=node.executor_threads)
    ex_node.add_node(node)
    spin = threading.Thread(target=ex_node.spin, daemon=True)
    spin.start()
    client = F3RMClient(namespace=NS, query_node="edit_query_node")
    bare_client = F3RMClient(namespace=NS)
    try:
        g0 = client.query_grasps("bowl", timeout=120)
        ok, why = judge(GraspChecker(scene), top(g0), ("bowl",), None)
        assert ok, why
        _, radius = footprint(scene, "bowl")
        T = free_place(scene, "bowl", np.random.default_rng(3), min_shift_m=2 * radius + 0.03)
        moved = move_object(scene, "bowl", T)
        served = node.session

        # bad requests: a reason each, and nothing changes
        def refused(fn, match):
            with pytest.raises(RequestFailed, match=match):
                fn()
            assert node.session is served and not getattr(node.session.field, "edits", ())

        refused(lambda: client.object_moved("teapot", T), "not found")
        refused(lambda: client.object_moved("bowl", np.diag([1.5, 1.0, 1.0, 1.0])), "not orthonormal")
        off = T.copy()
        off[0, 3] += 2.0
        refused(lambda: client.object_moved("bowl", off), "off the workspace")
        refused(lambda: client.object_moved("bowl", T, frame_id="camera"), "world frame")
        refused(lambda: client.undo_edit(), "no edit to undo")
        refused(lambda: client.object_removed("", box=((0, 0, 0), (0.1, 0.0, 0.1))), "empty")
        raw = EditScene.Request(object="bowl")  # a quaternion of norm 2 (a client other than ours)
        raw.motion.header.frame_id = "world"
        raw.motion.pose.orientation.w = 2.0
        refused(lambda: client._edit(raw, 30), "norm")
        with pytest.raises(RequestFailed, match="no field is loaded"):
            bare_client.object_removed("bowl", timeout=60)

        # the move: edit, then the next query
        t0 = time.perf_counter()
        out = client.object_moved("bowl", T)
        print(f"edit over DDS: {time.perf_counter() - t0:.3f} s round trip, node {out.edit_time:.3f} s: {out.message}")
        assert out.num_edits == 1 and out.edit_time < 2.0
        g1 = client.query_grasps("bowl", timeout=120)
        ok, why = judge(GraspChecker(moved), top(g1), ("bowl",), None)
        assert ok, f"after the edit: {why}"
        c, r = footprint(scene, "bowl")
        with pytest.raises(RequestFailed, match="not found|no grasp|no surface"):
            client.query_grasps("bowl", workspace=((c[0] - r, c[1] - r, WS[0][2]), (c[0] + r, c[1] + r, 0.2)),
                                timeout=120)
        status = node._status()[2]
        assert status["edits"] == 1

        # undo, removal
        assert client.undo_edit().num_edits == 0
        assert client.object_removed("bowl").num_edits == 1
        with pytest.raises(RequestFailed, match="not found|no grasp|no surface"):
            client.query_grasps("bowl", timeout=120)
    finally:
        client.close()
        bare_client.close()
        ex_node.shutdown()
        spin.join(timeout=5)
        node.destroy_node()
        rclpy.shutdown()
        stop_process(bare)


def test_loading_a_field_clears_the_edits(tmp_path):
    """A load replaces the edited field by the new one and says that the edits are gone."""
    from rclpy.parameter import Parameter

    from f3rm_ros.core.edits import BoxRegion, EditedField, SceneEdit
    from f3rm_ros.ros.query_node import QueryNode

    from test_node_query import make_checkpoint

    ck = make_checkpoint(tmp_path / "run", "step-0000002.ckpt", steps=2)
    rclpy.init()
    node = QueryNode("clear_query_node", namespace=NS, parameter_overrides=[
        Parameter("checkpoint_root", value=str(tmp_path)), Parameter("checkpoint_topic", value=""),
        Parameter("device", value="cpu"), Parameter("cloud_cameras", value=0),
        Parameter("tasks_dir", value=str(tmp_path / "tasks"))])
    try:
        node.load_field(str(ck))
        edited = EditedField(node.session.field).with_edit(SceneEdit(BoxRegion((0, 0, 0), (0.1, 0.1, 0.1)), None))
        with node._rw.write():
            node.session.use_field(edited, node.session.encoder, "", node.session.checkpoint_path)
        msg = node.load_field(str(ck))
        assert "1 edit(s) of the previous field are cleared" in msg
        assert not isinstance(node.session.field, EditedField)
    finally:
        node.destroy_node()
        rclpy.shutdown()
