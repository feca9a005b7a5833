"""The capture's ROS-free parts: pose-by-stamp lookup, blur score, keyframe selection and the bounded background
writer (f3rm_ros.core.capture; no rclpy needed)."""

from __future__ import annotations

import math
import threading
import time

import numpy as np

from f3rm_ros.core.capture import (BackgroundWriter, KeyframeSelector, PoseBuffer, WriteJob, interpolate_pose,
                                   laplacian_variance, laplacian_variance_reference)
from f3rm_ros.core.geometry import make_transform


def _rot_z(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1.0]])


def test_pose_buffer_lookup_cases():
    buf = PoseBuffer(duration_s=2.0, tolerance_s=0.05, interpolate=True)
    assert buf.lookup(1.0).status == "empty"
    T0 = make_transform(np.eye(3), [0.0, 0.0, 0.0])
    T1 = make_transform(_rot_z(20.0), [0.1, 0.0, 0.0])
    buf.add(1.00, T0)
    assert buf.lookup(1.03).status == "wait"  # nothing after the stamp yet: a pose to interpolate may come
    assert buf.lookup(1.03, final=True).status == "ok"  # ... but the nearest one is within tolerance
    assert buf.lookup(1.20, final=True).status == "too_far"
    buf.add(1.08, T1)
    r = buf.lookup(1.02)
    ref = interpolate_pose(T0, T1, 0.25)
    ang = math.degrees(math.acos(np.clip((np.trace(r.pose[:3, :3]) - 1) / 2, -1, 1)))
    print(f"interpolated at alpha 0.25: t={r.pose[:3, 3]}, angle {ang:.3f} deg, dt {r.dt * 1000:.1f} ms")
    assert r.status == "ok" and r.interpolated and abs(r.dt - 0.02) < 1e-9
    assert np.allclose(r.pose[:3, 3], [0.025, 0, 0]) and abs(ang - 5.0) < 1e-6 and np.allclose(r.pose, ref)
    assert buf.lookup(1.08).pose is not None and np.allclose(buf.lookup(1.08).pose, T1)  # exact stamp
    far = buf.lookup(0.5)
    assert far.status == "too_far" and "500.0 ms" in far.reason, far.reason
    buf.add(4.0, T0)  # older poses fall out of the 2 s window
    assert len(buf) == 1


def test_laplacian_variance_matches_reference_and_orders_sharpness():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    fast, ref = laplacian_variance(img), laplacian_variance_reference(img)
    print(f"random 11x9: fast {fast:.6f} reference {ref:.6f}")
    assert abs(fast - ref) < 1e-9 * max(1.0, ref)
    big = np.kron(rng.integers(0, 256, (12, 16), dtype=np.uint8), np.ones((4, 4), np.uint8))  # blocky image
    blurred = big.astype(float)
    for _ in range(6):  # box blur
        blurred = (blurred + np.roll(blurred, 1, 0) + np.roll(blurred, -1, 0) + np.roll(blurred, 1, 1)
                   + np.roll(blurred, -1, 1)) / 5
    s_sharp, s_blur = laplacian_variance(big), laplacian_variance(blurred.astype(np.uint8))
    print(f"sharp {s_sharp:.1f} vs blurred {s_blur:.1f}; flat {laplacian_variance(np.full((8, 8, 3), 77, np.uint8))}")
    assert s_sharp > 10 * s_blur and laplacian_variance(np.full((8, 8, 3), 77, np.uint8)) == 0.0


def test_keyframe_selector():
    sel = KeyframeSelector(min_translation_m=0.05, min_rotation_deg=10.0)
    T = make_transform(np.eye(3), [0, 0, 0])
    assert sel.check(T)[0]
    sel.add(T)
    near = make_transform(_rot_z(5.0), [0.03, 0, 0])
    ok, why = sel.check(near)
    print(why)
    assert not ok and "too close" in why
    assert sel.check(make_transform(np.eye(3), [0.06, 0, 0]))[0]  # moved enough
    assert sel.check(make_transform(_rot_z(12.0), [0.0, 0, 0]))[0]  # turned enough
    sel.reset(np.stack([T, make_transform(np.eye(3), [1.0, 0, 0])]))
    assert len(sel) == 2 and not sel.check(make_transform(np.eye(3), [1.01, 0, 0]))[0]

    # vectorised decision == a plain loop over the kept frames (random poses)
    from scipy.spatial.transform import Rotation

    from f3rm_ros.core.geometry import rotation_angle

    rng = np.random.default_rng(3)
    kept = [make_transform(Rotation.random(random_state=int(k)).as_matrix(), rng.normal(0, 0.05, 3)) for k in range(20)]
    sel.reset(np.stack(kept))
    agree, close = 0, 0
    for k in range(200):  # perturbed copies of kept frames: some within both thresholds, some not
        base = kept[k % len(kept)]
        axis = rng.normal(size=3)
        dR = Rotation.from_rotvec(axis / np.linalg.norm(axis) * math.radians(rng.uniform(0, 16))).as_matrix()
        cand = make_transform(base[:3, :3] @ dR, base[:3, 3] + rng.normal(0, 0.03, 3))
        ref_close = any(np.linalg.norm(cand[:3, 3] - K[:3, 3]) < 0.05
                        and math.degrees(rotation_angle(K[:3, :3], cand[:3, :3])) < 10.0 for K in kept)
        close += ref_close
        agree += (not sel.check(cand)[0]) == ref_close
    print(f"keyframe decisions equal to the loop reference: {agree}/200 ({close} too close)")
    assert agree == 200 and 20 < close < 180


def test_background_writer_fifo_bound_errors_discard_close():
    w = BackgroundWriter(max_pending=2)
    w.delay_s = 0.2
    out: list = []
    errors: list = []
    try:
        t0 = time.perf_counter()
        accepted = [w.submit(WriteJob(lambda k=k: out.append(k) or k)) for k in range(3)]
        submit_s = time.perf_counter() - t0
        forced = w.submit(WriteJob(lambda: out.append("meta"), kind="meta"), force=True)
        print(f"accepted {accepted} (+ forced meta {forced}) in {submit_s * 1000:.1f} ms; pending {w.pending()} "
              f"({w.pending('frame')} frames)")
        assert accepted == [True, True, False] and forced and submit_s < 0.1  # never waits for the writer
        assert w.pending("frame") == 2 and w.pending() == 3
        assert not w.wait_idle(0.05)
        assert w.wait_idle(5.0) and out == [0, 1, "meta"] and w.pending() == 0

        # a barrier waits for what was queued before it, not for what comes after
        w.delay_s = 0.15
        for k in range(2):
            w.submit(WriteJob(lambda k=k: out.append(("b", k))))
        ev = w.barrier()
        w.submit(WriteJob(lambda: out.append("after")), force=True)
        t0 = time.perf_counter()
        assert ev.wait(5.0)
        waited = time.perf_counter() - t0
        print(f"barrier passed after {waited:.2f} s; written by then: {out[3:]}")
        assert out[3:] == [("b", 0), ("b", 1)] and 0.2 < waited < 2.0  # two delayed jobs, the barrier itself not
        assert w.wait_idle(5.0) and out[-1] == "after"

        # a failing job: its on_error gets the exception, the thread keeps going, later jobs run
        def boom() -> None:
            raise OSError(28, "No space left on device")

        w.delay_s = 0.0
        done: list = []
        assert w.submit(WriteJob(boom, on_error=errors.append, on_done=done.append))
        assert w.submit(WriteJob(lambda: 7, on_done=done.append))
        assert w.wait_idle(5.0)
        print(f"error passed on: {errors!r}; then done {done}; failed={w.failed} done={w.done}")
        assert len(errors) == 1 and isinstance(errors[0], OSError) and done == [7] and w.failed == 1

        # discard drops what has not started; the running job finishes
        w.delay_s = 0.3
        dropped: list = []
        started = threading.Event()
        assert w.submit(WriteJob(lambda: (started.set(), out.append("a")), on_discard=lambda: dropped.append("a")))
        deadline = time.monotonic() + 5.0
        while not w.busy and time.monotonic() < deadline:  # the writer took "a" and sleeps in delay_s
            time.sleep(0.005)
        assert w.busy
        assert w.submit(WriteJob(lambda: out.append("b"), on_discard=lambda: dropped.append("b")))
        assert w.discard("frame") == 1 and dropped == ["b"]
        assert w.wait_idle(5.0) and out[-1] == "a" and "b" not in out

        # hold (a disk that does not answer): nothing starts, everything stays queued and can be discarded
        w.delay_s = 0.0
        w.hold = threading.Event()
        for k in range(2):
            assert w.submit(WriteJob(lambda k=k: out.append(("held", k)), on_discard=lambda: dropped.append("held")))
        time.sleep(0.2)
        print(f"held: pending {w.pending()}, busy {w.busy}")
        assert w.pending("frame") == 2 and not w.busy and not any(isinstance(o, tuple) and o[0] == "held" for o in out)
        assert w.discard("frame") == 2 and dropped.count("held") == 2
        assert w.submit(WriteJob(lambda: out.append("released")))
        w.hold.set()
        assert w.wait_idle(5.0) and out[-1] == "released"
        w.hold = None

        # close writes what is queued, then refuses new jobs
        w.delay_s = 0.0
        assert w.submit(WriteJob(lambda: out.append("last")))
        assert w.close(5.0) and out[-1] == "last" and w.closed
        assert not w.submit(WriteJob(lambda: out.append("late"))) and "late" not in out
        # a job stuck longer than close's timeout: close answers False in time and drops the rest
        slow = BackgroundWriter(max_pending=4)
        slow.delay_s = 0.5
        slow.submit(WriteJob(lambda: None))
        slow.submit(WriteJob(lambda: out.append("never")))
        t0 = time.perf_counter()
        ok = slow.close(0.1)
        print(f"close with a 0.5 s job and timeout 0.1 s: {ok} after {time.perf_counter() - t0:.2f} s")
        assert not ok and time.perf_counter() - t0 < 0.4
        time.sleep(0.7)
        assert "never" not in out
    finally:
        w.close(1.0)


def test_keyframe_selector_remove():
    sel = KeyframeSelector(min_translation_m=0.05, min_rotation_deg=10.0)
    A = make_transform(np.eye(3), [0.0, 0.0, 0.0])
    B = make_transform(np.eye(3), [1.0, 0.0, 0.0])
    sel.add(A)
    sel.add(B)
    assert not sel.check(A)[0]
    assert sel.remove(A) and len(sel) == 1 and sel.check(A)[0] and not sel.check(B)[0]
    assert not sel.remove(A)  # not there any more
    print(f"after remove: {len(sel)} kept; A allowed again: {sel.check(A)[0]}")
