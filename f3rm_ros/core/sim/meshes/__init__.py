"""Procedural object meshes (metres, object frame: base on z = 0, z up) with named parts.

Every generator returns a :class:`PartMesh`: vertices, triangles, a part index per triangle and the
list of closed components (each a watertight, outward-facing solid; components of one object may
overlap, e.g. a mug handle whose ends sit inside the mug wall). Surfaces of revolution are built
from a closed (r, z) profile that starts and ends on the axis, so they are watertight by
construction; the handle is a tube swept along an arc with capped ends.

Generators and their parts (sizes are realistic defaults, all overridable by keyword):

============  ===========================================  =========================================
generator     default size                                 parts
============  ===========================================  =========================================
mug           radius 0.041, height 0.095, wall 0.004       body, rim, inside, handle
bowl          radius 0.075, height 0.055, wall 0.005       body, rim, inside
box           0.065 x 0.050 x 0.120                        body, top
ball          radius 0.033                                 body
screwdriver   length 0.20 (handle 0.10, shaft 0.09, tip)   handle, shaft, tip (lies along x)
can           radius 0.033, height 0.122                   body, top, bottom
cup           radius 0.037, height 0.085, bottom 0.8 x radius  body, rim, inside
glass         radius 0.034, height 0.13, wall 0.002        body, rim, inside
plate         radius 0.11, height 0.024 (rim lip 0.012)    body, rim, inside
bottle        radius 0.033, height 0.22, neck radius 0.013 body, shoulder, neck, cap
pot           radius 0.075, height 0.09, handle 0.13       body, rim, inside, handle
hammer        handle 0.26 long, head 0.11 x 0.028          handle, head (lies along x)
spatula       handle 0.16, blade 0.09 x 0.07 x 0.003       handle, blade (lies along x)
banana        length 0.19 along a bent arc, radius 0.018   body, stem (lies on the table)
jar           radius 0.035, height 0.10 incl. lid 0.016    body, lid
brush         handle 0.14, head 0.06 x 0.05, bristles       handle, head, bristles (lies along x)
============  ===========================================  =========================================

``mug`` also takes ``handle=False`` (no handle) and ``lid=True`` (a closed top: a lid disc, part
``lid``, on the rim); the defaults are the original mug. Tools and the banana lie on the table in
their object frame; the others stand on their base.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from collections.abc import Callable

import numpy as np

__all__ = ["PartMesh", "GENERATORS", "generate", "revolve", "sweep_tube", "make_box", "merge", "corner_normals"]


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


# ------------------------------------------------------------------------------------ generators
def mug(radius: float = 0.041, height: float = 0.095, wall: float = 0.004, bottom: float = 0.007,
        rim_band: float = 0.008, handle_radius: float = 0.030, handle_thickness: float = 0.010,
        handle_width: float = 0.016, segments: int = 48, handle: bool = True, lid: bool = False,
        lid_thickness: float = 0.008) -> PartMesh:
    """Mug (cylindrical cup) with a D-shaped handle on the +x side.

    The handle's centre line is a half circle of ``handle_radius`` in the xz plane, centred on the
    wall at mid-height, with a cross-section ``handle_thickness`` (radial) x ``handle_width`` (along y).
    ``handle=False`` leaves it off; ``lid=True`` closes the top with a lid (part ``lid``, a separate
    component ``lid_thickness`` thick, 2 mm wider than the mug, resting on the rim).
    """
    R, H, w = radius, height, wall
    ri = R - w
    prof = [(0.0, 0.0, "body"), (R, 0.0, "body"), (R, H - rim_band, "rim"), (R, H, "rim"),
            (ri, H, "rim"), (ri, H - rim_band, "inside"), (ri, bottom, "inside"), (0.0, bottom, "inside")]
    body = revolve(prof, segments)
    ang = np.linspace(-np.pi / 2, np.pi / 2, 25)
    cx = R - w / 2
    path = np.stack([cx + handle_radius * np.cos(ang), np.zeros_like(ang), H * 0.5 + handle_radius * np.sin(ang)], 1)
    meshes = [body]
    if handle:
        meshes.append(sweep_tube(path, (handle_thickness / 2, handle_width / 2), "handle"))
    if lid:
        t, rl = lid_thickness, R + 0.002
        meshes.append(revolve([(0.0, H, "lid"), (rl, H, "lid"), (rl, H + 0.6 * t, "lid"), (0.8 * rl, H + t, "lid"),
                               (0.0, H + t, "lid")], segments))
    return merge(meshes) if len(meshes) > 1 else body


def bowl(radius: float = 0.075, height: float = 0.055, wall: float = 0.005, foot_radius: float = 0.035,
         segments: int = 64, rings: int = 10) -> PartMesh:
    """Round bowl: a spherical-ish outer wall from a foot of ``foot_radius`` to the rim at ``height``."""
    R, H, w = radius, height, wall
    out, inn = [], []
    for k in range(rings + 1):
        ang = k / rings * np.pi / 2
        r_o = foot_radius + (R - foot_radius) * math.sin(ang)
        z_o = H * (1 - math.cos(ang))
        out.append((r_o, z_o))
    for k in range(rings, -1, -1):
        ang = k / rings * np.pi / 2
        r_i = (foot_radius - w) + (R - foot_radius) * math.sin(ang)
        z_i = w + (H - w) * (1 - math.cos(ang))
        inn.append((r_i, z_i))
    prof = [(0.0, 0.0, "body")]
    prof += [(r, z, "body" if z < H - 0.008 else "rim") for r, z in out]
    prof += [(inn[0][0], inn[0][1], "rim")]
    prof += [(r, z, "inside") for r, z in inn[1:]]
    prof += [(0.0, w, "inside")]
    return revolve(prof, segments)


def box(size: tuple[float, float, float] = (0.065, 0.050, 0.120)) -> PartMesh:
    """Rectangular box (e.g. a tea or cereal box), bottom on z = 0."""
    return make_box(size)


def ball(radius: float = 0.033, segments: int = 32, rings: int = 16) -> PartMesh:
    """Sphere resting on z = 0."""
    prof = [(0.0, 0.0, "body")]
    for k in range(1, rings):
        a = -np.pi / 2 + np.pi * k / rings
        prof.append((radius * math.cos(a), radius * (1 + math.sin(a)), "body"))
    prof.append((0.0, 2 * radius, "body"))
    return revolve(prof, segments)


def can(radius: float = 0.033, height: float = 0.122, lid_inset: float = 0.003, segments: int = 48) -> PartMesh:
    """Drinks can: a cylinder with a slightly recessed lid and bevelled bottom."""
    R, H = radius, height
    prof = [(0.0, 0.0, "bottom"), (R - 0.006, 0.0, "bottom"), (R, 0.006, "body"), (R, H - 0.008, "body"),
            (R - 0.004, H, "top"), (R - 0.006, H, "top"), (R - 0.007, H - lid_inset, "top"),
            (0.0, H - lid_inset, "top")]
    return revolve(prof, segments)


def screwdriver(handle_length: float = 0.10, handle_radius: float = 0.016, shaft_length: float = 0.09,
                shaft_radius: float = 0.003, tip_length: float = 0.012, segments: int = 24) -> PartMesh:
    """Screwdriver lying on the table along +x (handle at -x, tip at +x), touching z = 0."""
    hl, hr, sl, sr = handle_length, handle_radius, shaft_length, shaft_radius
    prof = [(0.0, 0.0, "handle"), (hr * 0.8, 0.0, "handle"), (hr, 0.01, "handle"), (hr, hl - 0.025, "handle"),
            (hr * 0.75, hl - 0.01, "handle"), (hr * 0.6, hl, "handle"), (sr, hl, "shaft"),
            (sr, hl + sl, "tip"), (sr * 0.35, hl + sl + tip_length, "tip"), (0.0, hl + sl + tip_length, "tip")]
    m = revolve(prof, segments)
    # axis z -> x, then lift so the handle rests on the table
    total = hl + sl + tip_length
    R = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    m.vertices = m.vertices @ R.T + np.array([-total / 2, 0.0, hr])
    return m


def cup(radius: float = 0.037, height: float = 0.085, taper: float = 0.8, wall: float = 0.003,
        bottom: float = 0.006, rim_band: float = 0.008, segments: int = 48) -> PartMesh:
    """Cup without a handle: an open tapered cylinder, ``radius`` at the rim, ``taper * radius`` at the base."""
    R, H, w = radius, height, wall
    r0 = taper * R
    slope = (R - r0) / H
    prof = [(0.0, 0.0, "body"), (r0, 0.0, "body"), (R - slope * rim_band, H - rim_band, "rim"), (R, H, "rim"),
            (R - w, H, "rim"), (R - w - slope * rim_band, H - rim_band, "inside"),
            (r0 - w + slope * bottom, bottom, "inside"), (0.0, bottom, "inside")]
    return revolve(prof, segments)


def glass(radius: float = 0.034, height: float = 0.13, taper: float = 0.82, wall: float = 0.002,
          bottom: float = 0.012, segments: int = 48) -> PartMesh:
    """Drinking glass: tall, tapered (narrower base), thin wall, thick bottom."""
    return cup(radius=radius, height=height, taper=taper, wall=wall, bottom=bottom, rim_band=0.01, segments=segments)


def plate(radius: float = 0.11, height: float = 0.024, lip: float = 0.012, wall: float = 0.004,
          foot: float = 0.55, segments: int = 64) -> PartMesh:
    """Plate: a flat floor (``foot * radius`` wide) rising to a vertical rim lip of height ``lip`` at ``radius``."""
    R, H, w = radius, height, wall
    rf = foot * R
    prof = [(0.0, 0.0, "body"), (rf, 0.0, "body"), (R, H - lip, "body"), (R, H, "rim"), (R - w, H, "rim"),
            (R - w, H - lip + w, "inside"), (rf, w, "inside"), (0.0, w, "inside")]
    return revolve(prof, segments)


def bottle(radius: float = 0.033, height: float = 0.22, shoulder: float = 0.6, neck_radius: float = 0.013,
           neck_length: float = 0.045, cap_height: float = 0.018, segments: int = 40) -> PartMesh:
    """Bottle (closed solid): body up to ``shoulder * height``, a rounded shoulder, a neck and a cap.

    The cap is 1.5 mm wider than the neck; ``height`` is the total height including the cap.
    """
    R, H, rn = radius, height, neck_radius
    z_cap = H - cap_height
    z_neck = z_cap - neck_length
    z_sh = min(shoulder * H, z_neck - 0.01)
    prof = [(0.0, 0.0, "body"), (R - 0.004, 0.0, "body"), (R, 0.004, "body")]
    for k in range(0, 7):  # quarter-ellipse shoulder from (R, z_sh) to (rn, z_neck)
        a = k / 6 * np.pi / 2
        # edge i gets the part of point i: the last shoulder point starts the neck edge
        prof.append((rn + (R - rn) * math.cos(a), z_sh + (z_neck - z_sh) * math.sin(a),
                     "shoulder" if k < 6 else "neck"))
    rc = rn + 0.0015
    prof += [(rn, z_cap, "cap"), (rc, z_cap, "cap"), (rc, H - 0.002, "cap"), (rc - 0.002, H, "cap"), (0.0, H, "cap")]
    return revolve(prof, segments)


def pot(radius: float = 0.075, height: float = 0.09, wall: float = 0.004, bottom: float = 0.006,
        handle_length: float = 0.13, handle_width: float = 0.022, handle_height: float = 0.012,
        handle_rise: float = 0.17, segments: int = 48) -> PartMesh:
    """Cooking pot (saucepan): an open cylinder with one long straight handle along +x, 1 cm below the
    rim, rising ``handle_rise`` radians from the horizontal (cross-section ``handle_width`` x ``handle_height``)."""
    R, H, w = radius, height, wall
    ri = R - w
    prof = [(0.0, 0.0, "body"), (R, 0.0, "body"), (R, H - 0.008, "rim"), (R, H, "rim"), (ri, H, "rim"),
            (ri, H - 0.008, "inside"), (ri, bottom, "inside"), (0.0, bottom, "inside")]
    body = revolve(prof, segments)
    a = handle_rise
    t = np.linspace(0.0, handle_length, 10)  # from the wall's centre outwards
    x = R - w / 2 + t * math.cos(a)
    z = H - 0.01 + t * math.sin(a)
    path = np.stack([x, np.zeros_like(x), z], 1)
    handle = sweep_tube(path, (handle_height / 2, handle_width / 2), "handle", sides=12)  # a: vertical here
    return merge([body, handle])


def _box_part(size: tuple[float, float, float], centre: tuple[float, float, float], part: str) -> PartMesh:
    """A closed box with one part name, centred at ``centre``."""
    b = make_box(size, z0=centre[2] - size[2] / 2)
    return PartMesh(b.vertices + np.array([centre[0], centre[1], 0.0]), b.triangles,
                    np.zeros(len(b.triangles), np.int32), [part])


def _rod_along_x(length: float, radius: float, x0: float, z: float, part: str, segments: int = 20,
                 bevel: float = 0.002) -> PartMesh:
    """A bevelled cylinder along +x from ``x0`` (axis at height ``z``)."""
    b = min(bevel, radius / 2, length / 4)
    m = revolve([(0.0, 0.0, part), (radius - b, 0.0, part), (radius, b, part), (radius, length - b, part),
                 (radius - b, length, part), (0.0, length, part)], segments)
    Rm = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])  # axis z -> x
    m.vertices = m.vertices @ Rm.T + np.array([x0, 0.0, z])
    return m


def hammer(handle_length: float = 0.26, handle_radius: float = 0.013, head_length: float = 0.11,
           head_width: float = 0.028, head_height: float = 0.028) -> PartMesh:
    """Hammer lying on the table: handle along x (at -x), head a block across y at the +x end."""
    hl, hr = handle_length, handle_radius
    total = hl + head_width / 2
    x0 = -total / 2
    handle = _rod_along_x(hl, hr, x0, hr, "handle")
    head = _box_part((head_width, head_length, head_height), (x0 + hl, 0.0, head_height / 2), "head")
    return merge([handle, head])


def spatula(handle_length: float = 0.16, handle_width: float = 0.022, handle_height: float = 0.02,
            blade_length: float = 0.09, blade_width: float = 0.07, blade_thickness: float = 0.003) -> PartMesh:
    """Spatula lying flat: a handle (elliptical cross-section) along x at -x, a thin blade at +x."""
    total = handle_length + blade_length
    x0 = -total / 2
    path = np.stack([np.linspace(x0, x0 + handle_length + 0.01, 8), np.zeros(8), np.full(8, handle_height / 2)], 1)
    handle = sweep_tube(path, (handle_height / 2, handle_width / 2), "handle", sides=16)  # a: vertical here
    blade = _box_part((blade_length, blade_width, blade_thickness),
                      (x0 + handle_length + blade_length / 2, 0.0, blade_thickness / 2), "blade")
    return merge([handle, blade])


def banana(length: float = 0.19, radius: float = 0.018, bend: float = 0.9, segments: int = 14) -> PartMesh:
    """Banana lying on the table: a tapered tube along a horizontal arc (``bend`` radians), a stem at one end."""
    rc = length / bend  # arc radius
    t = np.linspace(0.0, 1.0, 17)
    ang = (t - 0.5) * bend
    path = np.stack([rc * np.sin(ang), rc * (1 - np.cos(ang)) - rc * (1 - math.cos(bend / 2)) / 2,
                     np.full_like(t, radius)], 1)
    scales = 0.35 + 0.65 * np.sin(np.pi * t) ** 0.6
    body = sweep_tube(path, (radius, radius * 0.95), "body", sides=segments, scales=scales)
    d = path[-1] - path[-2]
    d /= np.linalg.norm(d)
    stem_path = np.stack([path[-1] - 0.004 * d, path[-1] + 0.018 * d])
    stem = sweep_tube(stem_path, (0.004, 0.004), "stem", sides=8)
    m = merge([body, stem])
    lo, hi = m.bounds()
    m.vertices = m.vertices - np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, lo[2]])  # centred, on z = 0
    return m


def jar(radius: float = 0.035, height: float = 0.10, lid_height: float = 0.016, segments: int = 40) -> PartMesh:
    """Closed jar: a rounded-shoulder body and a screw lid (part ``lid``, a separate component 2 mm wider,
    ``lid_height`` tall, on top); ``height`` includes the lid."""
    R, H = radius, height - lid_height
    body = revolve([(0.0, 0.0, "body"), (R - 0.004, 0.0, "body"), (R, 0.004, "body"), (R, H - 0.012, "body"),
                    (R - 0.006, H - 0.002, "body"), (R - 0.006, H, "body"), (0.0, H, "body")], segments)
    rl = R - 0.004
    lid = revolve([(0.0, H - 0.004, "lid"), (rl + 0.002, H - 0.004, "lid"), (rl + 0.002, H + lid_height - 0.002, "lid"),
                   (rl, H + lid_height, "lid"), (0.0, H + lid_height, "lid")], segments)
    return merge([body, lid])


def brush(handle_length: float = 0.14, handle_width: float = 0.024, handle_height: float = 0.02,
          head_length: float = 0.06, head_width: float = 0.05, head_height: float = 0.028,
          bristle_length: float = 0.018) -> PartMesh:
    """Scrubbing brush lying on the table: a handle along x (at -x), a head block at +x whose bristles
    (part ``bristles``, a block ``bristle_length`` long) stick out along +y."""
    total = handle_length + head_length
    x0 = -total / 2
    path = np.stack([np.linspace(x0, x0 + handle_length + 0.01, 8), np.zeros(8), np.full(8, handle_height / 2)], 1)
    handle = sweep_tube(path, (handle_height / 2, handle_width / 2), "handle", sides=16)  # a: vertical here
    xc = x0 + handle_length + head_length / 2
    head = _box_part((head_length, head_width, head_height), (xc, 0.0, head_height / 2), "head")
    bristles = _box_part((head_length * 0.9, bristle_length + 0.002, head_height * 0.8),
                         (xc, head_width / 2 + bristle_length / 2 - 0.001, head_height * 0.4), "bristles")
    return merge([handle, head, bristles])


GENERATORS: dict[str, Callable[..., PartMesh]] = {
    "mug": mug, "bowl": bowl, "box": box, "ball": ball, "screwdriver": screwdriver, "can": can,
    "cup": cup, "glass": glass, "plate": plate, "bottle": bottle, "pot": pot, "hammer": hammer,
    "spatula": spatula, "banana": banana, "jar": jar, "brush": brush,
}


def generate(name: str, **params) -> PartMesh:
    """Build a procedural mesh by generator name (see the module docstring).

    Raises:
        ValueError: unknown generator (lists the valid ones) or unknown parameter.
    """
    if name not in GENERATORS:
        raise ValueError(f"unknown mesh generator {name!r}; valid ones are {sorted(GENERATORS)}")
    import inspect

    fn = GENERATORS[name]
    valid = list(inspect.signature(fn).parameters)
    bad = sorted(set(params) - set(valid))
    if bad:
        raise ValueError(f"generator {name!r}: unknown parameter(s) {bad}; valid ones are {valid}")
    return fn(**params)
