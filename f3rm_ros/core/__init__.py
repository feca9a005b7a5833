"""The ROS-free core library of f3rm_ros.

Nothing under ``f3rm_ros.core`` imports rclpy or the generated ROS interfaces (a test checks this),
so a task planner or a notebook can use cameras, fields, training, feature extraction, the
synthetic world and grasp planning directly.
"""
