"""The query node's edits outlive it and feed a refresh (issue 18), over real DDS: the query node serves a tiny trained
field, the robot moves the bowl (``object_moved``, a box) and removes the mug; the node keeps its edit stack beside the
checkpoint (EditScene ``edits_path``). A restarted query node (same name) restores the field and its edits and says
so; the train node's ``TrainFields`` goal with only ``edits_path`` refreshes the field the edits were made on, on the
appended views, distrusting the edits' places; the refreshed field, announced, replaces it in the query node and
clears the edits (the old stack is removed); a corrupt stack is reported and the plain field served; bad goals (a stack
of another field, a corrupt one, one outside the root) are refused with the reason. Nodes in this process, DDS
between them and the client."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: run the tests through scripts/test.sh (env.sh)")

from rclpy.parameter import Parameter  # noqa: E402

from node_helpers import Spinner, wait_for  # noqa: E402
from test_node_train import TINY  # noqa: E402

NS = "/t_edit_store"
BOWL = ((0.06, -0.16, 0.0), (0.22, 0.0, 0.08))  # around the bowl of mug_bowl_box
MUG = ((-0.12, 0.06, 0.0), (0.0, 0.18, 0.1))


def _query_node(root):
    from f3rm_ros.ros.query_node import QueryNode

    params = {"checkpoint_root": str(root), "checkpoint_topic": f"{NS}/train_node/checkpoint", "device": "cpu",
              "cloud_cameras": 0, "use_default_tasks": False, "tasks_dir": str(root.parent / "tasks")}
    return QueryNode("query_node", namespace=NS, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])


def test_edits_saved_restored_and_refreshed_over_dds(tmp_path):
    from f3rm_ros.core.dataset import DatasetWriter
    from f3rm_ros.core.checkpoint import load_checkpoint
    from f3rm_ros.core.edit_store import checkpoint_live_edits, edit_stack_path, load_edit_stack
    from f3rm_ros.core.edits import EditedField
    from f3rm_ros.core.sim.camera import SimCamera
    from f3rm_ros.core.sim.moves import move_object
    from f3rm_ros.core.sim.render import intrinsics_from_fov
    from f3rm_ros.core.sim.scene import resolve_scene
    from f3rm_ros.core.sim.trajectory import TrajectoryConfig, scan_poses
    from f3rm_ros.core.workflows.edit_refresh import BAKED_EDITS_NAME, baked_edits
    from f3rm_ros.ros.client import F3RMClient, RequestFailed
    from f3rm_ros.ros.train_node import TrainNode
    from test_node_query import make_checkpoint

    root = tmp_path / "ckpt"
    run = root / "run1"
    F = make_checkpoint(run, "field.ckpt", steps=3)  # its dataset: run1/data
    other = root / "run2" / "field.ckpt"
    other.parent.mkdir()
    shutil.copy(F, other)
    T = np.eye(4)
    T[:3, 3] = (0.0, 0.2, 0.0)
    cam = SimCamera(move_object(move_object(resolve_scene("mug_bowl_box"), "bowl", T), "mug", np.eye(4)),
                    intrinsics_from_fov(32, 24, 42.5), scan_poses(TrajectoryConfig(num_views=3, seed=5)))
    w = DatasetWriter(run / "data")  # the views a capture APPEND adds after the move
    for i in range(len(cam)):
        fr = cam.capture(i)
        w.add_frame(fr.image, fr.intrinsics, fr.T_world_cam, extra={"scene_version": 1}, labels=fr.label)
    stack = F.with_name("field.ckpt.t_edit_store.query_node.edits.json")
    t0 = time.monotonic()
    with rclpy.init():
        query = _query_node(root)
        train = TrainNode(namespace=NS, parameter_overrides=[
            Parameter("data_root", value=str(run)), Parameter("checkpoint_root", value=str(root)),
            *(Parameter(k, value=v) for k, v in TINY.items())])
        client = F3RMClient(namespace=NS)
        sp = Spinner(query, train, threads=12)
        try:
            info = client.load_field(str(F))
            assert info.num_edits == 0 and not stack.exists()
            out = client.object_moved("", T, box=BOWL)
            print("move:", out.message, out.edits_path)
            assert out.num_edits == 1 and out.edits_path == str(stack) and stack.is_file()
            assert client.object_removed("", box=MUG).num_edits == 2
            out = client.undo_edit()
            assert out.num_edits == 1 and out.edits_path == str(stack)
            saved = load_edit_stack(stack, F)
            assert [e.label for e in saved.edits] == ["box"] and np.allclose(saved.edits[0].T_world_new_old, T)
            saved_text = stack.read_text()

            # the query node restarts (same name): the field it served comes back with its edit
            sp.executor.remove_node(query)
            query.destroy_node()
            query = _query_node(root)
            sp.add(query)
            wait_for(lambda: not query._starting and query.session.field is not None, 60, "the restore")
            field = query.session.field
            assert isinstance(field, EditedField) and len(field.edits) == 1
            assert np.allclose(field.edits[0].T_world_new_old, T) and stack.read_text() == saved_text
            info = client.load_field(str(F))  # asked to load it again: the same
            print("reload:", info.message)
            assert info.num_edits == 1 and "restored its 1 edit(s)" in info.message

            # refresh goals: bad ones are refused with the reason
            bad = root / "bad.edits.json"
            bad.write_text("{ not json")
            for kw, match in (({"edits_path": str(bad)}, "unreadable"),
                              ({"edits_path": str(stack), "refresh_from": str(other)}, "were made on"),
                              ({"edits_path": "/etc/passwd"}, "outside|checkpoint root")):
                with pytest.raises(RequestFailed, match=match):
                    client.train("data", steps=2, timeout=60, **kw)
            # the refresh of the edited field, from the stack alone
            res = client.train("data", steps=4, edits_path=str(stack), timeout=120)
            print("refresh:", res)
            run_json = json.loads((tmp_path / res.checkpoint_path).parent.joinpath("run.json").read_text())
            assert res.steps_done == 4 and run_json["refreshed_from"] == str(F.resolve())
            # through the edit (the default with edits alone): every old frame kept whole, the edit carried along
            assert run_json["edits"]["given"] == 1 and run_json["edits"]["through"]
            assert run_json["result"]["frames_old_masked"] == 0 and run_json["result"]["frames_old_dropped"] == 0
            assert baked_edits(res.checkpoint_path) == ()
            assert not (tmp_path / res.checkpoint_path).parent.joinpath(BAKED_EDITS_NAME).exists()
            assert [e.label for e in checkpoint_live_edits(load_checkpoint(res.checkpoint_path))[0]] == ["box"]
            # announced: the query node serves the refreshed field through its edit (not undoable, not in a stack
            # file of the node's: it is in the checkpoint); the old stack is gone
            wait_for(lambda: str(query.session.checkpoint_path) == res.checkpoint_path and not query._admin.locked(),
                     60, "the refreshed field to be loaded")
            served = query.session.field
            assert isinstance(served, EditedField) and served.fixed == 1 and not stack.exists()
            assert not edit_stack_path(res.checkpoint_path, query._edits_owner()).exists()
            info = client.load_field(res.checkpoint_path)  # asked again: it says what it carries
            assert info.num_edits == 1 and "carries 1 edit(s) from its refresh" in info.message, info.message
            info = client.load_field(str(F))  # loading the first field again: its edits were cleared
            assert info.num_edits == 0 and "restored its" not in info.message

            # a corrupt stack: said so, the plain field served
            assert client.object_moved("", T, box=BOWL).edits_path == str(stack)
            stack.write_text('{"format": "f3rm_ros.edits", "version": 1, "checkpoint": 7}')
            info = client.load_field(str(F))
            print("corrupt:", info.message)
            assert info.num_edits == 0 and "NOT restored" in info.message and "names no checkpoint" in info.message
            assert not isinstance(query.session.field, EditedField)
        finally:
            client.close()
            sp.stop()
            query.destroy_node()
            train.destroy_node()
    print(f"{time.monotonic() - t0:.1f} s")
