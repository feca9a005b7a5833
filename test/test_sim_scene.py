"""Scene files and procedural meshes: built-in scenes load, meshes are closed, errors name file and line."""

import numpy as np
import pytest

from f3rm_ros.core.sim.meshes import GENERATORS, _signed_volume, generate
from f3rm_ros.core.sim.scene import builtin_scene_names, load_scene, resolve_scene
from f3rm_ros.core.sim.yamlnodes import SceneError


def test_generators_watertight_and_sized():
    import open3d as o3d

    for name in GENERATORS:
        m = generate(name)
        lo, hi = m.bounds()
        size = hi - lo
        print(f"{name:12s} size {np.round(size, 3)} parts {m.part_names} components {len(m.components)}")
        assert abs(lo[2]) < 1e-9 and 0.02 < size.max() < 0.3  # rests on z = 0, realistic size
        for i in range(len(m.components)):
            v, t = m.component_mesh(i)
            om = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(v), o3d.utility.Vector3iVector(t))
            assert om.is_watertight(), (name, i)
            assert _signed_volume(v, t) > 0, (name, i)  # outward normals
        assert (m.tri_part >= 0).all()
    ball = generate("ball", radius=0.05)
    v, t = ball.component_mesh(0)
    vol = _signed_volume(v, t)
    print(f"ball r=0.05 volume {vol:.3e} vs {4 / 3 * np.pi * 0.05 ** 3:.3e}")
    assert vol == pytest.approx(4 / 3 * np.pi * 0.05 ** 3, rel=0.03)


def test_builtin_scenes():
    names = builtin_scene_names()
    print("built-in scenes:", names)
    assert len(names) >= 3
    s = resolve_scene("cluttered_table")
    assert len(s.objects) == 6
    names_objs = [o.name for o in s.objects]
    assert "red mug" in names_objs and "blue mug" in names_objs
    table, tri_labels = s.label_table()
    assert table["1"] == {"object": "table", "category": "table", "part": None, "synonyms": []}
    ids = sorted(int(k) for k in table)
    assert ids == list(range(1, len(ids) + 1))
    handle = [v for v in table.values() if v["object"] == "red mug" and v["part"] == "handle"]
    assert handle and handle[0]["category"] == "mug" and "red cup" in handle[0]["synonyms"]
    used = set(np.concatenate(tri_labels).tolist())
    assert used == set(ids)  # the table covers exactly the ids used


def _write(tmp_path, text, name="scene.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


GOOD = """name: t
objects:
  - name: mug
    mesh: {generator: mug}
    pose: {position: [0.0, 0.0, 0.0]}
"""


@pytest.mark.parametrize("text,pattern", [
    (GOOD.replace("    pose:", "    colour: [1, 0, 0]\n    pose:"), r"scene.yaml:5: objects\[0\].colour: unknown key"),
    (GOOD.replace("[0.0, 0.0, 0.0]", "[0.0, .nan, 0.0]"),
     r"scene.yaml:5: objects\[0\].pose.position\[1\]: expected a finite number"),
    (GOOD.replace("[0.0, 0.0, 0.0]", "[0.0, .inf, 0.0]"), r"scene.yaml:5: .*finite"),
    (GOOD.replace("{generator: mug}", "{file: missing.ply}"),
     r"scene.yaml:4: objects\[0\].mesh.file: mesh file not found"),
    (GOOD.replace("{generator: mug}", "{generator: teapot}"), r"scene.yaml:4: .*unknown generator 'teapot'"),
    (GOOD.replace("[0.0, 0.0, 0.0]", "[0.0, 0.0, -0.05]"), r"scene.yaml:5: .*below the table top"),
    (GOOD + "  - name: mug\n    mesh: {generator: box}\n    pose: {position: [0.3, 0, 0]}\n",
     r"scene.yaml:6: .*duplicate object name 'mug'"),
    (GOOD.replace("name: t\n", ""), r"scene.yaml:1: missing required key\(s\) \['name'\]"),
    (GOOD.replace("{generator: mug}", "{generator: mug, params: {radius: big}}"),
     r"scene.yaml:4: .*radius: expected a number"),
    (GOOD.replace("{generator: mug}", "{generator: mug, params: {radius_m: 0.04}}"), r"unknown parameter"),
    (GOOD + "    color: [1, 0, 0, 1]\n", r"scene.yaml:6: objects\[0\].color: expected 3 numbers"),
    ("name: t\nobjects: [\n", r"scene.yaml:.*not valid YAML"),
])
def test_scene_errors_name_file_and_line(tmp_path, text, pattern):
    p = _write(tmp_path, text)
    with pytest.raises(SceneError, match=pattern) as e:
        load_scene(p)
    print(e.value)


def test_mesh_file_with_parts(tmp_path):
    import open3d as o3d

    box = o3d.geometry.TriangleMesh.create_box(0.05, 0.04, 0.03)
    o3d.io.write_triangle_mesh(str(tmp_path / "brick.ply"), box)
    p = _write(tmp_path, """name: t
objects:
  - name: brick
    category: block
    mesh: {file: brick.ply}
    pose: {position: [0.1, 0.0, 0.0], yaw_deg: 45}
    parts:
      top: {box: {min: [-1, -1, 0.029], max: [1, 1, 1]}}
      first: {triangles: [0]}
""")
    s = load_scene(p)
    m = s.object("brick").mesh
    print("file mesh parts", m.part_names, np.bincount(m.tri_part + 1))
    assert m.part_names == ["top", "first"]
    assert (m.tri_part == 0).sum() == 2 and m.tri_part[0] == 1


def test_corner_normals_round_and_sharp():
    from f3rm_ros.core.sim.meshes import corner_normals, make_box

    m = generate("ball", radius=0.033)
    cn = corner_normals(m.vertices, m.triangles)
    v = m.vertices[m.triangles]
    true = v - np.array([0, 0, 0.033])
    true /= np.linalg.norm(true, axis=2, keepdims=True)
    err = np.degrees(np.arccos(np.clip((true * cn).sum(-1), -1, 1)))
    b = make_box((0.1, 0.1, 0.1))
    cb = corner_normals(b.vertices, b.triangles)
    fn = np.cross(b.vertices[b.triangles[:, 1]] - b.vertices[b.triangles[:, 0]],
                  b.vertices[b.triangles[:, 2]] - b.vertices[b.triangles[:, 0]])
    fn /= np.linalg.norm(fn, axis=1, keepdims=True)
    print(f"ball smooth normals: max error {err.max():.2f} deg; box corner normals equal face normals: "
          f"{np.allclose(cb, fn[:, None, :])}")
    assert err.max() < 3.0
    assert np.allclose(cb, fn[:, None, :])  # 90 deg edges stay sharp


def test_builtin_objects_do_not_interpenetrate():
    import open3d as o3d

    for name in builtin_scene_names():
        s = resolve_scene(name)
        worst = 0
        for a in s.objects:
            for b in s.objects:
                if a is b:
                    continue
                Vb = b.world_vertices()
                for ci in range(len(b.mesh.components)):
                    tris = b.mesh.triangles[b.mesh.components[ci]]
                    rc = o3d.t.geometry.RaycastingScene()
                    rc.add_triangles(o3d.core.Tensor(Vb.astype(np.float32)), o3d.core.Tensor(tris.astype(np.uint32)))
                    occ = rc.compute_occupancy(o3d.core.Tensor(a.world_vertices().astype(np.float32))).numpy()
                    worst = max(worst, int(occ.sum()))
                    assert occ.sum() == 0, (name, a.name, b.name)
        print(f"{name}: no object vertex inside another object ({len(s.objects)} objects)")
