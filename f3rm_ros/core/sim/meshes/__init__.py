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

Modules: :mod:`.primitives` (:class:`PartMesh`, :func:`revolve`, :func:`sweep_tube`, :func:`make_box`,
:func:`merge`, :func:`corner_normals`) and :mod:`.objects` (the generators, :data:`GENERATORS`,
:func:`generate`); every name is importable from this package.
"""

# everything stays importable from here, as when this was one module (tests use _signed_volume)
from f3rm_ros.core.sim.meshes.objects import (
    GENERATORS, _box_part, _rod_along_x, ball, banana, bottle, bowl, box, brush, can, cup, generate,  # noqa: F401
    glass, hammer, jar, mug, plate, pot, screwdriver, spatula,  # noqa: F401
)
from f3rm_ros.core.sim.meshes.primitives import (
    PartMesh, _orient_outward, _signed_volume, corner_normals, make_box, merge, revolve, sweep_tube,  # noqa: F401
)

__all__ = ["PartMesh", "GENERATORS", "generate", "revolve", "sweep_tube", "make_box", "merge", "corner_normals"]
