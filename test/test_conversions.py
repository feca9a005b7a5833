"""Message <-> numpy conversions (our small stand-ins for cv_bridge and sensor_msgs_py)."""

import math

import numpy as np
import pytest

pytest.importorskip("rclpy", reason="ROS message packages are not installed: run scripts/setup.sh first")

from geometry_msgs.msg import PoseStamped  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402

from f3rm_ros.core.cameras import CameraIntrinsics  # noqa: E402
from f3rm_ros.ros import conversions as cv  # noqa: E402


def test_every_supported_encoding_decodes_to_the_same_rgb():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    alpha = np.full((5, 7, 1), 200, np.uint8)
    variants = {"rgb8": rgb, "bgr8": rgb[..., ::-1], "rgba8": np.concatenate([rgb, alpha], 2),
                "bgra8": np.concatenate([rgb[..., ::-1], alpha], 2)}
    for enc, arr in variants.items():
        pad = 3  # rows padded beyond width*channels, as drivers do
        ch = arr.shape[2]
        rows = np.zeros((5, 7 * ch + pad), np.uint8)
        rows[:, : 7 * ch] = arr.reshape(5, -1)
        msg = Image(height=5, width=7, encoding=enc, step=7 * ch + pad, data=rows.tobytes())
        assert np.array_equal(cv.image_to_rgb(msg), rgb), enc
    mono = Image(height=5, width=7, encoding="mono8", step=7, data=rgb[..., 0].tobytes())
    assert np.array_equal(cv.image_to_rgb(mono), np.repeat(rgb[..., :1], 3, 2))
    assert np.array_equal(cv.image_to_rgb(cv.rgb_to_image(rgb)), rgb)


@pytest.mark.parametrize("msg, reason", [
    (Image(height=2, width=2, encoding="16UC1", step=4, data=bytes(8)), "unsupported image encoding"),
    (Image(height=2, width=2, encoding="rgb8", step=6, data=bytes(5)), "expected 12"),
    (Image(height=0, width=2, encoding="rgb8", step=6, data=b""), "no pixels"),
    (Image(height=2, width=2, encoding="rgb8", step=2, data=bytes(4)), "step"),
])
def test_bad_images_raise_a_reason(msg, reason):
    with pytest.raises(cv.ConversionError, match=reason):
        cv.image_to_rgb(msg)


def test_compressed_images_decode_and_garbage_is_refused():
    import io

    from PIL import Image as PILImage

    rgb = np.random.default_rng(1).integers(0, 256, size=(6, 4, 3), dtype=np.uint8)
    buf = io.BytesIO()
    PILImage.fromarray(rgb).save(buf, format="PNG")
    assert np.array_equal(cv.compressed_to_rgb(CompressedImage(format="png", data=buf.getvalue())), rgb)
    with pytest.raises(cv.ConversionError, match="cannot decode"):
        cv.compressed_to_rgb(CompressedImage(format="jpeg", data=b"not an image"))


def test_camera_info_round_trip_shifts_the_principal_point_by_half_a_pixel():
    intr = CameraIntrinsics(fx=500.0, fy=510.0, cx=320.5, cy=240.5, width=640, height=480, k1=-0.1, p2=0.001)
    msg = cv.intrinsics_to_camera_info(intr, frame_id="camera_optical_frame")
    assert msg.k[2] == 320.0 and msg.k[5] == 240.0  # ROS: integer pixel centres
    assert cv.camera_info_to_intrinsics(msg) == intr
    with pytest.raises(cv.ConversionError, match="K is not a valid"):
        cv.camera_info_to_intrinsics(CameraInfo(width=640, height=480))
    bad = cv.intrinsics_to_camera_info(intr)
    bad.distortion_model = "equidistant"
    with pytest.raises(cv.ConversionError, match="distortion model"):
        cv.camera_info_to_intrinsics(bad)


def test_poses_round_trip_and_nan_is_refused():
    from f3rm_ros.core.geometry import look_at_opencv

    T = look_at_opencv([0.4, 0.1, 0.5], [0.0, 0.0, 0.0])
    msg = cv.matrix_to_pose_msg(T, frame_id="world")
    assert msg.header.frame_id == "world"
    assert np.allclose(cv.pose_msg_to_matrix(msg), T, atol=1e-9)
    msg.pose.position.x = math.nan
    with pytest.raises(cv.ConversionError, match="non-finite"):
        cv.pose_msg_to_matrix(msg)
    zero = PoseStamped()
    zero.pose.orientation.w = 0.0  # ROS defaults to the identity quaternion
    with pytest.raises(cv.ConversionError, match="zero quaternion"):
        cv.pose_msg_to_matrix(zero)


def test_point_cloud_round_trip_with_scalar_field_and_colours():
    rng = np.random.default_rng(2)
    xyz = rng.normal(size=(50, 3)).astype(np.float32)
    sim = rng.random(50).astype(np.float32)
    rgb = rng.integers(0, 256, size=(50, 3), dtype=np.uint8)
    msg = cv.make_point_cloud(xyz, {"similarity": sim}, rgb=rgb, frame_id="world")
    assert [f.name for f in msg.fields] == ["x", "y", "z", "similarity", "rgb"] and msg.width == 50
    out = cv.read_point_cloud(msg)
    assert np.array_equal(out["xyz"], xyz) and np.array_equal(out["similarity"], sim)
    assert np.array_equal(out["rgb"], rgb)
    if cv.HAVE_SENSOR_MSGS_PY:  # the real package, where installed, reads our clouds the same way
        from sensor_msgs_py import point_cloud2

        pts = point_cloud2.read_points_numpy(msg, field_names=["x", "y", "z"])
        assert np.allclose(pts, xyz)
    empty = cv.make_point_cloud(np.zeros((0, 3)), {"similarity": np.zeros(0)})
    assert cv.read_point_cloud(empty)["xyz"].shape == (0, 3)
    with pytest.raises(cv.ConversionError, match="values for"):
        cv.make_point_cloud(xyz, {"similarity": sim[:3]})


def test_label_images_round_trip_in_both_byte_orders_and_bad_ones_are_refused():
    labels = np.random.default_rng(3).integers(0, 65536, size=(4, 5)).astype(np.uint16)
    msg = cv.labels_to_image(labels, frame_id="camera_optical_frame")
    assert msg.encoding == "mono16" and np.array_equal(cv.image_to_labels(msg), labels)
    big = Image(height=4, width=5, encoding="16UC1", is_bigendian=1, step=12,
                data=np.pad(labels.astype(">u2").view(np.uint8).reshape(4, 10), ((0, 0), (0, 2))).tobytes())
    assert np.array_equal(cv.image_to_labels(big), labels)
    with pytest.raises(cv.ConversionError, match="unsupported label image encoding"):
        cv.image_to_labels(cv.rgb_to_image(np.zeros((2, 2, 3), np.uint8)))
    with pytest.raises(cv.ConversionError, match="expected 40"):
        cv.image_to_labels(Image(height=4, width=5, encoding="mono16", step=10, data=bytes(39)))
    with pytest.raises(cv.ConversionError, match="labels must be"):
        cv.labels_to_image(np.zeros((2, 2, 3), np.uint16))


def test_label_table_json_is_checked():
    table = cv.parse_label_table_json('{"1": {"object": "table", "category": "table", "part": null}}')
    assert table["1"]["object"] == "table"
    for bad, reason in (("[1, 2]", "must map"), ("{nope", "not valid JSON"),
                        ('{"0": {"object": "x"}}', "not an id")):
        with pytest.raises(cv.ConversionError, match=reason):
            cv.parse_label_table_json(bad)


def test_depth_image_round_trip_encodings_and_errors():
    from f3rm_ros.ros.conversions import ConversionError, depth_to_image, image_to_depth

    z = np.array([[0.0, 0.5004, np.nan], [1.2346, -1.0, 70.0]])
    msg = depth_to_image(z, frame_id="cam")
    assert msg.encoding == "16UC1" and msg.step == 6 and msg.header.frame_id == "cam"
    got = image_to_depth(msg)
    # millimetres, no data (0, NaN, negative) -> 0, clipped at 65.535 m
    assert got.dtype == np.float32 and np.allclose(got, [[0.0, 0.5, 0.0], [1.235, 0.0, 65.535]], atol=1e-6)
    be = Image(height=1, width=2, encoding="32FC1", is_bigendian=1, step=8,
               data=np.array([1.5, np.inf], dtype=">f4").tobytes())
    assert np.array_equal(image_to_depth(be), np.array([[1.5, 0.0]], np.float32))
    with pytest.raises(ConversionError, match="unsupported depth image encoding 'rgb8'"):
        image_to_depth(Image(height=1, width=1, encoding="rgb8", step=3, data=b"\x00" * 3))
    with pytest.raises(ConversionError, match="data has 3 bytes"):
        image_to_depth(Image(height=1, width=2, encoding="16UC1", step=4, data=b"\x00" * 3))
    with pytest.raises(ConversionError, match="depth must be"):
        depth_to_image(np.zeros(3))


def test_grasps_round_trip_with_source_and_quality_terms():
    """core Grasp -> msg/Grasp -> the client's dict: the tool-frame pose, source, task and every quality term."""
    from f3rm_ros.core.geometry import look_at_opencv
    from f3rm_ros.core.grasp.result import Grasp

    T_g = look_at_opencv([0.3, 0.1, 0.2], [0.0, 0.0, 0.0])
    T_tool = T_g.copy()
    T_tool[:3, 3] += (0.0, 0.0, 0.1)
    quality = {"antipodal_deg": 3.25, "contact_width_m": 0.031, "contact_similarity": 0.875, "clearance_m": 0.003,
               "quality": 0.8125}
    demo = Grasp(T_world_gripper=T_g, score=1.5, width=0.08, task="grasp mug by handle", rank=0, T_world_tool=T_tool,
                 source="demo", quality=quality)
    m = cv.grasp_to_msg(demo, frame_id="world")
    assert m.source == "demo" and m.task == "grasp mug by handle" and m.rank == 0 and m.pose.header.frame_id == "world"
    assert (m.antipodal_angle_deg, m.contact_width, m.language_similarity, m.quality) == pytest.approx(
        (3.25, 0.031, 0.875, 0.8125), rel=1e-6)
    assert m.clearance == pytest.approx(0.003, rel=1e-6)
    d = cv.grasp_msg_to_dict(m)
    assert np.allclose(d["pose"], T_tool, atol=1e-6), "the message carries the tool frame"
    assert d["source"] == "demo" and d["task"] == demo.task and d["width"] == pytest.approx(0.08)
    assert d["quality"] == pytest.approx(quality, rel=1e-6) and d["language_similarity"] == pytest.approx(0.875)
    geo = Grasp(T_world_gripper=T_g, score=0.7, width=0.08, task="", rank=1, source="geometric")
    m = cv.grasp_to_msg(geo)
    assert m.source == "geometric" and m.task == "" and m.quality == 0.0, "no quality terms: zeros"
    assert np.allclose(cv.pose_msg_to_matrix(m.pose), T_g, atol=1e-6), "no tool pose: the gripper frame"


def test_grasp_markers_are_coloured_by_source_with_a_legend():
    from f3rm_ros.core.grasp.result import Grasp
    from f3rm_ros.core.gripper import Gripper
    from f3rm_ros.ros import visuals

    def grasp(rank, source, task=""):
        T = np.eye(4)
        T[0, 3] = 0.1 * rank
        return Grasp(T_world_gripper=T, score=1.0 - rank, width=0.08, task=task, rank=rank, source=source)

    grasps = [grasp(0, "demo", "mug_handle"), grasp(1, "geometric"), grasp(2, "demo", "mug_handle")]
    arr = visuals.grasp_markers(grasps, Gripper(), "world")
    assert arr.markers[0].action == arr.markers[0].DELETEALL
    boxes = [m for m in arr.markers[1:] if m.type == m.CUBE]
    per = len(boxes) // 3
    colours = [(b.color.r, b.color.g, b.color.b, b.color.a) for b in boxes[::per]]
    assert colours[0] == pytest.approx(visuals.SOURCE_COLORS["demo"][0])
    assert colours[1] == pytest.approx(visuals.SOURCE_COLORS["geometric"][1])
    assert colours[2][:3] == pytest.approx(visuals.SOURCE_COLORS["demo"][1][:3]) and colours[2][3] < colours[1][3]
    assert colours[0][1] > colours[0][2] and colours[1][2] > colours[1][0], "demo green, geometric blue"
    texts = [m.text for m in arr.markers if m.type == m.TEXT_VIEW_FACING]
    assert texts[0] == "#0 1.000 demo: mug_handle" and visuals.LEGEND in texts and "#1 0.000 geometric" in texts
    assert len({m.id for m in arr.markers[1:]}) == len(arr.markers) - 1, "marker ids are unique"
