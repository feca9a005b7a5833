"""A refresh through the TrainFields action over real DDS (issue 18): the train node trains a tiny field on a scan,
frames of the changed scene are appended (scene_version 1, as a capture APPEND writes them), and a goal with
``refresh_from`` fine-tunes that field on them for a few steps with feedback; the refreshed checkpoint is announced
on ~/checkpoint, and the node's ``refresh.*`` parameters (RefreshConfig) are what it fine-tuned with; a refresh on
another dataset, without appended frames, or with malformed boxes is refused with the reason."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: run the tests through scripts/test.sh (env.sh)")

from rclpy.parameter import Parameter  # noqa: E402

from node_helpers import Spinner  # noqa: E402
from test_node_train import TINY  # noqa: E402

NS = "/t_refresh"


def test_refresh_goal(tmp_path):
    from f3rm_ros.core.checkpoint import load_checkpoint
    from f3rm_ros.core.config import from_dict
    from f3rm_ros.core.dataset import DatasetWriter
    from f3rm_ros.core.sim import resolve_scene
    from f3rm_ros.core.sim.camera import SimCamera
    from f3rm_ros.core.sim.export import SimDatasetConfig, render_dataset
    from f3rm_ros.core.sim.moves import move_object
    from f3rm_ros.core.sim.render import intrinsics_from_fov
    from f3rm_ros.core.sim.trajectory import TrajectoryConfig, scan_poses
    from f3rm_ros.ros.client import F3RMClient, RequestFailed
    from f3rm_ros.ros.train_node import TrainNode

    data, ckpt = tmp_path / "data", tmp_path / "ckpt"
    cfg = from_dict(SimDatasetConfig, {"width": 32, "height": 24, "write_depth": False,
                                       "trajectory": {"num_views": 10}})
    scene = resolve_scene("mug_bowl_box")
    render_dataset(scene, data / "other", cfg)
    render_dataset(scene, data / "scan", cfg)
    with rclpy.init():
        params = [Parameter("data_root", value=str(data)), Parameter("checkpoint_root", value=str(ckpt))]
        params += [Parameter(k, value=v) for k, v in TINY.items()]
        params += [Parameter("refresh.lr_scale", value=0.5)]  # a RefreshConfig setting reaches the fine-tuning
        node = TrainNode(namespace=NS, parameter_overrides=params)
        client = F3RMClient(namespace=NS)
        sp = Spinner(node, threads=6)
        try:
            first = client.train("scan", steps=3, timeout=120)
            print("first:", first)
            with pytest.raises(RequestFailed, match="no appended frames"):
                client.train("scan", steps=2, refresh_from=first.checkpoint_path, timeout=60)
            T = np.eye(4)
            T[:3, 3] = (-0.2, 0.2, 0.0)
            cam = SimCamera(move_object(scene, "bowl", T), intrinsics_from_fov(32, 24, 42.5),
                            scan_poses(TrajectoryConfig(num_views=3, seed=7)))
            w = DatasetWriter(data / "scan")
            for i in range(len(cam)):
                fr = cam.capture(i)
                w.add_frame(fr.image, fr.intrinsics, fr.T_world_cam, extra={"scene_version": 1}, labels=fr.label)
            boxes = [0.06, -0.16, 0.0, 0.22, 0.0, 0.08, -0.14, 0.04, 0.0, 0.02, 0.2, 0.08]
            for kw, match in (({"dataset": "other"}, "was trained on"), ({"changed_boxes": boxes[:5]}, "6 per box"),
                              ({"refresh_from": "/etc/passwd"}, "checkpoint root|outside")):
                args = {"dataset": "scan", "steps": 2, "refresh_from": first.checkpoint_path, "changed_boxes": boxes,
                        **kw}
                with pytest.raises(RequestFailed, match=match):
                    client.train(args.pop("dataset"), timeout=60, **args)
            fb: list = []
            t0 = time.perf_counter()
            res = client.train("scan", steps=40, refresh_from=first.checkpoint_path, changed_boxes=boxes,
                               feedback_cb=fb.append, timeout=120)
            print(f"refresh: {res} in {time.perf_counter() - t0:.1f} s, {len(fb)} feedback messages")
            assert res.steps_done == 40 and "refresh" in res.checkpoint_path and fb and fb[-1].total_steps == 40
            a, b = load_checkpoint(first.checkpoint_path), load_checkpoint(res.checkpoint_path)
            assert np.allclose(a["nerf_to_world"], b["nerf_to_world"])
            assert b["config"]["lr"] == pytest.approx(0.5 * a["config"]["lr"])  # refresh.lr_scale
            run = json.loads((Path(res.checkpoint_path).parent / "run.json").read_text())
            assert run["refresh"]["lr_scale"] == 0.5 and run["refresh"]["near_m"] == node.refresh_config.near_m
            assert node._last_checkpoint == res.checkpoint_path  # announced on ~/checkpoint for the query node
        finally:
            client.close()
            sp.stop()
            node.destroy_node()
