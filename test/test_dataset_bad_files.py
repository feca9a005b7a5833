"""One rule for bad dataset files (issue 20): a frame whose image, label or depth file is missing is skipped and
counted in one logged warning (no raw Python warning), or, with missing_images="error", an error naming the frame
and the file; frames of mixed image sizes are refused naming a file of each size. ROS-free, a 6-frame dataset."""

from __future__ import annotations

import json
import logging
import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from f3rm_ros.core.dataset import DatasetError, load_dataset


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    from f3rm_ros.core.config import from_dict
    from f3rm_ros.core.sim import resolve_scene
    from f3rm_ros.core.sim.export import SimDatasetConfig, render_dataset

    d = tmp_path_factory.mktemp("bad") / "ds"
    render_dataset(resolve_scene("mug_bowl_box"), d, from_dict(SimDatasetConfig, {
        "width": 32, "height": 24, "write_depth": True, "trajectory": {"num_views": 6}}))
    return d


def _copy(rendered, tmp_path):
    d = tmp_path / "ds"
    shutil.copytree(rendered, d)
    return d, json.loads((d / "transforms.json").read_text())["frames"]


def test_missing_image_label_depth_skipped_and_counted(rendered, tmp_path, caplog):
    d, frames = _copy(rendered, tmp_path)
    assert all(f.get("label_path") and f.get("depth_path") for f in frames)
    (d / frames[1]["file_path"]).unlink()
    (d / frames[2]["label_path"]).unlink()
    (d / frames[4]["depth_path"]).unlink()
    with warnings.catch_warnings(record=True) as raw, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        ds = load_dataset(d)
    logged = [r for r in caplog.records if "skipped" in r.getMessage()]
    print(logged[0].getMessage() if logged else "nothing logged")
    assert not [w for w in raw if "skipped" in str(w.message)], "a raw Python warning"
    assert len(ds) == 3 and [i for i, _ in ds.skipped] == [1, 2, 4]
    assert len(logged) == 1 and logged[0].levelno == logging.WARNING
    msg = logged[0].getMessage()
    assert "skipped 3 of 6 frames" in msg and "1 without its image file" in msg
    assert "1 without its label file" in msg and "1 without its depth file" in msg


@pytest.mark.parametrize("kind", ["file_path", "label_path", "depth_path"])
def test_missing_file_is_an_error_naming_frame_and_file(rendered, tmp_path, kind):
    d, frames = _copy(rendered, tmp_path)
    (d / frames[3][kind]).unlink()
    with pytest.raises(DatasetError) as e:
        load_dataset(d, missing_images="error")
    print(e.value)
    word = {"file_path": "image", "label_path": "label", "depth_path": "depth"}[kind]
    assert "frames[3]" in str(e.value) and f"{word} file not found" in str(e.value)
    assert frames[3][kind].split("/")[-1].split(".")[0] in str(e.value)


def test_mixed_image_sizes_name_the_files(rendered, tmp_path):
    from f3rm_ros.core.features import create_extractor, extract_dataset_features

    d, frames = _copy(rendered, tmp_path)
    tj = json.loads((d / "transforms.json").read_text())
    fr = tj["frames"][3]
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(d / fr["file_path"])
    fr.update({"w": 16, "h": 12, "fl_x": 15.0, "fl_y": 15.0, "cx": 8.0, "cy": 6.0})
    (d / "transforms.json").write_text(json.dumps(tj))
    ds = load_dataset(d)
    with pytest.raises(DatasetError) as e:
        ds.images  # noqa: B018 - the property raises
    print(e.value)
    assert "32x24: images/frame_00000" in str(e.value) and f"16x12: {fr['file_path']} (frame 3)" in str(e.value)
    ex = create_extractor({"extractor": "labels", "labels": {"dataset": str(d), "patch_size": 4}})
    with pytest.raises(ValueError) as e2:
        extract_dataset_features(ex, ds, None)
    print(e2.value)
    assert f"16x12: {fr['file_path']} (frame 3)" in str(e2.value)
