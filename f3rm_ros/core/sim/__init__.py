"""Synthetic tabletop world: scenes, ray-cast rendering with labels, a simulated camera, datasets,
ground-truth grasp checks. World frame: metres, z up, table top at z = 0 (see :mod:`.scene`).

Modules: :mod:`.meshes` (procedural objects with parts), :mod:`.scene` (YAML scenes),
:mod:`.render` (renderer), :mod:`.trajectory` (scanning poses), :mod:`.camera` (simulated camera),
:mod:`.export` (dataset writer), :mod:`.grasp_check` (ground-truth grasp check), :mod:`.families`
(random scenes from a seed with their queries; the development / evaluation seed split).
"""

from f3rm_ros.core.sim.scene import Scene, SceneObject, builtin_scene_names, load_scene, resolve_scene
from f3rm_ros.core.sim.yamlnodes import SceneError

__all__ = ["Scene", "SceneObject", "SceneError", "load_scene", "resolve_scene", "builtin_scene_names"]
