"""Object generators of :mod:`f3rm_ros.core.sim.meshes` (mug, bowl, ...; the table of sizes and parts is in the
package docstring), :data:`GENERATORS` and :func:`generate`, built from :mod:`f3rm_ros.core.sim.meshes.primitives`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from f3rm_ros.core.sim.meshes.primitives import PartMesh, make_box, merge, revolve, sweep_tube


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
