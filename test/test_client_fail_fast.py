"""F3RMClient notices a dead server (issue 20): nodes in child processes over real DDS are SIGKILLed while a
request waits; the client raises ServerGone within 2 s (not at its deadline), says so, and the same client is
served again once the node is back. A deadline that passes while the node lives is an honest Timeout."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable: run the tests through scripts/test.sh (env.sh)")

from node_helpers import logs_on_failure, start_node, stop_process, wait_for  # noqa: E402
from test_node_train import TINY  # noqa: E402

NS = "/t_failfast"


def _in_thread(fn, *args, **kw):
    """Run ``fn`` in a thread; returns (thread, box) where box gets "result"/"error" and "t" (monotonic, at end)."""
    box: dict = {}

    def run():
        try:
            box["result"] = fn(*args, **kw)
        except Exception as e:  # noqa: BLE001 - handed to the test
            box["error"] = e
        box["t"] = time.monotonic()

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th, box


@pytest.fixture
def client():
    from f3rm_ros.ros.client import F3RMClient

    rclpy.init()
    c = F3RMClient(namespace=NS)
    yield c
    c.close()
    rclpy.shutdown()


def test_query_node_killed_while_a_request_waits(client, tmp_path):
    from f3rm_ros.ros.client import RequestFailed, ServerGone, ServiceUnavailable

    params = {"checkpoint_root": str(tmp_path / "ckpt"), "tasks_dir": str(tmp_path / "tasks"), "checkpoint_topic": '""',
              "device": "cpu"}
    log = tmp_path / "query_node.log"
    proc = start_node("query_node", NS, params, log)
    try:
        with logs_on_failure(log):
            with pytest.raises(RequestFailed, match="no field"):  # served: the node is up
                client.query_similarity("bowl", timeout=60)
            # its first request waited for the server to match the client's response reader (MATCH_SETTLE_S)
            sim = client.name(client.names.query_node, "query_similarity")
            first = client._matched.get(sim)
            assert first is not None
            # the request is in flight when the node dies: stopped first so that it cannot answer, then killed
            proc.send_signal(signal.SIGSTOP)
            th, box = _in_thread(client.query_grasps, "mug handle", timeout=60)
            time.sleep(0.3)
            t_kill = time.monotonic()
            proc.kill()
            proc.wait(timeout=10)
            th.join(timeout=30)
            took = box["t"] - t_kill
            print(f"query node SIGKILLed: {type(box.get('error')).__name__} after {took:.2f} s: {box.get('error')}")
            assert isinstance(box.get("error"), ServerGone), box
            assert took < 2.0 and "went away" in str(box["error"])
            # nobody there now: a new call waits reconnect_timeout for the node to come back (a respawn), not its
            # whole deadline (the dead node stays in the ROS graph for ~20 s), and says it is not alive
            t0 = time.monotonic()
            client.reconnect_timeout = 2.0
            with pytest.raises(ServiceUnavailable, match="has not been alive"):
                client.query_similarity("bowl", timeout=60.0)
            print(f"call on the dead node: ServiceUnavailable after {time.monotonic() - t0:.1f} s")
            assert time.monotonic() - t0 < 4.0
            client.reconnect_timeout = 30.0
            # the node comes back: the same client is served by the new process (nothing rebuilt)
            proc = start_node("query_node", NS, params, tmp_path / "query_node2.log")
            with pytest.raises(RequestFailed, match="no field"):
                client.query_similarity("bowl", timeout=60)
            assert client._matched[sim] != first  # the new process's server got its own wait before the request
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
        stop_process(proc)


def _dataset(tmp_path):
    from f3rm_ros.core.config import from_dict
    from f3rm_ros.core.sim import resolve_scene
    from f3rm_ros.core.sim.export import SimDatasetConfig, render_dataset

    data = tmp_path / "data"
    render_dataset(resolve_scene("mug_bowl_box"), data / "scan",
                   from_dict(SimDatasetConfig, {"width": 32, "height": 24, "write_depth": False,
                                                "trajectory": {"num_views": 6}}))
    return data


def test_train_node_killed_mid_training(client, tmp_path):
    """ServerGone within 2 s of a SIGKILL mid-training; the restarted node resumes the run through the action
    (resume "latest") from its last checkpoint, in its folder, to its own step budget; a new run that is behind
    says that its checkpoints are now the newest ones."""
    import json

    from f3rm_ros.ros.client import RequestFailed, ServerGone, Timeout

    data = _dataset(tmp_path)
    params = {"data_root": str(data), "checkpoint_root": str(tmp_path / "ckpt"), **TINY}
    log = tmp_path / "train_node.log"
    proc = start_node("train_node", NS, params, log)
    try:
        with logs_on_failure(log, tmp_path / "train_node2.log"):
            with pytest.raises(RequestFailed, match="no interrupted or cancelled run"):
                client.train(feature_type="none", resume="latest", timeout=60.0)
            # a deadline that passes while the node lives: Timeout, the goal cancelled, and said where it stopped
            with pytest.raises(Timeout) as e:
                client.train(steps=100000, feature_type="none", timeout=4.0)
            print("timeout:", e.value)
            assert "goal cancelled: stopped at step" in str(e.value) and "last checkpoint" in str(e.value)
            # the node is killed mid-training: ServerGone within 2 s (the deadline is an hour)
            far = threading.Event()
            th, box = _in_thread(client.train, steps=400, feature_type="none", timeout=3600.0,
                                 feedback_cb=lambda f: far.set() if f.step >= 12 else None)
            assert far.wait(60), f"no feedback past step 12: {box}"
            t_kill = time.monotonic()
            proc.kill()
            proc.wait(timeout=10)
            th.join(timeout=30)
            took = box["t"] - t_kill
            print(f"train node SIGKILLed: {type(box.get('error')).__name__} after {took:.2f} s: {box.get('error')}")
            assert isinstance(box.get("error"), ServerGone), box
            assert took < 2.0 and "at step" in str(box["error"]) and "cancel" not in str(box["error"])
            # back again: the same client resumes the killed run from its last checkpoint to its 400 steps
            proc = start_node("train_node", NS, params, tmp_path / "train_node2.log")
            out = client.train(resume="latest", timeout=300.0)
            run = Path(out.checkpoint_path).parents[1]
            info = json.loads((run / "run.json").read_text())
            print(f"resumed: {out.message}; resumed_from {info['resumed_from']}")
            assert out.steps_done == 400 and info["result"]["step"] == 400 and info["num_steps"] == 400
            assert info["resumed_from"] and Path(info["resumed_from"]).parents[1] == run
            assert "-none-" in run.name and len([p for p in run.parent.iterdir() if p.is_dir()]) == 2
            # a new run that stays behind the finished one says so
            new = client.train(steps=3, feature_type="none", timeout=120.0)
            print("new run:", new.message)
            assert new.steps_done == 3 and "note: run" in new.message and "further along" in new.message
    finally:
        stop_process(proc)
        wait_for(lambda: proc.poll() is not None, 30, "the train node to exit")
