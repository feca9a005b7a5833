"""Grasp tasks from demonstrations: recording, the task file format, embeddings, retrieval.

A task (f3rm-method.md s. 4) is ``Q`` query points in the gripper frame (an isotropic Gaussian at the
gripper origin) plus ``D`` demonstrations: gripper poses ``T_world_gripper`` in a trained field, and
at each pose the field's raw features ``[Q, C]`` and density ``[Q]`` at the transformed query points.
Storing density rather than alpha lets a planner use its own alpha step (delta).

File format (one ``<name>.npz``, written atomically through :mod:`f3rm_ros.core.io`; no pickles):

* ``query_points`` float32 [Q, 3] (gripper frame, metres)
* ``demo_poses`` float64 [D, 4, 4] (``T_world_gripper`` of each demo, in its demo scene's world)
* ``demo_features`` float32 [D, Q, C] (raw, not normalised)
* ``demo_density`` float32 [D, Q] (1/metre)
* ``meta_json`` 0-d unicode: ``{"format": "f3rm_ros.task", "version": 1, "name": ...,
  "extractor_info": {...}, "voxel_size_m": ..., "metadata": {...}}``

The extractor that made the features travels in the file; :func:`check_extractor` refuses to use a
task with a field distilled from another extractor, with a message naming both.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from collections.abc import Sequence

import numpy as np
import torch

from f3rm_ros.core.fields.protocol import GraspField
from f3rm_ros.core.grasp.config import TaskConfig
from f3rm_ros.core.grasp.field_utils import alpha_from_density, field_has_features
from f3rm_ros.core.io import atomic_write_bytes

__all__ = [
    "Task", "ExtractorMismatchError", "TaskFormatError", "sample_query_points", "record_demo", "make_task",
    "task_embedding", "retrieve_task", "save_task", "load_task", "load_tasks", "default_tasks_dir",
    "load_default_tasks", "extractor_signature", "check_extractor", "adapt_task", "merge_tasks", "task_library",
    "usable_tasks", "append_demo", "record_task_demo",
]

FORMAT = "f3rm_ros.task"
VERSION = 1
# extractor_info keys that describe the data a cache was built from rather than the feature space
# (a task recorded in one scene must be usable in another scene with the same extractor).
_PER_DATASET_KEYS = {"images", "image_list", "image_hash", "dataset", "dataset_path", "cache_dir", "num_images",
                     "labels", "label_table", "f3rm_labels", "label_hash", "device"}
# settings (in ``settings`` or ``resolved``) that only change where, or at which resolution or numeric
# precision, the same features are sampled in an image, not the space they live in: the patch size and
# image size of label features (a patch is the mean of its pixels' concept vectors), CLIP's input size
# (MaskCLIP's features of one model are comparable at any resolution), DINO's image size and patch
# stride, fp16/fp32. A task recorded with any of these may be used with a field made with others; the
# model, weights, label dimension/seed/weights (which do change the vectors) must still match.
_RESOLUTION_KEYS = {"patch_size", "image_size", "short_side", "stride", "precision", "batch_size"}


class ExtractorMismatchError(ValueError):
    """A task's features come from another 2D feature extractor than the field's."""


class TaskFormatError(ValueError):
    """A task file is missing, unreadable or not in the f3rm_ros task format."""


@dataclass
class Task:
    """A grasp task: query points and demonstrations (see the module docstring for shapes)."""

    name: str
    query_points: np.ndarray  # [Q, 3] gripper frame
    demo_poses: np.ndarray  # [D, 4, 4] T_world_gripper
    demo_features: np.ndarray  # [D, Q, C] raw
    demo_density: np.ndarray  # [D, Q] 1/metre
    extractor_info: dict = dc_field(default_factory=dict)
    voxel_size_m: float = 0.01
    metadata: dict = dc_field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError("a task needs a non-empty name")
        self.query_points = np.asarray(self.query_points, dtype=np.float32)
        self.demo_poses = np.asarray(self.demo_poses, dtype=np.float64)
        self.demo_features = np.asarray(self.demo_features, dtype=np.float32)
        self.demo_density = np.asarray(self.demo_density, dtype=np.float32)
        q = self.query_points
        if q.ndim != 2 or q.shape[1] != 3 or q.shape[0] == 0:
            raise ValueError(f"task {self.name!r}: query_points must be [Q>0, 3], got {q.shape}")
        d = self.demo_features
        if d.ndim != 3 or d.shape[0] == 0 or d.shape[1] != q.shape[0] or d.shape[2] == 0:
            raise ValueError(f"task {self.name!r}: demo_features must be [D>0, Q={q.shape[0]}, C>0], got {d.shape}")
        if self.demo_density.shape != d.shape[:2]:
            raise ValueError(f"task {self.name!r}: demo_density must be {d.shape[:2]}, got {self.demo_density.shape}")
        if self.demo_poses.shape != (d.shape[0], 4, 4):
            raise ValueError(f"task {self.name!r}: demo_poses must be [{d.shape[0]}, 4, 4], "
                             f"got {self.demo_poses.shape}")
        for nm in ("query_points", "demo_poses", "demo_features", "demo_density"):
            if not np.all(np.isfinite(getattr(self, nm))):
                raise ValueError(f"task {self.name!r}: {nm} has non-finite values")
        if not (self.voxel_size_m > 0):
            raise ValueError(f"task {self.name!r}: voxel_size_m must be > 0")

    @property
    def num_demos(self) -> int:
        return int(self.demo_features.shape[0])

    @property
    def num_query_points(self) -> int:
        return int(self.query_points.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.demo_features.shape[2])


def sample_query_points(num: int, std_m: float, seed: int = 0) -> np.ndarray:
    """``num`` points [num, 3] from an isotropic Gaussian (std ``std_m``) at the gripper origin."""
    if num < 1 or not (std_m > 0):
        raise ValueError(f"need num >= 1 and std_m > 0, got {num}, {std_m}")
    return (np.random.default_rng(seed).standard_normal((num, 3)) * std_m).astype(np.float32)


def _transform_points_torch(T: torch.Tensor,  # [..., 4, 4]
                            p: torch.Tensor) -> torch.Tensor:  # [Q, 3] -> [..., Q, 3]
    return p @ T[..., :3, :3].transpose(-1, -2) + T[..., None, :3, 3]


def record_demo(field: GraspField, T_world_gripper: np.ndarray,  # [4, 4]
                query_points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # [Q, 3]
    """Features [Q, C] and density [Q] of ``field`` at the query points placed at a gripper pose."""
    if not field_has_features(field):
        raise ValueError("cannot record a demonstration: the field has no feature field")
    T = np.asarray(T_world_gripper, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise ValueError(f"T_world_gripper must be a finite 4x4, got shape {T.shape}")
    dev = field.device
    pts = _transform_points_torch(torch.as_tensor(T, dtype=torch.float32, device=dev),
                                  torch.as_tensor(query_points, dtype=torch.float32, device=dev))
    with torch.no_grad():
        dens = field.query_density(pts).reshape(-1).float()
        feats = field.query_features(pts).float()
    return feats.cpu().numpy(), dens.cpu().numpy()


def make_task(name: str, field: GraspField, demo_poses: Sequence[np.ndarray], config: TaskConfig | None = None,
              metadata: dict | None = None, query_points: np.ndarray | None = None) -> Task:
    """Record one demonstration per pose in ``field`` and bundle them as a task.

    Args:
        name: task name, e.g. "grasp mug by handle".
        field: a field with the query API (its ``extractor_info`` is stored in the task).
        demo_poses: gripper poses ``T_world_gripper`` (4, 4) in the field's world frame.
        config: query point settings (default :class:`TaskConfig`).
        metadata: free JSON-able information (scene, object, part, ...).
        query_points: [Q, 3] to reuse instead of sampling new ones.
    """
    config = config or TaskConfig()
    if len(demo_poses) == 0:
        raise ValueError("a task needs at least one demonstration pose")
    qp = sample_query_points(config.num_query_points, config.query_std_m, config.seed) \
        if query_points is None else np.asarray(query_points, dtype=np.float32)
    feats, dens = zip(*(record_demo(field, T, qp) for T in demo_poses), strict=True)
    return Task(name=name, query_points=qp, demo_poses=np.stack([np.asarray(T) for T in demo_poses]),
                demo_features=np.stack(feats), demo_density=np.stack(dens),
                extractor_info=dict(getattr(field, "extractor_info", {}) or {}),
                voxel_size_m=config.voxel_size_m, metadata=dict(metadata or {}))


def task_embedding(task: Task, delta: float | None = None,
                   device: torch.device | str = "cpu") -> torch.Tensor:  # [Q, C]
    """Mean over demos of ``alpha(density, delta) * features`` (delta defaults to the task's voxel size)."""
    delta = task.voxel_size_m if delta is None else float(delta)
    dens = torch.as_tensor(task.demo_density, device=device)
    feats = torch.as_tensor(task.demo_features, device=device)
    return (alpha_from_density(dens, delta)[..., None] * feats).mean(dim=0)


def retrieve_task(text_embedding: torch.Tensor,  # [C] unit length
                  tasks: Sequence[Task], delta: float | None = None,
                  scene_feature: torch.Tensor | None = None) -> tuple[int, torch.Tensor]:  # [C]
    """Index of the task whose embedding, averaged over query points, is most cosine-similar to the text
    (the reference), plus, when ``scene_feature`` is given, to that feature (ours: the mean unit
    feature of the voxels the query selected in the scene, so "blue mug" also finds a task demonstrated
    on another mug when the text alone names no demonstrated concept).

    Returns:
        (best index, scores [len(tasks)]: text cosine, plus the scene cosine if given).
    """
    if len(tasks) == 0:
        raise ValueError("no tasks to retrieve from")
    t = text_embedding.reshape(-1).float().cpu()
    dims = {task.feature_dim for task in tasks}
    if dims != {t.shape[0]}:
        raise ExtractorMismatchError(f"text embedding has {t.shape[0]} dims but the tasks have {sorted(dims)}")
    means = torch.stack([task_embedding(task, delta).mean(dim=0) for task in tasks])
    sims = torch.nn.functional.cosine_similarity(means, t[None, :], dim=-1)
    if scene_feature is not None:
        sf = scene_feature.reshape(-1).float().cpu()
        sims = sims + torch.nn.functional.cosine_similarity(means, sf[None, :], dim=-1)
    # a task with (next to) no embedding, e.g. a label task adapted to a scene that has none of its concepts,
    # fits nothing: the cosine of its rounding noise is meaningless
    norms = means.norm(dim=-1)
    sims = torch.where(norms > 1e-4 * norms.max().clamp_min(1e-12), sims, torch.full_like(sims, -1.0))
    return int(torch.argmax(sims)), sims


# --- extractor compatibility -----------------------------------------------------------------------

def extractor_signature(info: dict | None) -> dict:
    """The part of ``extractor_info`` that defines the feature space (per-dataset keys dropped, and the
    resolution-only settings of ``_RESOLUTION_KEYS``: patch size, image size, stride, precision).

    Accepts both an extractor's ``cache_key()`` (``type``, ``version``, ``settings``, ...) and the
    trainer's checkpoint form (the same plus ``name`` and ``feature_dim``, which repeat ``type`` and
    the settings).
    """
    info = dict(info or {})
    if "type" in info:
        info.pop("name", None)
        info.pop("feature_dim", None)
    for sub in ("settings", "resolved"):
        if isinstance(info.get(sub), dict):
            info[sub] = {k: v for k, v in sorted(info[sub].items()) if k not in _RESOLUTION_KEYS}
    return {k: v for k, v in sorted(info.items()) if k not in _PER_DATASET_KEYS}


def _kind(info: dict) -> str:
    return str(info.get("type", info.get("name", "?")))


def check_extractor(task: Task, field_info: dict | None) -> None:
    """Raise :class:`ExtractorMismatchError` unless the task was made with the field's extractor
    (same kind and settings; the data it was run on may differ)."""
    a, b = extractor_signature(task.extractor_info), extractor_signature(field_info)
    if not a or not b:
        missing = "task" if not a else "field"
        raise ExtractorMismatchError(f"task {task.name!r}: the {missing} does not say which feature extractor "
                                     f"made its features; refusing to mix feature spaces")
    if a != b:
        fa, fb = _flatten(a), _flatten(b)
        diff = sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))
        raise ExtractorMismatchError(
            f"task {task.name!r} was made with extractor {_kind(a)!r} but the field was distilled from "
            f"{_kind(b)!r} (or other settings); they differ in {diff} (task: {[fa.get(k) for k in diff]}, field: "
            f"{[fb.get(k) for k in diff]}). Record the task again with this field's extractor (patch size, "
            f"image size, stride and precision may differ; the settings listed change the feature space).")


def _flatten(info: dict) -> dict:
    """``{"settings": {"seed": 0}}`` -> ``{"settings.seed": 0}`` (one level, for readable messages)."""
    out = {}
    for k, v in info.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


# --- files -------------------------------------------------------------------------------------------

def save_task(task: Task, path: str | Path) -> Path:
    """Write ``task`` to ``path`` (.npz) atomically."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"task files end in .npz, got {path}")
    meta = {"format": FORMAT, "version": VERSION, "name": task.name, "extractor_info": task.extractor_info,
            "voxel_size_m": float(task.voxel_size_m), "metadata": task.metadata}
    buf = io.BytesIO()
    np.savez_compressed(buf, query_points=task.query_points, demo_poses=task.demo_poses,
                        demo_features=task.demo_features, demo_density=task.demo_density,
                        meta_json=np.array(json.dumps(meta)))
    return atomic_write_bytes(path, buf.getvalue())


def load_task(path: str | Path) -> Task:
    """Read a task file written by :func:`save_task`.

    Raises:
        TaskFormatError: missing file, not an npz, not our format or a newer version.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise TaskFormatError(f"task file not found: {path}") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is a format error for the caller
        raise TaskFormatError(f"{path}: not a readable task file ({e})") from None
    need = {"query_points", "demo_poses", "demo_features", "demo_density", "meta_json"}
    if not need <= set(arrays):
        raise TaskFormatError(f"{path}: missing {sorted(need - set(arrays))}")
    meta = json.loads(str(arrays["meta_json"]))
    if meta.get("format") != FORMAT or int(meta.get("version", 0)) > VERSION:
        raise TaskFormatError(f"{path}: format {meta.get('format')!r} v{meta.get('version')} is not "
                              f"{FORMAT!r} v<={VERSION}")
    try:
        return Task(name=meta["name"], query_points=arrays["query_points"], demo_poses=arrays["demo_poses"],
                    demo_features=arrays["demo_features"], demo_density=arrays["demo_density"],
                    extractor_info=meta.get("extractor_info") or {}, voxel_size_m=float(meta["voxel_size_m"]),
                    metadata=meta.get("metadata") or {})
    except ValueError as e:
        raise TaskFormatError(f"{path}: {e}") from None


def load_tasks(folder: str | Path) -> list[Task]:
    """All ``*.npz`` tasks in ``folder``, sorted by file name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TaskFormatError(f"task folder not found: {folder}")
    return [load_task(p) for p in sorted(folder.glob("*.npz"))]


def default_tasks_dir() -> Path:
    """The package's task folder (default tasks for the synthetic world's label features)."""
    return Path(__file__).resolve().parent / "tasks"


def load_default_tasks() -> list[Task]:
    """The tasks shipped with the package (made by ``scripts/make_default_tasks.py``)."""
    return load_tasks(default_tasks_dir())


def adapt_task(task: Task, field_info: dict | None) -> Task:
    """The task in the field's feature space, or :class:`ExtractorMismatchError`.

    Same extractor kind and settings: the task as is, except for the synthetic world's label features
    (kind ``"labels"``). Their concept vectors (category, object, part; features/labels.py) are
    orthonormalised over each scene's own label table, so the same concept has a different vector in
    scenes with different tables, whereas CLIP has one space for every scene. A label task is
    therefore re-expressed: its features are projected onto the concept basis of the table it was
    recorded with (exact: the basis is orthonormal and label features lie in its span) and rebuilt
    from the field's basis; concepts the field's table lacks (e.g. the instance "mug" in a scene with
    "red mug" and "blue mug") are dropped, categories and parts carry over.
    """
    check_extractor(task, field_info)
    src, dst = dict(task.extractor_info), dict(field_info or {})
    if _kind(src) != "labels" or src.get("label_table") == dst.get("label_table"):
        return task
    from f3rm_ros.core.config import from_dict
    from f3rm_ros.core.features.configs import LabelFeatureConfig
    from f3rm_ros.core.features.labels import LabelFeatureExtractor

    def build(info: dict) -> LabelFeatureExtractor:
        if "label_table" not in info:
            raise ExtractorMismatchError(f"task {task.name!r}: label-feature info without its label table")
        return LabelFeatureExtractor(from_dict(LabelFeatureConfig, info.get("settings", {})),
                                     table=info["label_table"])

    e_src, e_dst = build(src), build(dst)
    coef = task.demo_features.astype(np.float64) @ e_src.basis.T  # [D, Q, K_src]
    new = np.zeros(task.demo_features.shape, dtype=np.float64)
    for k, concept in enumerate(e_src.vocab.concepts):
        j = e_dst.concept_index.get(concept)
        if j is not None:
            new += coef[..., k:k + 1] * e_dst.basis[j]
    meta = dict(task.metadata)
    meta["adapted_from_label_table"] = True
    return Task(name=task.name, query_points=task.query_points, demo_poses=task.demo_poses,
                demo_features=new.astype(np.float32), demo_density=task.demo_density,
                extractor_info=dst, voxel_size_m=task.voxel_size_m, metadata=meta)


# --- task libraries and recording into task files -------------------------------------------------------

def merge_tasks(*groups: Sequence[Task]) -> list[Task]:
    """The tasks of all groups, one per name: a later group's task replaces an earlier one of the same name
    (keeping the earlier one's place); new names are appended in order."""
    by_name: dict[str, Task] = {}
    for group in groups:
        for t in group:
            by_name[t.name] = t
    return list(by_name.values())


def task_library(tasks_dir: str | Path | None, use_default: bool = True) -> list[Task]:
    """The tasks a planner starts with: the package's default tasks (``use_default``) merged with the
    ``*.npz`` tasks of ``tasks_dir`` (a recorded task replaces a default one of the same name). A missing
    folder (or None / "") holds no tasks; an unreadable task file raises :class:`TaskFormatError`."""
    tasks = load_default_tasks() if use_default else []
    if tasks_dir and Path(tasks_dir).is_dir():
        tasks = merge_tasks(tasks, load_tasks(tasks_dir))
    return tasks


def usable_tasks(tasks: Sequence[Task], field_info: dict | None, feature_dim: int | None = None
                 ) -> tuple[list[Task], dict[str, str]]:
    """The tasks usable with a field (made with its extractor, or re-expressible in its label space by
    :func:`adapt_task`, with ``feature_dim`` features when given), and for each other task why not."""
    ok, skipped = [], {}
    for t in tasks:
        try:
            a = adapt_task(t, field_info)
            if feature_dim is not None and a.feature_dim != int(feature_dim):
                raise ValueError(f"task {t.name!r} has {a.feature_dim}-dim features, the field {feature_dim}")
            ok.append(t)
        except (ExtractorMismatchError, ValueError) as e:
            skipped[t.name] = str(e)
    return ok, skipped


def append_demo(task: Task, field: GraspField, T_world_gripper: np.ndarray) -> Task:
    """``task`` with one more demonstration, recorded in ``field`` at its query points.

    The task is first brought into the field's feature space (:func:`adapt_task`: the same task for the
    same extractor; label features re-expressed over the field's label table), so every demonstration
    of the result lives in one space.

    Raises:
        ExtractorMismatchError: the task was made with another extractor than the field's.
        ValueError: the field has no features, or the pose is not a finite 4x4.
    """
    base = adapt_task(task, getattr(field, "extractor_info", None))
    feats, dens = record_demo(field, T_world_gripper, base.query_points)
    return Task(name=base.name, query_points=base.query_points,
                demo_poses=np.concatenate([base.demo_poses, np.asarray(T_world_gripper, np.float64)[None]]),
                demo_features=np.concatenate([base.demo_features, feats[None]]),
                demo_density=np.concatenate([base.demo_density, dens[None]]),
                extractor_info=base.extractor_info, voxel_size_m=base.voxel_size_m, metadata=base.metadata)


def record_task_demo(path: str | Path, field: GraspField, T_world_gripper: np.ndarray, append: bool = True,
                     config: TaskConfig | None = None, metadata: dict | None = None) -> Task:
    """Record one demonstration into the task file ``path`` (``<task name>.npz``) and write it atomically.

    With ``append`` and an existing file the demonstration is added to that task (:func:`append_demo`);
    otherwise the file becomes a new task of this one demonstration (``config``: its query points;
    ``metadata``: stored with it), named after the file.

    Raises:
        TaskFormatError: the existing file is not a readable task (``append`` only).
        ExtractorMismatchError: the existing task was made with another extractor (``append`` only).
        ValueError: the field has no features, or the pose is not a finite 4x4.
    """
    path = Path(path)
    if append and path.is_file():
        task = append_demo(load_task(path), field, T_world_gripper)
    else:
        task = make_task(path.stem, field, [np.asarray(T_world_gripper, dtype=np.float64)], config, metadata=metadata)
    save_task(task, path)
    return task
