"""capture_node's background writer: disk writes off the executor thread, bounded queue (writer_busy), STOP/SAVE
waiting for queued frames, write failures answered with a reason while the node keeps serving.

The ROS-free part (:class:`f3rm_ros.core.capture.BackgroundWriter`) is tested in test_capture_logic.py; this runs a
real capture node in-process (rclpy over DDS, no mocks) with the writer's in-process delay hook (a slow disk) and a
dataset whose ``images`` folder is replaced by a file (writes really fail)."""

from __future__ import annotations

import json
import shutil
import threading
import time

import numpy as np
import pytest


# --- over DDS --------------------------------------------------------------------------------------

def test_slow_and_failing_writes_keep_the_node_serving(tmp_path):
    """A slow disk (writer delay hook, 1.5 s per frame): images and poses are still decided at once (too_close
    against a frame still queued, writer_busy when max_pending_writes wait), SAVE answers with a reason when the
    queue does not drain in drain_timeout_s, STOP waits for it. Then the images folder becomes a file: the write
    fails with write_failed + diagnostics ERROR, the node keeps serving, and the frame's pose may be kept again. Node
    shutdown writes the frames still queued."""
    rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: run the tests through scripts/test.sh")
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.parameter import Parameter

    from f3rm_ros.core.dataset import load_dataset
    from f3rm_ros.ros.capture_node import CaptureNode
    from f3rm_ros.ros.common import ERROR, OK
    from f3rm_ros.srv import CaptureControl
    from node_helpers import Spinner, call_service, wait_for
    from test_node_capture import _counts, _Feeder, _frame_image, _status_listener

    ns = "/t_capture_slow"
    data = tmp_path / "data"
    delay = 1.5
    with rclpy.init():
        cap = CaptureNode(namespace=ns, parameter_overrides=[
            Parameter("data_root", value=str(data)), Parameter("start_capturing", value=True),
            Parameter("max_pending_writes", value=3), Parameter("drain_timeout_s", value=0.3),
            Parameter("pose_wait_s", value=0.3), Parameter("status_rate_hz", value=5.0)])
        cap.session.write_queue.delay_s = delay  # in-process hook: every write takes 1.5 s longer (a stalled disk)
        feed = _Feeder(ns)
        status = _status_listener(feed, f"{ns}/capture_node/status")
        diags: list = []
        feed.create_subscription(DiagnosticArray, "/diagnostics",
                                 lambda m: diags.extend((time.monotonic(), s) for s in m.status if ns in s.name), 50)
        sp = Spinner(cap, feed)

        def control(cmd: int):
            t0 = time.monotonic()
            r = call_service(feed, CaptureControl, f"{ns}/capture_node/control", CaptureControl.Request(command=cmd))
            return r, time.monotonic() - t0

        def reasons() -> dict:
            return _counts(status[-1]) if status else {}

        try:
            wait_for(feed.matched, 20, "the capture node's subscriptions")
            time.sleep(0.2)
            t = 500.0
            t0 = time.monotonic()
            sent = 0
            for i in range(8):  # 8 distinct poses at 20 Hz: 3 fit in the write queue, the rest find it full
                feed.send(i, t + i)
                sent += 1
                time.sleep(0.05)
            feed.send(20, t + 8, pose=feed.pose(0))  # the pose of frame 0 again: too close to a frame not yet written
            sent += 1
            se = cap.session
            wait_for(lambda: se.images_seen >= sent and se.images_waiting == 0
                     and reasons().get("too_close", 0) + reasons().get("writer_busy", 0) + se.kept_total >= sent,
                     10, "every frame decided")
            t_decided = time.monotonic() - t0
            st = status[-1]
            written_then, pending_then = st.frames_kept, cap.session.write_queue.pending("frame")
            print(f"{sent} frames decided {t_decided:.2f} s after the first was sent (writes take {delay} s each): "
                  f"{_counts(st)}, written {written_then}, pending {pending_then}, kept {cap.session.kept_total}")
            assert reasons().get("too_close") == 1 and reasons().get("writer_busy", 0) >= 1
            assert cap.session.kept_total == sent - 1 - reasons()["writer_busy"] >= 3
            assert written_then < cap.session.kept_total and pending_then >= 1  # decided while the disk was still busy

            # the executor still serves poses while frames wait: a pose in another frame is answered at once
            t1 = time.monotonic()
            from f3rm_ros.ros.conversions import matrix_to_pose_msg

            feed.pose_pub.publish(matrix_to_pose_msg(feed.pose(30), "map", feed.stamp(t + 9)))
            wait_for(lambda: "wrong_frame" in reasons(), 5, "wrong_frame while writes are pending")
            pose_answer_s = time.monotonic() - t1
            pending_now = cap.session.write_queue.pending("frame")
            print(f"pose answered in {pose_answer_s:.2f} s with {pending_now} frames still waiting for the disk")
            assert pending_now >= 1

            r, dt = control(CaptureControl.Request.SAVE)  # drain_timeout_s 0.3 < what is queued
            print(f"SAVE with a busy disk: {r.success} {r.message!r} in {dt:.2f} s (frames on disk {r.frame_count})")
            assert not r.success and "still wait to be written" in r.message and dt < 5.0
            pend_diag = [s for _, s in diags
                         if any(kv.key == "frames_pending" and int(kv.value) > 0 for kv in s.values)]
            print(f"diagnostics with frames_pending > 0: {len(pend_diag)}; e.g. {pend_diag[-1].message!r}")
            assert pend_diag
            last = {kv.key: kv.value for kv in pend_diag[-1].values}
            print(f"diagnostics: written {last['frames_written']}, pending {last['frames_pending']}, kept "
                  f"{last['frames_kept_total']}")
            assert int(last["frames_written"]) + int(last["frames_pending"]) == int(last["frames_kept_total"])
            assert cap.set_parameters([Parameter("drain_timeout_s", value=20.0)])[0].successful
            r, dt = control(CaptureControl.Request.STOP)
            kept = cap.session.kept_total
            print(f"STOP: {r.success} {r.message!r} in {dt:.2f} s; frames on disk {r.frame_count} (kept {kept})")
            assert r.success and r.frame_count == kept and cap.session.write_queue.pending() == 0
            assert status and (wait_for(lambda: status[-1].frames_kept == kept, 5, "status after STOP"))
            ds = load_dataset(data / "capture")
            for k in range(len(ds)):  # the queued frames as sent, in order
                assert np.array_equal(ds.get_image(k), _frame_image(int(ds.stamps[k] - t))), k
            assert len(ds) == kept and list(ds.stamps) == sorted(ds.stamps)

            # CLEAR while frames still wait: STOP times out with a reason, CLEAR drops the queued frames, waits for
            # the one being written and deletes everything (no orphan file, no frame written after the clear)
            # The writer is held until the 3 frames are queued, then lets exactly one start (1 s long): however slow
            # the machine, frames still wait when CLEAR comes (sleep-based timing let all be written first)
            hold = threading.Event()
            cap.session.write_queue.hold = hold
            cap.session.write_queue.delay_s = 1.0
            assert cap.set_parameters([Parameter("drain_timeout_s", value=0.3)])[0].successful
            r, _ = control(CaptureControl.Request.START)
            assert r.success
            for i in range(10, 13):
                feed.send(i, t + i)
                time.sleep(0.05)
            wait_for(lambda: cap.session.kept_total == kept + 3, 10, "3 more frames queued")
            hold.set()
            wait_for(lambda: cap.session.write_queue.busy, 5, "the writer to start one frame")
            hold.clear()
            r, dt = control(CaptureControl.Request.STOP)
            print(f"STOP with 3 frames queued, drain_timeout_s 0.3: {r.success} {r.message!r} in {dt:.2f} s")
            assert not r.success and "still wait to be written" in r.message and not cap.session.capturing
            assert cap.set_parameters([Parameter("drain_timeout_s", value=20.0)])[0].successful
            r, dt = control(CaptureControl.Request.CLEAR)
            left = sorted(p.name for p in (data / "capture" / "images").iterdir())
            print(f"CLEAR: {r.success} {r.message!r} in {dt:.2f} s; files left {left}")
            assert r.success and "not yet written dropped" in r.message and r.frame_count == 0 and not left
            time.sleep(1.2)  # nothing dropped is written later
            assert json.loads((data / "capture" / "transforms.json").read_text())["frames"] == []
            assert not list((data / "capture" / "images").iterdir()) and cap.session.kept_total == 0
            assert len(cap.session.keyframes) == 0 and cap.session.write_queue.pending() == 0
            kept = 0

            # write failure: the images folder becomes a file (a real OSError from the filesystem)
            cap.session.write_queue.hold = None
            cap.session.write_queue.delay_s = 0.0
            ds_dir = data / "capture"
            shutil.move(ds_dir / "images", tmp_path / "images_saved")
            (ds_dir / "images").write_text("not a folder")
            r, _ = control(CaptureControl.Request.START)
            assert r.success
            feed.send(40, t + 40)
            wait_for(lambda: "write_failed" in reasons(), 10, "write_failed")
            print(f"write failure: {status[-1].last_reject_reason!r}")
            t_fail = time.monotonic()
            wait_for(lambda: any(ts > t_fail and s.level == bytes([ERROR]) for ts, s in diags), 5, "diagnostics ERROR")
            err = [s for ts, s in diags if ts > t_fail and s.level == bytes([ERROR])][-1]
            print(f"diagnostics: ERROR {err.message!r}")
            assert "writing frames fails" in err.message and cap.session.kept_total == kept
            r, _ = control(CaptureControl.Request.SAVE)  # still serving (transforms.json itself is writable)
            print(f"SAVE after a failed write: {r.success} {r.message!r}")
            # saved, but the lost frame is reported (issue 20), not a silent success
            assert not r.success and r.message.startswith("saved ") and r.frame_count == kept
            assert "1 kept frame(s) could not be written" in r.message
            (ds_dir / "images").unlink()
            shutil.move(tmp_path / "images_saved", ds_dir / "images")
            feed.send(41, t + 41, pose=feed.pose(40))  # the failed frame's pose: not a kept frame, so kept now
            wait_for(lambda: status[-1].frames_kept == kept + 1, 10, "a frame written after the failure")
            t_ok = time.monotonic()
            wait_for(lambda: any(ts > t_ok and s.level == bytes([OK]) for ts, s in diags), 5, "diagnostics OK again")
            r, _ = control(CaptureControl.Request.STOP)
            print(f"after recovery: {_counts(status[-1])}; STOP {r.success} frames {r.frame_count}")
            # the frame that failed stays reported (its pose was captured again by a later frame)
            assert not r.success and "1 kept frame(s) could not be written" in r.message
            assert r.frame_count == kept + 1 and reasons().get("too_close") == 1
            assert reasons().get("internal_error", 0) == 0

            # node shutdown writes what is queued (what run_node does after spinning ends, e.g. on SIGINT)
            cap.session.write_queue.delay_s = 0.4
            r, _ = control(CaptureControl.Request.START)
            assert r.success
            for i in (50, 51):
                feed.send(i, t + i)
                time.sleep(0.05)
            wait_for(lambda: cap.session.kept_total == kept + 3, 10, "2 more frames queued")
            queued = cap.session.write_queue.pending("frame")
            t2 = time.monotonic()
            assert cap.close()
            print(f"close() with {queued} frame(s) queued: all written in {time.monotonic() - t2:.2f} s")
            assert queued >= 1 and not cap.session.capturing
        finally:
            sp.stop()
            cap.destroy_node()
            feed.destroy_node()

    ds = load_dataset(data / "capture")
    print(f"dataset: {len(ds)} frames, stamps {[s - t for s in ds.stamps]}")
    assert len(ds) == 3 and list(ds.stamps) == [t + 41, t + 50, t + 51]
    for k, i in enumerate((41, 50, 51)):
        assert np.array_equal(ds.get_image(k), _frame_image(i)), k
