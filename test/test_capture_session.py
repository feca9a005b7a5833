"""CaptureSession without ROS: matching images to intrinsics, poses, labels and depth by stamp in any arrival
order, every rejection with its reason, keep/forget bookkeeping with the background writer, START/STOP/CLEAR/SAVE
and the counters. A real dataset on disk, a test clock for the waiting; imports only f3rm_ros.core."""

from __future__ import annotations

import json
import math
import shutil
import threading

import numpy as np
import pytest

from f3rm_ros.core.cameras import CameraIntrinsics
from f3rm_ros.core.capture import REASONS, T_BODY_OPTICAL, CaptureConfig, CaptureSession
from f3rm_ros.core.dataset import load_dataset
from f3rm_ros.core.geometry import make_transform

NS = 1_000_000_000
K = CameraIntrinsics(fx=30.0, fy=30.0, cx=16.0, cy=12.0, width=32, height=24)


def _rot_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1.0]])


def _image(i: int) -> np.ndarray:
    """A textured (sharp), recognisable image for frame number ``i``."""
    return np.random.default_rng(1000 + i).integers(0, 256, (24, 32, 3), dtype=np.uint8)


def _pose(i: int) -> np.ndarray:
    return make_transform(_rot_z(7.0 * i), [0.1 * i, 0.02 * i, 0.5])


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def make(tmp_path):
    """Sessions on datasets under tmp_path/data with a test clock; closed at the end."""
    made: list[CaptureSession] = []

    def factory(labels: bool = False, depth: bool = False, start: bool = True, **cfg) -> CaptureSession:
        cfg = {"data_root": str(tmp_path / "data"), "dataset_name": "scan", "pose_wait_s": 0.5,
               "blur_threshold": 1.0, **cfg}
        logs: list = []
        s = CaptureSession(CaptureConfig(**cfg), camera_info_source="/t/camera_info",
                           labels_source="/t/labels" if labels else "", depth_source="/t/depth" if depth else "",
                           log=lambda level, text: logs.append((level, text)), clock=_Clock())
        s.logs = logs
        made.append(s)
        assert s.open_dataset(cfg["dataset_name"]), s.writer_error
        if start:
            assert s.start() == (True, "capturing")
        return s

    yield factory
    for s in made:
        s.close()


def _labels(i: int) -> np.ndarray:
    return np.full((24, 32), 10 + i, np.uint16)


def _depth(i: int) -> np.ndarray:
    return np.full((24, 32), 0.5 + 0.25 * i, np.float32)


def _written(s: CaptureSession) -> None:
    assert s.write_queue.wait_idle(10.0)


def test_matching_by_stamp_with_out_of_order_arrivals(make, tmp_path):
    """Images before their intrinsics, poses, labels and depth; a later image with an earlier stamp; side images in
    mixed order: each frame is written with exactly its own pose, labels and depth, nothing rejected."""
    s = make(labels=True, depth=True)
    s.add_image(2 * NS, _image(2))  # A: newer stamp, arrives first
    s.add_image(1 * NS, _image(1))  # B: older stamp, arrives second
    s.add_depth(2 * NS, _depth(2))
    s.add_labels(1 * NS, _labels(1))
    s.add_depth(1 * NS, _depth(1))
    s.add_camera_info(K)
    assert s.images_waiting == 2 and s.kept_total == 0  # no pose yet
    s.add_pose(1 * NS, _pose(1))  # B has everything now
    assert s.images_waiting == 1 and s.kept_total == 1
    s.add_pose(2 * NS, _pose(2))  # A still waits for its label image
    assert s.images_waiting == 1 and s.kept_total == 1
    s.add_labels(2 * NS, _labels(2))
    assert s.images_waiting == 0 and s.kept_total == 2
    _written(s)
    st = s.state()
    print(f"state: {st}")
    assert st.reject_counts == {} and st.frames_written == 2 and st.frames_pending == 0 and st.frames_kept_total == 2
    ds = load_dataset(tmp_path / "data" / "scan", eval_every=0)
    assert list(ds.stamps) == [1.0, 2.0]
    for k, i in enumerate((1, 2)):  # written in decision order: B then A
        assert np.array_equal(ds.get_image(k), _image(i)), k
        assert np.array_equal(ds.get_labels(k), _labels(i)), k
        assert np.abs(ds.get_depth(k) - _depth(i)).max() <= 0.0005 + 1e-6, k
        assert np.allclose(ds.c2w[k], _pose(i), atol=1e-9), k
    meta = json.loads((tmp_path / "data" / "scan" / "transforms.json").read_text())["frames"]
    assert [f["pose_dt_s"] for f in meta] == [0.0, 0.0] and not any(f["pose_interpolated"] for f in meta)

    # a pose between two: interpolated (halfway), with its dt; the pose stamps are out of order too
    s.add_pose(4 * NS, _pose(4))
    s.add_pose(3 * NS, _pose(3))  # inserted before the one at t=4
    s.add_pose(3_040_000_000, _pose(3.1))  # 40 ms later, a small move
    s.add_labels(3_020_000_000, _labels(3))
    s.add_depth(3_020_000_000, _depth(3))
    s.add_image(3_020_000_000, _image(3))
    assert s.kept_total == 3 and s.images_waiting == 0
    _written(s)
    fr = s.writer.frames[-1]
    print(f"interpolated frame: dt {fr['pose_dt_s']} interpolated {fr['pose_interpolated']}")
    assert fr["pose_interpolated"] and abs(fr["pose_dt_s"] - 0.02) < 1e-6


def test_missing_inputs_rejected_with_reasons(make):
    """Each missing or mismatched input is decided after pose_wait_s with its reason; nothing is kept."""
    s = make(labels=True, depth=True)
    clock = s._clock
    s.add_camera_info(K)

    def decide_after_wait() -> None:
        s.process()
        assert s.images_waiting == 1  # still within pose_wait_s
        clock.t += 0.6
        s.process()
        assert s.images_waiting == 0

    def last(reason: str) -> str:
        assert s.last_reject_reason.startswith(reason + ":"), s.last_reject_reason
        return s.last_reject_reason

    # no pose at all
    s.add_labels(5 * NS, _labels(5))
    s.add_depth(5 * NS, _depth(5))
    s.add_image(5 * NS, _image(5))
    decide_after_wait()
    print(last("no_pose"))
    assert "no camera pose received yet within pose_wait_s=0.5 s" in s.last_reject_reason
    # the nearest pose is 1 s before the image: waits for a later one, then too far
    s.add_pose(7 * NS, _pose(7))
    s.add_labels(8 * NS, _labels(8))
    s.add_depth(8 * NS, _depth(8))
    s.add_image(8 * NS, _image(8))
    decide_after_wait()
    print(last("pose_too_far"))
    assert "1000.0 ms" in s.last_reject_reason and "pose_tolerance_s=0.05" in s.last_reject_reason
    # no label image with the stamp (one with another stamp does not count)
    s.add_pose(9 * NS, _pose(9))
    s.add_labels(9 * NS + 1, _labels(9))
    s.add_depth(9 * NS, _depth(9))
    s.add_image(9 * NS, _image(9))
    decide_after_wait()
    assert "/t/labels" in last("no_labels")
    # no depth image
    s.add_pose(10 * NS, _pose(10))
    s.add_labels(10 * NS, _labels(10))
    s.add_image(10 * NS, _image(10))
    decide_after_wait()
    assert "/t/depth" in last("no_depth")
    # label and depth images of another size: decided at once (everything is there)
    s.add_pose(11 * NS, _pose(11))
    s.add_labels(11 * NS, np.zeros((12, 16), np.uint16))
    s.add_depth(11 * NS, _depth(11))
    s.add_image(11 * NS, _image(11))
    assert s.images_waiting == 0 and "(16, 12)" in last("bad_labels")
    s.add_pose(12 * NS, _pose(12))
    s.add_labels(12 * NS, _labels(12))
    s.add_depth(12 * NS, np.ones((12, 16), np.float32))
    s.add_image(12 * NS, _image(12))
    assert "registered" in last("bad_depth")
    # an image of another size than the camera_info: at once
    s.add_image(13 * NS, np.zeros((10, 10, 3), np.uint8))
    assert "10x10 but camera_info says 32x24" in last("size_mismatch")
    # a flat image: blurry, at once
    s.add_image(14 * NS, np.full((24, 32, 3), 99, np.uint8))
    assert "blur_threshold 1" in last("blurry")
    # a pose in another frame; '' and '/world' count as the world frame
    assert not s.pose_frame_ok("map") and "'map'" in last("wrong_frame")
    assert s.pose_frame_ok("") and s.pose_frame_ok("/world")
    st = s.state()
    print(f"rejections: {st.reject_counts}")
    assert st.reject_counts == {"no_pose": 1, "pose_too_far": 1, "no_labels": 1, "no_depth": 1, "bad_labels": 1,
                                "bad_depth": 1, "size_mismatch": 1, "blurry": 1, "wrong_frame": 1}
    assert set(st.reject_counts) <= set(REASONS) and s.kept_total == 0 and st.images_seen == 0
    assert [lv for lv, _ in s.logs].count("warning") == 9  # one log line per reason (throttled per reason)


def test_no_camera_info_overflow_and_not_capturing(make):
    s = make(max_pending=2)
    clock = s._clock
    s.add_pose(1 * NS, _pose(1))
    s.add_image(1 * NS, _image(1))  # no camera_info: waits for one
    clock.t += 0.6
    s.process()
    assert s.last_reject_reason.startswith("no_camera_info:") and "/t/camera_info" in s.last_reject_reason
    s.add_camera_info(K)
    for i in (5, 6, 7):  # no pose for them: the oldest is dropped when a third one waits
        s.add_image(i * NS, _image(i))
    assert s.images_waiting == 2 and s.reject_counts["overflow"] == 1 and "t=5.000" in s.last_reject_reason
    assert s.stop()[0] and s.images_waiting == 0  # STOP forgets the images waiting
    assert not s.image_received(8 * NS) and s.images_seen == 1  # not capturing: counted, not wanted
    assert ("info", "first image received (t=8.000, image); capturing=False") in s.logs


def test_keep_and_forget(make, tmp_path):
    """Keyframes are decided against frames still queued; a failed write and a frame dropped by CLEAR are forgotten
    (their pose can be kept again); the counters stay consistent."""
    s = make(max_pending_writes=3, drain_timeout_s=0.2)
    s.add_camera_info(K)
    hold = threading.Event()
    s.write_queue.hold = hold  # a disk that does not answer: kept frames stay queued

    def frame(i: int, t: int, T: np.ndarray | None = None) -> None:
        s.add_pose(t * NS, _pose(i) if T is None else T)
        assert s.image_received(t * NS)
        s.add_image(t * NS, _image(i))

    for i in range(4):  # 3 fit in the write queue, the 4th finds it full
        frame(i, 10 + i)
    frame(9, 20, _pose(0))  # the pose of a frame that is only queued: too close
    st = s.state()
    print(f"queued: {st}")
    assert s.reject_counts == {"writer_busy": 1, "too_close": 1}
    assert (st.frames_written, st.frames_pending, st.frames_kept_total) == (0, 3, 3) and len(s.keyframes) == 3
    ok, why = s.stop()
    print(f"STOP with a held disk: {ok} {why!r}")
    assert not ok and "3 kept frame(s) still wait to be written after drain_timeout_s=0.2 s" in why
    assert not s.capturing
    ok, why = s.clear()  # drops the 3 queued frames: forgotten
    print(f"CLEAR: {ok} {why!r}")
    assert ok and why == "cleared 0 frames (3 not yet written dropped)"
    assert s.kept_total == 0 and len(s.keyframes) == 0 and s.frame_counts() == (0, 0, 0)
    s.write_queue.hold = None
    assert s.start()[0]
    frame(0, 30)  # pose of a dropped frame: kept now
    _written(s)
    assert s.frame_counts() == (1, 0, 1)

    # a failed write (the images folder becomes a file): forgotten, reported, health ERROR; then a success
    images = tmp_path / "data" / "scan" / "images"
    shutil.move(images, tmp_path / "images_saved")
    images.write_text("not a folder")
    frame(1, 31)
    _written(s)
    level, msg, values = s.health()
    print(f"after a failed write: {s.last_reject_reason!r}; health {level} {msg!r}")
    assert s.reject_counts["write_failed"] == 1 and s.kept_total == 1 and len(s.keyframes) == 1
    assert level == "error" and msg.startswith("writing frames fails: image at t=31.000 not written")
    assert values["write_failures"] == 1 and values["frames_kept_total"] == 1
    images.unlink()
    shutil.move(tmp_path / "images_saved", images)
    frame(9, 32, _pose(1))  # the failed frame's pose: not a kept frame, so kept now
    _written(s)
    level, msg, values = s.health()
    assert s.frame_counts() == (2, 0, 2) and s.write_error == "" and level == "ok" and msg == "capturing, 2 frames"
    assert values["frames_written"] + values["frames_pending"] == values["frames_kept_total"] == 2
    assert s.reject_counts == {"writer_busy": 1, "too_close": 1, "write_failed": 1}


def test_clear_save_max_frames_and_continue(make, tmp_path):
    s = make(max_frames=2, labels=True)
    s.add_camera_info(K)
    s.set_label_table({"1": {"object": "mug", "category": "mug", "part": "", "synonyms": []}})
    for i in range(3):  # the third: dataset full, capture stopped
        s.add_pose(i * NS, _pose(i))
        s.add_labels(i * NS, _labels(i))
        s.add_image(i * NS, _image(i))
    assert not s.capturing and s.kept_total == 2 and ("info", "max_frames=2 reached: capture stopped") in s.logs
    ok, why = s.start()
    assert not ok and why == "the dataset already has max_frames=2 frames"
    ok, why = s.save()
    meta = json.loads((tmp_path / "data" / "scan" / "transforms.json").read_text())
    print(f"SAVE: {ok} {why!r}; f3rm_capture {meta['f3rm_capture']}")
    assert ok and why.startswith("saved ") and len(meta["frames"]) == 2
    assert meta["f3rm_labels"] == {"1": {"object": "mug", "category": "mug", "part": "", "synonyms": []}}
    assert meta["f3rm_capture"]["settings"]["min_translation_m"] == 0.05

    # a second session continues the dataset: its frames count and are kept frames for the keyframe rule
    s.close()
    s2 = make(max_frames=3, labels=True)
    s2.add_camera_info(K)
    assert s2.kept_total == 2 and len(s2.keyframes) == 2
    s2.add_pose(5 * NS, _pose(1))
    s2.add_labels(5 * NS, _labels(1))
    s2.add_image(5 * NS, _image(1))
    assert s2.reject_counts == {"too_close": 1}
    ok, why = s2.clear()
    assert not ok and why == "CLEAR refused while capturing; send STOP first"
    assert s2.stop() == (True, "stopped; every kept frame is written")
    assert s2.clear() == (True, "cleared 2 frames") and s2.frames_written == 0 and len(s2.keyframes) == 0
    assert json.loads((tmp_path / "data" / "scan" / "transforms.json").read_text())["frames"] == []
    assert s2.start()[0]
    s2.add_pose(6 * NS, _pose(1))  # the old pose is no longer kept: accepted again
    s2.add_labels(6 * NS, _labels(1))
    s2.add_image(6 * NS, _image(1))
    _written(s2)
    assert s2.frame_counts() == (1, 0, 1)


def test_dataset_switch_refusals_and_body_poses(make, tmp_path):
    s = make(pose_frame_convention="body", min_translation_m=0.0, min_rotation_deg=0.0)
    assert s.dataset_change_refusal() == "dataset_name cannot change while capturing; send STOP first"
    s.add_camera_info(K)
    T_body = _pose(3)
    s.add_pose(1 * NS, T_body)
    s.add_image(1 * NS, _image(0))
    _written(s)
    assert np.allclose(load_dataset(tmp_path / "data" / "scan", eval_every=0).c2w[0], T_body @ T_BODY_OPTICAL)
    assert s.stop()[0] and s.dataset_change_refusal() == ""
    from dataclasses import replace

    s.configure(replace(s.config, dataset_name="other", min_rotation_deg=5.0))
    assert s.dataset_path == tmp_path / "data" / "other" and s.kept_total == 0 and s.keyframes.min_rotation_deg == 5.0

    def refuse(name: str):
        raise ValueError(f"dataset folder {name!r} is outside the allowed root folder")

    bad = CaptureSession(CaptureConfig(data_root=str(tmp_path)), dataset_dir=refuse)
    try:
        assert not bad.open_dataset("../x") and bad.writer is None
        ok, why = bad.start()
        print(f"START with a refused dataset: {ok} {why!r}; health {bad.health()[:2]}")
        assert not ok and "outside" in why and bad.health()[0] == "error"
        assert bad.save() == (False, bad.writer_error)
    finally:
        bad.close()
