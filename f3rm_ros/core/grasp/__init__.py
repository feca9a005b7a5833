"""Language-guided 6-DoF grasp planning from demonstrations on a feature field (f3rm-method.md s. 3-4).

Modules: ``config`` (PlannerConfig, TaskConfig), ``task`` (demonstrations, task files, embedding,
retrieval), ``proposals`` (alpha grid, surface voxels, downsampling, outliers, rotations),
``language`` (similarity, language mask), ``collision``, ``optimize`` (batched Adam with pruning),
``planner`` (GraspPlanner), ``result`` (Grasp, PlanResult), ``oracle`` (an analytic field of a
synthetic scene for tests and the default tasks).
"""

from f3rm_ros.core.grasp.config import DEFAULT_NEGATIVES, PlannerConfig, TaskConfig
from f3rm_ros.core.grasp.planner import GraspPlanner
from f3rm_ros.core.grasp.result import Grasp, PlanOptions, PlanResult
from f3rm_ros.core.grasp.task import (ExtractorMismatchError, Task, TaskFormatError, check_extractor,
                                      load_default_tasks, load_task, load_tasks, make_task, retrieve_task,
                                      save_task, task_embedding)

__all__ = ["DEFAULT_NEGATIVES", "PlannerConfig", "TaskConfig", "GraspPlanner", "Grasp", "PlanOptions", "PlanResult",
           "ExtractorMismatchError", "Task", "TaskFormatError", "check_extractor", "load_default_tasks",
           "load_task", "load_tasks", "make_task", "retrieve_task", "save_task", "task_embedding"]
