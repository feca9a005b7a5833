"""Refresh a field from a few new views after the scene changed (issue 18; ROS-free, no open3d).

:func:`refresh_field` fine-tunes a trained checkpoint, in its own field frame (its ``nerf_to_world``), on the new
frames of an appended dataset plus the old frames that still agree with the scene: an old frame whose camera sees a
changed region (the old or the new place of an edit: :func:`frames_seeing`, the regions' points projected into each
camera, occlusion ignored, so the test errs on distrust) keeps only its pixels away from the changed places
(:func:`changed_mask`; the trainer samples rays of unmasked pixels only), or is dropped (``old_frames="drop"``).
The networks start from the checkpoint's weights (appearance embeddings: the checkpoint's mean for every frame), the
optimiser afresh, for a short step budget with the trainer's usual progress and stop callbacks. The result is a plain
checkpoint that ``load_trained_field`` and the query node load like any other (the node swaps it in atomically, as
every load).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from f3rm_ros.core.checkpoint import CheckpointError, load_checkpoint
from f3rm_ros.core.config import param
from f3rm_ros.core.field_api import _similarity_parts  # the checked split TrainedField uses

__all__ = ["scene_versions", "frames_seeing", "changed_mask", "disagreeing_pixels", "near_changed_pixels",
           "changed_points", "edit_places", "bake_points", "boxes_points", "teach_frames", "moved_colour_grids",
           "RefreshConfig", "RefreshResult", "refresh_field", "refresh_scene", "training_state"]

log = logging.getLogger(__name__)


def scene_versions(dataset: Any) -> list[int]:
    """Each frame's ``scene_version`` (capture APPEND; 0 for frames of the first capture)."""
    return [int((fx or {}).get("scene_version", 0) or 0) for fx in getattr(dataset, "frames_extra", [])]


def frames_seeing(dataset: Any, points: np.ndarray, frames: Sequence[int] | None = None,
                  margin_px: float = 4.0) -> np.ndarray:
    """[len(frames)] bool: does each frame's camera (OpenCV c2w, world) see any of ``points`` [M, 3] (in front of it,
    inside the image grown by ``margin_px``)? Occlusion is not tested."""
    idx = range(len(dataset)) if frames is None else frames
    P = np.asarray(points, np.float64).reshape(-1, 3)
    out = []
    for i in idx:
        T, K = np.asarray(dataset.c2w[i], np.float64), dataset.intrinsics[i]
        pc = (P - T[:3, 3]) @ T[:3, :3]  # rows: R^T (p - t)
        z = pc[:, 2]
        front = z > 1e-3
        u = K.fx * pc[front, 0] / z[front] + K.cx
        v = K.fy * pc[front, 1] / z[front] + K.cy
        inside = (u >= -margin_px) & (u <= K.width + margin_px) & (v >= -margin_px) & (v <= K.height + margin_px)
        out.append(bool(inside.any()))
    return np.asarray(out, dtype=bool)


def changed_mask(c2w: np.ndarray, K: Any, points: np.ndarray, spacing: float, margin_px: int = 2) -> np.ndarray:
    """[H, W] bool: the pixels of camera ``(c2w, K)`` (OpenCV, world) onto which the ``points`` [M, 3] (a sampling of
    the changed places at ``spacing`` metres) project, each splatted by its footprint, grown by ``margin_px``."""
    T = np.asarray(c2w, np.float64)
    pc = (np.asarray(points, np.float64) - T[:3, 3]) @ T[:3, :3]
    pc = pc[pc[:, 2] > 1e-3]
    out = np.zeros((K.height, K.width), dtype=bool)
    if not len(pc):
        return out
    u = np.round(K.fx * pc[:, 0] / pc[:, 2] + K.cx - 0.5).astype(int)
    v = np.round(K.fy * pc[:, 1] / pc[:, 2] + K.cy - 0.5).astype(int)
    ok = (u >= 0) & (u < K.width) & (v >= 0) & (v < K.height)
    out[v[ok], u[ok]] = True
    r = int(np.ceil(max(K.fx, K.fy) * spacing / pc[:, 2].min())) + margin_px
    k = 2 * r + 1
    t = torch.from_numpy(out.astype(np.float32))[None, None]
    return (torch.nn.functional.max_pool2d(t, k, stride=1, padding=r)[0, 0] > 0).numpy()


def _zbuffer(c2w: np.ndarray, K: Any, points: np.ndarray, spacing: float, margin_px: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """([H, W], [H, W]) nearest and farthest z-depth (metres, OpenCV optical axis) of ``points`` [M, 3] projected into
    camera ``(c2w, K)``, each point splatted by its footprint (``spacing``) grown by ``margin_px``; inf / -inf where no
    point lands."""
    T = np.asarray(c2w, np.float64)
    pc = (np.asarray(points, np.float64).reshape(-1, 3) - T[:3, 3]) @ T[:3, :3]
    pc = pc[pc[:, 2] > 1e-3]
    zmin = np.full((K.height, K.width), np.inf)
    zmax = np.full((K.height, K.width), -np.inf)
    if not len(pc):
        return zmin, zmax
    u = np.round(K.fx * pc[:, 0] / pc[:, 2] + K.cx - 0.5).astype(int)
    v = np.round(K.fy * pc[:, 1] / pc[:, 2] + K.cy - 0.5).astype(int)
    ok = (u >= 0) & (u < K.width) & (v >= 0) & (v < K.height)
    np.minimum.at(zmin, (v[ok], u[ok]), pc[ok, 2])
    np.maximum.at(zmax, (v[ok], u[ok]), pc[ok, 2])
    r = int(np.ceil(max(K.fx, K.fy) * spacing / pc[:, 2].min())) + margin_px
    k = 2 * r + 1
    t = torch.from_numpy(np.stack([-zmin, zmax]))[:, None]  # max-pool: -inf where nothing
    pooled = torch.nn.functional.max_pool2d(t, k, stride=1, padding=r)[:, 0].numpy()
    return -pooled[0], pooled[1]


def disagreeing_pixels(c2w: np.ndarray, K: Any, depth: np.ndarray, old_points: np.ndarray | None,
                       new_points: np.ndarray | None, spacing: float, margin_m: float = 0.01,
                       margin_px: int = 2) -> np.ndarray:
    """[H, W] bool: the pixels of an old frame (camera ``(c2w, K)``, its measured z-depth ``depth`` [H, W] in metres,
    0 = nothing) whose observation the edits contradict: its surface lies in a thing's old place (``old_points``
    [M, 3]: the ray ended on the thing, which is gone), or its ray reaches a thing's new place (``new_points``) before
    its surface (the thing now stands in front of what the frame saw). Every other pixel still tells the truth, in
    particular the rays that passed through the old place to the table or a neighbour behind it: they are the ones
    that carve the old place empty, which :func:`changed_mask` (everything the places project onto) leaves out."""
    bad = np.zeros(depth.shape, dtype=bool)
    d = np.asarray(depth, np.float64)
    if old_points is not None and len(old_points):
        zmin, zmax = _zbuffer(c2w, K, old_points, spacing, margin_px)
        bad |= (d > 0) & (d >= zmin - margin_m) & (d <= zmax + margin_m)
    if new_points is not None and len(new_points):
        zmin, _ = _zbuffer(c2w, K, new_points, spacing, margin_px)
        bad |= np.isfinite(zmin) & ((d <= 0) | (d >= zmin - margin_m))
    return bad


def near_changed_pixels(c2w: np.ndarray, K: Any, depth: np.ndarray, places: np.ndarray, near_m: float,
                        keep: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """[H, W] bool: the pixels of a frame (camera ``(c2w, K)``, OpenCV, world; its z-depth ``depth`` [H, W] in metres,
    0 = nothing) whose surface lies within ``near_m`` of ``places`` (points [M, 3], world: where things were and went
    since the frame was captured): shadows, reflections and contact there changed with the move. ``keep`` (world
    points [N, 3] -> [N] bool) spares surfaces the frame still tells the truth about (the moved thing itself, seen at
    the old place it is read from). Many frames against the same places: :class:`NearPlaces` once, then its
    ``pixels``."""
    return NearPlaces(places, near_m).pixels(c2w, K, depth, keep)


class NearPlaces:
    """What lies within ``near_m`` of ``places`` (points [M, 3], world), asked of many frames (:meth:`pixels`).

    Cells (at least ``near_m`` wide, at most 64 along the places' span) that hold a place, and their neighbours, hold
    every surface within ``near_m`` of a place: a frame looks only at the pixels their boxes project onto, and of
    those only the ones whose surface lies in such a cell ask the tree of places (most of a frame is far from any
    changed place; the answer is the tree's, exactly)."""

    def __init__(self, places: np.ndarray, near_m: float):
        from scipy import ndimage  # noqa: PLC0415
        from scipy.spatial import cKDTree  # noqa: PLC0415

        self.P = np.asarray(places, np.float64).reshape(-1, 3)
        self.near_m = float(near_m)
        self.empty = not len(self.P) or not self.near_m > 0
        self._fine = None  # near()'s cells, made on its first call
        if self.empty:
            return
        self.tree = cKDTree(self.P)
        self.h = h = max(self.near_m, float(np.ptp(self.P, axis=0).max()) / 64)
        self.lo = self.P.min(0) - h
        cell = np.floor((self.P - self.lo) / h).astype(np.int64)
        occ = np.zeros(tuple(cell.max(0) + 2), dtype=bool)
        occ[tuple(cell.T)] = True
        self.occ = ndimage.binary_dilation(occ, np.ones((3, 3, 3), bool))
        self.corners = self.lo + (np.argwhere(self.occ)[:, None, :] + np.array(list(np.ndindex(2, 2, 2)))[None]) * h

    def pixels(self, c2w: np.ndarray, K: Any, depth: np.ndarray,
               keep: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        """As :func:`near_changed_pixels` for these places."""
        d = np.asarray(depth, np.float64)
        out = np.zeros(d.shape, dtype=bool)
        if self.empty:
            return out
        T = np.asarray(c2w, np.float64)
        look = d > 0
        cc = (self.corners - T[:3, 3]) @ T[:3, :3]  # [k, 8, 3] camera frame (OpenCV)
        if np.all(cc[..., 2] > 1e-6):  # every box in front of the camera: the bounding rectangles of their projections
            uu = K.fx * cc[..., 0] / cc[..., 2] + K.cx
            vv = K.fy * cc[..., 1] / cc[..., 2] + K.cy
            H, W = d.shape
            boxes = np.stack([np.floor(uu.min(1)), np.ceil(uu.max(1)), np.floor(vv.min(1)), np.ceil(vv.max(1))], 1)
            boxes = np.clip(boxes, 0, [W, W, H, H]).astype(np.int64)
            seen = np.zeros_like(look)
            for u0, u1, v0, v1 in boxes:
                seen[v0:v1, u0:u1] = True
            look &= seen
        v, u = np.nonzero(look)
        if not len(v):
            return out
        z = d[v, u]
        cam = np.stack([(u + 0.5 - K.cx) / K.fx * z, (v + 0.5 - K.cy) / K.fy * z, z], 1)
        world = cam @ T[:3, :3].T + T[:3, 3]
        c = np.floor((world - self.lo) / self.h).astype(np.int64)
        cand = np.flatnonzero(np.all((c >= 0) & (c < np.array(self.occ.shape)), axis=1))
        cand = cand[self.occ[tuple(c[cand].T)]]
        near = np.zeros(len(world), dtype=bool)
        if len(cand):
            dist, _ = self.tree.query(world[cand], distance_upper_bound=self.near_m)
            near[cand] = np.isfinite(dist)
        if keep is not None and near.any():
            near[near] &= ~np.asarray(keep(world[near]), dtype=bool)
        out[v[near], u[near]] = True
        return out

    def near(self, world: torch.Tensor) -> torch.Tensor:
        """Which of the points ``world`` [N, 3] (metres, any device) lie within ``near_m`` of a place, [N] bool: the
        points in a fine cell (about 1 cm) whose centre lies within ``near_m`` + the cell's diagonal of a place's cell
        (a distance transform, once: no point outside those cells can be near), then the tree's query of those alone
        (on the CPU, every core), as :meth:`pixels` asks it."""
        out = torch.zeros(len(world), dtype=torch.bool, device=world.device)
        if self.empty or not len(world):
            return out
        dev = world.device
        if self._fine is None:
            from scipy import ndimage  # noqa: PLC0415

            r = max(min(self.near_m / 4, 0.01), float(np.ptp(self.P, axis=0).max()) / 200)
            pad = self.near_m + 2 * r
            lo = self.P.min(0) - pad
            occ = np.zeros(tuple(np.floor((self.P.max(0) + pad - lo) / r).astype(np.int64) + 1), dtype=bool)
            occ[tuple(np.floor((self.P - lo) / r).astype(np.int64).T)] = True
            # a point in cell c and a place in cell c' are at least |centre c - centre c'| - r sqrt(3) apart
            self._fine = (lo, r, ndimage.distance_transform_edt(~occ) * r <= self.near_m + r * np.sqrt(3))
        lo, r, cells = self._fine
        c = torch.floor((world.double() - torch.as_tensor(lo, device=dev)) / r).long()
        inside = ((c >= 0) & (c < torch.tensor(cells.shape, device=dev))).all(1)
        cand = torch.nonzero(inside).squeeze(1)
        cand = cand[torch.as_tensor(cells, device=dev)[tuple(c[cand].T)]]
        if not len(cand):
            return out
        dist, _ = self.tree.query(world[cand].double().cpu().numpy(), distance_upper_bound=self.near_m, workers=-1)
        out[cand] = torch.from_numpy(np.isfinite(dist)).to(dev)
        return out


class _MaskedDataset:
    """A dataset whose frames ``masks`` (index -> [H, W] bool, True = use the pixel) replace their own masks, and whose
    frames ``images`` / ``depths`` (index -> [H, W, 3] uint8 / [H, W] metres) replace their own pictures."""

    def __init__(self, ds: Any, masks: dict[int, np.ndarray], images: dict[int, np.ndarray] | None = None,
                 depths: dict[int, np.ndarray] | None = None):
        self._ds, self._masks = ds, masks
        self._images, self._depths = images or {}, depths or {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ds, name)

    def __len__(self) -> int:
        return len(self._ds)

    def get_mask(self, index: int) -> np.ndarray | None:
        m = self._masks.get(int(index))
        return m if m is not None else self._ds.get_mask(index)

    def get_image(self, index: int) -> Any:
        im = self._images.get(int(index))
        return im if im is not None else self._ds.get_image(index)

    def get_depth(self, index: int) -> np.ndarray | None:
        d = self._depths.get(int(index))
        return d if d is not None else self._ds.get_depth(index)


def _distrust_near(tr: Any, sub: Any, near_frames: dict[int, int], live_edits: list[Any], near_m: float,
                   near_moved: bool, features: bool = False) -> int:
    """Leave out, in the trainer's batches, the colour (and with ``features`` the feature targets) of the old frames'
    pixels whose measured surface lies within ``near_m`` of a place an edit changed after the frame was taken
    (``near_frames``: subset index -> the frame's edit count); ``near_moved`` False spares the moved thing itself (seen
    at the old place it is read from). Found on the trainer's device from its depth targets, all frames of one scene
    version at once (:meth:`NearPlaces.near`). Returns how many frames lost some pixels (frames without depth lose
    none)."""
    b = tr.batcher
    made = b.depth_t is None
    if made:  # no depth loss: the targets only for this
        if not getattr(sub, "has_depth", False):
            return 0
        b.depth_t, b.depth_valid = b.depth_targets()
    where = {int(j): k for k, j in enumerate(tr.train_indices)}  # subset index -> training image
    by_version: dict[int, list[int]] = {}
    for j, count in near_frames.items():
        if j in where:
            by_version.setdefault(count, []).append(j)
    masked = 0
    for count, js in sorted(by_version.items()):
        unseen = live_edits[count:]
        places = NearPlaces(changed_points(unseen, 0.01), near_m)
        moved = [e.region for e in unseen if not e.removed] if not near_moved else []
        pts, idx, owner = [], [], []
        for j in js:
            k = where[j]
            cam, valid = b.surface_points(k)
            T = torch.as_tensor(np.asarray(sub.c2w[j], np.float32), device=cam.device)
            sel = torch.nonzero(valid).squeeze(1)
            pts.append(cam[sel] @ T[:3, :3].T + T[:3, 3])
            idx.append(sel + int(b.starts[k]))
            owner.append(torch.full_like(sel, j))
        world, flat, frame = torch.cat(pts), torch.cat(idx), torch.cat(owner)
        near = places.near(world)
        if moved and bool(near.any()):
            w = world[near].cpu()
            spare = torch.zeros(len(w), dtype=torch.bool)
            for r in moved:
                spare |= r.contains(w)
            near[torch.nonzero(near).squeeze(1)[spare.to(near.device)]] = False
        b.distrust_colour(flat[near])
        if features:
            b.distrust_features(flat[near])
        masked += int(torch.unique(frame[near]).numel())
    if made:
        b.depth_t = b.depth_valid = None
    return masked


def teach_frames(teacher: Any, dataset: Any, bad: dict[int, np.ndarray], feature_maps: torch.Tensor | None,
                 min_accumulation: float = 0.5) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray],
                                                         torch.Tensor | None]:
    """The edit as a teacher of the old frames: each frame ``i`` of ``dataset`` in ``bad`` (index -> [H, W] bool, the
    pixels the edits contradict, e.g. :func:`disagreeing_pixels`) gets ``teacher``'s render (an
    :class:`~f3rm_ros.core.edits.EditedField` of a trained field: the moved thing at its new place, seen from every
    old view; its old place empty) at those pixels: colour, z-depth (0, i.e. no measurement, where the render's
    accumulation is below ``min_accumulation``) and, in ``feature_maps`` [N, h, w, D] (a copy is returned), the
    feature of every patch holding such a pixel (rendered at the patch centre). Returns (images, depths, maps);
    depths only for frames with a depth image."""
    images, depths = {}, {}
    maps = feature_maps.clone() if feature_maps is not None and bad else feature_maps
    frames = [i for i, b in bad.items() if b.any()]
    pix, cells = {}, {}
    for i in frames:
        ys, xs = np.nonzero(bad[i])
        pix[i] = (ys, xs)
        if maps is not None:
            _, h, w, _ = maps.shape
            H, W = bad[i].shape
            cells[i] = np.unique(np.stack([ys * h // H, xs * w // W], 1), axis=0)
    # all frames' rays in a few large renders (one small render per frame is launch-bound on a GPU)
    rs = teacher.render_pixel_sets([(dataset.c2w[i], dataset.intrinsics[i], np.stack([pix[i][1] + 0.5,
                                                                                      pix[i][0] + 0.5], 1))
                                    for i in frames], with_features=False)
    if maps is not None:
        _, h, w, _ = maps.shape
        fs = teacher.render_pixel_sets([(dataset.c2w[i], dataset.intrinsics[i], np.stack(
            [(cells[i][:, 1] + 0.5) * bad[i].shape[1] / w, (cells[i][:, 0] + 0.5) * bad[i].shape[0] / h], 1))
            for i in frames], with_features=True)
    for k, i in enumerate(frames):
        ys, xs = pix[i]
        r = rs[k]
        img = np.array(dataset.get_image(i), dtype=np.uint8)
        img[ys, xs] = (r["rgb"].clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
        images[i] = img
        d0 = dataset.get_depth(i) if getattr(dataset, "has_depth", False) else None
        if d0 is not None:
            d = np.array(d0, dtype=np.float32)
            d[ys, xs] = np.where(r["accumulation"].cpu().numpy() >= min_accumulation, r["z_depth"].cpu().numpy(), 0.0)
            depths[i] = d
        if maps is not None:
            c = torch.as_tensor(cells[i])
            maps[i, c[:, 0], c[:, 1]] = fs[k]["features"].to(maps.device, maps.dtype)
    return images, depths, maps


def changed_points(edits: Sequence[Any], spacing: float = 0.02) -> np.ndarray:
    """Points [M, 3] of every edit's old place and new place (world, metres)."""
    pts = []
    for e in edits:
        p = e.region.sample_points(spacing)
        pts.append(p)
        if not e.removed:
            T = e.T_world_new_old
            pts.append(p @ T[:3, :3].T + T[:3, 3])
    return np.concatenate(pts) if pts else np.zeros((0, 3))


def edit_places(edits: Sequence[Any], clear_above_m: float = 0.02) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(old, new, clear) points [M, 3] (world, metres) of an edit stack: every edit's old place, its new place (none
    for a removal), and the points known empty now: an old place's inside (a voxel region shrunk by one voxel, its
    skin being grown onto neighbours), at least ``clear_above_m`` above the region's bottom (the table under it stays)
    and in no edit's new place."""
    from f3rm_ros.core.edits import VoxelRegion  # noqa: PLC0415

    old, new, clear = [], [], []
    for e in edits:
        p = e.region.sample_points(0.01)
        old.append(p)
        if not e.removed:
            T = e.T_world_new_old
            new.append(p @ T[:3, :3].T + T[:3, 3])
        if isinstance(e.region, VoxelRegion):
            occ = torch.from_numpy((~e.region.occ).astype(np.float32))[None, None]
            inner = ~(torch.nn.functional.max_pool3d(occ, 3, stride=1, padding=1)[0, 0] > 0).numpy()
            inner[[0, -1]] = inner[:, [0, -1]] = inner[:, :, [0, -1]] = False
            q = e.region.lo + (np.argwhere(inner) + 0.5) * e.region.voxel
        else:
            q = p
        clear.append(q[q[:, 2] >= p[:, 2].min() + clear_above_m])
    clear_pts = np.concatenate(clear) if clear else np.zeros((0, 3))
    for e in edits:  # nothing is cleared where a thing stands now
        if e.removed or not len(clear_pts):
            continue
        T = np.linalg.inv(e.T_world_new_old)
        back = torch.from_numpy(clear_pts @ T[:3, :3].T + T[:3, 3]).float()
        clear_pts = clear_pts[~e.region.contains(back).numpy()]
    return _cat(old), _cat(new), clear_pts


def bake_points(edits: Sequence[Any], above_m: float = 0.02) -> np.ndarray:
    """Points [M, 3] (world) where an edited field is trusted to teach a refresh: the old and new places of
    ``edits``, at least ``above_m`` above the lowest of them (the regions reach into the table top)."""
    old, new, _ = edit_places(edits)
    p = _cat([old, new])
    return p[p[:, 2] >= p[:, 2].min() + above_m] if len(p) else p


def _cat(xs: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(xs) if xs else np.zeros((0, 3))


def _densities(model: Any, x: torch.Tensor) -> list[torch.Tensor]:
    """The radiance field's and every proposal net's density (1 / field unit) at field-frame points ``x`` [N, 3]: a
    place the proposal nets think empty gets no samples, so its density could never grow (nor be seen) otherwise."""
    return [model.rgb_field.density(x)[0], *(net(x) for net in model.proposal_nets)]


def _clear_loss(tr: Any, points_world: np.ndarray, weight: float, voxel_m: float, batch: int = 1024
                ) -> Callable[[], torch.Tensor]:
    """A loss term: ``weight`` x the mean opacity over ``voxel_m`` of the field at a random batch of ``points_world``
    (jittered inside their voxels), i.e. a push towards empty space where the scene is known empty."""
    s, R, t = _similarity_parts(tr.nerf_to_world)
    pn = ((np.asarray(points_world, np.float64) - t) @ R) / s
    pts = torch.as_tensor(pn, dtype=torch.float32, device=tr.device)
    half = 0.5 * voxel_m / s
    delta = voxel_m / s
    n = len(pts)
    g = tr.generator

    def loss() -> torch.Tensor:
        i = torch.randint(0, n, (min(batch, n),), generator=g, device=g.device).to(tr.device)
        x = pts[i] + (torch.rand(len(i), 3, generator=g, device=g.device).to(tr.device) * 2 - 1) * half
        return weight * sum((1 - torch.exp(-sigma * delta)).mean() for sigma in _densities(tr.model, x))

    return loss


def _bake_loss(tr: Any, teacher: Any, points_world: np.ndarray, weight: float, voxel_m: float, jitter: int = 4,
               batch: int = 1024) -> Callable[[], torch.Tensor]:
    """A loss term: ``weight`` x the mean |opacity over ``voxel_m``| difference between the field being refreshed and
    ``teacher`` (a field with ``query_density`` in the world frame, e.g. the :class:`~f3rm_ros.core.edits.EditedField`
    of the edits: the moved thing read from its old place, its old place empty) at a random batch of ``points_world``
    (each taken at ``jitter`` random spots inside its voxel; the teacher is asked once, before training). The
    teacher's occupied points (opacity > 0.5; a thin wall is a few % of a region) and its empty ones weigh half each."""
    dev = tr.device
    g = torch.Generator().manual_seed(0)
    P = torch.as_tensor(np.asarray(points_world, np.float64), dtype=torch.float32)
    P = (P[:, None, :] + (torch.rand(len(P), jitter, 3, generator=g) - 0.5) * voxel_m).reshape(-1, 3)
    with torch.no_grad():
        tdev = getattr(teacher, "device", dev)
        a_t = torch.cat([1 - torch.exp(-teacher.query_density(c.to(tdev)).reshape(-1).float() * voxel_m)
                         for c in P.split(65536)]).to(dev)
    s, R, t = _similarity_parts(tr.nerf_to_world)
    pn = ((P.double().numpy() - t) @ R) / s
    pts = torch.as_tensor(pn, dtype=torch.float32, device=dev)
    n, gen = len(pts), tr.generator

    def loss() -> torch.Tensor:
        i = torch.randint(0, n, (min(batch, n),), generator=gen, device=gen.device).to(dev)
        a, occ = a_t[i], (a_t[i] > 0.5).float()
        w = occ / occ.sum().clamp(min=1.0) + (1 - occ) / (1 - occ).sum().clamp(min=1.0)  # occupied and empty: 1/2 each
        return weight * sum(((1 - torch.exp(-sigma * (voxel_m / s)) - a).abs() * w).sum() / 2
                            for sigma in _densities(tr.model, pts[i]))

    return loss


@dataclass
class RefreshConfig:
    """How a refresh fine-tunes a field (the train node's ``refresh.*`` parameters; :func:`refresh_field`'s
    ``config``). The defaults are what the H100 scene-edit bench measured best (2000-step fields, 800-step refreshes
    through the edits, ``benchmarks/results/scene_edits_gpu_H100_b2396a5*``); a 2-core CPU's short fields want
    :data:`~f3rm_ros.core.presets.REFRESH_CPU` on top (``near_m`` 0, ``lr_scale`` 0.1: see :func:`refresh_field`)."""

    new_repeat: int = param(4, "each new frame is drawn as often as this many old ones (the changed places are seen by "
                               "the few new views alone)", range=(1, 1000))
    lr_scale: float = param(0.2, "the checkpoint's learning rates (lr, lr_final) times this: the optimiser starts "
                                 "afresh, and at the training rate its first steps shake the whole converged field",
                            range=(1e-6, 10.0))
    near_m: float = param(0.08, "through the edits, an old frame with depth leaves out the colour of its surfaces "
                                "within this many metres of a place an edit it did not see changed (moved shadows, the "
                                "moved thing lit from another side); 0 = off", range=(0.0, 1.0))
    near_moved: bool = param(True, "near_m covers the moved thing itself too (its light changed with its pose)")
    near_features: bool = param(False, "near_m leaves those pixels' feature targets out too")
    colour_voxel_m: float = param(0.0, "through the edits, each moving edit's thing gets a colour residual of its "
                                       "own (a dense grid at this spacing, metres, e.g. 0.004, over its content; the "
                                       "side it hid against a neighbour no longer shares that neighbour's hash "
                                       "cells); 0 = off (it did not close seed 10's gap on a CPU field)",
                                  range=(0.0, 0.1))
    colour_lr: float = param(0.01, "the colour residuals' learning rate (logits per step)", range=(1e-6, 10.0))
    fill_colour_voxel_m: float = param(0.0, "through the edits, each floor fill gets a colour residual of its own "
                                            "(a dense grid at this spacing, metres, e.g. 0.004, over the patch it "
                                            "reads): the new views line the patch's grain up with the floor they see "
                                            "at the old place; 0 = off", range=(0.0, 0.1))
    keep_fill: bool = param(True, "through the edits, the old places keep their floor fills (a patch of the table "
                                  "beside, read in place of the floor under the thing); False: the refresh drops them, "
                                  "the new views train the old place's own floor, and the refreshed field serves the "
                                  "edits without them")
    adam_moments: bool = param(False, "start Adam from the checkpoint's second moments (each parameter's step "
                                      "relative to how its gradients ran in training; a checkpoint without its "
                                      "optimiser state starts afresh); the refreshed checkpoint keeps its own")


@dataclass
class RefreshResult:
    checkpoint: Path | None
    step: int
    stopped: bool
    frames_new: int
    frames_old_kept: int
    frames_old_dropped: int
    # old frames kept with the changed places' pixels left out (or, "teach", re-rendered; through the edits, the colour
    # of the pixels near the changed places)
    frames_old_masked: int
    seconds: float  # the whole refresh (features, setup, training, saving)
    train_s: float
    losses: dict[str, float] = field(default_factory=dict)
    trainer: Any = None
    # where the time went (s): "load" (which old frames stay, the checkpoint), "features", "trainer" (pixels, depth,
    # model, warp), "near" (the colour left out near the changes), "train", "save"
    times: dict[str, float] = field(default_factory=dict)
    moments: int = 0  # parameters whose Adam started from the checkpoint's moments (RefreshConfig.adam_moments)


def refresh_field(checkpoint: str | Path, dataset: Any, new_frames: Sequence[int], changed: np.ndarray | None,
                  num_steps: int, features: Any = None, device: str | torch.device = "cpu",
                  out_path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                  on_progress: Callable[[Any], None] | None = None, should_stop: Callable[[], bool] | None = None,
                  keep_trainer: bool = False, feature_cache: str | Path | None = None, old_frames: str = "mask",
                  min_kept_fraction: float = 0.2, spacing: float = 0.01, changed_old: np.ndarray | None = None,
                  changed_new: np.ndarray | None = None, clear_points: np.ndarray | None = None,
                  clear_mult: float = 1.0, depth_margin_m: float = 0.01, teacher: Any = None,
                  bake_points: np.ndarray | None = None, bake_mult: float = 1.0,
                  live_edits: Sequence[Any] = (), frame_edits: Sequence[int] | None = None,
                  config: RefreshConfig | None = None) -> RefreshResult:
    """Fine-tune ``checkpoint`` on ``dataset``'s ``new_frames`` plus its other frames, for ``num_steps`` steps. An old
    frame that sees ``changed`` (points [M, 3] sampled every ``spacing`` m, e.g. :func:`changed_points` of the edits;
    None trusts every old frame) is, with ``old_frames`` "mask", kept with the pixels the changed places project onto
    left out (:func:`changed_mask`; dropped when less than ``min_kept_fraction`` of it is left), with "drop" dropped.
    Given the old and new places apart (``changed_old`` / ``changed_new``, e.g. :func:`edit_places`) and a frame with
    a depth image, only the pixels the edits contradict are left out (:func:`disagreeing_pixels`): the rays that see
    through the old place keep carving it. ``clear_points`` (world, e.g. :func:`edit_places`' third) are known empty:
    their opacity is penalised every step (``clear_mult``), so the moved thing's old density goes even where the new
    views do not look. ``teacher`` (e.g. the query node's :class:`~f3rm_ros.core.edits.EditedField`) bakes the edit:
    at ``bake_points`` (world: the changed places above the table) the refreshed field's opacity is pulled towards the
    teacher's (``bake_mult``), so the moved thing keeps the shape all the old views gave it, where the few new views
    see only some of its sides. ``config`` (:class:`RefreshConfig`, default its defaults): ``new_repeat`` lists each
    new frame that many times, so the ray batches draw from the few new views as often as from that many old ones (the
    changed places are seen by the new views alone). ``lr_scale`` scales the checkpoint's learning rates (``lr``,
    ``lr_final``; unless ``overrides`` sets ``lr``; a refreshed checkpoint's are its refresh's, so a sequence's
    refreshes get gentler, 0.2, 0.04, 0.008 of the training rate: the same fraction each time cost the 2-core CPU
    bench's fragile unmoved bottle its grasp after the second refresh, ``scene_edits_cpu_0f71be3_samerate*``; the
    colour grids' rate does not shrink with it): the optimiser starts afresh, and Adam's first steps move every
    touched parameter by about the learning rate whatever its gradient, which at a from-scratch rate shakes the whole
    converged field (on the H100 bench, 400 steps at the training rate cost 3-7 dB of held-out PSNR everywhere, not
    only at the moved thing).

    **Through the edits** (``live_edits``, the edit stack oldest first; ``frame_edits`` [len(dataset)]: how many of the
    oldest edits were in force when each frame was captured, -1 = unknown: the frame is dropped): nothing is regrown.
    The field keeps the scene of the first capture and every frame trains it through its own edits (the trainer's
    ``ray_warp``): a new view's rays at the moved thing's new place read the field at its old place, its old place is
    empty for them, and the old frames, which saw the old scene, train the field as it is. Every old frame stays (no
    masks of whole rays, no teacher); the refreshed checkpoint carries the edits (``live_edits`` key: the edits and each
    scene version's count), and ``load_trained_field`` serves it through them. ``changed``, ``old_frames``, the teacher
    and the clear / bake terms do not apply then. ``config.near_m`` (> 0; 0 = off): an old frame with a depth image
    leaves out the colour of the pixels whose surface lies within ``near_m`` of the old or new place of an edit it did
    not see (a 15 cm thing's shadow reaches ~6 cm; found on the trainer's device from its depth targets,
    :func:`near_changed_pixels` is the plain reference): the shadows around both places moved, and the moved thing
    itself (``near_moved``) is lit from another side in its new pose, so only the newer frames show their colours as
    they are now; those pixels' depth and features still train the field (the shapes did not change).
    ``near_features`` leaves those pixels' feature targets out too (a patch feature near a thing that moved away still
    shows some of it).

    How the defaults were chosen (``bench_scene_edits.py``, refreshes side by side from the same field on the first
    moves; figures in the README): on the H100 (10 scenes, 2000-step fields, 800-step refreshes) ``near_m`` 0.08
    with ``lr_scale`` 0.2 brought 8/10 refreshes within 1 dB of the full retrain against 3/10 for ``near_m`` 0 with
    0.1 (``scene_edits_gpu_H100_b2396a5*``; 0.08 alone 7/10 against 6/10, ``_d2e2bc0*``), at no extra time; through
    the whole 3-move sequence the target's grasp passed after 28/30 edits and 29/30 refreshes, no grasp at the old
    place 30/30 and 28/30, the unmoved objects 59/63 and 60/63 (``near_m`` 0 and 0.1 at a886211: 30/30, 29/30, 29/30,
    29/30, 60/63, 59/63; the first edits, on the same first fields, differ by the GPU's nondeterminism).
    ``new_repeat`` 8, ``lr_scale`` 0.3 and error-map sampling did not help there; more steps did (950: 9/10). On a
    2-core CPU's 500-step fields (400-step refreshes) the same settings cost grasps: through the CPU bench's sequence
    ``near_m`` 0.08 lost the second edit's grasp and an unmoved bottle's after the second refresh
    (``scene_edits_cpu_9112864*``, ``_296c100*``), ``lr_scale`` 0.2 that bottle too (``_f30452f_seed3_variants*``),
    and both together lost it from the first refresh on (``_b2396a5_near008_lr02*``: unmoved 2/4 after the
    refreshes, 1/2 against 2/2 for 0 and 0.1 side by side), where ``near_m`` 0 with 0.1 passes every check and is
    within 1 dB anyway (``_a886211*``): hence
    :data:`~f3rm_ros.core.presets.REFRESH_CPU`. ``near_features``: 6/10 within 1 dB on the H100, no help with an
    old-place grasp, and it lost a jar's grasp on the CPU: off. ``keep_fill`` False and ``adam_moments``: on six
    fresh development scenes (seeds 60-66, ``scene_edits_gpu_H100_tune6_90ca26a*``) neither stood out of the run-to-run
    spread; on the bench's ten (``_nofill_d63df80*``, side by side on the first moves) ``keep_fill`` False brought 9/10
    within 1 dB against 8/10 for the defaults (seeds 1 and 10 closer, the old place's floor trained as it is instead of
    a patch from beside whose grain does not line up) but lost 2.6 dB on a bowl (seed 13: -2.95 dB against the full
    retrain, its wide base's ghost stays on the table), and with ``adam_moments`` the same 9/10 and the same bowl:
    both off. ``fill_colour_voxel_m`` keeps the fills and lets the new views correct the patch's colour: on the CPU it
    took the old place's error of a scene whose patch was off from 3.19 to 1.15 x1e-4 and left one where the fill
    helps as it was (``scene_edits_cpu_fillgrid_2c4dad4*``); on 1500-step CPU fields of four H100 bench scenes it
    gained +0.35, +0.31 and +0.51 dB where the patch was off and -0.04 dB on the bowl (``scene_edits_cpu_sharp_
    fillgrid_*``); off until the H100 bench has measured it (it has never run on CUDA).

    Args:
        features: the feature source as in ``TrainSceneRequest.features`` (the field's own extractor, e.g. a label
            extractor of the dataset); must give the checkpoint's feature width.
        overrides: flat ``TrainerConfig`` keys (not ``model.*``) on top of the checkpoint's config.
        out_path: where the refreshed field is saved (None: not saved).

    Raises:
        CheckpointError: the checkpoint does not fit (another feature width, model keys in overrides).
        ValueError: no new frame, an index out of range.
    """
    from f3rm_ros.core.config import from_dict, replace  # noqa: PLC0415
    from f3rm_ros.core.training import Trainer, TrainerConfig  # noqa: PLC0415
    from f3rm_ros.core.workflows.train_scene import scene_features  # noqa: PLC0415

    t0 = time.perf_counter()
    n = len(dataset)
    new = sorted({int(i) for i in new_frames})
    if not new:
        raise ValueError("a refresh needs at least one new frame")
    if new[0] < 0 or new[-1] >= n:
        raise ValueError(f"new frame indices must be in [0, {n}), got {new[0]}..{new[-1]}")
    old = [i for i in range(n) if i not in set(new)]
    through = len(live_edits) > 0
    rc = config if config is not None else RefreshConfig()
    if not isinstance(rc, RefreshConfig):
        raise TypeError(f"config must be a RefreshConfig, got {type(rc).__name__}")
    if through and not rc.keep_fill:
        live_edits = [dataclasses.replace(e, fill=None) for e in live_edits]
    if through:
        if teacher is not None or bake_points is not None or clear_points is not None:
            raise ValueError("a refresh through the edits needs no teacher, bake or clear points: nothing is regrown")
        fe = np.asarray(frame_edits if frame_edits is not None else [len(live_edits)] * n, dtype=np.int64)
        if fe.shape != (n,) or fe.min(initial=0) < -1 or fe.max(initial=0) > len(live_edits):
            raise ValueError(f"frame_edits must give one count in [-1, {len(live_edits)}] per frame ({n})")
        if np.any(fe[new] < 0):
            raise ValueError("every new frame needs its edit count (frame_edits >= 0)")
        changed = None  # every frame is seen through its own edits: none disagrees
    sees = frames_seeing(dataset, changed, old) if changed is not None and len(changed) and old else \
        np.zeros(len(old), bool)
    if old_frames not in ("mask", "drop", "teach"):
        raise ValueError(f"old_frames must be 'mask', 'drop' or 'teach', got {old_frames!r}")
    if old_frames == "teach" and teacher is None:
        raise ValueError("old_frames='teach' needs a teacher (the edited field)")
    near_m = float(rc.near_m)
    reps = max(1, int(rc.new_repeat))
    kept_old, masks, bad, near_frames = [], {}, {}, {}
    for i, s_ in zip(old, sees, strict=True):
        if through:
            if fe[i] < 0:
                continue
            if near_m > 0 and int(fe[i]) < len(live_edits):  # an edit it did not see: its colour near the places
                near_frames[len(new) * reps + len(kept_old)] = int(fe[i])
            kept_old.append(i)
        elif not s_:
            kept_old.append(i)
        elif old_frames in ("mask", "teach"):
            depth = dataset.get_depth(i) if (changed_old is not None or changed_new is not None) and \
                getattr(dataset, "has_depth", False) else None
            if depth is not None:
                m = ~disagreeing_pixels(dataset.c2w[i], dataset.intrinsics[i], depth, changed_old, changed_new,
                                        spacing, depth_margin_m)
            else:
                m = ~changed_mask(dataset.c2w[i], dataset.intrinsics[i], changed, spacing)
            if old_frames == "teach":  # every pixel stays; the contradicted ones get the teacher's render
                bad[len(new) * reps + len(kept_old)] = ~m
                kept_old.append(i)
                continue
            own = dataset.get_mask(i) if hasattr(dataset, "get_mask") else None
            m = m if own is None else m & own
            if m.mean() >= min_kept_fraction:
                masks[len(new) * reps + len(kept_old)] = m
                kept_old.append(i)
    sub = dataset.subset(new * reps + kept_old)
    ck = load_checkpoint(checkpoint)
    if overrides and any(k.startswith("model.") for k in overrides):
        raise CheckpointError("model settings cannot be changed when refreshing")
    cfg = from_dict(TrainerConfig, ck["config"])
    if not rc.lr_scale > 0:
        raise ValueError(f"lr_scale must be > 0, got {rc.lr_scale}")
    lrs = {} if "lr" in (overrides or {}) else {"lr": cfg.lr * rc.lr_scale, "lr_final": cfg.lr_final * rc.lr_scale}
    cfg = replace(cfg, **{"eval_every": 0, "eval_num_images": 0, "checkpoint_every": 0, **lrs, **(overrides or {})})
    times = {"load": time.perf_counter() - t0}
    feats = scene_features(features, sub, feature_cache)
    times["features"] = time.perf_counter() - t0 - sum(times.values())
    ck_dim = int((ck.get("extractor_info") or {}).get("feature_dim", 0) or 0)
    got = int(feats.maps.shape[-1]) if feats.maps is not None else 0
    if ck_dim and got != ck_dim:
        raise CheckpointError(f"the refresh's features are {got}-dim, the field's {ck_dim}-dim: the dataset does not "
                              f"match the field")
    maps, images, depths = feats.maps, {}, {}
    if bad:
        images, depths, maps = teach_frames(teacher, sub, bad, maps)
    tr = Trainer(cfg, _MaskedDataset(sub, masks, images, depths) if masks or images or depths else sub, maps, device,
                 extractor_info=ck.get("extractor_info"))
    state = dict(ck["model"])
    key = "rgb_field.appearance.weight"
    if key in state and tr.model.rgb_field.appearance is not None:
        w = state[key]
        state[key] = w.float().mean(0, keepdim=True).expand_as(tr.model.rgb_field.appearance.weight).clone()
    tr.model.load_state_dict(state)
    nw = np.asarray(ck["nerf_to_world"], np.float64)
    if through and (rc.colour_voxel_m > 0 or rc.fill_colour_voxel_m > 0 or tr.model.moved_colour is not None):
        moved_colour_grids(tr.model, live_edits, nw, rc.colour_voxel_m,
                           rc.colour_lr / cfg.lr if cfg.lr > 0 else 1.0, tr.device, fill_voxel_m=rc.fill_colour_voxel_m)
        tr.reset_optimizer()
    moments = 0
    if rc.adam_moments:
        saved = training_state(checkpoint, ck)
        if saved is None:
            log.info("adam_moments: %s carries no optimiser state (nor a training checkpoint of its step beside it): "
                     "Adam starts afresh", checkpoint)
        else:
            moments = tr.warm_start_moments(saved)
        del saved  # both moments of every table, on the host: not kept through the fine-tune
    # the new frames in the checkpoint's field frame (the model's frame), not a frame of their own
    s, R, t = _similarity_parts(nw)
    c2w = np.asarray(sub.c2w, np.float64).copy()
    c2w_n = c2w.copy()
    c2w_n[:, :3, :3] = R.T @ c2w[:, :3, :3]
    c2w_n[:, :3, 3] = ((c2w[:, :3, 3] - t) @ R) / s
    tr.nerf_to_world, tr.c2w_nerf = nw, c2w_n
    tr.field_units_per_metre = 1.0 / s
    tr.batcher.set_poses(c2w_n, tr.field_units_per_metre)
    # no final evaluation: the subset has no held-out split, so the trainer would render every training frame (175 s
    # of a 60-step CPU refresh); whoever refreshes measures the new views it holds out itself
    tr.evaluate = lambda frames=None, save_images=None: {}
    if clear_points is not None and len(clear_points) and clear_mult > 0:
        tr.extra_losses["clear"] = _clear_loss(tr, clear_points, clear_mult, 0.01)
    if teacher is not None and bake_points is not None and len(bake_points) and bake_mult > 0:
        tr.extra_losses["bake"] = _bake_loss(tr, teacher, bake_points, bake_mult, 0.01)
    if through:
        from f3rm_ros.core.edit_store import edits_to_json  # noqa: PLC0415
        from f3rm_ros.core.edits import EditWarp  # noqa: PLC0415

        order = new * reps + kept_old
        # camera_idx is a training-image index: the subset's frames, all of them in its train split
        tr.ray_warp = EditWarp(live_edits).in_field(nw, [int(fe[order[int(j)]]) for j in tr.train_indices])
        with torch.no_grad():  # its tensors made now, not inside a CUDA graph capture
            tr.ray_warp(torch.zeros(1, 1, 3, device=tr.device), torch.zeros(1, 3, device=tr.device),
                        torch.zeros(1, dtype=torch.long, device=tr.device))
        versions = scene_versions(dataset)
        tr.checkpoint_extra["live_edits"] = {
            "edits": edits_to_json(live_edits),
            "versions": {str(v): int(c) for v, c in sorted(zip(versions, fe.tolist(), strict=False)) if c >= 0}}
    times["trainer"] = time.perf_counter() - t0 - sum(times.values())
    near_masked = _distrust_near(tr, sub, near_frames, list(live_edits), near_m, rc.near_moved, rc.near_features) \
        if near_frames else 0
    times["near"] = time.perf_counter() - t0 - sum(times.values())
    t1 = time.perf_counter()
    res = tr.train(int(num_steps), on_progress=on_progress, should_stop=should_stop)
    train_s = times["train"] = time.perf_counter() - t1
    path = tr.save_checkpoint(Path(out_path), include_optimizer=rc.adam_moments) if out_path is not None else None
    times["save"] = time.perf_counter() - t0 - sum(times.values())
    return RefreshResult(path, res.step, res.stopped, len(new), len(kept_old), len(old) - len(kept_old),
                         len(masks) + len(bad) + near_masked,
                         time.perf_counter() - t0, train_s, dict(res.losses), tr if keep_trainer else None,
                         {k: round(v, 4) for k, v in times.items()}, moments)


def training_state(path: str | Path, ck: dict[str, Any]) -> dict[str, Any] | None:
    """The optimiser state of checkpoint ``path`` (loaded: ``ck``): its own, or for a query-only file (a training
    run's ``field.ckpt``) the one of the same step in the run's ``checkpoints/`` beside it; None when there is none."""
    if isinstance(ck.get("optimizer"), dict):
        return ck["optimizer"]
    full = Path(path).parent / "checkpoints" / f"step-{int(ck.get('step', -1)):07d}.ckpt"
    if not full.is_file():
        return None
    try:
        other = load_checkpoint(full)
    except CheckpointError as e:
        log.warning("the training state beside %s does not load (%s): Adam starts afresh", path, e)
        return None
    return other.get("optimizer") if isinstance(other.get("optimizer"), dict) else None


def moved_colour_grids(model: Any, live_edits: Sequence[Any], nerf_to_world: np.ndarray, voxel_m: float, gain: float,
                       device: torch.device | str, fill_voxel_m: float = 0.0) -> Any:
    """Give ``model`` (a ``FieldModel``) a zero colour grid (:mod:`f3rm_ros.core.fields.moved_colour`) for every
    moving edit of ``live_edits`` (oldest first) that has none, at ``voxel_m`` (metres; 0: none added) over the field
    positions its thing is read from (its region taken back through the older edits), for every floor fill that has
    none at ``fill_voxel_m`` (key ``-(k + 2)``) over the positions the fill reads, and ``gain`` for every grid, the
    grids it had keeping their residuals. Returns the model's :class:`MovedColour`."""
    from f3rm_ros.core.edits import EditWarp  # noqa: PLC0415
    from f3rm_ros.core.fields.moved_colour import MovedColour  # noqa: PLC0415

    mc = model.moved_colour if model.moved_colour is not None else MovedColour()
    s, R, t = _similarity_parts(nerf_to_world)

    def add(key: int, k: int, points: np.ndarray, voxel: float) -> None:  # a grid over what edit k reads at points
        p = torch.as_tensor(points, dtype=torch.float32)
        read = (EditWarp(live_edits[:k])(p)[0] if k else p).double().numpy()
        pn = ((read - t) @ R) / s
        # two grid cells beyond the points, and half a region voxel: a footprint's points are its columns' centres
        pad = (2 * voxel + 0.5 * float(getattr(live_edits[k].region, "voxel", 0.0))) / s
        mc.add(key, pn.min(0) - pad, pn.max(0) + pad, voxel / s, gain)

    for k, e in enumerate(live_edits):
        if not e.removed and str(k) not in mc.grids and voxel_m > 0:
            add(k, k, e.region.sample_points(voxel_m), voxel_m)
        if e.fill is not None and str(-(k + 2)) not in mc.grids and fill_voxel_m > 0:
            xy = e.region.footprint()
            zs = np.arange(e.fill.z_lo, e.fill.z_hi + 0.5 * fill_voxel_m, fill_voxel_m)
            pts = np.concatenate([np.c_[xy, np.full(len(xy), z)] for z in zs]) + e.fill.offset
            add(-(k + 2), k, pts, fill_voxel_m)
    mc.set_gain(gain)
    model.moved_colour = mc.to(device) if len(mc) else None
    return mc


def boxes_points(boxes: Sequence[float], spacing: float = 0.02) -> np.ndarray:
    """Points [M, 3] inside axis-aligned boxes given as 6 numbers each (xmin ymin zmin xmax ymax zmax)."""
    from f3rm_ros.core.edits import BoxRegion  # noqa: PLC0415

    b = np.asarray(list(boxes), dtype=np.float64)
    if b.size % 6 or not np.all(np.isfinite(b)):
        raise ValueError(f"changed_boxes must be finite numbers, 6 per box; got {b.size} values")
    pts = [BoxRegion.from_bounds(lo, hi).sample_points(spacing) for lo, hi in
           ((r[:3], r[3:]) for r in b.reshape(-1, 6))]
    return np.concatenate(pts) if pts else np.zeros((0, 3))


def _trained_on(checkpoint: Path) -> Path | None:
    """The dataset folder a checkpoint's run was trained on (its run folder's run.json), or None when unknown."""
    import json  # noqa: PLC0415

    for folder in (checkpoint.parent, checkpoint.parent.parent):
        run = folder / "run.json"
        if run.is_file():
            try:
                d = json.loads(run.read_text()).get("data_dir")
            except (OSError, ValueError):
                return None
            return Path(d).resolve() if d else None
    return None


def refresh_scene(request: Any, refresh_from: str | Path, changed_boxes: Sequence[float] = (),
                  config: RefreshConfig | None = None) -> Any:
    """:func:`refresh_field` as a ``train_scene``-like workflow (a ``TrainJob`` runner of the train node) with the
    changed places given as boxes only: :func:`~f3rm_ros.core.workflows.edit_refresh.refresh_with_edits` without new
    edits (the ones ``refresh_from`` was itself refreshed with still count). Writes ``RUN_DIR/field.ckpt`` and
    ``RUN_DIR/run.json``.

    Raises:
        ValueError: the dataset has no appended frames, or it is not the one the field was trained on; CheckpointError.
    """
    from f3rm_ros.core.workflows.edit_refresh import refresh_with_edits  # noqa: PLC0415

    return refresh_with_edits(request, refresh_from, (), changed_boxes, config=config)
