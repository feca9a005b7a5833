"""The train_scene workflow on a tiny synthetic-world dataset, on the CPU: the run folder layout, run.json,
one extractor_info shape for every feature source, resume continuing the step count, cancellation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from f3rm_ros.core.config import from_dict
from f3rm_ros.core.field_api import load_trained_field
from f3rm_ros.core.trainer import CheckpointError, TrainerConfig, load_checkpoint
from f3rm_ros.core.workflows.train_scene import (RUN_FORMAT, FeatureMaps, TrainSceneRequest, load_scene,
                                                 scene_features, train_scene)

# A tiny field for the CPU (the reference sizes are the config defaults).
TINY = {
    "rays_per_batch": 128, "eval_every": 0, "eval_num_images": 1, "checkpoint_every": 0, "progress_every": 1,
    "model": {"rgb": {"grid": {"num_levels": 4, "log2_hashmap_size": 12, "max_res": 64},
                      "appearance_embedding_dim": 4},
              "proposal_1": {"grid": {"num_levels": 2, "log2_hashmap_size": 10, "max_res": 32}},
              "proposal_2": {"grid": {"num_levels": 2, "log2_hashmap_size": 10, "max_res": 32}},
              "feature": {"grid": {"num_levels": 2, "log2_hashmap_size": 10, "max_res": 32}},
              "sampler": {"num_proposal_samples": [16, 8], "num_samples": 8}},
}
SHAPE_KEYS = {"name", "type", "feature_dim", "settings"}


def tiny(**kw) -> TrainerConfig:
    return from_dict(TrainerConfig, {**TINY, **kw})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 10-view 32x24 rendering of a built-in scene (colour + labels)."""
    from f3rm_ros.core.sim import resolve_scene
    from f3rm_ros.core.sim.export import SimDatasetConfig, render_dataset

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("scene") / "scan"
    cfg = from_dict(SimDatasetConfig, {"width": 32, "height": 24, "write_depth": False,
                                       "trajectory": {"num_views": 10}})
    render_dataset(resolve_scene("mug_bowl_box"), root, cfg)
    return root


def labels_features():
    return {"extractor": "labels", "labels": {"patch_size": 4}}


def test_run_folder_layout_run_json_and_extractor_info(data, tmp_path):
    run = tmp_path / "run"
    phases, lines, progress = [], [], []
    res = train_scene(TrainSceneRequest(data, num_steps=4, trainer=tiny(), features=labels_features(),
                                        feature_cache=tmp_path / "cache", device="cpu", run_dir=run,
                                        command="test", on_phase=phases.append, log=lines.append,
                                        on_progress=progress.append))
    files = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())
    print("phases", phases, "\nlog", lines, "\nfiles", files)
    assert phases == ["loading dataset", "extracting labels features", "training", "done"]
    assert any("10 frames" in s for s in lines) and any("feature maps" in s for s in lines)
    assert {"config.yaml", "run.json", "metrics.json", "field.ckpt", "checkpoints/step-0000004.ckpt"} <= set(files)
    assert any(f.startswith("eval/step-0000004-frame-") and f.endswith(".png") for f in files)
    assert [p.step for p in progress] == [1, 2, 3, 4] and res.last_progress is progress[-1]
    assert res.step == 4 and res.started and not res.stopped and res.trainer is None
    assert res.field == run / "field.ckpt" and res.checkpoint == run / "checkpoints" / "step-0000004.ckpt"
    assert 0 < res.train_s <= res.elapsed_s and res.features_s > 0

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["rays_per_batch"] == 128 and cfg["model"]["sampler"]["num_samples"] == 8
    info = json.loads((run / "run.json").read_text())
    print("run.json", {k: v for k, v in info.items() if k != "features"})
    assert info["format"] == RUN_FORMAT and info["version"] == 1 and info["command"] == "test"
    assert info["data_dir"] == str(data.resolve()) and info["downscale"] == 1 and info["device"] == "cpu"
    assert info["num_steps"] == 4 and info["num_frames"] == 10 and info["resumed_from"] is None
    assert info["num_train_frames"] + info["num_eval_frames"] == 10 and info["hashgrid_backends"]
    r = info["result"]
    assert r["step"] == 4 and r["stopped"] is False and r["field"] == str(run / "field.ckpt")
    assert r["checkpoint"] == str(res.checkpoint) and r["eval_psnr"] == pytest.approx(res.eval["psnr"])
    assert r["eval_feature_mse"] == pytest.approx(res.eval["feature_mse"]) and r["train_s"] > 0

    # one extractor_info: run.json, the result, both checkpoints and the loaded field agree
    ex = info["features"]
    assert SHAPE_KEYS <= set(ex) and ex["type"] == "labels" and ex["name"] == "labels" and ex["feature_dim"] == 64
    assert ex["settings"]["patch_size"] == 4 and "label_table" in ex
    assert json.loads(json.dumps(res.extractor_info)) == ex
    assert json.loads(json.dumps(load_checkpoint(res.checkpoint)["extractor_info"])) == ex
    field = load_trained_field(run / "field.ckpt")
    assert field.feature_dim == 64 and json.loads(json.dumps(field.extractor_info)) == ex
    from f3rm_ros.core.features import create_extractor

    assert create_extractor(field.extractor_info).encode_text(["mug"]).shape == (1, 64)  # the text side rebuilds


def test_extractor_info_one_shape_for_every_source(data):
    ds = load_scene(data)
    got = {"none": scene_features(None, ds), "synthetic": scene_features("synthetic", ds, synthetic_dim=5),
           "labels": scene_features(labels_features(), ds),
           "given": scene_features(FeatureMaps(torch.zeros(len(ds), 2, 3, 7), {"name": "random"}), ds)}
    for name, f in got.items():
        print(name, {k: v for k, v in f.info.items() if k != "label_table"})
        assert SHAPE_KEYS <= set(f.info), name
        assert f.info["feature_dim"] == (0 if f.maps is None else f.maps.shape[-1]), name
    assert got["none"].maps is None and got["none"].info["type"] == "none"
    assert got["synthetic"].info["type"] == "synthetic" and got["synthetic"].maps.shape[-1] == 5
    assert got["labels"].info["type"] == "labels" and got["labels"].maps.shape[:1] == (10,)
    assert got["given"].info["name"] == "random" and got["given"].info["feature_dim"] == 7


def test_resume_continues_the_step_count(data, tmp_path):
    run = tmp_path / "run"
    first = train_scene(TrainSceneRequest(data, num_steps=3, trainer=tiny(), features="synthetic", synthetic_dim=4,
                                          device="cpu", run_dir=run))
    assert first.step == 3
    lines: list = []
    res = train_scene(TrainSceneRequest(data, num_steps=5, trainer=TrainerConfig(), overrides={"eval_num_images": 2},
                                        features="synthetic", synthetic_dim=4, device="cpu", run_dir=run,
                                        resume="latest", log=lines.append, keep_trainer=True))
    print(lines)
    assert any("resumed from" in s and "at step 3" in s for s in lines)
    assert res.step == 5 and res.resumed_from == run / "checkpoints" / "step-0000003.ckpt"
    # the checkpoint's config (tiny networks, not the TrainerConfig() passed), with the override on top
    assert res.trainer.config.rays_per_batch == 128 and res.trainer.config.eval_num_images == 2
    info = json.loads((run / "run.json").read_text())
    assert info["resumed_from"] == str(res.resumed_from) and info["result"]["step"] == 5
    assert load_checkpoint(run / "checkpoints" / "step-0000005.ckpt")["step"] == 5
    assert info["features"]["type"] == "synthetic" and info["features"]["feature_dim"] == 4
    with pytest.raises(CheckpointError, match="model settings"):
        train_scene(TrainSceneRequest(data, num_steps=6, overrides={"model.sampler.num_samples": 4},
                                      features="synthetic", synthetic_dim=4, device="cpu", run_dir=run,
                                      resume=run))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train_scene(TrainSceneRequest(data, num_steps=6, device="cpu", run_dir=tmp_path / "empty", resume="latest"))


def test_cancel_stops_early_and_keeps_a_checkpoint(data, tmp_path):
    run = tmp_path / "run"
    seen: list = []
    res = train_scene(TrainSceneRequest(data, num_steps=100000, trainer=tiny(), device="cpu", run_dir=run,
                                        on_progress=seen.append, should_stop=lambda: bool(seen) and seen[-1].step >= 3))
    print(res.step, res.stopped, res.checkpoint)
    assert res.stopped and res.started and res.step == 3
    assert load_checkpoint(res.checkpoint)["step"] == 3 and load_checkpoint(res.checkpoint)["feature_dim"] == 0
    info = json.loads((run / "run.json").read_text())
    assert info["result"]["stopped"] is True and info["result"]["step"] == 3 and info["features"]["type"] == "none"
    # stopped before training: nothing trained, nothing written
    phases: list = []
    res = train_scene(TrainSceneRequest(data, num_steps=10, trainer=tiny(), device="cpu", run_dir=tmp_path / "r2",
                                        should_stop=lambda: True, on_phase=phases.append))
    assert res.stopped and not res.started and res.step == 0 and res.checkpoint is None
    assert not (tmp_path / "r2").exists() and "training" not in phases


def test_workflow_imports_no_ros_and_no_open3d():
    code = ("import sys\nimport f3rm_ros.core.workflows.train_scene\n"
            "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('rclpy', 'open3d', 'rosidl_runtime_py'))\n"
            "print(bad)\nsys.exit(1 if bad else 0)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stdout + r.stderr


def test_job_in_a_thread_progress_stop_and_errors(data, tmp_path):
    import time

    from f3rm_ros.core.workflows.train_job import TrainJob

    phases: list = []
    job = TrainJob(TrainSceneRequest(data, num_steps=100000, trainer=tiny(), device="cpu", run_dir=tmp_path / "run",
                                     on_phase=phases.append)).start()
    t0 = time.monotonic()
    while (job.progress is None or job.progress.step < 2) and time.monotonic() - t0 < 60:
        time.sleep(0.05)
    assert job.phase == "training" and not job.join(0)
    job.stop()
    assert job.join(60) and job.stopping and not job.error
    print(job.result.step, phases)
    assert job.result.stopped and 2 <= job.result.step < 100000 and job.result.checkpoint.is_file()
    assert phases == ["loading dataset", "training", "done"] and job.result.trainer is None
    bad = TrainJob(TrainSceneRequest(tmp_path / "no_such_dataset", num_steps=2, device="cpu")).start()
    assert bad.join(60) and bad.result is None and "no_such_dataset" in bad.error, bad.error
    print(bad.error)


def test_latest_dataset_newest_json_inside_the_root(tmp_path):
    import os

    from f3rm_ros.core.workflows.train_scene import latest_dataset

    root, outside = tmp_path / "root", tmp_path / "outside"
    for d, t in ((root / "a", 100), (root / "deep" / "er" / "b", 200), (outside, 300)):
        d.mkdir(parents=True)
        (d / "transforms.json").write_text("{}")
        os.utime(d / "transforms.json", (t, t))
    (root / "escape").symlink_to(outside)  # newest, but outside the root: ignored
    assert latest_dataset(root) == (root / "deep" / "er" / "b").resolve()
    assert latest_dataset(root, max_depth=1) == (root / "a").resolve()
    assert latest_dataset(tmp_path / "empty") is None
