"""CaptureSession.append without ROS (issue 18): an append session records scene_version on every frame it keeps and a
later START goes on with that version; APPEND to a dataset that does not exist, has no frames, is stored in another
world frame or was recorded with another camera is refused with the reason and changes nothing; frames of another
camera in an append session are rejected as camera_mismatch. A real dataset on disk; imports only f3rm_ros.core."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from f3rm_ros.core.cameras import CameraIntrinsics
from f3rm_ros.core.capture import REASONS, CaptureConfig, CaptureSession
from f3rm_ros.core.capture.matching import camera_mismatch
from f3rm_ros.core.dataset import DatasetWriter, load_dataset
from f3rm_ros.core.geometry import look_at_opencv

NS = 1_000_000_000
K = CameraIntrinsics(fx=30.0, fy=30.0, cx=16.0, cy=12.0, width=32, height=24)
POSES = [look_at_opencv([0.5 * np.cos(a), 0.5 * np.sin(a), 0.4], [0, 0, 0]) for a in (0.0, 0.8, 1.6)]


@pytest.fixture
def session(tmp_path):
    made: list[CaptureSession] = []

    def factory(name: str = "scan", **cfg) -> CaptureSession:
        s = CaptureSession(CaptureConfig(data_root=str(tmp_path), dataset_name=name, pose_wait_s=0.5,
                                         blur_threshold=1.0, **cfg))
        made.append(s)
        assert s.open_dataset(name), s.writer_error
        return s

    yield factory
    for s in made:
        s.close()


def _frame(s: CaptureSession, t: int, pose: np.ndarray, K_: CameraIntrinsics = K) -> None:
    s.add_camera_info(K_)
    s.add_pose(t * NS, pose)
    s.add_image(t * NS, np.random.default_rng(t).integers(0, 256, (K_.height, K_.width, 3), dtype=np.uint8))


def _json(path) -> str:
    return (path / "transforms.json").read_text()


def test_camera_mismatch_names_what_differs():
    assert camera_mismatch(K, K) == ""
    assert camera_mismatch(replace(K, fx=30.1), K) == ""  # a driver's rounding is the same camera
    assert "another image size" in camera_mismatch(replace(K, width=64, cx=32.0), K)
    assert "fx, fy differ" in camera_mismatch(replace(K, fx=40.0, fy=40.0), K)
    assert "k1 differ" in camera_mismatch(replace(K, k1=0.2), K)
    assert "camera_mismatch" in REASONS


def test_append_then_start_keeps_the_changed_scene_version(session, tmp_path):
    s = session()
    assert s.start() == (True, "capturing")
    _frame(s, 1, POSES[0])
    _frame(s, 2, POSES[1])
    assert s.stop()[0] and s.state().scene_version == 0
    ok, msg = s.append()
    print("APPEND:", msg)
    assert ok and "scene version 1" in msg and s.state().scene_version == 1
    _frame(s, 3, POSES[0])  # the same view again: worth keeping, the scene changed
    assert s.stop()[0]
    ok, msg = s.start()  # more views of the changed scene: they belong to version 1 too
    print("START after APPEND:", msg)
    assert ok and msg == "capturing scene version 1"
    _frame(s, 4, POSES[0])  # already seen in this version: too close
    _frame(s, 5, POSES[1])
    assert s.stop()[0]
    assert s.reject_counts["too_close"] == 1
    ds = load_dataset(tmp_path / "scan", eval_every=0)
    versions = [int(e.get("scene_version", 0)) for e in ds.frames_extra]
    assert versions == [0, 0, 1, 1], versions
    # a session opened on the dataset later goes on with version 1, its views only in the keyframe selector
    s2 = session()
    assert s2.start() == (True, "capturing scene version 1")
    _frame(s2, 6, POSES[0])  # a version-1 view: too close
    _frame(s2, 7, POSES[2])
    assert s2.stop()[0] and s2.reject_counts["too_close"] == 1
    ok, msg = s2.append()
    assert ok and "scene version 2" in msg
    assert s2.stop()[0]
    assert s2.clear()[0] and s2.state().scene_version == 0  # a cleared dataset starts over


def test_refused_appends_change_nothing(session, tmp_path):
    missing = session("missing")
    ok, why = missing.append()
    print("missing:", why)
    assert not ok and "no dataset" in why and "START records a new one" in why
    assert not missing.capturing and not (tmp_path / "missing" / "transforms.json").exists()

    empty = session("empty")  # a dataset whose frames were cleared
    DatasetWriter(tmp_path / "empty").update_meta({"note": "cleared"})
    before = _json(tmp_path / "empty")
    ok, why = empty.append()
    print("empty:", why)
    assert not ok and "no frames" in why and _json(tmp_path / "empty") == before and not empty.capturing

    w = DatasetWriter(tmp_path / "map_frame", world_frame="map")
    w.add_frame(np.zeros((24, 32, 3), np.uint8), K, POSES[0])
    other_frame = session("map_frame")
    before = _json(tmp_path / "map_frame")
    ok, why = other_frame.append()
    print("world frame:", why)
    assert not ok and "'map'" in why and "'world'" in why and _json(tmp_path / "map_frame") == before

    s = session()
    assert s.start()[0]
    _frame(s, 1, POSES[0])
    assert s.stop()[0]
    before = _json(tmp_path / "scan")
    s.add_camera_info(replace(K, width=64, height=48, cx=32.0, cy=24.0))  # the camera streaming now
    ok, why = s.append()
    print("another camera:", why)
    assert not ok and "another camera" in why and "64x48" in why and "32x24" in why
    assert not s.capturing and s.state().scene_version == 0 and _json(tmp_path / "scan") == before
    ok, why = s.start()
    assert ok and s.append() == (False, "APPEND refused while capturing; send STOP first")
    assert s.stop()[0] and _json(tmp_path / "scan") == before


def test_append_session_rejects_frames_of_another_camera(session, tmp_path):
    s = session()
    assert s.start()[0]
    _frame(s, 1, POSES[0])
    assert s.stop()[0]
    s.matcher.camera_info = None  # no camera_info since (a restarted node): APPEND cannot compare yet
    ok, msg = s.append()
    assert ok, msg
    other = replace(K, fx=45.0, fy=45.0)
    _frame(s, 2, POSES[1], other)
    _frame(s, 3, POSES[2])
    assert s.stop()[0]
    print("last reason:", s.last_reject_reason)
    assert s.reject_counts["camera_mismatch"] == 1 and "not appended" in s.last_reject_reason
    ds = load_dataset(tmp_path / "scan", eval_every=0)
    assert len(ds) == 2 and ds.frames_extra[1]["scene_version"] == 1 and ds.intrinsics[1].fx == K.fx
    assert json.loads(_json(tmp_path / "scan"))["frames"][1]["stamp"] == 3.0
