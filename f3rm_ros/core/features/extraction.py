"""Feature maps of a whole dataset, in its frame order, cached on disk (see :mod:`.cache`)."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any
from collections.abc import Callable

import torch
from torch import Tensor

from f3rm_ros.core.features.base import FeatureExtractor
from f3rm_ros.core.features.cache import FeatureCache

__all__ = ["extract_dataset_features", "dataset_cache_key"]

log = logging.getLogger(__name__)

_STORE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def _identity(path: Path | None) -> list | None:
    if path is None:
        return None
    st = os.stat(path)
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


def dataset_cache_key(extractor: FeatureExtractor, dataset: Any, store_dtype: str) -> tuple[dict, dict]:
    """(slot identity, full key) of a dataset's features; see :mod:`.cache`."""
    ext_key = extractor.cache_key()
    root = str(Path(dataset.root).resolve())
    slot = {"extractor": ext_key, "root": root, "downscale": int(getattr(dataset, "downscale", 1)),
            "store_dtype": store_dtype}
    uses_labels = extractor.name == "labels"
    frames = []
    for i, p in enumerate(dataset.image_paths):
        lp = dataset.label_paths[i] if (uses_labels and dataset.label_paths) else None
        size = list(dataset.intrinsics[i].size) if getattr(dataset, "intrinsics", None) else None
        frames.append({"image": _identity(p), "labels": _identity(lp), "size": size})
    return slot, {**slot, "frames": frames}


def _frame_id(frame: dict) -> str:
    return json.dumps(frame, sort_keys=True)


def _reusable_frames(stale: tuple[Any, Tensor], key: dict) -> dict[int, Tensor]:
    """Stored maps of frames whose files are unchanged, when only the frame list differs."""
    old_key, old_feats = stale
    if not isinstance(old_key, dict) or not isinstance(old_key.get("frames"), list):
        return {}
    same_rest = {k: v for k, v in old_key.items() if k != "frames"} == \
        json.loads(json.dumps({k: v for k, v in key.items() if k != "frames"}))
    if not same_rest or len(old_key["frames"]) != old_feats.shape[0]:
        return {}
    old_index = {_frame_id(f): j for j, f in enumerate(old_key["frames"])}
    reuse = {}
    for i, f in enumerate(json.loads(json.dumps(key["frames"]))):
        j = old_index.get(_frame_id(f))
        if j is not None:
            reuse[i] = old_feats[j]
    return reuse


class _Progress:
    """tqdm when installed, else a log line about every 10 %."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.total, self.done, self.desc, self.t0 = total, 0, desc, time.monotonic()
        self.bar = None
        self._next_log = 0.1
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr)
            except ImportError:
                pass
        self.enabled = enabled

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and self.done / self.total >= self._next_log:
            rate = self.done / max(time.monotonic() - self.t0, 1e-9)
            log.info("%s: %d/%d images (%.2f img/s)", self.desc, self.done, self.total, rate)
            self._next_log += 0.1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def extract_dataset_features(extractor: FeatureExtractor, dataset: Any,
                             cache_dir: str | Path | None = None, *,
                             batch_size: int | None = None, store_dtype: str = "float16",
                             progress: bool = True,
                             on_progress: Callable[[int, int], None] | None = None) -> Tensor:
    """Feature maps of every frame of ``dataset`` (its frame order), from the cache when valid.

    Args:
        extractor: any :class:`FeatureExtractor`; the labels extractor reads each frame's ``label_path``.
        dataset: a :class:`f3rm_ros.core.dataset.PosedImageDataset`, or a dataset folder /
            ``transforms.json`` path (loaded with ``load_dataset``).
        cache_dir: folder of the feature cache; None = no caching.
        batch_size: images read and passed to ``extractor.extract`` per call (default: the
            extractor's ``config.batch_size``, else 8).
        store_dtype: "float16" (default; halves disk and memory) or "float32". The returned
            features always went through this dtype, so a cache hit equals a fresh extraction.
        progress: show a progress bar (tqdm if installed, else log lines).
        on_progress: called as ``on_progress(done, total)`` after every batch (e.g. ROS feedback).

    Returns:
        float32 ``[N_images, h, w, D]`` on the CPU (raw features, not normalised).

    Raises:
        ValueError: the frames differ in size (grids would differ), or the labels extractor is
            used on a dataset without ``label_path`` images.
    """
    if store_dtype not in _STORE_DTYPES:
        raise ValueError(f"store_dtype must be one of {list(_STORE_DTYPES)}, got {store_dtype!r}")
    if isinstance(dataset, (str, Path)):
        from f3rm_ros.core.dataset import load_dataset

        dataset = load_dataset(dataset)
    n = len(dataset.image_paths)
    if n == 0:
        raise ValueError("the dataset has no frames")
    uses_labels = extractor.name == "labels"
    if uses_labels and (not dataset.label_paths or any(p is None for p in dataset.label_paths)):
        missing = [i for i, p in enumerate(dataset.label_paths or [None] * n) if p is None]
        raise ValueError(f"the labels extractor needs a label_path for every frame; {len(missing)} of {n} frames "
                         f"have none (first: frame {missing[0]})")
    sizes = {tuple(k.size) for k in dataset.intrinsics} if getattr(dataset, "intrinsics", None) else set()
    if len(sizes) > 1:
        described = dataset.sizes_described() if hasattr(dataset, "sizes_described") else str(sorted(sizes))
        raise ValueError(f"{getattr(dataset, 'root', 'the dataset')}: frames have different image sizes "
                         f"({described}); 2D features need one size: resize the images (and their intrinsics) to "
                         "one size")

    cache = path = key = None
    reuse: dict[int, Tensor] = {}  # frame index -> stored map of an unchanged frame
    if cache_dir is not None:
        cache = FeatureCache(cache_dir)
        slot, key = dataset_cache_key(extractor, dataset, store_dtype)
        path = cache.slot_path(slot, prefix=f"features_{extractor.name}")
        feats = cache.load(path, key)
        if feats is not None:
            log.info("feature cache hit: %s (%d frames)", path, n)
            if on_progress is not None:
                on_progress(n, n)
            return feats.float()
        if cache.last_stale is not None:
            reuse = _reusable_frames(cache.last_stale, key)
        log.info("feature cache %s: extracting %d of %d frames with %s (%d reused)", cache.last_status,
                 n - len(reuse), n, extractor.name, len(reuse))

    if batch_size is None:
        batch_size = int(getattr(getattr(extractor, "config", None), "batch_size", 8))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dtype = _STORE_DTYPES[store_dtype]
    out: Tensor | None = None
    if reuse:
        first = next(iter(reuse.values()))
        out = torch.empty((n, *first.shape), dtype=dtype)
        for i, f in reuse.items():
            out[i] = f.to(dtype)
    todo = [i for i in range(n) if i not in reuse]
    bar = _Progress(n, f"{extractor.name} features", progress)
    done = len(reuse)
    bar.update(done)
    try:
        for start in range(0, len(todo), batch_size):
            idx = todo[start:start + batch_size]
            # label features need only the label maps (get_labels resizes them to the frame size)
            images = None if uses_labels else [dataset.get_image(i) for i in idx]
            labels = [dataset.get_labels(i) for i in idx] if uses_labels else None
            f = extractor.extract(images, labels).to(dtype)
            if out is None:
                out = torch.empty((n, *f.shape[1:]), dtype=dtype)
            elif tuple(f.shape[1:]) != tuple(out.shape[1:]):
                raise ValueError(f"feature grid {tuple(f.shape[1:])} of frames {idx[:3]}... differs from "
                                 f"{tuple(out.shape[1:])} of the others")
            out[idx] = f
            done += len(idx)
            bar.update(len(idx))
            if on_progress is not None:
                on_progress(done, n)
    finally:
        bar.close()
    assert out is not None
    if cache is not None:
        cache.save(path, key, out)
        log.info("feature cache written: %s", path)
    return out.float()
