"""Edit the field a query session serves after the robot moved or removed something (issue 18; ROS-free).

:func:`edit_field` turns a request (which thing: a query text, whose selected voxels become the region, or a box;
the rigid motion ``T_world_new_old`` or "removed"; or "undo") into a new :class:`~f3rm_ros.core.edits.EditedField`
for the session's field, checked, without changing the session: the caller swaps it in
(:func:`session_with_field`), so queries in flight finish on the field they started with. A refusal raises
:class:`~f3rm_ros.core.edits.EditError` with the reason and changes nothing.

The region of a query is the planner's own selection on the workspace surface (the language mask and
``min_similarity``), narrowed to the points whose features match the query at least ``select_relative`` x the 90th
percentile of the selection (as the planner's contact test), the connected cluster of the best one, as voxels filled
down to the object's base, dilated by ``dilate_m`` and cut at the planner's floor less ``floor_margin_m`` (the
table under the object stays); grown by ``grow_m`` into the occupied voxels that match the query at least
``grow_relative`` x that bar and join it (a lid or handle the selection missed: :func:`~f3rm_ros.core.edits.
grow_region`); less the occupied voxels whose features match the query less than ``exclude_relative`` x that bar and
that go on outside the region (a touching neighbour stays where it is:
:func:`~f3rm_ros.core.edits.exclude_neighbours`). The edit's old place reads its floor from a free patch of the same
support beside it (:func:`floor_fill`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from f3rm_ros.core.config import param
from f3rm_ros.core.edits import (BoxRegion, EditedField, EditError, FloorFill, SceneEdit, Unmix, VoxelRegion,
                                 exclude_neighbours, grow_region, keep_together, region_from_selection, region_ring)

__all__ = ["EditConfig", "EditRequest", "EditOutcome", "query_embeddings", "select_region", "floor_fill", "thing_unmix",
           "edit_field", "session_with_field", "base_field", "edit_count"]


@dataclass
class EditConfig:
    """How a query picks the region of an edit (the query node's ``edit.*`` parameters)."""

    voxel_m: float = param(0.01, "voxel size of a query's region, metres", range=(0.001, 0.1))
    dilate_m: float = param(0.015, "the selected voxels are grown by this much (the thing's whole skin moves)",
                            range=(0.0, 0.2))
    floor_margin_m: float = param(0.005, "the region stops this far below the planner's floor (the table under "
                                         "the thing is not moved)", range=(0.0, 0.1))
    select_relative: float = param(0.8, "a selected point belongs to the thing when its feature matches the query at "
                                        "least this x the selection's 90th percentile", range=(0.0, 1.0))
    link_m: float = param(0.025, "selected points closer than this are one cluster; only the best point's cluster "
                                 "is the thing", range=(0.001, 0.5))
    exclude_relative: float = param(0.5, "occupied voxels of the grown region whose feature matches the query less "
                                          "than this x the selection's bar belong to something else (a touching "
                                          "neighbour) and are left out (0 = keep them)", range=(0.0, 1.0))
    exclude_joined: bool = param(True, "only such voxels joined (through others like them) to occupied space "
                                       "outside the region are left out: a neighbour reaching in goes on outside, "
                                       "the thing's own lid or base does not")
    grow_m: float = param(0.04, "the region takes in the occupied voxels up to this far beyond it, over the floor, "
                                "that match the query at least grow_relative x the bar and join it (parts the "
                                "selection missed: a lid, a handle; 0 = off)", range=(0.0, 0.2))
    grow_relative: float = param(0.5, "what the region grows into matches the query at least this x the selection's "
                                      "bar", range=(0.0, 1.0))
    check_workspace: bool = param(True, "refuse a move that puts the region's centre outside the planner's "
                                        "workspace box")
    fill_floor: bool = param(True, "a query's edit fills its old place's floor (the region's footprint, from "
                                   "fill_below_m under to fill_above_m over the support) from a free patch of the "
                                   "same support beside it (the table under a thing was never seen)")
    fill_below_m: float = param(0.02, "the floor fill reaches this far under the support's surface", range=(0.0, 0.1))
    fill_above_m: float = param(0.01, "the floor fill reaches this far over the support's surface (the thing's "
                                      "underside, blurred into the table)", range=(0.0, 0.05))
    fill_gap_m: float = param(0.02, "the patch a floor fill reads lies this far beside the footprint and this far "
                                    "from anything standing", range=(0.0, 0.2))
    fill_flat_m: float = param(0.004, "a floor fill's patch shows the support at the height of the ring around the "
                                      "footprint within this much", range=(0.0, 0.05))
    fill_match: float = param(0.8, "a floor fill's patch looks like the ring around the footprint: feature cosine "
                                   "at least this", range=(-1.0, 1.0))
    keep_together: float = param(0.5, "a query's region takes in, whole, an earlier edit's moved region when at "
                                      "least this fraction of its new place lies in the selection (what moved "
                                      "together stays together; 0 = off)", range=(0.0, 1.0))
    unmix_ring_m: float = param(0.03, "a query's edit takes the thing's name (the query's text vector less the "
                                      "negatives' share) out of its old neighbours' features within this many "
                                      "metres, down to what the scene around answers to it anyway, so a neighbour's "
                                      "rim no longer answers to the name (edits.Unmix, thing_unmix); 0 = off",
                                range=(0.0, 0.2))


@dataclass
class EditRequest:
    """One edit: ``text`` (the thing a query names) or ``box`` ((lo, hi) world corners, axis-aligned), and
    ``T_world_new_old`` (4x4) or ``removed``; or ``undo`` alone."""

    text: str = ""
    box: tuple[Sequence[float], Sequence[float]] | None = None
    T_world_new_old: np.ndarray | None = None
    removed: bool = False
    undo: bool = False


@dataclass
class EditOutcome:
    field: EditedField
    message: str
    seconds: float
    region: Any = None


def base_field(field: Any) -> Any:
    """The field as trained under any edits."""
    return field.base if isinstance(field, EditedField) else field


def edit_count(field: Any) -> int:
    return len(field.edits) if isinstance(field, EditedField) else 0


def query_embeddings(session: Any, text: str) -> torch.Tensor:
    """``text`` checked as an object query, then its unit text vector and the planner's negatives' ([1 + K, D] on the
    planner's device): what :func:`select_region` selects with and :func:`thing_unmix` takes out."""
    from f3rm_ros.core.grasp.language import encode_texts  # noqa: PLC0415

    session.check_text(text, "object")
    session.require()
    return encode_texts(session.encoder, [text, *session.planner_config.negatives], session.planner.device)


def select_region(session: Any, text: str, config: EditConfig | None = None,
                  embeddings: torch.Tensor | None = None) -> VoxelRegion:
    """The region of the thing ``text`` names in ``session``'s field (module docstring); EditError if not found.
    ``embeddings``: :func:`query_embeddings` of ``text``, when the caller has them."""
    from f3rm_ros.core.grasp.field_utils import query_features_chunked  # noqa: PLC0415
    from f3rm_ros.core.grasp.language import language_mask, pairwise_softmax  # noqa: PLC0415

    c = config or EditConfig()
    emb = query_embeddings(session, text) if embeddings is None else embeddings
    planner, pc = session.planner, session.planner_config
    pts, _ = planner.surface()
    if pts.shape[0] == 0:
        raise EditError("no surface in the workspace box: nothing to select")
    pos, negs = emb[0], emb[1:]
    f = query_features_chunked(planner.field, pts, pc.chunk_points)
    f = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    sims = pairwise_softmax(f, pos, negs, pc.similarity_temperature)
    mask = language_mask(f, pos, negs, pc.mask_temperature) & (sims >= pc.min_similarity)
    if int(mask.sum()) < pc.min_masked_voxels:
        raise EditError(f"{text!r} not found in the field: {int(mask.sum())} surface voxels match it (need "
                        f"{pc.min_masked_voxels}; best similarity {float(sims.max()):.3f}, threshold "
                        f"{pc.min_similarity:.3f})")
    cos = f @ pos
    bar = c.select_relative * float(torch.quantile(cos[mask].float(), 0.9))
    score = torch.where(mask, cos, torch.full_like(cos, -1e9))
    floor = planner.floor_z()
    region = region_from_selection(pts.cpu().numpy(), score.cpu().numpy(), bar, c.voxel_m, c.dilate_m,
                                   None if floor is None else floor - c.floor_margin_m, c.link_m)
    if c.grow_m > 0 or c.exclude_relative > 0:
        from f3rm_ros.core.grasp.field_utils import alpha_from_density, query_density_chunked  # noqa: PLC0415

        def probe(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # world points -> occupied, cosine to the query
            t = torch.as_tensor(x, dtype=torch.float32, device=planner.device)
            alpha = alpha_from_density(query_density_chunked(planner.field, t, pc.chunk_points), c.voxel_m)
            fv = query_features_chunked(planner.field, t, pc.chunk_points)
            cv = (fv / fv.norm(dim=-1, keepdim=True).clamp_min(1e-12)) @ pos
            return (alpha >= pc.surface_alpha).cpu().numpy(), cv.float().cpu().numpy()

        cut = None if floor is None else floor - c.floor_margin_m
        if c.grow_m > 0:  # parts the selection missed (a lid of another colour, a handle)
            region = grow_region(region, probe, c.grow_relative * bar, c.grow_m, c.dilate_m, floor, cut)
        if c.exclude_relative > 0:  # occupied voxels of something else (a touching neighbour) stay where they are
            region = exclude_neighbours(region, probe, c.exclude_relative * bar, c.exclude_joined, floor)
    return region


def floor_fill(session: Any, field: Any, region: VoxelRegion, config: EditConfig | None = None) -> FloorFill | None:
    """The :class:`~f3rm_ros.core.edits.FloorFill` of ``region``'s old place in ``field`` (the scene the edit starts
    from). The support is what the ring of columns just around the footprint shows (the field's first opaque sample
    down each column: its median height and mean feature). The patch is the nearest copy of the footprint beside it
    (16 directions, ``fill_gap_m`` apart) that stays in the workspace (or no further out than the footprint itself
    reaches), has no surface point of anything standing (over 3 cm above the floor; a floater lower down is not a
    thing) within ``fill_gap_m``, and shows that same support under nearly all its columns: seen, flat (within
    ``fill_flat_m`` of the ring's height) and alike (feature cosine to the ring's >= ``fill_match``), so a plate, a
    shadow or the table's edge is not copied. The band is about the ring's height. None when no patch
    qualifies (the floor then stays as the field has it)."""
    from scipy import ndimage  # noqa: PLC0415
    from scipy.spatial import cKDTree  # noqa: PLC0415

    from f3rm_ros.core.grasp.field_utils import (alpha_from_density, query_density_chunked,  # noqa: PLC0415
                                                 query_features_chunked)

    c = config or EditConfig()
    pc, planner = session.planner_config, session.planner
    dev = planner.device
    fp = region.footprint()
    lo, hi = np.asarray(pc.workspace_min_m, np.float64), np.asarray(pc.workspace_max_m, np.float64)
    pts, _ = planner.surface()
    P = pts.cpu().numpy().astype(np.float64)
    floor = planner.floor_z()
    if len(P):  # things standing (not the support, nor a floater just over it; not the thing itself: it is leaving)
        P = P[(P[:, 2] > (lo[2] if floor is None else floor) + 0.03)
              & ~region.contains(torch.as_tensor(P, dtype=torch.float32)).numpy()]
    tree = cKDTree(P[:, :2]) if len(P) else None
    zc = float(np.argwhere(region.occ)[:, 2].min()) * region.voxel + region.lo[2]
    top = zc + 0.03 if floor is None else max(zc, floor) + 0.03
    step = 0.0025
    zs = top - step * np.arange(int((0.03 + 0.05) / step) + 1)

    def support(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:  # heights (nan: none), features
        cells = cells[np.linspace(0, len(cells) - 1, min(len(cells), 96)).astype(int)]
        q = np.concatenate([np.repeat(cells, len(zs), 0), np.tile(zs, len(cells))[:, None]], 1)
        a = alpha_from_density(query_density_chunked(field, torch.as_tensor(q, dtype=torch.float32, device=dev),
                                                     pc.chunk_points), step).reshape(len(cells), len(zs))
        hit = (a >= pc.surface_alpha).cpu().numpy()
        h = np.where(hit.any(1), zs[np.argmax(hit, axis=1)], np.nan)
        ok = np.isfinite(h)
        f = query_features_chunked(field, torch.as_tensor(np.c_[cells[ok], h[ok]], dtype=torch.float32, device=dev),
                                   pc.chunk_points) if ok.any() else torch.zeros(0, 1, device=dev)
        return h, ok, f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    occ2 = region.occ.any(2)
    pad = np.pad(occ2, 3)
    ring = ndimage.binary_dilation(pad, np.ones((3, 3), bool), iterations=2) & ~pad
    ring_cells = region.lo[:2] + (np.argwhere(ring) - 3 + 0.5) * region.voxel
    h_r, ok_r, f_r = support(ring_cells)
    if ok_r.mean() < 0.5:
        return None
    z = float(np.median(h_r[ok_r]))
    flat = np.abs(h_r[ok_r] - z) <= c.fill_flat_m
    if flat.sum() < 4:
        return None
    f_ring = f_r[torch.as_tensor(flat, device=f_r.device)].mean(0)
    f_ring = f_ring / f_ring.norm().clamp_min(1e-12)
    # the patch stays in the workspace, or no further out than the footprint itself reaches (a thing at its edge)
    inner_lo = np.minimum(lo[:2] + region.voxel / 2, fp.min(0)) - 1e-6
    inner_hi = np.maximum(hi[:2] - region.voxel / 2, fp.max(0)) + 1e-6
    cands = []
    for ang in np.linspace(0.0, 2 * np.pi, 16, endpoint=False):
        u = np.array([np.cos(ang), np.sin(ang)])
        proj = fp @ u
        cands.append((float(proj.max() - proj.min()) + region.voxel + c.fill_gap_m, u))
    for shift, u in sorted(cands, key=lambda t: t[0]):
        cells = fp + shift * u
        if np.any(cells.min(0) < inner_lo) or np.any(cells.max(0) > inner_hi):
            continue
        if tree is not None and any(len(n) for n in tree.query_ball_point(cells, region.voxel * 0.75 + c.fill_gap_m)):
            continue
        h, ok, f = support(cells)
        alike = np.zeros(len(h), bool)
        alike[ok] = (np.abs(h[ok] - z) <= c.fill_flat_m) & ((f @ f_ring).cpu().numpy() >= c.fill_match)
        if alike.mean() >= 0.9:
            return FloorFill(np.array([*(shift * u), 0.0]), z - c.fill_below_m, z + c.fill_above_m)
    return None


def thing_unmix(field: Any, region: VoxelRegion, ring_m: float, name: Any, negatives: Any = None,
                min_alpha: float = 0.1, shell_m: tuple[float, float] = (0.07, 0.12),
                max_shell_points: int = 4096) -> Unmix | None:
    """The :class:`~f3rm_ros.core.edits.Unmix` of the thing in ``region`` named by the text vector ``name`` (the
    query's, [D]), weighed against ``negatives`` ([K, D], the planner's negative phrases, or None): its direction is
    the name's part that the negatives do not share (the query's relevancy is its score against theirs: what they
    share with it moves both alike), and within ``ring_m`` of its old place a feature keeps no more of it than the
    scene around has anyway, the floor: the median cosine with the direction of the features the field holds (alpha
    at the voxel size >= ``min_alpha``) from ``ring_m + shell_m[0]`` to ``ring_m + shell_m[1]`` of the region (beyond
    the thing's blur; at most ``max_shell_points`` of them, evenly strided; clipped to [0, 0.95]; 0 when none is
    held there). Label features: the name's vector is orthogonal to every other name's and to the negatives', the
    floor ~0; CLIP: a text vector is about as alike every image feature (the modality gap), and that much stays.
    None when the field has no features, the name has another dimension or the negatives span it."""
    dim = int(getattr(field, "feature_dim", 0) or 0)
    q = torch.as_tensor(name, dtype=torch.float32).reshape(-1).cpu()
    if not dim or q.numel() != dim or not bool(torch.isfinite(q).all()) or not float(q.norm()) > 1e-6:
        return None
    q = q / q.norm()
    if negatives is not None:
        n = torch.as_tensor(negatives, dtype=torch.float32).cpu().reshape(-1, dim)
        if len(n) and bool(torch.isfinite(n).all()):
            u, sv, _ = torch.linalg.svd(n.T, full_matrices=False)
            basis = u[:, sv > 1e-6 * float(sv.max())]  # [D, <=K] orthonormal, the negatives' span
            q = q - basis @ (basis.T @ q)
            if not float(q.norm()) > 1e-3:
                return None
            q = q / q.norm()
    dev = getattr(field, "device", torch.device("cpu"))
    qn = q.numpy()
    pts = region_ring(region, float(ring_m) + shell_m[1], float(ring_m) + shell_m[0]).sample_points()
    pts = pts[::max(1, -(-len(pts) // max_shell_points))]
    floor = 0.0
    if len(pts):
        with torch.no_grad():
            c = torch.as_tensor(pts, dtype=torch.float32, device=dev)
            held = field.query_alpha(c, region.voxel).reshape(-1) >= min_alpha
            if bool(held.any()):
                f = torch.nn.functional.normalize(field.query_features(c[held]).float(), dim=-1)
                floor = float((f @ q.to(f.device)).median().clamp(0.0, 0.95))
    return Unmix(qn, float(ring_m), floor)


def edit_field(session: Any, req: EditRequest, config: EditConfig | None = None) -> EditOutcome:
    """The session's field with ``req`` applied (the session is unchanged); EditError with the reason otherwise."""
    c = config or EditConfig()
    t0 = time.perf_counter()
    if session.field is None:
        raise EditError("no field is loaded: nothing to edit (train one or call ~/load_field)")
    cur = session.field if isinstance(session.field, EditedField) else EditedField(session.field)
    if req.undo:
        if req.text or req.box is not None or req.removed or req.T_world_new_old is not None:
            raise EditError("undo takes nothing else (no object, box, motion or removed)")
        new = cur.undo()
        return EditOutcome(new, f"undid edit {len(cur.edits)} ({cur.edits[-1].describe()}); {len(new.edits)} edit(s) "
                                f"remain", time.perf_counter() - t0)
    if bool(req.text.strip()) == (req.box is not None):
        raise EditError("name the thing (object text) or give a box, not both and not neither")
    if req.removed == (req.T_world_new_old is not None):
        raise EditError("give the motion T_world_new_old or removed, not both and not neither")
    if req.box is not None:
        lo, hi = (np.asarray(v, np.float64).reshape(3) for v in req.box)
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
            raise EditError("the box has non-finite values")
        if np.any(hi <= lo):
            raise EditError(f"the box is empty: max must exceed min on every axis (min {lo.tolist()}, max "
                            f"{hi.tolist()})")
        region: Any = BoxRegion.from_bounds(lo, hi)
        label = "box"
    else:
        if req.T_world_new_old is not None:  # a bad motion is refused before the (slower) selection
            from f3rm_ros.core.edits import check_rigid  # noqa: PLC0415

            check_rigid(req.T_world_new_old)
        emb = query_embeddings(session, req.text)
        region = select_region(session, req.text, c, emb)
        if c.keep_together > 0 and cur.edits:
            floor = session.planner.floor_z()
            region = keep_together(region, cur.edits, c.keep_together,
                                   None if floor is None else floor - c.floor_margin_m)
        label = " ".join(req.text.split())
    pc = session.planner_config
    ws = (pc.workspace_min_m, pc.workspace_max_m) if c.check_workspace else None
    T = None if req.removed else np.asarray(req.T_world_new_old, np.float64)
    new = cur.with_edit(SceneEdit(region, T, label), ws)  # a move off the workspace is refused before the floor work
    fill = floor_fill(session, cur, region, c) if c.fill_floor and isinstance(region, VoxelRegion) else None
    unmix = None
    if c.unmix_ring_m > 0 and isinstance(region, VoxelRegion) and req.box is None:
        unmix = thing_unmix(cur, region, c.unmix_ring_m, emb[0], emb[1:])  # the vectors the selection used
    if fill is not None or unmix is not None:
        new = cur.with_edit(SceneEdit(region, T, label, fill, unmix), ws)
    return EditOutcome(new, f"edit {len(new.edits)}: {new.edits[-1].describe()}", time.perf_counter() - t0, region)


def session_with_field(session: Any, field: Any, new_session: Any = None) -> Any:
    """A session like ``session`` (settings, tasks, encoder, checkpoint) that plans on ``field``: ``new_session``
    (a fresh QuerySession from the caller) filled in, or ``session`` itself changed when None."""
    s = session if new_session is None else new_session
    if new_session is not None:
        s.tasks = list(session.tasks)
    s.use_field(field, session.encoder, session.encoder_error, session.checkpoint_path)
    return s
