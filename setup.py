"""pip install of the f3rm_ros Python package (core library, nodes, command-line tools).

On a robot, `colcon build` installs the same package through CMakeLists.txt (see README, "Layout").
"""

from setuptools import find_packages, setup

setup(
    name="f3rm_ros",
    version="0.1.0",
    description="Language-guided 6-DoF grasping with distilled feature fields, for ROS 2",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["f3rm_ros", "f3rm_ros.*"]),
    package_data={"f3rm_ros": ["core/sim/scenes/*.yaml", "core/grasp/tasks/*.npz", "py.typed"]},
    install_requires=["numpy", "scipy", "torch", "torchvision", "pyyaml", "pillow", "open_clip_torch", "timm",
                      "open3d"],
    entry_points={
        "console_scripts": [
            "f3rm-train = f3rm_ros.cli.train:main",
            "f3rm-sim = f3rm_ros.cli.sim:main",
            "f3rm-ros = f3rm_ros.cli.ros:main",
        ]
    },
)
