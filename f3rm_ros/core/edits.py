"""Scene edits without training: a field that follows the robot's own pick-and-place actions (issue 18).

An :class:`EditedField` wraps a field (a :class:`~f3rm_ros.core.field_api.TrainedField`, or any
:class:`~f3rm_ros.core.fields.protocol.GraspField` such as the oracle) with the same query interface and an
ordered stack of :class:`SceneEdit` s. An edit is a region of the scene *as it was before the edit* (a
:class:`BoxRegion`, or a :class:`VoxelRegion` made from the points a language query selected) and either a
rigid motion ``T_world_new_old`` (4x4, world frame, metres) or "removed".

What the edited field answers at a world point ``x`` (walk the edits from the newest to the oldest):

* ``x`` in the moved region's new place (``T^-1 x`` in the region): ``x <- T^-1 x``, go on with the older
  edits (the content is served from its old place);
* else ``x`` in the region's old place (or in a removed region): empty space (density 0, features of empty
  space: the feature head's bias, i.e. a hidden activation of zeros, so ``query_features == hidden @ W.T + b``
  still holds; zeros for a field without a head), stop;
* else ``x`` in the old place's floor patch (the edit's :class:`FloorFill`: the region's footprint, in a thin band
  about the support it stood on): ``x <- x + offset``, go on with the older edits (the table under a thing was
  never seen; what the edit shows there is the table beside it);
* else: unchanged.

Features are not rotated by a motion (distilled CLIP/label features are not directions in space); view
directions of the colour are (``render``). Edits compose (``with_edit`` returns a new field; the old one is
untouched, so queries in flight keep theirs), ``undo`` drops the newest. Renders and point clouds sample the
same warped points through the model's own proposal sampler, so the RViz cloud and the heat map follow.

Motions are checked (:func:`check_rigid`): a finite 4x4 with last row ``[0 0 0 1]``, an orthonormal rotation
with determinant +1, and (with a workspace box) the moved region's centre inside the box.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["EditError", "BoxRegion", "VoxelRegion", "FloorFill", "Unmix", "SceneEdit", "EditedField", "EditWarp",
           "FieldWarp", "check_rigid", "rigid_from_pose", "region_from_selection", "grow_region", "exclude_neighbours",
           "keep_together", "region_ring", "MAX_EDITS"]

MAX_EDITS = 64  # a stack deeper than this is refused (each query walks every edit)


class EditError(ValueError):
    """An edit that cannot be applied (bad transform, empty region, off the workspace...): the message says why."""


def check_rigid(T: Any, what: str = "T_world_new_old", tol: float = 1e-4) -> np.ndarray:
    """``T`` as a float64 [4, 4] rigid transform, or EditError naming what is wrong with it."""
    try:
        M = np.asarray(T, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise EditError(f"{what} is not a 4x4 matrix: {e}") from None
    if M.shape != (4, 4):
        raise EditError(f"{what} must be 4x4, got shape {M.shape}")
    if not np.all(np.isfinite(M)):
        raise EditError(f"{what} has non-finite values")
    if np.abs(M[3] - [0, 0, 0, 1]).max() > tol:
        raise EditError(f"{what} is not rigid: last row {M[3].tolist()} (must be [0, 0, 0, 1])")
    R = M[:3, :3]
    err = float(np.abs(R.T @ R - np.eye(3)).max())
    if err > tol:
        raise EditError(f"{what} is not rigid: its rotation is not orthonormal (|R^T R - I| = {err:.2e}; a scale or "
                        f"shear?)")
    if np.linalg.det(R) < 0:
        raise EditError(f"{what} is not rigid: its rotation is a reflection (det -1)")
    out = M.copy()
    out[3] = [0, 0, 0, 1]
    return out


def rigid_from_pose(position: Sequence[float], quat_xyzw: Sequence[float], what: str = "T_world_new_old",
                    tol: float = 1e-3) -> np.ndarray:
    """A rigid 4x4 from a position and a quaternion (x, y, z, w); a quaternion whose norm is not 1 (within ``tol``)
    is refused, not normalised (it is a sign that the sender's transform is not what it meant)."""
    p = np.asarray(position, dtype=np.float64).reshape(3)
    q = np.asarray(quat_xyzw, dtype=np.float64).reshape(4)
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(q))):
        raise EditError(f"{what} has non-finite values")
    n = float(np.linalg.norm(q))
    if abs(n - 1.0) > tol:
        raise EditError(f"{what} is not rigid: its quaternion has norm {n:.4g} (must be 1)")
    x, y, z, w = q / n
    R = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                  [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                  [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, p
    return T


# ----------------------------------------------------------------------------------------------- regions
class BoxRegion:
    """An oriented box in the world frame: ``center`` [3], ``half_extents`` [3] (metres), ``R`` (3x3: box axes
    as columns; identity = axis-aligned)."""

    def __init__(self, center: Sequence[float], half_extents: Sequence[float], R: Any = None):
        self.center = np.asarray(center, dtype=np.float64).reshape(3)
        self.half_extents = np.asarray(half_extents, dtype=np.float64).reshape(3)
        self.R = np.eye(3) if R is None else np.asarray(R, dtype=np.float64).reshape(3, 3)
        if not (np.all(np.isfinite(self.center)) and np.all(np.isfinite(self.half_extents))):
            raise EditError("box has non-finite values")
        if np.any(self.half_extents <= 0):
            raise EditError(f"box is empty: half extents {self.half_extents.tolist()} must be > 0")
        check_rigid(np.block([[self.R, np.zeros((3, 1))], [np.zeros((1, 3)), np.ones((1, 1))]]), "box rotation")
        self._t: dict = {}

    @classmethod
    def from_bounds(cls, lo: Sequence[float], hi: Sequence[float]) -> BoxRegion:
        """An axis-aligned box between two corners (every ``hi`` > ``lo``)."""
        lo, hi = np.asarray(lo, np.float64).reshape(3), np.asarray(hi, np.float64).reshape(3)
        return cls((lo + hi) / 2, (hi - lo) / 2)

    def _tensors(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        if device not in self._t:
            self._t[device] = tuple(torch.as_tensor(a, dtype=torch.float32, device=device)
                                    for a in (self.center, self.half_extents, self.R))
        return self._t[device]

    def contains(self, x: Tensor) -> Tensor:  # [N, 3] world -> [N] bool
        c, h, R = self._tensors(x.device)
        local = (x.detach().float() - c) @ R  # rows: R^T (x - c)
        return (local.abs() <= h).all(dim=-1)

    def corners(self) -> np.ndarray:  # [8, 3]
        s = np.array([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], dtype=np.float64)
        return self.center + (s * self.half_extents) @ self.R.T

    def sample_points(self, spacing: float = 0.02) -> np.ndarray:  # [M, 3] inside, for projections
        n = np.maximum(2, np.ceil(2 * self.half_extents / spacing).astype(int) + 1)
        axes = [np.linspace(-h, h, k) for h, k in zip(self.half_extents, n, strict=True)]
        g = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
        return self.center + g @ self.R.T

    def centre(self) -> np.ndarray:
        return self.center.copy()

    def describe(self) -> str:
        return f"box centre {np.round(self.center, 3).tolist()} half extents {np.round(self.half_extents, 3).tolist()}"


class VoxelRegion:
    """A set of voxels in the world frame: a boolean grid ``occ`` [X, Y, Z] of cubes of ``voxel`` metres whose
    first one starts at ``lo`` [3]. Made from the surface points a query selected (:meth:`from_points`)."""

    def __init__(self, lo: Sequence[float], voxel: float, occ: np.ndarray):
        self.lo = np.asarray(lo, dtype=np.float64).reshape(3)
        self.voxel = float(voxel)
        self.occ = np.asarray(occ, dtype=bool)
        if self.occ.ndim != 3 or not self.occ.any():
            raise EditError("the region is empty (no voxel selected)")
        if not (self.voxel > 0 and np.all(np.isfinite(self.lo))):
            raise EditError(f"bad voxel region (voxel {self.voxel}, origin {self.lo.tolist()})")
        self._t: dict = {}

    @classmethod
    def from_points(cls, points: np.ndarray, voxel: float = 0.01, dilate_m: float = 0.015,
                    floor_z: float | None = None) -> VoxelRegion:
        """The voxels of ``points`` [N, 3], each column filled down to the lowest selected voxel (a thing's inside
        and underside move with its skin), dilated by ``dilate_m``; nothing below ``floor_z`` (the table stays)."""
        P = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        P = P[np.all(np.isfinite(P), axis=1)]
        if len(P) == 0:
            raise EditError("the region is empty (no point selected)")
        pad = int(math.ceil(dilate_m / voxel)) + 1
        lo = P.min(0) - (pad + 0.5) * voxel
        idx = np.floor((P - lo) / voxel).astype(int)
        shape = idx.max(0) + pad + 2
        occ = np.zeros(shape, dtype=bool)
        occ[idx[:, 0], idx[:, 1], idx[:, 2]] = True
        zmin = idx[:, 2].min()
        top = np.where(occ.any(2), shape[2] - 1 - np.argmax(occ[:, :, ::-1], axis=2), -1)  # highest voxel per column
        zs = np.arange(shape[2])
        occ |= (zs[None, None, :] >= zmin) & (zs[None, None, :] <= top[:, :, None])
        if pad > 1:
            k = 2 * int(math.ceil(dilate_m / voxel)) + 1
            t = torch.from_numpy(occ.astype(np.float32))[None, None]
            occ = (torch.nn.functional.max_pool3d(t, k, stride=1, padding=k // 2)[0, 0] > 0).numpy()
        return cls(lo, voxel, occ & ~_below(occ.shape, lo, voxel, floor_z))

    def _tensors(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        if device not in self._t:
            self._t[device] = (torch.as_tensor(self.lo, dtype=torch.float32, device=device),
                               torch.as_tensor(self.occ, device=device),
                               torch.as_tensor(self.occ.shape, device=device))
        return self._t[device]

    def contains(self, x: Tensor) -> Tensor:  # [N, 3] world -> [N] bool
        lo, occ, shape = self._tensors(x.device)
        i = torch.floor((x.detach().float() - lo) / self.voxel).long()
        inside = ((i >= 0) & (i < shape)).all(dim=-1)
        i = torch.where(inside[:, None], i, torch.zeros_like(i))
        return inside & occ[i[:, 0], i[:, 1], i[:, 2]]

    def sample_points(self, spacing: float | None = None) -> np.ndarray:  # [M, 3] voxel centres
        return self.lo + (np.argwhere(self.occ) + 0.5) * self.voxel

    def footprint(self) -> np.ndarray:  # [M, 2] xy centres of the columns that hold a voxel
        return self.lo[:2] + (np.argwhere(self.occ.any(2)) + 0.5) * self.voxel

    def footprint_contains(self, x: Tensor) -> Tensor:  # [N, 3] world -> [N] bool: in a column that holds a voxel
        if "fp" not in self._t:
            self._t["fp"] = self.occ.any(2)
        key = ("fp", x.device)
        if key not in self._t:
            self._t[key] = torch.as_tensor(self._t["fp"], device=x.device)
        lo, _, shape = self._tensors(x.device)
        fp = self._t[key]
        i = torch.floor((x[:, :2].detach().float() - lo[:2]) / self.voxel).long()
        inside = ((i >= 0) & (i < shape[:2])).all(dim=-1)
        i = torch.where(inside[:, None], i, torch.zeros_like(i))
        return inside & fp[i[:, 0], i[:, 1]]

    def corners(self) -> np.ndarray:  # [8, 3] of the occupied voxels' bounding box
        ij = np.argwhere(self.occ)
        a, b = self.lo + ij.min(0) * self.voxel, self.lo + (ij.max(0) + 1) * self.voxel
        return np.array([[x, y, z] for x in (a[0], b[0]) for y in (a[1], b[1]) for z in (a[2], b[2])])

    def centre(self) -> np.ndarray:
        return self.sample_points().mean(0)

    def describe(self) -> str:
        c = self.corners()
        return (f"{int(self.occ.sum())} voxels of {self.voxel * 1000:.0f} mm in {np.round(c.min(0), 3).tolist()} .. "
                f"{np.round(c.max(0), 3).tolist()}")


def region_from_selection(points: np.ndarray, score: np.ndarray, min_score: float, voxel: float = 0.01,
                          dilate_m: float = 0.015, floor_z: float | None = None, link_m: float = 0.02
                          ) -> VoxelRegion:
    """The region of the thing a query picked out: the points [N, 3] whose ``score`` [N] reaches ``min_score``,
    only the cluster (points closer than ``link_m`` are linked) that holds the best-scoring point (stray matches on
    neighbours are left out), as a :meth:`VoxelRegion.from_points`."""
    P, s = np.asarray(points, np.float64).reshape(-1, 3), np.asarray(score, np.float64).reshape(-1)
    sel = np.flatnonzero(s >= min_score)
    if len(sel) == 0:
        raise EditError(f"no point reaches the selection score {min_score:.3f} (best {s.max() if len(s) else 0:.3f})")
    Q = P[sel]
    from scipy.spatial import cKDTree  # noqa: PLC0415

    pairs = cKDTree(Q).query_pairs(link_m, output_type="ndarray")
    from scipy.sparse import coo_matrix  # noqa: PLC0415
    from scipy.sparse.csgraph import connected_components  # noqa: PLC0415

    n = len(Q)
    g = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n)) if len(pairs) else \
        coo_matrix((n, n))
    _, lab = connected_components(g, directed=False)
    best = int(np.argmax(s[sel]))
    return VoxelRegion.from_points(Q[lab == lab[best]], voxel, dilate_m, floor_z)


Probe = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # world points [N, 3] -> occupied [N], score [N]


def _probe_grid(lo: np.ndarray, voxel: float, probe: Probe, where: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The probe asked at the centres of the voxels ``where`` [X, Y, Z] of a grid whose first voxel starts at ``lo``:
    (occupied, score) [X, Y, Z] (elsewhere not occupied, score -inf)."""
    ijk = np.argwhere(where)
    occupied, score = np.zeros(where.shape, bool), np.full(where.shape, -np.inf)
    if len(ijk):
        o, sc = probe(lo + (ijk + 0.5) * voxel)
        occupied[tuple(ijk.T)], score[tuple(ijk.T)] = np.asarray(o, bool), np.asarray(sc, np.float64)
    return occupied, score


def _below(shape: tuple[int, ...], lo: np.ndarray, voxel: float, z: float | None) -> np.ndarray:
    """[X, Y, Z] bool of a grid: the voxels whose centre lies below world height ``z`` (none for None)."""
    out = np.zeros(shape, bool)
    if z is not None:
        out[:, :, lo[2] + (np.arange(shape[2]) + 0.5) * voxel < z] = True
    return out


def grow_region(region: VoxelRegion, probe: Probe, min_score: float, grow_m: float, dilate_m: float = 0.0,
                floor_z: float | None = None, cut_z: float | None = None) -> VoxelRegion:
    """``region`` with the parts its selection missed (a lid of another colour, a handle): the voxels up to
    ``grow_m`` beyond it, over ``floor_z`` + a voxel (the support is nobody's part), that ``probe`` finds occupied
    with a score >= ``min_score`` and that join the region through voxels like them; those grown by ``dilate_m`` (as
    a selection is), nothing below ``cut_z``. ``region`` itself when nothing joins."""
    from scipy import ndimage  # noqa: PLC0415

    g = int(math.ceil(grow_m / region.voxel))
    if g <= 0:
        return region
    occ = np.pad(region.occ, g)
    lo = region.lo - g * region.voxel
    ask = ~occ & ~_below(occ.shape, lo, region.voxel, None if floor_z is None else floor_z + region.voxel)
    occupied, score = _probe_grid(lo, region.voxel, probe, ask)
    cand = occupied & (score >= min_score)
    lab, _ = ndimage.label(cand | occ, structure=np.ones((3, 3, 3), bool))
    joined = np.unique(lab[occ])
    grown = cand & np.isin(lab, joined[joined > 0])
    if not grown.any():
        return region
    k = int(math.ceil(dilate_m / region.voxel))
    if k:
        grown = ndimage.binary_dilation(grown, np.ones((3, 3, 3), bool), iterations=k)
    grown &= ~_below(occ.shape, lo, region.voxel, cut_z)
    return VoxelRegion(lo, region.voxel, occ | grown)


def exclude_neighbours(region: VoxelRegion, probe: Probe, max_score: float, joined: bool = True,
                       floor_z: float | None = None) -> VoxelRegion:
    """``region`` less a touching neighbour: its voxels that ``probe`` finds occupied with a score below
    ``max_score`` (something else), with ``joined`` only those joined, through such voxels over ``floor_z`` + a voxel,
    to such voxels just outside the region: a neighbour reaching in goes on outside, the thing's own lid or base of
    another colour does not (below that height, where the support joins everything, every such voxel is left out).
    With ``joined``, where the two touch (a neighbour of at least 4 voxels outside the region), their features blur
    into each other over a voxel or so: the voxels touching the neighbour are its own up to halfway between its score
    and the thing's (the medians of its voxels outside the region and of the thing's at or above ``max_score``), if
    that is higher; and the empty voxels of the gap between them are split: those nearer the neighbour's occupied
    voxels than the thing's are left out too (a voxel is probed at its centre, so one whose centre lies in the gap can
    still hold the neighbour's skin; 10 mm voxels of a selection dilated towards a box touching a can took 6 mm of the
    box's face along with the can, 2.5 mm with both). ``region`` itself when nothing, or everything, would be left
    out."""
    from scipy import ndimage  # noqa: PLC0415

    g = 2 if joined else 0
    occ = np.pad(region.occ, g)
    lo = region.lo - g * region.voxel
    look = ndimage.binary_dilation(occ, np.ones((3, 3, 3), bool), iterations=g) if g else occ
    occupied, score = _probe_grid(lo, region.voxel, probe, look)
    low = occupied & (score < max_score)
    other = low & occ
    if g:
        slab = _below(occ.shape, lo, region.voxel, None if floor_z is None else floor_z + region.voxel)

        def reaching_in(low: np.ndarray) -> np.ndarray:  # low voxels joined to low voxels outside the region
            lab, _ = ndimage.label(low & ~slab, structure=np.ones((3, 3, 3), bool))
            out = np.unique(lab[low & ~occ & ~slab])
            return np.isin(lab, out[out > 0])

        neighbour = reaching_in(low)
        mine = occ & occupied & ~low
        if int((neighbour & ~occ).sum()) >= 4 and mine.any():  # a thing beside (not a stray voxel or two)
            # features blur across a contact: the neighbour is followed one voxel further in, up to halfway
            # between its score and the thing's
            cut = 0.5 * (float(np.median(score[mine])) + float(np.median(score[neighbour & ~occ])))
            if cut > max_score:
                touch = ndimage.binary_dilation(neighbour, np.ones((3, 3, 3), bool))
                neighbour = reaching_in(occupied & ((score < max_score) | (touch & (score < cut))))
        other = (occ & neighbour) | (low & occ & slab)
        own = occ & occupied & ~other
        if neighbour.any() and own.any():  # the gap: each empty voxel goes with the nearer occupied side
            gap = occ & ~occupied
            nearer = ndimage.distance_transform_edt(~neighbour) < ndimage.distance_transform_edt(~own)
            other |= gap & nearer
    if not other.any() or not (occ & ~other).any():
        return region
    return VoxelRegion(lo, region.voxel, occ & ~other)


def keep_together(region: VoxelRegion, edits: Sequence[Any], fraction: float = 0.5,
                  floor_z: float | None = None) -> VoxelRegion:
    """``region`` (a query's selection of a thing, in the scene after ``edits``) with, whole, every earlier edit's
    moved region whose new place lies at least ``fraction`` inside it: what moved together stays together. A thing
    moved before carries its whole earlier region (its dilated skin, a part whose features the query matches less,
    such as a lid), and a second move of it must take all of that along, or what the selection missed stays behind
    at the place it leaves as a floating leftover. Voxels below ``floor_z`` are not added; ``region`` itself is
    returned when nothing is added."""
    if fraction <= 0 or not edits:
        return region
    extra = []
    for e in edits:
        if e.removed:
            continue
        T = e.T_world_new_old
        moved = e.region.sample_points(region.voxel) @ T[:3, :3].T + T[:3, 3]
        if not len(moved):
            continue
        inside = region.contains(torch.as_tensor(moved, dtype=torch.float32)).numpy()
        if inside.mean() >= fraction:
            extra.append(moved[~inside])
    extra = [x for x in extra if len(x)]
    if not extra:
        return region
    pts = np.concatenate([region.sample_points(), *extra])
    return VoxelRegion.from_points(pts, region.voxel, 0.0, floor_z)


# ------------------------------------------------------------------------------------------------- edits
@dataclass(frozen=True)
class FloorFill:
    """The floor of a thing's old place: the points of its region's footprint (:meth:`VoxelRegion.footprint`) with
    world z in [``z_lo``, ``z_hi``] (a band about the support the thing stood on) read the field at ``x + offset``
    (``offset`` [3], world metres, horizontal: a patch of the same support beside the old place that nothing stands
    on). The support under a thing was never seen, and the thing's own underside blurs into it: without the fill its
    old place keeps a ghost of its bottom on the table, which every new view has to retrain away."""

    offset: np.ndarray
    z_lo: float
    z_hi: float

    def __post_init__(self) -> None:
        off = np.asarray(self.offset, np.float64).reshape(3)
        if not (np.all(np.isfinite(off)) and math.isfinite(self.z_lo) and math.isfinite(self.z_hi)
                and self.z_hi > self.z_lo):
            raise EditError(f"bad floor fill (offset {off.tolist()}, z {self.z_lo} .. {self.z_hi})")
        object.__setattr__(self, "offset", off)

    def describe(self) -> str:
        return f"floor from {np.round(self.offset, 3).tolist()} m beside, z {self.z_lo:.3f} .. {self.z_hi:.3f}"


@dataclass(frozen=True)
class Unmix:
    """The name a moved (or removed) thing left on its old neighbours, taken out: a point within ``ring_m`` of the
    edit's region (outside the region, on something no edit moves or fills) keeps at most a cosine of ``floor`` with
    ``direction`` (unit [D]: the text vector of the query that named the thing, less what the planner's negative
    phrases share with it) and loses its component along it above that. Distilled features blur across things that
    touch, so once the thing has gone a neighbour's rim still answers to its name, and a query limited to the old
    place finds it there (the scene-edit bench's seed 9: a teal cup's rim for "bottle"). ``floor`` is what the scene
    around answers to the name anyway (:func:`~f3rm_ros.core.workflows.scene_edits.thing_unmix`): ~0 with label
    features (every name's vector orthogonal to the others'); with CLIP a text vector is about as alike every image
    feature, and a neighbour that answers to the name no more than the scene does keeps its feature exactly. Along
    the name alone: the rest of a neighbour's feature (its own meaning) stays."""

    direction: np.ndarray
    ring_m: float
    floor: float = 0.0

    def __post_init__(self) -> None:
        d = np.asarray(self.direction, np.float32).reshape(-1)
        if not (d.size and np.all(np.isfinite(d)) and abs(float(np.linalg.norm(d)) - 1.0) < 1e-3):
            raise EditError("bad unmix direction: a finite unit vector is needed")
        if not (math.isfinite(self.ring_m) and 0.0 < self.ring_m <= 0.2):
            raise EditError(f"bad unmix ring {self.ring_m} m: it must be in (0, 0.2]")
        if not (math.isfinite(self.floor) and 0.0 <= self.floor < 1.0):
            raise EditError(f"bad unmix floor {self.floor}: it must be in [0, 1)")
        object.__setattr__(self, "direction", d)

    def ring(self, region: VoxelRegion) -> VoxelRegion:
        """The voxels within ``ring_m`` of ``region``'s (centre to centre), the region's own included."""
        return region_ring(region, self.ring_m)


def region_ring(region: VoxelRegion, ring_m: float, inner_m: float | None = None) -> VoxelRegion:
    """The voxels within ``ring_m`` (>= 0) of ``region``'s (centre to centre), the region's own included; with
    ``inner_m``, only those farther than that (a shell)."""
    from scipy import ndimage  # noqa: PLC0415

    r = int(math.ceil(max(float(ring_m), 0.0) / region.voxel))
    dist = ndimage.distance_transform_edt(~np.pad(region.occ, r)) * region.voxel
    near = dist <= ring_m
    if inner_m is not None:
        near &= dist > inner_m
    return VoxelRegion(region.lo - r * region.voxel, region.voxel, near)


@dataclass(frozen=True)
class SceneEdit:
    """One edit: ``region`` (where the thing was before this edit) moved by ``T_world_new_old`` (4x4, world), or
    removed (``T_world_new_old`` None). ``label``: what was moved (the query text or "box"), for messages.
    ``fill``: its old place's floor (:class:`FloorFill`, a :class:`VoxelRegion` only), None: the floor stays as the
    field has it. ``unmix``: its meaning taken out of its old neighbours' features (:class:`Unmix`, a
    :class:`VoxelRegion` only), None: they stay as the field has them."""

    region: BoxRegion | VoxelRegion
    T_world_new_old: np.ndarray | None
    label: str = ""
    fill: FloorFill | None = None
    unmix: Unmix | None = None

    def __post_init__(self) -> None:
        if self.fill is not None and not isinstance(self.region, VoxelRegion):
            raise EditError("a floor fill needs a voxel region (a query's selection), not a box")
        if self.unmix is not None and not isinstance(self.region, VoxelRegion):
            raise EditError("an unmix needs a voxel region (a query's selection), not a box")

    @property
    def removed(self) -> bool:
        return self.T_world_new_old is None

    def describe(self) -> str:
        what = self.label or "region"
        if self.removed:
            un = (f"; its name taken out within {self.unmix.ring_m:.3f} m down to cosine {self.unmix.floor:.2f}"
                  if self.unmix is not None else "")
            return f"{what} removed ({self.region.describe()}{f'; {self.fill.describe()}' if self.fill else ''}{un})"
        T = self.T_world_new_old
        ang = math.degrees(math.acos(float(np.clip((np.trace(T[:3, :3]) - 1) / 2, -1, 1))))
        fill = f"; {self.fill.describe()}" if self.fill is not None else ""
        if self.unmix is not None:
            fill += f"; its name taken out within {self.unmix.ring_m:.3f} m down to cosine {self.unmix.floor:.2f}"
        return f"{what} moved by {np.round(T[:3, 3], 3).tolist()} m, {ang:.1f} deg ({self.region.describe()}{fill})"


class EditWarp:
    """The warp of an edit stack (oldest first), in the world frame (module docstring): where the base field is read
    for each point, and which points are empty space. ``active`` (per point) says how many of the oldest edits apply
    there: a camera frame captured after the k-th edit saw the scene through the first k edits only (a refresh through
    the edits trains every frame through its own prefix). Graph-safe: no host synchronisation, except on the CPU,
    where only the points inside the boxes an edit can touch (:meth:`touched`) go through the stack (a refresh's
    samples are mostly elsewhere; :meth:`warp_all` is the plain path, and ``test/test_scene_edits.py`` compares
    them)."""

    # the CPU path warps the touched points alone from this many points up (fewer: the plain path)
    SUBSET_MIN = 2048

    def __init__(self, edits: Sequence[SceneEdit]):
        self.edits = tuple(edits)
        self._motions: dict = {}

    def _touched_boxes(self) -> np.ndarray:
        """[B, 2, 3] world boxes (lo, hi) that hold every point an edit of the stack reads elsewhere or empties: each
        region's bounding box (its old place, and the floor band of its fill under it) and the box of its corners
        moved by the edit (its new place), with 0.1 mm to spare. A point outside all of them passes every edit
        unchanged (by induction from the newest edit down)."""
        boxes = []
        for e in self.edits:
            r = e.region
            if isinstance(r, VoxelRegion) and not r.occ.any():
                continue
            c = np.asarray(r.corners(), np.float64)
            lo, hi = c.min(0), c.max(0)
            if e.fill is not None:
                lo[2], hi[2] = min(lo[2], e.fill.z_lo), max(hi[2], e.fill.z_hi)
            boxes.append((lo, hi))
            if not e.removed:
                T = np.asarray(e.T_world_new_old, np.float64)
                m = c @ T[:3, :3].T + T[:3, 3]
                boxes.append((m.min(0), m.max(0)))
        if not boxes:
            return np.zeros((0, 2, 3))
        b = np.asarray([[lo, hi] for lo, hi in boxes], np.float64)
        b[:, 0] -= 1e-4
        b[:, 1] += 1e-4
        return b

    def touched(self, x: Tensor) -> Tensor:
        """[N] bool: world points [N, 3] inside a box of :meth:`_touched_boxes` (every other point is left as it is)."""
        key = ("boxes", x.device)
        if key not in self._motions:  # made on first use: the CUDA path never asks
            self._motions[key] = torch.as_tensor(self._touched_boxes(), dtype=torch.float32, device=x.device)
        b = self._motions[key]
        p = x.detach()[:, None, :]
        return ((p >= b[None, :, 0]) & (p <= b[None, :, 1])).all(dim=-1).any(dim=-1)

    def _motion(self, k: int, device: torch.device) -> tuple[Tensor, Tensor]:
        key = (k, device)
        if key not in self._motions:
            T = self.edits[k].T_world_new_old
            self._motions[key] = (torch.as_tensor(T[:3, :3], dtype=torch.float32, device=device),
                                  torch.as_tensor(T[:3, 3], dtype=torch.float32, device=device))
        return self._motions[key]

    def __call__(self, x: Tensor, d: Tensor | None = None, active: Tensor | None = None, mover: bool = False
                 ) -> tuple[Tensor, ...]:
        """World points [N, 3] (and directions [N, 3]; ``active`` [N] int: edits in force, default all) -> where the
        base field is read [N, 3] (its directions), and [N] bool: empty space. Differentiable w.r.t. ``x``. With
        ``mover``, also [N] long: the oldest edit that moved each point (-1: none; the one whose region holds the
        thing's content in the base field, ``fields.moved_colour``; ``-(k + 2)``: read from edit k's floor fill).
        On the CPU only the :meth:`touched` points go through the stack (class docstring); elsewhere
        :meth:`warp_all`."""
        if x.device.type != "cpu" or x.shape[0] < self.SUBSET_MIN or not self.edits:
            return self.warp_all(x, d, active, mover)
        idx = self.touched(x).nonzero().squeeze(1)
        sub = self.warp_all(x[idx], None if d is None else d[idx], None if active is None else active[idx], mover)
        xs = x.clone()
        xs[idx] = sub[0].to(x.dtype)
        ds = None
        if d is not None:
            ds = d.clone()
            ds[idx] = sub[1].to(d.dtype)
        empty = torch.zeros(x.shape[0], dtype=torch.bool)
        empty[idx] = sub[2]
        if not mover:
            return xs, ds, empty
        who = torch.full((x.shape[0],), -1, dtype=torch.long)
        who[idx] = sub[3]
        return xs, ds, empty, who

    def warp_all(self, x: Tensor, d: Tensor | None = None, active: Tensor | None = None, mover: bool = False
                 ) -> tuple[Tensor, ...]:
        """:meth:`__call__` on every point (graph-safe; the reference of the CPU path)."""
        empty = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        who = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device) if mover else None
        for k in range(len(self.edits) - 1, -1, -1):
            e = self.edits[k]
            on = None if active is None else active > k
            if e.removed:
                at_new = torch.zeros_like(empty)
                x_old = x
            else:
                R, t = self._motion(k, x.device)
                x_old = (x - t) @ R  # rows: R^T (x - t)
                at_new = e.region.contains(x_old) & ~empty
                if on is not None:
                    at_new = at_new & on
            if e.fill is None:
                filled, in_region = None, e.region.contains(x)
            else:
                in_region, floor = self._place(k, x)
                filled = floor & ~at_new & ~empty
                if on is not None:
                    filled = filled & on
            at_old = in_region & ~at_new
            if filled is not None:
                at_old = at_old & ~filled
            empty = empty | (at_old if on is None else at_old & on)
            if not e.removed:
                x = torch.where(at_new[:, None], x_old, x)
                if d is not None:
                    d = torch.where(at_new[:, None], d @ R, d)
                if who is not None:
                    who = torch.where(at_new, torch.full_like(who, k), who)
            if filled is not None:
                x = torch.where(filled[:, None], x + self._offset(k, x.device), x)
                if who is not None:  # read from edit k's floor fill: -(k + 2) (an older edit moving it wins)
                    who = torch.where(filled, torch.full_like(who, -(k + 2)), who)
        return (x, d, empty, who) if mover else (x, d, empty)

    def _offset(self, k: int, device: torch.device) -> Tensor:
        key = ("fill", k, device)
        if key not in self._motions:
            self._motions[key] = torch.as_tensor(self.edits[k].fill.offset, dtype=torch.float32, device=device)
        return self._motions[key]

    def _place(self, k: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """[N] bool each: ``x`` in edit k's region, in its floor patch (the region's footprint, z in the fill's band).
        One lookup in a grid holding both (bit 0: a region voxel, bit 1: a footprint column), the region's grid
        stretched down and up to the band: as ``region.contains(x)`` and ``_floor_reference(k, x)``, in one gather."""
        e, key = self.edits[k], ("place", k, x.device)
        if key not in self._motions:
            r, f = e.region, e.fill
            below = max(0, math.ceil((r.lo[2] - f.z_lo) / r.voxel))
            above = max(0, math.ceil((f.z_hi - r.lo[2]) / r.voxel) + 1 - r.occ.shape[2])
            code = np.pad(r.occ, ((0, 0), (0, 0), (below, above))).astype(np.uint8)
            code |= (r.occ.any(2)[:, :, None] * 2).astype(np.uint8)
            self._motions[key] = (torch.as_tensor(r.lo, dtype=torch.float32, device=x.device),
                                  torch.as_tensor(code, device=x.device),
                                  torch.as_tensor(code.shape, device=x.device), below)
        lo, code, shape, below = self._motions[key]
        i = torch.floor((x.detach().float() - lo) / e.region.voxel).long()
        i[:, 2] += below
        inside = ((i >= 0) & (i < shape)).all(dim=-1)
        i = torch.where(inside[:, None], i, torch.zeros_like(i))
        c = torch.where(inside, code[i[:, 0], i[:, 1], i[:, 2]], torch.zeros_like(code[0, 0, :1]))
        z = x[:, 2].detach()
        return (c & 1) > 0, ((c & 2) > 0) & (z >= e.fill.z_lo) & (z <= e.fill.z_hi)

    def _floor_reference(self, k: int, x: Tensor) -> Tensor:  # [N] bool: in edit k's floor patch, the plain way
        f = self.edits[k].fill
        z = x[:, 2].detach()
        return (z >= f.z_lo) & (z <= f.z_hi) & self.edits[k].region.footprint_contains(x)

    def in_field(self, nerf_to_world: Any, active_per_image: Sequence[int] | None = None) -> FieldWarp:
        """This warp in a field's frame, for ``FieldModel.render_rays(warp=...)``."""
        return FieldWarp(self, nerf_to_world, active_per_image)


class FieldWarp:
    """An :class:`EditWarp` in a field's normalised frame (``nerf_to_world``: 4x4 similarity, field -> world metres):
    ``(positions [R, S, 3], directions [R, 3] or [R, S, 3], camera_idx [R] or None) -> (positions, directions
    [R, S, 3], empty [R, S])``, the hook :meth:`~f3rm_ros.core.fields.model.FieldModel.render_rays` reads its samples
    through. ``active_per_image`` [num images]: how many of the oldest edits each training image saw (camera_idx
    None or < 0: all of them). Points no edit moves are returned bit for bit."""

    def __init__(self, warp: EditWarp, nerf_to_world: Any, active_per_image: Sequence[int] | None = None):
        from f3rm_ros.core.field_api import _similarity_parts  # noqa: PLC0415 - the checked split TrainedField uses

        s, R, t = _similarity_parts(nerf_to_world)
        self.warp, self._s = warp, s
        self._np = (R, t)
        self._active = None if active_per_image is None else np.asarray(active_per_image, dtype=np.int64)
        self._t: dict = {}

    def _tensors(self, device: torch.device) -> tuple[Tensor, Tensor, Tensor | None]:
        if device not in self._t:
            R, t = self._np
            self._t[device] = (torch.as_tensor(R.T, dtype=torch.float32, device=device),
                               torch.as_tensor(t, dtype=torch.float32, device=device),
                               None if self._active is None else torch.as_tensor(self._active, device=device))
        return self._t[device]

    def __call__(self, positions: Tensor, directions: Tensor, camera_idx: Tensor | None = None, mover: bool = False
                 ) -> tuple[Tensor, ...]:
        """With ``mover``, also [R, S] long: the oldest edit that moved each sample (:class:`EditWarp`)."""
        Rt, t, act = self._tensors(positions.device)
        Rn, S = positions.shape[:2]
        d = directions if directions.dim() == 3 else directions[:, None, :].expand(Rn, S, 3)
        p = positions.reshape(-1, 3)
        xw = self._s * (p.float() @ Rt) + t
        dw = d.reshape(-1, 3).float() @ Rt
        active = None
        if act is not None and camera_idx is not None:
            idx = camera_idx.reshape(-1).long()
            per_ray = torch.where(idx >= 0, act[idx.clamp(min=0)], torch.full_like(idx, len(self.warp.edits)))
            active = per_ray[:, None].expand(Rn, S).reshape(-1)
        xs, ds, empty, *who = self.warp(xw, dw, active, mover=mover)
        moved = (xs != xw).any(dim=-1, keepdim=True)
        pn = torch.where(moved, (((xs - t) @ Rt.T) / self._s).to(p.dtype), p)
        dn = torch.where(moved, (ds @ Rt.T).to(d.dtype), d.reshape(-1, 3))
        out = (pn.reshape(Rn, S, 3), dn.reshape(Rn, S, 3), empty.reshape(Rn, S))
        return (*out, who[0].reshape(Rn, S)) if mover else out


class EditedField:
    """A field seen through a stack of edits (module docstring). Same query interface as the wrapped ``base``.

    Args:
        base: the field as trained (a TrainedField or any GraspField).
        edits: oldest first.
    """

    def __init__(self, base: Any, edits: Sequence[SceneEdit] = (), fixed: int = 0):
        if isinstance(base, EditedField):
            edits = (*base.edits, *edits)
            fixed = max(int(fixed), base.fixed)
            base = base.base
        self.base = base
        self.edits: tuple[SceneEdit, ...] = tuple(edits)
        if not 0 <= int(fixed) <= len(self.edits):
            raise EditError(f"fixed must be in [0, {len(self.edits)}], got {fixed}")
        self.fixed = int(fixed)  # the oldest edits that came with the checkpoint (a refresh through them): no undo
        self._warp = EditWarp(self.edits)
        self._rings: dict = {}  # (edit index, device) -> (ring VoxelRegion, direction tensor) of its Unmix

    # --- the attributes the planner, the session and the node read ------------------------------------
    feature_dim = property(lambda self: self.base.feature_dim)
    device = property(lambda self: self.base.device)
    extractor_info = property(lambda self: self.base.extractor_info)
    nerf_to_world = property(lambda self: self.base.nerf_to_world)
    cameras = property(lambda self: getattr(self.base, "cameras", {}))
    metres_per_unit = property(lambda self: getattr(self.base, "metres_per_unit", 1.0))

    def __getattr__(self, name: str) -> Any:  # the base's other attributes (model, chunk, world_to_nerf, ...)
        if name in ("base", "edits", "fixed", "_warp", "_rings"):
            raise AttributeError(name)
        if name == "query_feature_hidden" and "edits" in self.__dict__ and self._unmixes:
            raise AttributeError(name)  # not the base's either: an unmix acts on the features (the property says)
        return getattr(self.base, name)

    # --- building -----------------------------------------------------------------------------------
    def with_edit(self, edit: SceneEdit, workspace: tuple[Sequence[float], Sequence[float]] | None = None
                  ) -> EditedField:
        """A new field with ``edit`` on top (this one is unchanged). Raises EditError for a bad motion, one that
        takes the region's centre out of ``workspace`` (lo, hi), or a stack of :data:`MAX_EDITS` edits."""
        if len(self.edits) >= MAX_EDITS:
            carried = f", {self.fixed} of them carried by the refreshed checkpoint" if self.fixed else ""
            raise EditError(f"{len(self.edits)} edits are stacked already (at most {MAX_EDITS}{carried}); a refresh "
                            f"keeps them (it trains through them): capture the scene anew and train a new field "
                            f"(TrainFields on the new dataset), or load another field")
        if not edit.removed:
            T = check_rigid(edit.T_world_new_old)
            edit = dataclasses.replace(edit, T_world_new_old=T)  # its fill and unmix kept
            if workspace is not None:
                lo, hi = (np.asarray(v, np.float64).reshape(3) for v in workspace)
                c = T[:3, :3] @ edit.region.centre() + T[:3, 3]
                if np.any(c < lo) or np.any(c > hi):
                    raise EditError(f"the move takes {edit.label or 'the region'} off the workspace: its centre would "
                                    f"be at {np.round(c, 3).tolist()}, the workspace box is {lo.tolist()} .. "
                                    f"{hi.tolist()}")
        return EditedField(self.base, (*self.edits, edit), self.fixed)

    def undo(self) -> EditedField:
        """The field without its newest edit; EditError when there is none, or when the newest is one of the
        :attr:`fixed` edits its checkpoint came with (a field refreshed through its edits was trained with them)."""
        if len(self.edits) <= self.fixed:
            raise EditError("there is no edit to undo" if not self.edits else
                            f"the field's {self.fixed} edit(s) came with its checkpoint (it was refreshed through "
                            f"them) and cannot be undone; load another field to serve the scene without them")
        return EditedField(self.base, self.edits[:-1], self.fixed)

    # --- the warp -----------------------------------------------------------------------------------
    def warp(self, x: Tensor, d: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor]:
        """World points [N, 3] (and directions [N, 3]) -> where the base field is read [N, 3] (its directions), and
        [N] bool: empty space (an old place or a removed region). Differentiable w.r.t. ``x``."""
        return self._warp(x, d)

    # --- queries (the GraspField protocol) -----------------------------------------------------------
    def _check(self, points: Tensor) -> None:
        if points.dim() != 2 or points.shape[-1] != 3:
            raise ValueError(f"points_world must be [N, 3], got {tuple(points.shape)}")

    def query_density(self, points_world: Tensor) -> Tensor:  # [N, 3] -> [N]
        """Volume density in 1/metre at world points, after the edits."""
        self._check(points_world)
        if not self.edits:
            return self.base.query_density(points_world)
        x, _, empty = self.warp(points_world)
        d = self.base.query_density(x).reshape(-1)
        return torch.where(empty, torch.zeros_like(d), d)

    def query_alpha(self, points_world: Tensor, delta_m: float) -> Tensor:  # [N, 3] -> [N]
        return 1.0 - torch.exp(-self.query_density(points_world) * float(delta_m))

    def _empty_features(self, like: Tensor) -> Tensor:
        b = None
        if self._has_head():
            b = self.base.feature_head[1]
        if b is None:
            return torch.zeros_like(like)
        return b.to(like).expand_as(like)

    def _has_head(self) -> bool:
        return int(getattr(self.base, "feature_dim", 0) or 0) > 0 and hasattr(type(self.base), "feature_head") \
            and hasattr(self.base, "query_feature_hidden")

    @property
    def _unmixes(self) -> bool:
        return any(e.unmix is not None for e in self.edits)

    def _unmixed(self, points_world: Tensor, x_read: Tensor, f: Tensor) -> Tensor:
        """Features ``f`` [N, D] at ``points_world`` (read at ``x_read``) with every edit's :class:`Unmix` applied:
        only points read where they are (nothing moved or filled them) within an edit's ring and outside its
        region lose their component along its direction beyond a cosine of its floor."""
        static = None
        for k, e in enumerate(self.edits):
            if e.unmix is None:
                continue
            key = (k, f.device)
            if key not in self._rings:
                self._rings[key] = (e.unmix.ring(e.region),
                                    torch.as_tensor(e.unmix.direction, dtype=torch.float32, device=f.device))
            ring, m = self._rings[key]
            if m.shape[0] != f.shape[-1]:
                raise EditError(f"edit {k + 1}'s unmix has {m.shape[0]} feature dims, the field {f.shape[-1]}: the "
                                f"edits belong to another field")
            if static is None:
                static = (x_read.detach() == points_world.detach()).all(dim=-1)
            p = points_world.detach()
            sel = static & ring.contains(p) & ~e.region.contains(p)
            m = m.to(f.dtype)
            over = f @ m
            if e.unmix.floor > 0:  # the cosine with m the neighbourhood has anyway stays: (par - c) / |f - c m| = floor
                perp = ((f * f).sum(-1) - over * over).clamp(min=0.0).add(1e-12).sqrt()
                over = over - e.unmix.floor / math.sqrt(1.0 - e.unmix.floor ** 2) * perp
            c = over.clamp(min=0) * sel.to(f.dtype)
            f = f - c[:, None] * m[None, :]
        return f

    def query_features(self, points_world: Tensor) -> Tensor:  # [N, 3] -> [N, D]
        """Raw distilled features at world points, after the edits (empty space: the head's bias, or zeros; an
        edit's :class:`Unmix` on its old neighbours)."""
        self._check(points_world)
        if not self.edits:
            return self.base.query_features(points_world)
        x, _, empty = self.warp(points_world)
        f = self.base.query_features(x)
        f = torch.where(empty[:, None], self._empty_features(f), f)
        return self._unmixed(points_world, x, f) if self._unmixes else f

    @property
    def query_density_and_features(self):
        """(density [N], features [N, D]) in one pass, when the base field has it (else AttributeError, so the
        planner's ``getattr(field, ..., None)`` falls back to two queries)."""
        both = getattr(self.base, "query_density_and_features", None)
        if both is None:
            raise AttributeError("query_density_and_features")

        def fn(points_world: Tensor) -> tuple[Tensor, Tensor]:
            self._check(points_world)
            if not self.edits:
                return both(points_world)
            x, _, empty = self.warp(points_world)
            d, f = both(x)
            d = d.reshape(-1)
            f = torch.where(empty[:, None], self._empty_features(f), f)
            return (torch.where(empty, torch.zeros_like(d), d),
                    self._unmixed(points_world, x, f) if self._unmixes else f)

        return fn

    @property
    def query_feature_hidden(self):
        """The feature MLP's hidden activation after the edits (zeros in empty space), when the base has it and no
        edit unmixes (an :class:`Unmix` acts on the features, not on the hidden layer: the planner's folded head
        then falls back to :meth:`query_features`)."""
        hid = getattr(self.base, "query_feature_hidden", None)
        if hid is None or self._unmixes:
            raise AttributeError("query_feature_hidden")

        def fn(points_world: Tensor) -> Tensor:
            self._check(points_world)
            if not self.edits:
                return hid(points_world)
            x, _, empty = self.warp(points_world)
            h = hid(x)
            return torch.where(empty[:, None], torch.zeros_like(h), h)

        return fn

    @property
    def feature_head(self) -> tuple[Tensor, Tensor | None]:
        if not hasattr(type(self.base), "feature_head"):
            raise AttributeError("feature_head")
        return self.base.feature_head

    # --- renders (TrainedField bases) ----------------------------------------------------------------
    @torch.no_grad()
    def render(self, c2w_world_opencv: np.ndarray, intrinsics: Any, with_features: bool = True,
               chunk: int = 16384) -> dict[str, Tensor]:
        """:meth:`TrainedField.render` of the edited scene: the model's proposal sampler, RGB and feature fields
        read at the warped sample points (view directions rotated with them); empty space renders as nothing."""
        base = self.base
        if not self.edits:
            return base.render(c2w_world_opencv, intrinsics, with_features=with_features, chunk=chunk)
        if not hasattr(base, "model"):
            raise ValueError("only a trained field (with a model) can be rendered")
        from f3rm_ros.core.fields.camera_render import render_camera  # noqa: PLC0415

        c2w = base.c2w_world_to_nerf(c2w_world_opencv)
        base.model.eval()
        out = render_camera(lambda o, d: self._render_rays(o, d, with_features), intrinsics, c2w, chunk)
        s = base.metres_per_unit
        depth = out["depth"] * s
        dirs_cam = out.pop("directions") @ c2w[:3, :3]
        out["depth"] = depth
        out["z_depth"] = depth * dirs_cam[..., 2]
        return out

    @torch.no_grad()
    def render_pixels(self, c2w_world_opencv: np.ndarray, intrinsics: Any, pixel_xy: Tensor | np.ndarray,
                      with_features: bool = True, chunk: int = 65536) -> dict[str, Tensor]:
        """:meth:`render` of some pixels only (``pixel_xy`` [n, 2], continuous: the centre of pixel (i, j) is
        (i + 0.5, j + 0.5)): rgb [n, 3], z_depth [n] (metres along the optical axis), accumulation [n], features
        [n, D] (with a feature field and ``with_features``). Needs a trained field (with a model) as base."""
        return self.render_pixel_sets([(c2w_world_opencv, intrinsics, pixel_xy)], with_features, chunk)[0]

    @torch.no_grad()
    def render_pixel_sets(self, views: Sequence[tuple[np.ndarray, Any, Tensor | np.ndarray]],
                          with_features: bool = True, chunk: int = 65536) -> list[dict[str, Tensor]]:
        """:meth:`render_pixels` of several cameras ``(c2w_world_opencv, intrinsics, pixel_xy)`` at once: their rays
        go through the field together, in chunks of ``chunk`` (a few large batches instead of one small one per
        camera). One dict per view, as :meth:`render_pixels`."""
        from f3rm_ros.core.cameras import generate_rays, intrinsics_tensor  # noqa: PLC0415

        base = self.base
        if not hasattr(base, "model"):
            raise ValueError("only a trained field (with a model) can be rendered")
        dev = base.device
        origins, dirs, zdir, sizes = [], [], [], []
        for c2w_world, K, pixel_xy in views:
            c2w = base.c2w_world_to_nerf(c2w_world)
            px = torch.as_tensor(np.asarray(pixel_xy, np.float32) if not isinstance(pixel_xy, Tensor) else pixel_xy,
                                 dtype=torch.float32, device=dev).reshape(-1, 2)
            o, d = generate_rays(intrinsics_tensor(K, device=dev).expand(px.shape[0], -1),
                                 c2w.expand(px.shape[0], 4, 4), px)
            origins.append(o)
            dirs.append(d)
            zdir.append((d @ c2w[:3, :3])[:, 2])  # the optical-axis part of each unit ray
            sizes.append(px.shape[0])
        if not sizes or sum(sizes) == 0:
            return [{} for _ in views]
        o, d, zd = torch.cat(origins), torch.cat(dirs), torch.cat(zdir)
        base.model.eval()
        outs: dict[str, list[Tensor]] = {}
        for s in range(0, o.shape[0], chunk):
            r = self._render_rays(o[s:s + chunk], d[s:s + chunk], with_features)
            r["z_depth"] = r.pop("depth") * base.metres_per_unit * zd[s:s + chunk]
            for k, v in r.items():
                outs.setdefault(k, []).append(v.float())
        cat = {k: torch.cat(v) for k, v in outs.items()}
        return [{k: v[a:b] for k, v in cat.items()} for a, b in zip(np.cumsum([0, *sizes[:-1]]), np.cumsum(sizes),
                                                                        strict=True)]

    def _render_rays(self, origins: Tensor, directions: Tensor, with_features: bool) -> dict[str, Tensor]:
        """``FieldModel.render_rays`` (evaluation, mean appearance) through the edits."""
        base = self.base
        if "_field_warp" not in self.__dict__:
            self._field_warp = self._warp.in_field(base.nerf_to_world)
        out = base.model.render_rays(origins, directions, None, training=False, with_features=with_features,
                                     warp=self._field_warp)
        return {k: out[k] for k in ("rgb", "depth", "accumulation", "features") if k in out}

    def point_cloud(self, cameras: list | None = None, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`TrainedField.point_cloud` of the edited scene (same arguments)."""
        from f3rm_ros.core.field_api import TrainedField  # noqa: PLC0415

        if not self.edits:
            return self.base.point_cloud(cameras, **kwargs)
        # the same back-projection, with this field's render (it reads render, cameras, device, world_to_nerf)
        return TrainedField.point_cloud(self, cameras, **kwargs)

    def describe(self) -> str:
        return "; ".join(f"{i + 1}: {e.describe()}" for i, e in enumerate(self.edits)) or "no edits"
