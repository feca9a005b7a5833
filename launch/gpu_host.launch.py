"""Launch the GPU HOST of a two-host setup: capture (from the robot host's relay), train and query nodes.

    ros2 launch f3rm_ros gpu_host.launch.py data_root:=/data/f3rm

The capture node reads the compressed topics of the robot host's camera_relay_node (launch/robot_host.launch.py)
with the relay's QoS (``input_qos: relay``) and writes the dataset here, where the train node reads it; queries
are answered here too. ``depth:=true`` also stores the relayed depth. Without ``ros2 launch``:
``f3rm-ros bringup config/bringup_gpu_host.yaml``.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition, UnlessCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    share = FindPackageShare("f3rm_ros")
    namespace = LaunchConfiguration("namespace")

    def config(name):
        return PathJoinSubstitution([share, "config", name])

    args = [
        DeclareLaunchArgument("namespace", default_value="f3rm", description="namespace of every f3rm node"),
        DeclareLaunchArgument("data_root", default_value="~/f3rm_data", description="where datasets are written"),
        DeclareLaunchArgument("depth", default_value="false", description="also capture the relayed depth"),
    ]
    link = {"use_compressed": True, "input_qos": "relay", "pose_buffer_s": 30.0, "pose_wait_s": 2.0,
            "max_pending": 128, "max_pending_writes": 128,
            "data_root": LaunchConfiguration("data_root")}
    capture = Node(
        package="f3rm_ros", executable="capture_node", name="capture_node", namespace=namespace, respawn=True,
        respawn_delay=1.0, output="screen",
        parameters=[config("capture_node.yaml"), link], condition=UnlessCondition(LaunchConfiguration("depth")),
    )
    capture_depth = Node(
        package="f3rm_ros", executable="capture_node", name="capture_node", namespace=namespace, respawn=True,
        respawn_delay=1.0, output="screen",
        parameters=[config("capture_node.yaml"), link, {"depth_topic": "camera/aligned_depth_to_color/image_raw"}],
        condition=IfCondition(LaunchConfiguration("depth")),
    )
    train = LifecycleNode(
        package="f3rm_ros", executable="train_node", name="train_node", namespace=namespace, respawn=True,
        respawn_delay=1.0, output="screen",
        parameters=[config("train_node.yaml"), {"data_root": LaunchConfiguration("data_root")}],
    )
    query = LifecycleNode(
        package="f3rm_ros", executable="query_node", name="query_node", namespace=namespace, respawn=True,
        respawn_delay=1.0, output="screen",
        parameters=[config("query_node.yaml")],
    )
    return LaunchDescription(args + [capture, capture_depth, train, query])
