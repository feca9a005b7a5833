"""f3rm-train end to end on a tiny synthetic dataset written to disk: run folder contents, resume."""

import json
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_trainer import SMALL_MODEL, sphere_dataset  # noqa: E402

from f3rm_ros.cli.train import main  # noqa: E402
from f3rm_ros.core.dataset import write_dataset  # noqa: E402
from f3rm_ros.core.field_api import load_trained_field  # noqa: E402


def _small_flags():
    m = SMALL_MODEL
    return ["--rays_per_batch", "128", "--eval_num_images", "1", "--progress_every", "1",
            "--model.rgb.grid.num_levels", str(m["rgb"]["grid"]["num_levels"]),
            "--model.rgb.grid.log2_hashmap_size", "12", "--model.rgb.appearance_embedding_dim", "4",
            "--model.proposal_1.grid.log2_hashmap_size", "10", "--model.proposal_2.grid.log2_hashmap_size", "10",
            "--model.feature.grid.num_levels", "3", "--model.feature.grid.log2_hashmap_size", "10",
            "--model.feature.grid.features_per_level", "4",
            "--model.sampler.num_proposal_samples", "[16, 8]", "--model.sampler.num_samples", "8"]


def test_cli_train_and_resume(tmp_path, capsys):
    torch.set_num_threads(2)
    ds, _ = sphere_dataset(w=16, h=16)
    data = tmp_path / "data"
    write_dataset(data, [ds.get_image(i) for i in range(len(ds))], ds.intrinsics, ds.c2w)
    out = tmp_path / "run"
    rc = main([str(data), "--steps", "4", "--device", "cpu", "--out", str(out), "--features", "synthetic",
               "--synthetic-dim", "4", *_small_flags()])
    err = capsys.readouterr().err
    print(err)
    assert rc == 0 and "step 4/4" in err and "PSNR" in err and "ETA" in err
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["rays_per_batch"] == 128 and cfg["model"]["sampler"]["num_samples"] == 8
    run = json.loads((out / "run.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    ckpts = sorted((out / "checkpoints").glob("step-*.ckpt"))
    print("run.json result:", run["result"], "checkpoints:", [c.name for c in ckpts])
    assert run["result"]["step"] == 4 and ckpts[-1].name == "step-0000004.ckpt" and run["num_steps"] == 4
    assert run["features"]["type"] == "synthetic" and run["features"]["feature_dim"] == 4  # train_scene's info
    assert metrics["history"][-1]["step"] == 4 and list((out / "eval").glob("*.png"))
    assert (out / "field.ckpt").is_file() and load_trained_field(out / "field.ckpt").feature_dim == 4
    rc = main([str(data), "--steps", "6", "--device", "cpu", "--out", str(out), "--resume", "--features", "synthetic",
               "--synthetic-dim", "4"])
    err = capsys.readouterr().err
    print(err)
    assert rc == 0 and "resumed from" in err and "step 6/6" in err
    field = load_trained_field(sorted((out / "checkpoints").glob("step-*.ckpt"))[-1])
    assert field.feature_dim == 4 and field.extractor_info["name"] == "synthetic"
    # a bad setting is a clean error, not a traceback
    rc = main([str(data), "--out", str(tmp_path / "bad"), "--rays_per_batch", "-5"])
    err = capsys.readouterr().err
    print(err)
    assert rc == 2 and "rays_per_batch" in err
