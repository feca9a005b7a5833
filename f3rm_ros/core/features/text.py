"""Text-side helpers: a small LRU cache of text embeddings and query-string normalisation."""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["TextEmbeddingCache", "normalize_text"]

_PUNCT = re.compile(r"[^\w\s']+")


def normalize_text(text: str) -> str:
    """Lower case, ``_``/``-``/punctuation to spaces, whitespace collapsed (no other change)."""
    if not isinstance(text, str):
        raise ValueError(f"expected a string, got {type(text).__name__} {text!r}")
    t = text.lower().replace("_", " ").replace("-", " ")
    t = _PUNCT.sub(" ", t)
    return " ".join(t.split())


class TextEmbeddingCache:
    """An LRU cache in front of a batch text encoder ``encode(list[str]) -> Tensor[N, D]``.

    Only the texts not yet cached are encoded (in one batch). Keys are the exact strings.
    """

    def __init__(self, encode: Callable[[list[str]], Tensor], max_size: int = 256):
        if max_size < 0:
            raise ValueError(f"max_size must be >= 0, got {max_size}")
        self._encode = encode
        self.max_size = max_size
        self._store: OrderedDict[str, Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __call__(self, texts: Sequence[str]) -> Tensor:  # [N, D]
        texts = list(texts)
        if not texts:
            raise ValueError("encode_text needs at least one text")
        for t in texts:
            if not isinstance(t, str):
                raise ValueError(f"texts must be strings, got {type(t).__name__} {t!r}")
        missing = list(dict.fromkeys(t for t in texts if t not in self._store))
        self.hits += len(texts) - len(missing)
        self.misses += len(missing)
        fresh = {}
        if missing:
            emb = self._encode(missing)
            fresh = {t: emb[i] for i, t in enumerate(missing)}
            for t, e in fresh.items():
                self._store[t] = e
                if len(self._store) > self.max_size:
                    self._store.popitem(last=False)
        out = []
        for t in texts:
            e = fresh.get(t)
            if e is None:
                e = self._store[t]
                self._store.move_to_end(t)
            out.append(e)
        return torch.stack(out)

    def clear(self) -> None:
        self._store.clear()
