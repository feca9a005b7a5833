"""Mesh primitives of :mod:`f3rm_ros.core.sim.meshes`: :class:`PartMesh`, shading normals, merging, surfaces of
revolution, swept tubes and boxes (the object generators in :mod:`f3rm_ros.core.sim.meshes.objects` build on these).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class PartMesh:
    """A triangle mesh with a part label per triangle.

    Attributes:
        vertices: [V, 3] float64, metres, object frame.
        triangles: [F, 3] int32, counter-clockwise seen from outside (outward normals).
        tri_part: [F] int32 index into ``part_names`` (-1 = no named part).
        part_names: part names.
        components: list of [F_i] triangle-index arrays, one per closed solid.
    """

    vertices: np.ndarray
    triangles: np.ndarray
    tri_part: np.ndarray
    part_names: list[str]
    components: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.vertices = np.asarray(self.vertices, dtype=np.float64).reshape(-1, 3)
        self.triangles = np.asarray(self.triangles, dtype=np.int32).reshape(-1, 3)
        self.tri_part = np.asarray(self.tri_part, dtype=np.int32).reshape(-1)
        if len(self.tri_part) != len(self.triangles):
            raise ValueError(f"tri_part has {len(self.tri_part)} entries for {len(self.triangles)} triangles")
        if not self.components:
            self.components = [np.arange(len(self.triangles))]

    def to_open3d(self):
        """open3d.geometry.TriangleMesh of the whole mesh (no colours)."""
        import open3d as o3d

        m = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(self.vertices),
                                      o3d.utility.Vector3iVector(self.triangles))
        return m

    def component_mesh(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(vertices [V_i, 3], triangles [F_i, 3]) of component ``i``, re-indexed."""
        tris = self.triangles[self.components[i]]
        used, inv = np.unique(tris.ravel(), return_inverse=True)
        return self.vertices[used], inv.reshape(-1, 3).astype(np.int32)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.vertices.min(0), self.vertices.max(0)


def corner_normals(vertices: np.ndarray, triangles: np.ndarray, crease_deg: float = 40.0) -> np.ndarray:
    """Smooth shading normals per triangle corner, keeping creases sharp.

    The normal at corner k of triangle f is the area-weighted mean of the normals of the triangles
    sharing that vertex whose normal is within ``crease_deg`` of triangle f's own normal (so a mug
    rim or a box edge stays sharp, a cylinder looks round).

    Args:
        vertices: [V, 3]; triangles: [F, 3].
        crease_deg: angle above which neighbouring faces are not averaged.

    Returns:
        [F, 3, 3] unit normals (triangle, corner, xyz).
    """
    V = np.asarray(vertices, dtype=np.float64)
    T = np.asarray(triangles, dtype=np.int64)
    F = len(T)
    fw = np.cross(V[T[:, 1]] - V[T[:, 0]], V[T[:, 2]] - V[T[:, 0]])  # length = 2 * area
    fn = fw / np.maximum(np.linalg.norm(fw, axis=1, keepdims=True), 1e-30)
    vert = T.ravel()                      # incidence i = corner (i // 3, i % 3)
    face = np.repeat(np.arange(F), 3)
    order = np.argsort(vert, kind="stable")
    counts = np.bincount(vert, minlength=len(V))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    n_i = counts[vert]                    # group size of each corner's vertex
    s_i = starts[vert]
    P = int(n_i.sum())
    corner = np.repeat(np.arange(3 * F), n_i)
    offs = np.arange(P) - np.repeat(np.cumsum(n_i) - n_i, n_i)
    partner_face = face[order[np.repeat(s_i, n_i) + offs]]
    keep = np.einsum("ij,ij->i", fn[face[corner]], fn[partner_face]) >= np.cos(np.deg2rad(crease_deg))
    out = np.zeros((3 * F, 3))
    np.add.at(out, corner[keep], fw[partner_face[keep]])
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-30)
    return out.reshape(F, 3, 3)


def merge(parts: list[PartMesh]) -> PartMesh:
    """Concatenate meshes; part names are unified by name, components are kept separate."""
    names: list[str] = []
    verts, tris, labels, comps = [], [], [], []
    nv = nf = 0
    for p in parts:
        remap = []
        for n in p.part_names:
            if n not in names:
                names.append(n)
            remap.append(names.index(n))
        remap_arr = np.asarray(remap + [-1], dtype=np.int32)
        verts.append(p.vertices)
        tris.append(p.triangles + nv)
        labels.append(remap_arr[p.tri_part])  # -1 indexes the appended -1
        comps.extend(c + nf for c in p.components)
        nv += len(p.vertices)
        nf += len(p.triangles)
    return PartMesh(np.concatenate(verts), np.concatenate(tris), np.concatenate(labels), names, comps)


def revolve(profile: list[tuple[float, float, str]], segments: int = 48) -> PartMesh:
    """Surface of revolution about the z axis from a closed (r, z) profile.

    Args:
        profile: points (r, z, part) in order; the first and last must lie on the axis (r = 0).
            Edge i (point i -> i+1) gets the part of point i. Walk the profile so the solid is on
            the left when going from the first to the last point in the (r, z) plane seen with r
            to the right and z up (e.g. bottom centre -> outer bottom -> outer top -> top centre),
            which gives outward normals.
        segments: number of angular segments.

    Returns:
        A closed PartMesh with one component.
    """
    if profile[0][0] != 0 or profile[-1][0] != 0:
        raise ValueError("revolve: the profile must start and end on the axis (r = 0)")
    names: list[str] = []
    for _r, _z, p in profile:
        if p not in names:
            names.append(p)
    ang = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    cs, sn = np.cos(ang), np.sin(ang)
    verts: list[np.ndarray] = []
    ring_index: list[np.ndarray] = []  # per profile point: vertex indices (1 for axis points, else segments)
    nv = 0
    for r, z, _p in profile:
        if r == 0:
            verts.append(np.array([[0.0, 0.0, z]]))
            ring_index.append(np.full(segments, nv))
            nv += 1
        else:
            verts.append(np.stack([r * cs, r * sn, np.full(segments, z)], 1))
            ring_index.append(nv + np.arange(segments))
            nv += segments
    tris, labels = [], []
    j = np.arange(segments)
    jn = (j + 1) % segments
    for i in range(len(profile) - 1):
        a, b = ring_index[i], ring_index[i + 1]
        part = names.index(profile[i][2])
        # quad (a_j, a_jn, b_jn, b_j); orientation gives outward normals for the walk described above
        if profile[i][0] != 0:
            tris.append(np.stack([a[j], a[jn], b[jn]], 1) if profile[i + 1][0] != 0
                        else np.stack([a[j], a[jn], b[j]], 1))
            labels.append(np.full(segments, part))
        if profile[i + 1][0] != 0:
            tris.append(np.stack([a[j], b[jn], b[j]], 1) if profile[i][0] != 0
                        else np.stack([a[j], b[jn], b[j]], 1))
            labels.append(np.full(segments, part))
    return PartMesh(np.concatenate(verts), np.concatenate(tris), np.concatenate(labels), names)


def sweep_tube(path: np.ndarray, radii: tuple[float, float], part: str, sides: int = 16,
               scales: np.ndarray | None = None) -> PartMesh:
    """A closed tube with an elliptical cross-section swept along a polyline, ends capped.

    Args:
        path: [P, 3] points of the tube's centre line (P >= 2), metres.
        radii: (a, b) cross-section semi-axes; ``a`` lies in the plane of the path's first three
            points' normal direction, ``b`` along the binormal.
        part: part name for every triangle.
        sides: vertices per cross-section.
        scales: [P] optional factor on both radii at each path point (a tapered tube); default 1.
    """
    path = np.asarray(path, dtype=np.float64)
    P = len(path)
    sc = np.ones(P) if scales is None else np.asarray(scales, dtype=np.float64).reshape(P)
    tang = np.gradient(path, axis=0)
    tang /= np.linalg.norm(tang, axis=1, keepdims=True)
    # fixed binormal for a planar path (its plane normal), else a stable perpendicular
    b = np.cross(path[1] - path[0], path[-1] - path[0])
    if np.linalg.norm(b) < 1e-12:
        b = np.cross(tang[0], [0.0, 0.0, 1.0] if abs(tang[0, 2]) < 0.9 else [1.0, 0.0, 0.0])
    b /= np.linalg.norm(b)
    th = np.linspace(0, 2 * np.pi, sides, endpoint=False)
    verts = []
    for k in range(P):
        n = np.cross(b, tang[k])
        n /= np.linalg.norm(n)
        bb = np.cross(tang[k], n)
        verts.append(path[k] + sc[k] * (radii[0] * np.cos(th)[:, None] * n + radii[1] * np.sin(th)[:, None] * bb))
    V = np.concatenate(verts + [path[:1], path[-1:]])
    c0, c1 = P * sides, P * sides + 1
    j = np.arange(sides)
    jn = (j + 1) % sides
    tris = []
    for k in range(P - 1):
        a, bq = k * sides + j, (k + 1) * sides + j
        an, bn = k * sides + jn, (k + 1) * sides + jn
        tris += [np.stack([a, bq, bn], 1), np.stack([a, bn, an], 1)]
    tris.append(np.stack([np.full(sides, c0), j, jn], 1))
    last = (P - 1) * sides
    tris.append(np.stack([np.full(sides, c1), last + jn, last + j], 1))
    T = np.concatenate(tris)
    mesh = PartMesh(V, T, np.zeros(len(T), np.int32), [part])
    _orient_outward(mesh)
    return mesh


def _signed_volume(v: np.ndarray, t: np.ndarray) -> float:
    return float(np.einsum("ij,ij->i", v[t[:, 0]], np.cross(v[t[:, 1]], v[t[:, 2]])).sum() / 6.0)


def _orient_outward(mesh: PartMesh) -> None:
    """Flip all triangles of a closed single-component mesh if its signed volume is negative."""
    if _signed_volume(mesh.vertices, mesh.triangles) < 0:
        mesh.triangles = mesh.triangles[:, ::-1].copy()


def make_box(size: tuple[float, float, float], part_top: str = "top", part_rest: str = "body",
             z0: float = 0.0) -> PartMesh:
    """Axis-aligned box centred on the z axis with its bottom at ``z0``; the +z face is ``part_top``."""
    sx, sy, sz = (float(s) for s in size)
    x = np.array([-sx / 2, sx / 2])
    y = np.array([-sy / 2, sy / 2])
    z = np.array([z0, z0 + sz])
    V = np.array([[x[i], y[j], z[k]] for k in range(2) for j in range(2) for i in range(2)])
    # vertex index = i + 2 j + 4 k
    quads = {  # outward-facing quads (counter-clockwise seen from outside)
        "-z": (0, 2, 3, 1), "+z": (4, 5, 7, 6), "-y": (0, 1, 5, 4),
        "+y": (2, 6, 7, 3), "-x": (0, 4, 6, 2), "+x": (1, 3, 7, 5),
    }
    tris, labels = [], []
    for face, (a, b, c, d) in quads.items():
        tris += [(a, b, c), (a, c, d)]
        labels += [0 if face == "+z" else 1] * 2
    return PartMesh(V, np.array(tris), np.array(labels), [part_top, part_rest])

