"""Workflows of the core: the steps that the CLI, the ROS nodes and the benchmarks all take, written once.

- :mod:`~f3rm_ros.core.workflows.train_scene`: dataset -> 2D features -> :class:`~f3rm_ros.core.training.Trainer`
  -> evaluation -> one run folder (``f3rm-train``, the ``TrainFields`` action, the training benchmarks).
- :mod:`~f3rm_ros.core.workflows.train_job`: ``TrainJob``, that workflow in a worker thread (the train node).
"""
