"""An analytic "oracle" field of a synthetic scene: the field query API without any training.

Used to test the planner independently of training and to make the default tasks. Built once
on a regular grid over the scene (CPU, open3d ray casting), then queried by trilinear interpolation
(``grid_sample``), so density and features are differentiable w.r.t. the query points:

* density: ``sigma_max * sigmoid(-sdf / softness)`` from the signed distance to the scene's solids
  (inside = union of the closed components' occupancy; distance to the nearest triangle);
* features: the feature vector of the label of the nearest surface triangle, interpolated as a
  one-hot label volume times the per-label vector table ``[L, D]``.

Per-label vectors come from the label feature extractor (:mod:`f3rm_ros.core.features.labels`) through its ordinary
``extract`` call on uniform label maps, so the oracle's features live in the same space as that
extractor's text embeddings, like a perfectly trained field's would.

Only for tests and scripts (needs open3d). World frame, metres.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["OracleField", "label_vectors_from_extractor"]


def label_vectors_from_extractor(extractor: Any, label_ids: list[int], size: int = 56) -> np.ndarray:
    """[len(label_ids), D] mean feature of a uniform ``size x size`` label map of each id (grey image)."""
    imgs = [np.full((size, size, 3), 128, dtype=np.uint8) for _ in label_ids]
    maps = [np.full((size, size), i, dtype=np.uint16) for i in label_ids]
    with torch.no_grad():
        f = extractor.extract(imgs, maps)  # [B, h, w, D]
    return f.float().mean(dim=(1, 2)).cpu().numpy()


class OracleField:
    """Field query API (``query_density``, ``query_features``, ``feature_dim``, ``device``,
    ``extractor_info``, ``nerf_to_world``) of a synthetic :class:`~f3rm_ros.core.sim.scene.Scene`.

    Args:
        scene: the scene (its table and objects in the world frame).
        label_vectors: {label id: feature vector [D]} for the ids of ``scene.label_table()``;
            None for a field without features.
        extractor_info: the label extractor's ``cache_key()``.
        resolution: grid spacing, metres.
        margin: grid extends this far beyond the objects (and down into the table), metres.
        sigma_max: density deep inside, 1/metre.
        softness: width of the density's sigmoid edge, metres.
        device: torch device of the queries.
        backend: "open3d" (exact occupancy by ray casting), "scipy" (no open3d: nearest surface
            samples with normals, for the GPU machine) or "auto" (open3d when installed).
    """

    def __init__(self, scene: Any, label_vectors: dict[int, np.ndarray] | None, extractor_info: dict | None = None,
                 resolution: float = 0.003, margin: float = 0.12, sigma_max: float = 2000.0,
                 softness: float = 0.0006, device: str | torch.device = "cpu", backend: str = "auto"):
        self.scene = scene
        self.device = torch.device(device)
        self.extractor_info = dict(extractor_info or {})
        self.nerf_to_world = np.eye(4)
        self.sigma_max = float(sigma_max)
        self.softness = float(softness)
        table, tri_labels = scene.label_table()
        self.label_table = {int(k): v for k, v in table.items()}
        # grid bounds: objects plus margin, table top slab included
        obj_v = np.concatenate([o.world_vertices() for o in scene.objects]) if scene.objects else np.zeros((1, 3))
        lo = obj_v.min(0) - margin
        hi = obj_v.max(0) + margin
        lo[2], hi[2] = -0.03, max(hi[2], 0.05)
        n = np.ceil((hi - lo) / resolution).astype(int) + 1
        self.lo, self.res, self.shape = lo, float(resolution), tuple(int(x) for x in n)
        axes = [lo[i] + np.arange(n[i]) * resolution for i in range(3)]
        pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).astype(np.float32)

        if backend == "auto":
            try:
                import open3d  # noqa: F401
                backend = "open3d"
            except ImportError:
                backend = "scipy"
        if backend == "open3d":
            sdf, lab = _sdf_labels_open3d(scene, pts, tri_labels, resolution)
        elif backend == "scipy":
            sdf, lab = _sdf_labels_scipy(scene, pts, tri_labels, resolution)
        else:
            raise ValueError(f"backend must be auto, open3d or scipy, got {backend!r}")
        self.backend = backend

        self.label_ids = sorted(self.label_table)
        self._sdf = torch.from_numpy(sdf.reshape(self.shape)).to(self.device)[None, None]  # [1,1,X,Y,Z]
        if label_vectors is None:
            self.feature_dim = 0
            self._onehot = None
            self._vectors = None
        else:
            missing = [i for i in self.label_ids if i not in label_vectors]
            if missing:
                raise ValueError(f"label_vectors lacks ids {missing}")
            vecs = np.stack([np.asarray(label_vectors[i], dtype=np.float32) for i in self.label_ids])
            self.feature_dim = int(vecs.shape[1])
            lab_col = np.searchsorted(np.array(self.label_ids), lab)  # ids are sorted and all present
            onehot = np.zeros((len(self.label_ids), len(pts)), dtype=np.float32)
            onehot[lab_col, np.arange(len(pts))] = 1.0
            onehot = onehot.reshape(len(self.label_ids), *self.shape)
            if self.feature_dim <= len(self.label_ids):  # sample the D feature channels directly
                chans = np.tensordot(vecs.T, onehot, axes=1)
                self._vectors = None
            else:  # sample the L one-hot channels, then multiply by the label vectors
                chans = onehot
                self._vectors = torch.from_numpy(vecs).to(self.device)  # [L, D]
            # one volume [1, 1 + C, X, Y, Z]: sdf then feature (or one-hot) channels, so
            # query_density_and_features needs a single grid_sample
            self._onehot = torch.from_numpy(np.concatenate([sdf.reshape(1, *self.shape), chans]).astype(
                np.float32)).to(self.device)[None]
        self._lo = torch.as_tensor(lo, dtype=torch.float32, device=self.device)
        self._span = torch.as_tensor((np.array(self.shape) - 1) * resolution, dtype=torch.float32, device=self.device)
        self.nearest_label = lab.reshape(self.shape)

    @classmethod
    def from_extractor(cls, scene: Any, extractor: Any, **kwargs) -> OracleField:
        """Oracle whose per-label features come from a label extractor built for ``scene``."""
        table, _ = scene.label_table()
        ids = sorted(int(k) for k in table)
        vecs = label_vectors_from_extractor(extractor, ids)
        return cls(scene, {i: v for i, v in zip(ids, vecs, strict=True)}, extractor.cache_key(), **kwargs)

    # --- queries ----------------------------------------------------------------------------------
    def _sample(self, vol: torch.Tensor, points: torch.Tensor) -> torch.Tensor:  # [1,C,X,Y,Z], [N,3] -> [N,C]
        """Trilinear interpolation, border-clamped. With gradients: 8 row gathers from a channels-last
        copy (grid_sample's CPU backward fills a gradient buffer the size of the whole volume on every
        call, ~0.1 s here even for a few thousand points); without: grid_sample."""
        if points.requires_grad and torch.is_grad_enabled():
            return self._sample_gather(vol, points)
        return self._sample_grid(vol, points)

    def _sample_gather(self, vol: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        key = id(vol)
        if getattr(self, "_rows_key", None) != key:
            self._rows = vol[0].permute(1, 2, 3, 0).reshape(-1, vol.shape[1]).contiguous()  # [X*Y*Z, C]
            self._rows_key = key
        X, Y, Z = self.shape
        hi = self._hi_cache.get(points.device) if hasattr(self, "_hi_cache") else None
        if hi is None:  # made once per device: a host-to-device copy per call cannot be captured in a CUDA graph
            hi = torch.tensor([X - 1, Y - 1, Z - 1], dtype=torch.float32, device=points.device)
            self.__dict__.setdefault("_hi_cache", {})[points.device] = hi
        p = torch.minimum(((points.float() - self._lo) / self.res).clamp(min=0.0), hi)
        c = torch.minimum(p.detach().floor(), hi - 1).long()
        f = p - c
        out = 0.0
        for dx in (0, 1):
            for dy in (0, 1):
                for dz in (0, 1):
                    idx = ((c[:, 0] + dx) * Y + (c[:, 1] + dy)) * Z + (c[:, 2] + dz)
                    w = (f[:, 0] if dx else 1 - f[:, 0]) * (f[:, 1] if dy else 1 - f[:, 1]) \
                        * (f[:, 2] if dz else 1 - f[:, 2])
                    out = out + w[:, None] * self._rows[idx]
        return out

    def _sample_grid(self, vol: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        u = (points.float() - self._lo) / self._span * 2.0 - 1.0  # [-1, 1] per axis
        g = u[:, [2, 1, 0]].reshape(1, -1, 1, 1, 3)  # grid_sample wants (z, y, x) order for (D, H, W) = (X, Y, Z)
        out = torch.nn.functional.grid_sample(vol, g, mode="bilinear", padding_mode="border", align_corners=True)
        return out.reshape(vol.shape[1], -1).T

    def sdf(self, points_world: torch.Tensor) -> torch.Tensor:  # [N, 3] -> [N]
        """Interpolated signed distance, metres (negative inside)."""
        return self._sample(self._sdf, points_world.to(self.device))[:, 0]

    def query_density(self, points_world: torch.Tensor) -> torch.Tensor:  # [N, 3] -> [N]
        """Density, 1/metre."""
        return self._density_from_sdf(self.sdf(points_world))

    def _density_from_sdf(self, sdf: torch.Tensor) -> torch.Tensor:
        # clamped so that empty space gives ~4e-18 * sigma_max, not denormal floats (slow on CPUs)
        return self.sigma_max * torch.sigmoid(torch.clamp(-sdf / self.softness, -40.0, 40.0))

    def query_features(self, points_world: torch.Tensor) -> torch.Tensor:  # [N, 3] -> [N, D]
        """Raw features (interpolated one-hot nearest label times the label vectors)."""
        return self.query_density_and_features(points_world)[1]

    def query_density_and_features(self, points_world: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(density [N], features [N, D]) in one interpolation (optional fast path of the field API)."""
        if self._onehot is None:
            raise ValueError("this oracle field has no features")
        w = self._sample(self._onehot, points_world.to(self.device))
        f = w[:, 1:] if self._vectors is None else w[:, 1:] @ self._vectors
        return self._density_from_sdf(w[:, 0]), f

    def label_at(self, points_world: np.ndarray) -> np.ndarray:  # [N, 3] -> [N] label ids (nearest surface)
        """Nearest-surface label id at each point (nearest grid cell)."""
        p = np.asarray(points_world, dtype=np.float64)
        idx = np.clip(np.rint((p - self.lo) / self.res).astype(int), 0, np.array(self.shape) - 1)
        return self.nearest_label[idx[:, 0], idx[:, 1], idx[:, 2]]


def _sdf_labels_open3d(scene: Any, pts: np.ndarray, tri_labels: list[np.ndarray],
                       resolution: float) -> tuple[np.ndarray, np.ndarray]:
    """Signed distance [N] (union of the closed components' occupancy, distance to the nearest
    triangle) and nearest-triangle label [N] at ``pts`` [N, 3], by open3d ray casting."""
    import open3d as o3d

    all_scene = o3d.t.geometry.RaycastingScene()
    inside = np.zeros(len(pts), dtype=bool)
    geom_labels = []
    for ent, labels in zip(scene.entities, tri_labels, strict=True):
        V = ent.world_vertices().astype(np.float32)
        tris = ent.mesh.triangles
        gid = all_scene.add_triangles(o3d.core.Tensor(V), o3d.core.Tensor(tris.astype(np.uint32)))
        assert gid == len(geom_labels)
        geom_labels.append(np.asarray(labels, dtype=np.int64))
        for ci in range(len(ent.mesh.components)):
            cv, ct = ent.mesh.component_mesh(ci)
            cv = cv @ ent.T_world_obj[:3, :3].T + ent.T_world_obj[:3, 3]
            one = o3d.t.geometry.RaycastingScene()
            one.add_triangles(o3d.core.Tensor(cv.astype(np.float32)), o3d.core.Tensor(ct.astype(np.uint32)))
            cmin, cmax = cv.min(0) - 2 * resolution, cv.max(0) + 2 * resolution
            sel = np.all((pts >= cmin) & (pts <= cmax), axis=1)
            if sel.any():
                occ = one.compute_occupancy(o3d.core.Tensor(pts[sel]), nsamples=3).numpy() > 0.5
                idx = np.flatnonzero(sel)
                inside[idx[occ]] = True
    q = all_scene.compute_closest_points(o3d.core.Tensor(pts))
    closest = q["points"].numpy()
    dist = np.linalg.norm(closest - pts, axis=1)
    gids = q["geometry_ids"].numpy().astype(np.int64)
    pids = q["primitive_ids"].numpy().astype(np.int64)
    lab = np.zeros(len(pts), dtype=np.int64)
    for g, labels in enumerate(geom_labels):
        m = gids == g
        lab[m] = labels[pids[m]]
    sdf = np.where(inside, -dist, dist).astype(np.float32)
    return sdf, lab


def _sdf_labels_scipy(scene: Any, pts: np.ndarray, tri_labels: list[np.ndarray], resolution: float,
                      spacing: float = 0.0015, seed: int = 0,
                      label_range: float = 0.04) -> tuple[np.ndarray, np.ndarray]:
    """Twin of :func:`_sdf_labels_open3d` without open3d (scipy cKDTree).

    Each closed component is sampled (area-weighted, ~``spacing`` apart) with its face normals; a
    point's signed distance to a component is the distance to the tangent plane of its nearest
    sample near the surface (within 2 spacings) and the signed distance to that sample farther
    away; the scene's is the minimum over components (union). Labels: nearest sample's triangle
    (within ``label_range``; the table's label farther away, where alpha is 0 anyway).
    """
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    sdf = np.full(len(pts), np.inf, dtype=np.float64)
    all_s, all_l = [], []
    for ent, labels in zip(scene.entities, tri_labels, strict=True):
        V = ent.world_vertices()
        for comp in ent.mesh.components:
            tris = ent.mesh.triangles[comp]
            a, b, c = V[tris[:, 0]], V[tris[:, 1]], V[tris[:, 2]]
            cr = np.cross(b - a, c - a)
            area = 0.5 * np.linalg.norm(cr, axis=1)
            keep = area > 1e-12
            tris_i, a, b, c, cr, area = comp[keep], a[keep], b[keep], c[keep], cr[keep], area[keep]
            normal = cr / (2 * area[:, None])
            step = spacing if ent is not scene.table else max(spacing, 0.004)
            n = np.maximum(1, np.ceil(area / (step * step) * 2).astype(int))
            tri = np.repeat(np.arange(len(area)), n)
            u, v = rng.random(len(tri)), rng.random(len(tri))
            flip = u + v > 1
            u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
            smp = a[tri] + u[:, None] * (b - a)[tri] + v[:, None] * (c - a)[tri]
            nrm = normal[tri]
            all_s.append(smp)
            all_l.append(np.asarray(labels)[tris_i[tri]])
            lo, hi = smp.min(0) - 3 * resolution - 0.01, smp.max(0) + 3 * resolution + 0.01
            sel = np.flatnonzero(np.all((pts >= lo) & (pts <= hi), axis=1))
            if len(sel) == 0:
                continue
            d, j = cKDTree(smp).query(pts[sel], workers=-1)
            diff = pts[sel] - smp[j]
            plane = np.einsum("ij,ij->i", diff, nrm[j])
            sd = np.where(d <= 2 * step, plane, np.sign(plane) * d)
            sdf[sel] = np.minimum(sdf[sel], sd)
    samples, labels_all = np.concatenate(all_s), np.concatenate(all_l)
    # labels matter only where alpha can be non-zero; farther than ``label_range`` the table's id
    # stands in (the bounded search is several times faster)
    _, j = cKDTree(samples).query(pts, distance_upper_bound=label_range, workers=-1)
    far = j >= len(samples)
    lab = np.where(far, int(np.asarray(tri_labels[0]).reshape(-1)[0]), labels_all[np.minimum(j, len(samples) - 1)])
    sdf = np.where(np.isfinite(sdf), sdf, 1.0)
    return sdf.astype(np.float32), lab.astype(np.int64)
