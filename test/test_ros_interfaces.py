"""Every f3rm_ros service and the training action, round-tripped between real nodes over DDS.

The server runs in a child process (its own rclpy context and DDS participant); the client runs
here. Each reply is derived field by field from its request, so a field lost or mangled anywhere
(interface definition, generated code, middleware) fails a check.
"""

import subprocess
import sys

import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed: run scripts/setup.sh first")


@pytest.fixture(scope="module")
def echo_server():
    proc = subprocess.Popen([sys.executable, "-m", "f3rm_ros.ros.selftest", "serve"])
    yield proc
    proc.terminate()
    try:  # SIGTERM shuts it down; on a loaded 2-core machine that took over 10 s once (a fresh-clone CI run)
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        pytest.fail("the selftest echo server did not stop within 60 s of SIGTERM (killed)")


def test_every_interface_round_trips(echo_server):
    from f3rm_ros.ros.selftest import SelfTestClient

    with rclpy.init():
        client = SelfTestClient()
        failures = client.run_all()
        client.destroy_node()
    assert echo_server.poll() is None, "the server process died during the round trip"
    assert failures == []


def test_generated_types_have_documented_fields():
    from f3rm_ros.action import TrainFields
    from f3rm_ros.msg import CaptureStatus, Grasp
    from f3rm_ros.srv import CaptureControl, LoadField, QueryGrasps, QuerySimilarity, RecordDemo

    g = Grasp()
    assert set(g.get_fields_and_field_types()) == {
        "pose", "score", "language_similarity", "opening_width", "task", "rank", "source", "antipodal_angle_deg",
        "contact_width", "clearance", "quality"}
    assert g.get_fields_and_field_types()["pose"] == "geometry_msgs/PoseStamped"
    assert "grasps" in QueryGrasps.Response.get_fields_and_field_types()
    assert QuerySimilarity.Response.get_fields_and_field_types()["heatmap"] == "sensor_msgs/PointCloud2"
    assert (CaptureControl.Request.START, CaptureControl.Request.STOP,
            CaptureControl.Request.CLEAR, CaptureControl.Request.SAVE) == (0, 1, 2, 3)
    assert "checkpoint_path" in LoadField.Request.get_fields_and_field_types()
    assert "gripper_pose" in RecordDemo.Request.get_fields_and_field_types()
    assert {"step", "total_steps", "eta", "psnr"} <= set(TrainFields.Feedback.get_fields_and_field_types())
    assert "reject_reasons" in CaptureStatus.get_fields_and_field_types()
