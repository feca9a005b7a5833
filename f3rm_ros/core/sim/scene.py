"""Tabletop scenes: a table and objects with names, categories, parts, poses and materials.

World frame: metres, z up, origin at the centre of the table top (the table top is z = 0; the
table occupies ``z in [-thickness, 0]``). Object meshes are in their own frame with the base on
z = 0, so an object standing on the table has position z = 0.

YAML schema (every key below is optional unless marked *required*; unknown keys are errors)::

    name: mug_bowl_box                   # required
    description: "free text"
    table:
      size: [1.0, 0.8, 0.04]             # x, y, thickness (metres)
      color: [0.62, 0.47, 0.33]          # RGB in [0, 1]
      texture: {type: wood, color2: [0.5, 0.36, 0.24], scale: 0.03}
    objects:                             # required, at least one
      - name: red mug                    # required; what a user types; unique
        category: mug                    # default: the generator name
        synonyms: [cup, coffee mug]
        mesh: {generator: mug, params: {radius: 0.04}}   # required: generator (params: numbers in
        #                                                  #     [0, 10], true/false, or lists such as
        #                                                  #     the box's size: [0.06, 0.05, 0.12]) ...
        # mesh: {file: meshes/drill.ply, scale: 0.001}    # ... or a PLY/OBJ/STL file (relative paths
        #                                                  #     are relative to the YAML file)
        pose:                            # required
          position: [0.10, 0.05, 0.0]    # metres, world frame
          yaw_deg: 30                    # or rpy_deg: [r, p, y] (extrinsic xyz) or quat_xyzw: [x, y, z, w]
        color: [0.8, 0.1, 0.1]
        texture: {type: stripes, color2: [1, 1, 1], scale: 0.01}   # none|checker|stripes|noise|wood
        specular: 0.3                    # specular strength in [0, 1]
        part_colors: {handle: [0.1, 0.1, 0.1]}
        parts:                           # part labels for file meshes (generators name their own)
          handle: {triangles: [0, 1, 2]} # or {vertices: [...]} (a triangle whose 3 vertices are
                                         #    listed) or {box: {min: [...], max: [...]}} (object
                                         #    frame; triangles whose centroid lies inside)

Errors (:class:`~f3rm_ros.core.sim.yamlnodes.SceneError`) name the file, the line and the setting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from f3rm_ros.core.geometry import make_transform, quat_to_matrix
from f3rm_ros.core.sim.meshes import GENERATORS, PartMesh, generate, make_box
from f3rm_ros.core.sim.yamlnodes import SceneError, YNode, load_yaml_nodes, load_yaml_text

__all__ = ["Material", "SceneObject", "Scene", "load_scene", "load_scene_text", "builtin_scene_names",
           "builtin_scene_path", "resolve_scene", "SceneError", "TEXTURES"]

TEXTURES = ("none", "checker", "stripes", "noise", "wood")
SCENES_DIR = Path(__file__).resolve().parent / "scenes"


@dataclass
class Material:
    """Surface appearance: base colour, optional procedural texture (object-frame), specular strength."""

    color: tuple[float, float, float] = (0.7, 0.7, 0.7)
    texture: str = "none"
    color2: tuple[float, float, float] = (0.3, 0.3, 0.3)
    scale: float = 0.02
    specular: float = 0.25


@dataclass
class SceneObject:
    """One object (or the table) in the world.

    Attributes:
        name: instance name a user would type ("red mug").
        category: kind ("mug").
        synonyms: other names ("cup").
        mesh: geometry and part labels in the object frame.
        T_world_obj: (4, 4) pose in the world frame.
        material: appearance; ``part_colors`` overrides the colour per part name.
    """

    name: str
    category: str
    synonyms: list[str]
    mesh: PartMesh
    T_world_obj: np.ndarray
    material: Material = field(default_factory=Material)
    part_colors: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    line: int = 0
    generator: str | None = None
    generator_params: dict[str, float] = field(default_factory=dict)

    def world_vertices(self) -> np.ndarray:
        """[V, 3] mesh vertices in the world frame."""
        return np.einsum("ij,kj->ik", self.mesh.vertices, self.T_world_obj[:3, :3]) + self.T_world_obj[:3, 3]


@dataclass
class Scene:
    """A table plus objects. ``entities[0]`` is the table, then the objects in file order."""

    name: str
    description: str
    table: SceneObject
    objects: list[SceneObject]
    source: str = ""

    @property
    def entities(self) -> list[SceneObject]:
        return [self.table] + list(self.objects)

    def object(self, name: str) -> SceneObject:
        for o in self.entities:
            if o.name == name:
                return o
        raise KeyError(f"no object named {name!r}; objects are {[o.name for o in self.entities]}")

    def label_table(self) -> tuple[dict[str, dict], list[np.ndarray]]:
        """Label ids (the ``f3rm_labels`` table of :mod:`f3rm_ros.core.sim.export`) and the label id of every triangle.

        Ids start at 1 (0 = nothing hit): the table first, then per object the triangles without a
        part (part None) and each named part, in the mesh's part order.

        Returns:
            (table {"<id>": {"object", "category", "part", "synonyms"}}, per entity [F] uint16 label ids)
        """
        table: dict[str, dict] = {}
        tri_labels: list[np.ndarray] = []
        next_id = 1
        for ent in self.entities:
            parts = ent.mesh.tri_part
            lut = np.zeros(len(ent.mesh.part_names) + 1, dtype=np.uint16)  # index part+1
            used = set(np.unique(parts).tolist())
            for pi in [-1] + list(range(len(ent.mesh.part_names))):
                if pi not in used:
                    continue
                table[str(next_id)] = {"object": ent.name, "category": ent.category,
                                       "part": None if pi < 0 else ent.mesh.part_names[pi],
                                       "synonyms": list(ent.synonyms)}
                lut[pi + 1] = next_id
                next_id += 1
            if next_id > 65535:
                raise ValueError("more than 65535 labels do not fit a 16-bit label image")
            tri_labels.append(lut[parts + 1])
        return table, tri_labels


# ----------------------------------------------------------------------------------------- parsing
def _color(y: YNode) -> tuple[float, float, float]:
    return tuple(y.vector(3, 0.0, 1.0))  # type: ignore[return-value]


def _material(m: dict[str, YNode], base: Material) -> Material:
    mat = Material(color=base.color, texture=base.texture, color2=base.color2, scale=base.scale,
                   specular=base.specular)
    if "color" in m:
        mat.color = _color(m["color"])
    if "specular" in m:
        mat.specular = m["specular"].number(0.0, 1.0)
    if "texture" in m:
        t = m["texture"].mapping(("type", "color2", "scale"), required=("type",))
        mat.texture = t["type"].string()
        if mat.texture not in TEXTURES:
            raise t["type"].error(f"unknown texture {mat.texture!r}; valid ones are {list(TEXTURES)}")
        if "color2" in t:
            mat.color2 = _color(t["color2"])
        if "scale" in t:
            mat.scale = t["scale"].number(1e-4, 10.0)
    return mat


def _pose(y: YNode) -> np.ndarray:
    p = y.mapping(("position", "yaw_deg", "rpy_deg", "quat_xyzw"), required=("position",))
    pos = np.array(p["position"].vector(3, -100.0, 100.0))
    rot_keys = [k for k in ("yaw_deg", "rpy_deg", "quat_xyzw") if k in p]
    if len(rot_keys) > 1:
        raise y.error(f"give only one of yaw_deg, rpy_deg, quat_xyzw (got {rot_keys})")
    R = np.eye(3)
    if "yaw_deg" in p:
        a = np.deg2rad(p["yaw_deg"].number())
        R = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1.0]])
    elif "rpy_deg" in p:
        from scipy.spatial.transform import Rotation

        R = Rotation.from_euler("xyz", p["rpy_deg"].vector(3), degrees=True).as_matrix()
    elif "quat_xyzw" in p:
        q = np.array(p["quat_xyzw"].vector(4))
        if np.linalg.norm(q) < 1e-9:
            raise p["quat_xyzw"].error("quaternion must be non-zero")
        R = quat_to_matrix(q)
    return make_transform(R, pos)


def _load_mesh_file(y: YNode, path: Path, scale: float) -> PartMesh:
    import open3d as o3d

    if path.suffix.lower() not in (".ply", ".obj", ".stl"):
        raise y.error(f"unsupported mesh format {path.suffix!r} (use .ply, .obj or .stl)")
    if not path.is_file():
        raise y.error(f"mesh file not found: {path}")
    m = o3d.io.read_triangle_mesh(str(path))
    V = np.asarray(m.vertices, dtype=np.float64) * scale
    T = np.asarray(m.triangles, dtype=np.int32)
    if len(T) == 0:
        raise y.error(f"mesh file has no triangles: {path}")
    if not np.all(np.isfinite(V)):
        raise y.error(f"mesh file has non-finite vertices: {path}")
    return PartMesh(V, T, np.full(len(T), -1, np.int32), [])


def _mesh(y: YNode, base_dir: Path) -> tuple[PartMesh, str | None, dict]:
    m = y.mapping(("generator", "params", "file", "scale"))
    if ("generator" in m) == ("file" in m):
        raise y.error("give exactly one of 'generator' or 'file'")
    if "generator" in m:
        gname = m["generator"].string()
        if gname not in GENERATORS:
            raise m["generator"].error(f"unknown generator {gname!r}; valid ones are {sorted(GENERATORS)}")
        params = {}
        if "params" in m:
            for k, v in m["params"].mapping().items():
                if k == "segments":
                    params[k] = v.integer(3, 512)
                elif isinstance(v.value(), bool):  # switches such as the mug's handle / lid
                    params[k] = v.boolean()
                elif v.is_sequence:  # sizes such as the box's [x, y, z]
                    params[k] = tuple(it.number(0.0, 10.0) for it in v.sequence())
                else:
                    params[k] = v.number(0.0, 10.0)
        if "scale" in m:
            raise m["scale"].error("'scale' applies to mesh files; set generator params instead")
        try:
            return generate(gname, **params), gname, params
        except (ValueError, TypeError) as e:
            raise (m.get("params") or y).error(str(e)) from None
    scale = m["scale"].number(1e-6, 1e3) if "scale" in m else 1.0
    if "params" in m:
        raise m["params"].error("'params' applies to generators")
    p = Path(m["file"].string())
    if not p.is_absolute():
        p = base_dir / p
    return _load_mesh_file(m["file"], p, scale), None, {}


def _file_parts(y: YNode, mesh: PartMesh) -> None:
    """Apply ``parts:`` labels to a file mesh in place."""
    names = list(mesh.part_names)
    labels = mesh.tri_part.copy()
    F, V = len(mesh.triangles), len(mesh.vertices)
    for pname, spec in y.mapping().items():
        s = spec.mapping(("triangles", "vertices", "box"))
        if len(s) != 1:
            raise spec.error("give exactly one of 'triangles', 'vertices' or 'box'")
        if pname not in names:
            names.append(pname)
        pid = names.index(pname)
        if "triangles" in s:
            idx = np.array(s["triangles"].integers(0, F - 1), dtype=np.int64)
            labels[idx] = pid
        elif "vertices" in s:
            vs = np.zeros(V, bool)
            vs[np.array(s["vertices"].integers(0, V - 1), dtype=np.int64)] = True
            labels[vs[mesh.triangles].all(1)] = pid
        else:
            b = s["box"].mapping(("min", "max"), required=("min", "max"))
            lo, hi = np.array(b["min"].vector(3)), np.array(b["max"].vector(3))
            c = mesh.vertices[mesh.triangles].mean(1)
            labels[np.all((c >= lo) & (c <= hi), axis=1)] = pid
    mesh.part_names = names
    mesh.tri_part = labels


def _object(y: YNode, base_dir: Path) -> SceneObject:
    m = y.mapping(("name", "category", "synonyms", "mesh", "pose", "color", "texture", "specular",
                   "part_colors", "parts"), required=("name", "mesh", "pose"))
    name = m["name"].string()
    mesh, gname, gparams = _mesh(m["mesh"], base_dir)
    if "parts" in m:
        if gname is not None:
            raise m["parts"].error(f"generator {gname!r} names its own parts {mesh.part_names}; "
                                   "'parts' is for mesh files")
        _file_parts(m["parts"], mesh)
    category = m["category"].string() if "category" in m else (gname or "object")
    synonyms = m["synonyms"].strings() if "synonyms" in m else []
    mat = _material(m, Material())
    part_colors = {}
    if "part_colors" in m:
        for pname, c in m["part_colors"].mapping().items():
            if pname not in mesh.part_names:
                raise c.error(f"unknown part {pname!r}; this mesh has parts {mesh.part_names}")
            part_colors[pname] = _color(c)
    T = _pose(m["pose"])
    obj = SceneObject(name, category, synonyms, mesh, T, mat, part_colors, y.line, gname, gparams)
    zmin = obj.world_vertices()[:, 2].min()
    if zmin < -0.002:
        raise m["pose"].error(f"object {name!r} reaches {-zmin * 100:.1f} cm below the table top (z = 0)")
    return obj


def _table(y: YNode | None) -> SceneObject:
    size = (1.0, 0.8, 0.04)
    mat = Material(color=(0.62, 0.47, 0.33), texture="wood", color2=(0.50, 0.36, 0.24), scale=0.03, specular=0.1)
    if y is not None:
        m = y.mapping(("size", "color", "texture", "specular"))
        if "size" in m:
            size = tuple(m["size"].vector(3, 0.01, 20.0))
        mat = _material(m, mat)
    box = make_box(size, z0=-size[2])
    box = PartMesh(box.vertices, box.triangles, np.full(len(box.triangles), -1), [])
    return SceneObject("table", "table", [], box, np.eye(4), mat, {}, y.line if y is not None else 0)


def load_scene(path: str | Path) -> Scene:
    """Read a scene YAML file (schema in the module docstring).

    Raises:
        SceneError: with ``file:line: setting: problem`` for any invalid content.
    """
    path = Path(path)
    return _scene_from_root(load_yaml_nodes(path), path.parent, str(path))


def load_scene_text(text: str, file: str = "<scene>", base_dir: str | Path = ".") -> Scene:
    """A scene from YAML text (same schema and errors as :func:`load_scene`; ``file`` names it in messages,
    relative mesh file paths are relative to ``base_dir``)."""
    return _scene_from_root(load_yaml_text(text, file), Path(base_dir), file)


def _scene_from_root(root: YNode, base_dir: Path, source: str) -> Scene:
    m = root.mapping(("name", "description", "table", "objects"), required=("name", "objects"))
    objs_y = m["objects"].sequence()
    if not objs_y:
        raise m["objects"].error("a scene needs at least one object")
    objects = [_object(o, base_dir) for o in objs_y]
    names = ["table"]
    for o, oy in zip(objects, objs_y, strict=True):
        if o.name in names:
            raise oy.error(f"duplicate object name {o.name!r}")
        names.append(o.name)
    return Scene(m["name"].string(), m["description"].string() if "description" in m else "",
                 _table(m.get("table")), objects, source)


def builtin_scene_names() -> list[str]:
    """Names of the scenes shipped in ``f3rm_ros/core/sim/scenes``."""
    return sorted(p.stem for p in SCENES_DIR.glob("*.yaml"))


def builtin_scene_path(name: str) -> Path:
    p = SCENES_DIR / f"{name}.yaml"
    if not p.is_file():
        raise SceneError(f"unknown built-in scene {name!r}; built-in scenes are {builtin_scene_names()}")
    return p


def resolve_scene(name_or_path: str | Path) -> Scene:
    """Load a built-in scene by name, or a scene YAML by path."""
    s = str(name_or_path)
    if s.endswith((".yaml", ".yml")) or "/" in s or Path(s).is_file():
        return load_scene(s)
    return load_scene(builtin_scene_path(s))
