"""On-disk cache of a dataset's feature maps, keyed by extractor settings and the image list.

One cache *slot* (file) per (extractor settings, dataset folder, downscale): changing a setting
uses another slot, so switching back and forth between extractors does not re-extract. Inside the
file the full key is stored: the extractor's ``cache_key()`` plus every frame's image and label
file (path, size in bytes, modification time in ns). A load whose stored key differs from the
current one (an image added, removed, replaced or touched) is a miss and the slot is rewritten;
the extraction then reuses the stored maps of the frames whose files did not change (a dataset that
grows frame by frame re-extracts only the new frames).

File format (``torch.save`` of a dict, loaded with ``weights_only=True``): ``format``, ``key``,
``features`` (the tensor as stored, float16 by default), ``shape``, ``dtype`` and ``sha256`` of
the tensor's bytes. A file that cannot be read, lacks a field or fails the checksum is *corrupt*:
a warning names the file and the reason, the file is deleted and the features are re-extracted -
it is never used. Files are written atomically (:mod:`f3rm_ros.core.io`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from f3rm_ros.core.io import atomic_write

__all__ = ["FeatureCache", "CacheCorruptWarning", "key_digest", "tensor_sha256"]

log = logging.getLogger(__name__)

FORMAT = "f3rm_ros.feature_cache.v1"


class CacheCorruptWarning(RuntimeWarning):
    """A cache file was unreadable or failed its checksum; it was deleted and will be rebuilt."""


def key_digest(obj: Any) -> str:
    """SHA-256 hex digest of a JSON-serialisable object (keys sorted, so order does not matter)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def tensor_sha256(t: Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


class FeatureCache:
    """A folder of cached feature tensors.

    Attributes:
        last_status: outcome of the last :meth:`load`: "hit", "miss" (no file), "changed" (file of
            an older key) or "corrupt" (unreadable/checksum failure; file deleted).
        last_stale: after a "changed" load, ``(stored_key, stored_tensor)`` (valid, checksummed),
            so a caller can reuse the entries that did not change; else None.
    """

    def __init__(self, cache_dir: str | Path):
        self.dir = Path(cache_dir)
        self.last_status = ""
        self.last_stale: tuple[Any, Tensor] | None = None

    def slot_path(self, slot: Any, prefix: str = "features") -> Path:
        """The file for a slot identity (any JSON-serialisable object)."""
        return self.dir / f"{prefix}_{key_digest(slot)[:20]}.pt"

    def load(self, path: Path, key: Any) -> Tensor | None:
        """The stored tensor if ``path`` holds one for exactly ``key``; else None (see ``last_status``)."""
        path = Path(path)
        self.last_stale = None
        if not path.exists():
            self.last_status = "miss"
            return None
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(obj, dict) or obj.get("format") != FORMAT:
                raise ValueError(f"not a {FORMAT} file")
            feats = obj["features"]
            if not isinstance(feats, Tensor) or list(feats.shape) != list(obj["shape"]) \
                    or str(feats.dtype) != obj["dtype"]:
                raise ValueError("tensor shape/dtype differ from the recorded ones")
            if tensor_sha256(feats) != obj["sha256"]:
                raise ValueError("checksum mismatch")
            stored_key = obj["key"]
        except Exception as e:  # truncated zip, unpickling error, missing field, bad checksum ...
            msg = (f"feature cache file {path} is corrupt ({type(e).__name__}: {str(e)[:200]}); "
                   "deleting and rebuilding it")
            log.warning(msg)
            warnings.warn(msg, CacheCorruptWarning, stacklevel=2)
            path.unlink(missing_ok=True)
            self.last_status = "corrupt"
            return None
        if key_digest(stored_key) != key_digest(key):
            self.last_status = "changed"
            self.last_stale = (stored_key, feats)
            return None
        self.last_status = "hit"
        return feats

    def save(self, path: Path, key: Any, features: Tensor) -> Path:
        """Write ``features`` with ``key`` atomically."""
        features = features.detach().cpu().contiguous()
        obj = {"format": FORMAT, "key": json.loads(json.dumps(key)), "features": features,
               "shape": list(features.shape), "dtype": str(features.dtype), "sha256": tensor_sha256(features)}
        return atomic_write(path, lambda f: torch.save(obj, f))
