"""Launch the f3rm_ros nodes for a real robot: capture_node, train_node, query_node (+ RViz on request).

    ros2 launch f3rm_ros robot.launch.py image_topic:=/camera/color/image_raw \
        camera_info_topic:=/camera/color/camera_info pose_topic:=/camera/pose

Parameters come from config/<node>.yaml (installed to share/f3rm_ros/config); the camera topics are
remapped to the capture node's inputs (camera/image_raw, camera/camera_info, camera/pose). train_node
and query_node are lifecycle nodes that configure and activate themselves (parameter autostart: true),
so no lifecycle manager is needed. A node that dies is started again after a second (respawn; the query
node then restores the field it served). Without ``ros2 launch``: ``f3rm-ros bringup config/bringup_robot.yaml``.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
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
        DeclareLaunchArgument("image_topic", default_value="/camera/color/image_raw",
                              description="colour image (sensor_msgs/Image) of the wrist camera"),
        DeclareLaunchArgument("camera_info_topic", default_value="/camera/color/camera_info",
                              description="sensor_msgs/CameraInfo of that image"),
        DeclareLaunchArgument("pose_topic", default_value="/camera/pose",
                              description="camera pose (PoseStamped, world -> camera optical frame)"),
        DeclareLaunchArgument("use_rviz", default_value="false", description="also start RViz with config/f3rm.rviz"),
    ]
    capture = Node(
        package="f3rm_ros", executable="capture_node", name="capture_node", namespace=namespace,
        respawn=True, respawn_delay=1.0, output="screen",
        parameters=[config("capture_node.yaml")],
        remappings=[("camera/image_raw", LaunchConfiguration("image_topic")),
                    ("camera/camera_info", LaunchConfiguration("camera_info_topic")),
                    ("camera/pose", LaunchConfiguration("pose_topic"))],
    )
    train = LifecycleNode(
        package="f3rm_ros", executable="train_node", name="train_node", namespace=namespace,
        respawn=True, respawn_delay=1.0, output="screen",
        parameters=[config("train_node.yaml")],
    )
    query = LifecycleNode(
        package="f3rm_ros", executable="query_node", name="query_node", namespace=namespace,
        respawn=True, respawn_delay=1.0, output="screen",
        parameters=[config("query_node.yaml")],
    )
    rviz = Node(
        package="rviz2", executable="rviz2", name="rviz2", output="screen",
        arguments=["-d", config("f3rm.rviz")], condition=IfCondition(LaunchConfiguration("use_rviz")),
    )
    return LaunchDescription(args + [capture, train, query, rviz])
