"""Launch the ROBOT HOST of a two-host setup: the camera relay beside the camera driver.

    ros2 launch f3rm_ros robot_host.launch.py image_topic:=/camera/color/image_raw \
        camera_info_topic:=/camera/color/camera_info pose_topic:=/camera/pose

The relay (f3rm_ros/ros/camera_relay_node.py) republishes the driver's topics in the f3rm namespace for the
GPU host (launch/gpu_host.launch.py): colour compressed (JPEG) on camera/image_raw/compressed, registered depth
(``depth_topic``, '' = none) as compressedDepth, camera info and pose unchanged; reliable and transient-local
with a history of frames, so a short link outage or a restarted GPU host loses nothing. Both hosts need the
same ROS_DOMAIN_ID and discovery settings (README, "On a robot"). Without ``ros2 launch``:
``f3rm-ros bringup config/bringup_robot_host.yaml``.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare


def generate_launch_description():
    share = FindPackageShare("f3rm_ros")
    args = [
        DeclareLaunchArgument("namespace", default_value="f3rm", description="namespace of every f3rm node"),
        DeclareLaunchArgument("image_topic", default_value="/camera/color/image_raw",
                              description="colour image (sensor_msgs/Image) of the wrist camera"),
        DeclareLaunchArgument("camera_info_topic", default_value="/camera/color/camera_info",
                              description="sensor_msgs/CameraInfo of that image"),
        DeclareLaunchArgument("pose_topic", default_value="/camera/pose",
                              description="camera pose (PoseStamped, world -> camera optical frame)"),
        DeclareLaunchArgument("depth_topic", default_value="",
                              description="registered depth (16UC1/32FC1), e.g. /camera/aligned_depth_to_color/"
                                          "image_raw; '' = none"),
    ]
    relay = Node(
        package="f3rm_ros", executable="camera_relay_node", name="camera_relay_node",
        namespace=LaunchConfiguration("namespace"), respawn=True, respawn_delay=1.0, output="screen",
        parameters=[PathJoinSubstitution([share, "config", "camera_relay_node.yaml"]),
                    {"image_in": LaunchConfiguration("image_topic"),
                     "camera_info_in": LaunchConfiguration("camera_info_topic"),
                     "pose_in": LaunchConfiguration("pose_topic"), "depth_in": LaunchConfiguration("depth_topic")}],
    )
    return LaunchDescription(args + [relay])
