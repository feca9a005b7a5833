"""Launch the simulated world and the f3rm_ros nodes: sim_camera_node, capture_node, train_node, query_node.

    ros2 launch f3rm_ros sim.launch.py scene:=mug_bowl_box use_rviz:=true

The simulated wrist camera publishes camera/image_raw, camera/camera_info, camera/pose, the ground-truth
label images camera/labels and the label table camera/label_table in the same namespace, which are the
capture node's default inputs; the capture node stores the label images (synthetic-world label features)
and the train node distils label features by default here. Without ``ros2 launch``:
``f3rm-ros bringup config/bringup_sim.yaml`` (the same parameter files and overrides).
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
        DeclareLaunchArgument("scene", default_value="mug_bowl_box",
                              description="built-in scene (mug_bowl_box, screwdriver_mug_can, cluttered_table) "
                                          "or a scene YAML file"),
        DeclareLaunchArgument("use_rviz", default_value="false", description="also start RViz with config/f3rm.rviz"),
    ]
    sim_camera = Node(
        package="f3rm_ros", executable="sim_camera_node", name="sim_camera_node", namespace=namespace,
        respawn=True, respawn_delay=1.0,
        output="screen",
        parameters=[config("sim_camera_node.yaml"), {"scene": LaunchConfiguration("scene"),
                                                     "depth_topic": "camera/aligned_depth_to_color/image_raw"}],
    )
    capture = Node(
        package="f3rm_ros", executable="capture_node", name="capture_node", namespace=namespace,
        respawn=True, respawn_delay=1.0, output="screen",
        parameters=[config("capture_node.yaml"), {"labels_topic": "camera/labels",
                                                   "depth_topic": "camera/aligned_depth_to_color/image_raw",
                                                   "dataset_name": "sim_capture"}],
    )
    train = LifecycleNode(
        package="f3rm_ros", executable="train_node", name="train_node", namespace=namespace,
        respawn=True, respawn_delay=1.0, output="screen",
        # the synthetic world's scene settings (f3rm_ros/core/presets.py "synthetic"; a test holds them equal); the
        # captured depth is stored, trainings that want it add trainer.losses.depth_mult (preset "depth")
        parameters=[config("train_node.yaml"), {"features.extractor": "labels", "trainer.model.sampler.near": 0.2,
                                                "trainer.model.sampler.far": 5.0, "trainer.losses.feature_mult": 0.1}],
    )
    query = LifecycleNode(
        package="f3rm_ros", executable="query_node", name="query_node", namespace=namespace,
        respawn=True, respawn_delay=1.0, output="screen",
        # the synthetic table (world origin at its centre) instead of the reference robot-base box
        parameters=[config("query_node.yaml"), {"planner.workspace_min_m": [-0.35, -0.3, 0.005],
                                                "planner.workspace_max_m": [0.35, 0.3, 0.3]}],
    )
    rviz = Node(
        package="rviz2", executable="rviz2", name="rviz2", output="screen",
        arguments=["-d", config("f3rm.rviz")], condition=IfCondition(LaunchConfiguration("use_rviz")),
    )
    return LaunchDescription(args + [sim_camera, capture, train, query, rviz])
