"""ROS 2 layer: thin rclpy nodes over f3rm_ros.core (messages and parameters in, core calls, messages out)."""
