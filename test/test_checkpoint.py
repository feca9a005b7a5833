"""The checkpoint format (``f3rm_ros.core.checkpoint``): a file written before the trainer was split into parts
still loads, queries and resumes the same; the keys of a file; and the query side (``field_api``, the grasp
planner) loads and renders fields without importing any training module."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from f3rm_ros.core.checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, TRAINING_STATE_KEYS, CheckpointError,
                                      load_checkpoint, model_config)
from f3rm_ros.core.config import from_dict
from f3rm_ros.core.field_api import load_trained_field
from f3rm_ros.core.trainer import Trainer, TrainerConfig

from test_trainer_graphs import tiny_config, tiny_dataset

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "test" / "fixtures" / "field_v1.ckpt"  # written by the trainer before the split (see the json)
EXPECTED = json.loads((ROOT / "test" / "fixtures" / "field_v1.json").read_text())
TRAINING_MODULES = ("f3rm_ros.core.trainer", "f3rm_ros.core.training", "f3rm_ros.core.fields.losses",
                    "f3rm_ros.core.feature_targets", "f3rm_ros.core.workflows")

FIELD_KEYS = ["format", "version", "step", "config", "model", "num_train_images", "feature_dim", "hashgrid_backends",
              "nerf_to_world", "extractor_info", "cameras", "dataset_root", "metrics"]


def test_checkpoint_from_before_the_split_loads_queries_and_resumes():
    torch.set_num_threads(1)  # as when the fixture was written
    ck = load_checkpoint(FIXTURE)
    assert ck["format"] == CHECKPOINT_FORMAT and ck["version"] == CHECKPOINT_VERSION == 1
    assert list(ck) == FIELD_KEYS[:5] + list(TRAINING_STATE_KEYS[:-1]) + FIELD_KEYS[5:] + ["pixel_error"]
    field = load_trained_field(FIXTURE)
    pts = torch.tensor(EXPECTED["points"])
    dens, feats = field.query_density(pts), field.query_features(pts)
    print(f"fixture: step {ck['step']}, extractor {field.extractor_info}, density {dens.tolist()}")
    assert torch.allclose(dens, torch.tensor(EXPECTED["density"]), rtol=1e-5, atol=1e-7)
    assert torch.allclose(feats, torch.tensor(EXPECTED["features"]), rtol=1e-5, atol=1e-7)
    assert field.extractor_info == {"name": "micro", "type": "test"} and len(field.cameras["intrinsics"]) == 5
    ds, fm = tiny_dataset(dim=4)
    tr = Trainer.from_checkpoint(FIXTURE, ds, fm)
    assert tr.step == 3 and torch.equal(tr.state_dict()["pixel_error"], ck["pixel_error"])
    assert ck["pixel_error"].abs().sum() > 0
    got, want = tr.train_step(), EXPECTED["next_step_losses"]
    print("next step after resuming the old file:", got, "\nas the old trainer took it:        ", want)
    assert list(got) == list(want)
    assert all(abs(got[k] - want[k]) <= 1e-5 * abs(want[k]) + 1e-9 for k in want)


def test_checkpoint_keys_and_model_config(tmp_path):
    ds, fm = tiny_dataset()
    tr = Trainer(tiny_config(), ds, fm)
    tr.train_step()
    full = load_checkpoint(tr.save_checkpoint(tmp_path / "full.ckpt"))
    small = load_checkpoint(tr.save_checkpoint(tmp_path / "field.ckpt", include_optimizer=False))
    # no error map: no pixel_error
    assert list(full) == FIELD_KEYS[:5] + list(TRAINING_STATE_KEYS[:-1]) + FIELD_KEYS[5:]
    assert list(small) == FIELD_KEYS
    assert model_config(small) == from_dict(TrainerConfig, small["config"]).model == tr.config.model
    raw = dict(small)
    raw["format"] = "something else"
    torch.save(raw, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not an f3rm_ros field checkpoint"):
        load_checkpoint(tmp_path / "other.ckpt")


def _import_check(code: str) -> subprocess.CompletedProcess:
    prog = (f"import sys\n{code}\n"
            f"bad = sorted(k for k in sys.modules if k.startswith({TRAINING_MODULES!r}))\n"
            "print('training modules imported:', bad)\n"
            "sys.exit(1 if bad else 0)\n")
    return subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_query_side_imports_no_training_module():
    """In a fresh interpreter: import the query API, the planner and the query session, load a field, query,
    render and build a point cloud (the render used to import the trainer lazily); no training module may be in
    ``sys.modules``."""
    r = _import_check(
        "import torch\n"
        "import f3rm_ros.core.field_api as api\n"
        "import f3rm_ros.core.grasp, f3rm_ros.core.grasp.planner, f3rm_ros.core.grasp.session\n"
        "import f3rm_ros.core.fields.protocol\n"
        f"f = api.load_trained_field({str(FIXTURE)!r})\n"
        "f.query_density(torch.zeros(4, 3)); f.query_features(torch.zeros(4, 3))\n"
        "c, K = f.cameras['c2w_world_opencv'][0], f.cameras['intrinsics'][0]\n"
        "out = f.render(c, K)\n"
        "f.point_cloud([(c, K)], min_accumulation=0.0)\n"
        "print('rendered', tuple(out['rgb'].shape))\n")
    print(r.stdout, r.stderr[-2000:])
    assert r.returncode == 0 and "rendered (12, 16, 3)" in r.stdout
    # the check itself can fail: importing the trainer is caught
    r = _import_check("import f3rm_ros.core.field_api\nimport f3rm_ros.core.trainer\n")
    assert r.returncode == 1 and "'f3rm_ros.core.trainer'" in r.stdout


def test_nothing_but_the_model_is_read_for_queries(tmp_path):
    """A checkpoint whose training settings this version would not accept still loads for queries (only
    ``config["model"]`` builds the field); resuming it is refused."""
    ck = load_checkpoint(FIXTURE)
    ck["config"] = {**ck["config"], "a_setting_of_a_later_version": 1}
    torch.save(ck, tmp_path / "later.ckpt")
    field = load_trained_field(tmp_path / "later.ckpt")
    assert np.isfinite(field.query_density(torch.zeros(2, 3)).numpy()).all()
    with pytest.raises(ValueError, match="a_setting_of_a_later_version"):
        Trainer.from_checkpoint(tmp_path / "later.ckpt", *tiny_dataset(dim=4))
