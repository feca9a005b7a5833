"""Label features: a stand-in for CLIP built from the synthetic world's per-pixel labels.

The synthetic world (:mod:`f3rm_ros.core.sim.export`) writes per frame a 16-bit label image (0 = nothing / no label)
and one table ``f3rm_labels``: ``{"<id>": {"object": "red mug", "category": "mug", "part": "handle"
or null, "synonyms": ["cup", ...]}}``. This module turns that into an extractor with CLIP's
interface, so the whole pipeline (distillation, language query, grasp planning) runs and is tested
end to end without foundation-model weights.

Concepts and vectors
    Every table gives a set of *concepts*: ``background``, ``category:<c>``, ``object:<o>`` and
    ``part:<c>/<p>`` (a part is specific to its category: a mug handle is not a pot handle). Each
    concept gets a fixed unit vector in R^D: a Gaussian vector seeded from SHA-256 of
    ``"<seed>:<concept>"`` (not Python's ``hash``, so it is the same in every process), then
    Gram-Schmidt in sorted concept order, so all concept vectors are exactly orthonormal
    (needs ``#concepts <= D - 4``). Same table and settings -> same vectors in every process; the
    vectors of one name may differ between tables (they are orthogonalised against the others).

Pixel and patch features
    A pixel with label (object o, category c, part p) has the feature
    ``wc*e[category:c] + wo*e[object:o] (+ wp*e[part:c/p] if p)``; label 0 has ``wb*e[background]``.
    A patch's feature is the mean of its pixels' features (patch size ``patch_size``; the grid is
    ``floor(H/p) x floor(W/p)``, the remainder dropped, as a ViT's patch embedding does).

Text -> vector (case-insensitive; see :meth:`LabelVocabulary.parse`)
    The text is lower-cased, ``_``/``-``/punctuation become spaces, the articles "the"/"a"/"an"
    and a possessive "'s" are dropped and plural words are singularised when the singular is a
    known word ("mugs" -> "mug", "glasses" -> "glass", "cherries" -> "cherry"). Then, first match wins:

    1. *object phrase* (a category name, an object name, a synonym, or the trailing words of a
       multi-word name/synonym that are not a name themselves: "red cup" and "blue cup" make "cup"
       name both mugs) -> the objects it names. Those
       objects are grouped by category: a category whose objects are all named contributes
       ``e[category:c]``, otherwise each named object contributes ``e[object:o]``. So "mug" ->
       e[category:mug] (high on every mug and all its parts), "red mug" -> e[object:red mug] (high on
       the red mug only), "cup" listed as a synonym of both mugs -> e[category:mug].
    2. *object phrase + part* ("mug handle", "red mug handle", "handle of the mug", "mug's handle")
       -> ``e[part:c/p]`` per category, plus ``e[object:o]`` when only some objects of c are named:
       "mug handle" scores only on mug handles, "red mug handle" highest on the red mug's handle.
    3. *part name alone* ("handle") -> the part of every category that has it.
    4. *partial*: a known object or part phrase inside other words ("green mug", "the mug please")
       -> that match mixed half and half with the unknown vector (CLIP-like partial credit).
    5. *unknown* text ("banana", the default negatives "object", "things", ...) -> a vector seeded from
       the text and projected off every concept, so its similarity with any label feature is 0.

    The sum is normalised. Cosine scores that follow (all weights 1): "mug" on mug pixels 0.71
    (label without part) or 0.58 (label with a part); "red mug" the same on the red mug, 0 on the blue
    one; "mug handle" 0.58 on mug handles, 0 elsewhere; "red mug handle" 0.82 on the red mug's
    handle, 0.5 on the rest of the red mug, 0.41 on the blue mug's handle; unknown text 0 everywhere.
    With the default negatives (all unknown, so 0 everywhere) the pairwise-softmax relevancy is
    ~0.997-0.999 where the cosine is 0.58-0.71 and exactly 0.5 where it is 0.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from f3rm_ros.core.config import to_dict
from f3rm_ros.core.features.base import FeatureExtractor
from f3rm_ros.core.features.configs import LabelFeatureConfig
from f3rm_ros.core.features.preprocess import resized_size
from f3rm_ros.core.features.text import normalize_text

__all__ = [
    "LabelEntry",
    "parse_label_table",
    "load_label_table",
    "concept_vectors",
    "QueryParse",
    "LabelVocabulary",
    "LabelFeatureExtractor",
    "label_patch_features",
    "label_patch_features_reference",
]

_CACHE_VERSION = 1
_ARTICLES = {"the", "a", "an"}
_MIN_FREE_DIMS = 4


@dataclass(frozen=True)
class LabelEntry:
    """One row of the ``f3rm_labels`` table, names normalised (see :func:`normalize_text`)."""

    id: int
    object: str
    category: str
    part: str | None = None
    synonyms: tuple[str, ...] = ()


def parse_label_table(table: Mapping[Any, Mapping[str, Any]]) -> dict[int, LabelEntry]:
    """Validate an ``f3rm_labels`` table and normalise its names.

    Raises:
        ValueError: id not an integer in [1, 65535], a missing/empty object or category, synonyms not
            a list of strings, or one object name given two categories. Other keys are ignored.
    """
    if not isinstance(table, Mapping) or not table:
        raise ValueError(f"f3rm_labels: expected a non-empty mapping id -> entry, got {table!r}")
    out: dict[int, LabelEntry] = {}
    obj_cat: dict[str, str] = {}
    for key, entry in table.items():
        try:
            lid = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"f3rm_labels: id {key!r} is not an integer") from None
        if not 1 <= lid <= 65535:
            raise ValueError(f"f3rm_labels: id {lid} outside [1, 65535] (0 means 'no label')")
        if not isinstance(entry, Mapping):
            raise ValueError(f"f3rm_labels[{key}]: expected a mapping, got {entry!r}")
        names = {}
        for k in ("object", "category"):
            v = entry.get(k)
            if not isinstance(v, str) or not normalize_text(v):
                raise ValueError(f"f3rm_labels[{key}]: '{k}' must be a non-empty string, got {v!r}")
            names[k] = normalize_text(v)
        part = entry.get("part")
        if part is not None and (not isinstance(part, str) or not normalize_text(part)):
            raise ValueError(f"f3rm_labels[{key}]: 'part' must be a non-empty string or null, got {part!r}")
        syn = entry.get("synonyms") or []
        if not isinstance(syn, (list, tuple)) or not all(isinstance(s, str) for s in syn):
            raise ValueError(f"f3rm_labels[{key}]: 'synonyms' must be a list of strings, got {syn!r}")
        o, c = names["object"], names["category"]
        if obj_cat.setdefault(o, c) != c:
            raise ValueError(f"f3rm_labels[{key}]: object {o!r} has category {c!r} here but "
                             f"{obj_cat[o]!r} in another entry")
        out[lid] = LabelEntry(lid, o, c, normalize_text(part) if part else None,
                              tuple(dict.fromkeys(normalize_text(s) for s in syn if normalize_text(s))))
    return dict(sorted(out.items()))


def load_label_table(path: str | Path) -> dict[str, Any]:
    """The raw ``f3rm_labels`` table of a dataset folder or its ``transforms.json``.

    Raises:
        ValueError: the file has no ``f3rm_labels`` table.
        FileNotFoundError: no such file.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "transforms.json"
    with open(p) as f:
        meta = json.load(f)
    table = meta.get("f3rm_labels")
    if not table:
        raise ValueError(f"{p}: no 'f3rm_labels' table (label features need a synthetic-world dataset)")
    return table


def _seed_of(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def concept_vectors(concepts: Sequence[str], dim: int, seed: int = 0) -> np.ndarray:  # [K, D] float64
    """Orthonormal vectors for the concepts, in the given order (see the module docstring).

    Each is a seeded Gaussian vector Gram-Schmidt-orthogonalised against the ones before it.
    """
    if len(concepts) > dim:
        raise ValueError(f"{len(concepts)} concepts do not fit in dimension {dim}")
    g = np.stack([np.random.default_rng(_seed_of(f"{seed}:{c}")).standard_normal(dim) for c in concepts], 1)
    q, r = np.linalg.qr(g)  # columns of q: Gram-Schmidt of the columns of g, in order
    q = q * np.where(np.diag(r) < 0, -1.0, 1.0)[None]
    return q.T.copy()


@dataclass
class QueryParse:
    """How a text was understood: ``kind`` and the concept weights of its vector.

    kind: "objects", "object_part", "part", "partial" or "unknown". ``unknown_weight`` is the weight
    of the text's own (label-orthogonal) vector.
    """

    text: str
    normalized: str
    kind: str
    weights: dict[str, float] = field(default_factory=dict)
    unknown_weight: float = 0.0

    def describe(self) -> str:
        parts = [f"{k}x{w:g}" for k, w in sorted(self.weights.items())]
        if self.unknown_weight:
            parts.append(f"unknown({self.normalized!r})x{self.unknown_weight:g}")
        return f"{self.text!r} -> {self.kind}: " + (" + ".join(parts) or "nothing")


def _singular_candidates(tok: str) -> list[str]:
    out = []
    if tok.endswith("ies") and len(tok) > 3:
        out.append(tok[:-3] + "y")
    if tok.endswith("ves") and len(tok) > 3:
        out += [tok[:-3] + "f", tok[:-3] + "fe"]
    if tok.endswith("es") and len(tok) > 2:
        out.append(tok[:-2])
    if tok.endswith("s") and not tok.endswith("ss") and len(tok) > 1:
        out.append(tok[:-1])
    return out


class LabelVocabulary:
    """Concepts of a label table and the text parser; see the module docstring."""

    def __init__(self, entries: Mapping[int, LabelEntry]):
        self.entries = dict(entries)
        self.objects_of: dict[str, set[str]] = defaultdict(set)  # category -> objects
        self.category_of: dict[str, str] = {}
        self.parts_of: dict[str, set[str]] = defaultdict(set)  # category -> part names
        self.object_phrases: dict[tuple[str, ...], set[str]] = defaultdict(set)  # -> objects
        self.part_phrases: dict[tuple[str, ...], set[tuple[str, str]]] = defaultdict(set)  # -> (c, p)
        for e in self.entries.values():
            self.objects_of[e.category].add(e.object)
            self.category_of[e.object] = e.category
            if e.part:
                self.parts_of[e.category].add(e.part)
        for e in self.entries.values():
            self.object_phrases[tuple(e.object.split())].add(e.object)
            self.object_phrases[tuple(e.category.split())] |= self.objects_of[e.category]
            for s in e.synonyms:
                self.object_phrases[tuple(s.split())].add(e.object)
            if e.part:
                self.part_phrases[tuple(e.part.split())].add((e.category, e.part))
        # head nouns: a trailing part of a multi-word name or synonym ("red cup" -> "cup") that is not a
        # name itself names the union of the objects it ends ("red cup" + "blue cup" -> both mugs)
        derived: dict[tuple[str, ...], set[str]] = defaultdict(set)
        for phrase, objs in self.object_phrases.items():
            for k in range(1, len(phrase)):
                tail = phrase[k:]
                if tail not in self.object_phrases and tail not in self.part_phrases:
                    derived[tail] |= objs
        for tail, objs in derived.items():
            self.object_phrases[tail] = objs
        self.vocab = {t for ph in list(self.object_phrases) + list(self.part_phrases) for t in ph}
        concepts = {"background"}
        for e in self.entries.values():
            concepts |= {f"category:{e.category}", f"object:{e.object}"}
            if e.part:
                concepts.add(f"part:{e.category}/{e.part}")
        self.concepts: list[str] = sorted(concepts)

    # -- pixels ---------------------------------------------------------------------------------
    def pixel_concepts(self, entry: LabelEntry, cfg: LabelFeatureConfig) -> dict[str, float]:
        w = {f"category:{entry.category}": cfg.category_weight, f"object:{entry.object}": cfg.object_weight}
        if entry.part:
            w[f"part:{entry.category}/{entry.part}"] = cfg.part_weight
        return w

    # -- text -----------------------------------------------------------------------------------
    def tokens(self, text: str) -> list[str]:
        """Normalised, article-free, singularised tokens of ``text``."""
        toks = []
        for t in normalize_text(text).split():
            if t.endswith("'s"):
                t = t[:-2]
            t = t.replace("'", "")
            if not t or t in _ARTICLES:
                continue
            if t not in self.vocab:
                t = next((s for s in _singular_candidates(t) if s in self.vocab), t)
            toks.append(t)
        return toks

    def _object_weights(self, objects: set[str]) -> dict[str, float]:
        w: dict[str, float] = defaultdict(float)
        for c in sorted({self.category_of[o] for o in objects}):
            named = objects & self.objects_of[c]
            if named == self.objects_of[c]:
                w[f"category:{c}"] += 1.0
            else:
                for o in sorted(named):
                    w[f"object:{o}"] += 1.0
        return dict(w)

    def _object_part_weights(self, objects: set[str], part: tuple[str, ...]) -> dict[str, float]:
        pname = " ".join(part)
        w: dict[str, float] = defaultdict(float)
        for c in sorted({self.category_of[o] for o in objects}):
            if pname not in self.parts_of[c]:
                continue
            named = objects & self.objects_of[c]
            w[f"part:{c}/{pname}"] += 1.0
            if named != self.objects_of[c]:
                for o in sorted(named):
                    w[f"object:{o}"] += 1.0
        return dict(w)

    def _match_whole(self, toks: tuple[str, ...]) -> tuple[str, dict[str, float]] | None:
        if toks in self.object_phrases:
            return "objects", self._object_weights(self.object_phrases[toks])
        if "of" in toks:  # "handle of (the) mug"
            i = toks.index("of")
            part, obj = toks[:i], toks[i + 1:]
            if part in self.part_phrases and obj in self.object_phrases:
                w = self._object_part_weights(self.object_phrases[obj], part)
                if w:
                    return "object_part", w
        for k in range(1, len(toks)):  # "red mug handle"
            obj, part = toks[:k], toks[k:]
            if obj in self.object_phrases and part in self.part_phrases:
                w = self._object_part_weights(self.object_phrases[obj], part)
                if w:
                    return "object_part", w
        if toks in self.part_phrases:
            w: dict[str, float] = {}
            for c, p in sorted(self.part_phrases[toks]):
                w[f"part:{c}/{p}"] = 1.0
            return "part", w
        return None

    def parse(self, text: str) -> QueryParse:
        """Understand ``text`` (rules in the module docstring)."""
        toks = tuple(self.tokens(text))
        norm = " ".join(toks)
        if not toks:
            return QueryParse(text, norm, "unknown", {}, 1.0)
        m = self._match_whole(toks)
        if m is not None:
            return QueryParse(text, norm, m[0], m[1], 0.0)
        n = len(toks)
        for length in range(n - 1, 0, -1):  # longest known sub-phrase
            for start in range(0, n - length + 1):
                m = self._match_whole(toks[start:start + length])
                if m is not None:
                    total = float(np.sqrt(sum(v * v for v in m[1].values())))
                    return QueryParse(text, norm, "partial", {k: v / total for k, v in m[1].items()}, 1.0)
        return QueryParse(text, norm, "unknown", {}, 1.0)


def label_patch_features(label_map: np.ndarray,  # [H, W] integer ids
                         id_vectors: np.ndarray,  # [max_id + 1, D] feature of each id
                         patch_size: int) -> np.ndarray:  # [H // p, W // p, D] float32
    """Mean pixel feature of each ``p x p`` patch (remainder rows/columns dropped), via id histograms."""
    p = patch_size
    h, w = label_map.shape[0] // p, label_map.shape[1] // p
    if h == 0 or w == 0:
        raise ValueError(f"label map {label_map.shape} is smaller than one {p}x{p} patch")
    ids = label_map[:h * p, :w * p].astype(np.int64)
    used, compact = np.unique(ids, return_inverse=True)
    compact = compact.reshape(h * p, w * p)
    patch = (np.arange(h)[:, None] * w + np.arange(w)[None, :])  # [h, w]
    patch_of_px = np.repeat(np.repeat(patch, p, 0), p, 1)  # [h*p, w*p]
    counts = np.bincount((patch_of_px * len(used) + compact).ravel(), minlength=h * w * len(used))
    frac = counts.reshape(h * w, len(used)).astype(np.float64) / (p * p)
    return (frac @ id_vectors[used].astype(np.float64)).astype(np.float32).reshape(h, w, -1)


def label_patch_features_reference(label_map: np.ndarray, id_vectors: np.ndarray,
                                   patch_size: int) -> np.ndarray:
    """Plain twin of :func:`label_patch_features`: per-pixel features, then a loop of patch means."""
    p = patch_size
    h, w = label_map.shape[0] // p, label_map.shape[1] // p
    px = id_vectors[label_map.astype(np.int64)].astype(np.float64)  # [H, W, D]
    out = np.zeros((h, w, id_vectors.shape[1]))
    for i in range(h):
        for j in range(w):
            out[i, j] = px[i * p:(i + 1) * p, j * p:(j + 1) * p].mean(axis=(0, 1))
    return out.astype(np.float32)


class LabelFeatureExtractor(FeatureExtractor):
    """CLIP-like features and text embeddings from the synthetic world's labels.

    Args:
        config: :class:`LabelFeatureConfig`.
        table: the raw ``f3rm_labels`` table; if None it is read from ``config.dataset``.
    """

    name = "labels"

    def __init__(self, config: LabelFeatureConfig | None = None,
                 table: Mapping[Any, Mapping[str, Any]] | None = None):
        self.config = cfg = config or LabelFeatureConfig()
        if table is None:
            if not cfg.dataset:
                raise ValueError("label features need the f3rm_labels table: pass table= or set labels.dataset "
                                 "to the synthetic-world dataset folder")
            table = load_label_table(cfg.dataset)
        self.entries = parse_label_table(table)
        self.table = {str(e.id): {"object": e.object, "category": e.category, "part": e.part,
                                  "synonyms": list(e.synonyms)} for e in self.entries.values()}
        self.vocab = LabelVocabulary(self.entries)
        k = len(self.vocab.concepts)
        if k > cfg.dim - _MIN_FREE_DIMS:
            raise ValueError(f"labels.dim={cfg.dim} is too small for {k} label concepts (categories, objects, "
                             f"parts, background) plus {_MIN_FREE_DIMS} free dimensions; set labels.dim >= "
                             f"{k + _MIN_FREE_DIMS}")
        self.feature_dim = cfg.dim
        self.concept_index = {c: i for i, c in enumerate(self.vocab.concepts)}
        self.basis = concept_vectors(self.vocab.concepts, cfg.dim, cfg.seed)  # [K, D] float64
        max_id = max(self.entries)
        self.id_vectors = np.zeros((max_id + 1, cfg.dim))
        self.known_ids = np.zeros(max_id + 1, dtype=bool)
        self.known_ids[0] = True
        self.id_vectors[0] = cfg.background_weight * self.basis[self.concept_index["background"]]
        for lid, e in self.entries.items():
            self.known_ids[lid] = True
            for c, wgt in self.vocab.pixel_concepts(e, cfg).items():
                self.id_vectors[lid] += wgt * self.basis[self.concept_index[c]]

    # -- vectors ----------------------------------------------------------------------------------
    def concept_vector(self, concept: str) -> Tensor:  # [D]
        if concept not in self.concept_index:
            raise ValueError(f"unknown concept {concept!r}; known: {self.vocab.concepts}")
        return torch.from_numpy(self.basis[self.concept_index[concept]]).float()

    def unknown_vector(self, normalized_text: str) -> np.ndarray:  # [D] unit, orthogonal to all concepts
        g = np.random.default_rng(_seed_of(f"{self.config.seed}:unknown:{normalized_text}")).standard_normal(
            self.config.dim)
        g = g - self.basis.T @ (self.basis @ g)
        g = g - self.basis.T @ (self.basis @ g)  # second pass: orthogonal to rounding error
        return g / np.linalg.norm(g)

    def parse(self, text: str) -> QueryParse:
        """How ``text`` is understood (for logs and debugging)."""
        return self.vocab.parse(text)

    def encode_text(self, texts: Sequence[str]) -> Tensor:  # [N, D] unit length
        if isinstance(texts, str) or len(texts) == 0:
            raise ValueError("encode_text takes a non-empty list of strings")
        out = []
        for t in texts:
            q = self.vocab.parse(t)
            v = np.zeros(self.config.dim)
            for c, wgt in q.weights.items():
                v += wgt * self.basis[self.concept_index[c]]
            if q.unknown_weight:
                v += q.unknown_weight * self.unknown_vector(q.normalized)
            out.append(v / np.linalg.norm(v))
        return torch.from_numpy(np.stack(out)).float()

    # -- images -----------------------------------------------------------------------------------
    def grid_shape(self, height: int, width: int) -> tuple[int, int]:
        if self.config.image_size:
            height, width = resized_size(height, width, self.config.image_size)
        return height // self.config.patch_size, width // self.config.patch_size

    def _prepare_label_map(self, lm: np.ndarray, i: int) -> np.ndarray:
        lm = np.asarray(lm)
        if lm.ndim == 3 and lm.shape[2] == 1:
            lm = lm[..., 0]
        if lm.ndim != 2 or not np.issubdtype(lm.dtype, np.integer):
            raise ValueError(f"label map {i}: expected an HxW integer array, got {lm.dtype} {lm.shape}")
        if lm.size and (lm.min() < 0 or lm.max() >= len(self.known_ids) or not self.known_ids[lm].all()):
            bad = sorted(set(np.unique(lm).tolist()) - set(np.flatnonzero(self.known_ids).tolist()))
            raise ValueError(f"label map {i}: label id(s) {bad[:10]} are not in the f3rm_labels table "
                             f"(known: 0 and {sorted(self.entries)})")
        if self.config.image_size:
            h, w = resized_size(lm.shape[0], lm.shape[1], self.config.image_size)
            rows = np.minimum((np.arange(h) + 0.5) * lm.shape[0] / h, lm.shape[0] - 1).astype(np.int64)
            cols = np.minimum((np.arange(w) + 0.5) * lm.shape[1] / w, lm.shape[1] - 1).astype(np.int64)
            lm = lm[rows][:, cols]
        return lm

    def extract(self, images: Sequence[np.ndarray] | None,
                label_maps: Sequence[np.ndarray] | None = None) -> Tensor:  # [B, h, w, D] float32
        """Patch features of the label maps (``images`` only checked for matching sizes; may be None)."""
        if label_maps is None:
            raise ValueError("the labels extractor needs label_maps (the dataset's label_path images)")
        if images is not None and len(images) != len(label_maps):
            raise ValueError(f"{len(images)} images but {len(label_maps)} label maps")
        if len(label_maps) == 0:
            raise ValueError("extract() needs at least one label map")
        out = []
        for i, lm in enumerate(label_maps):
            if images is not None and np.asarray(images[i]).shape[:2] != np.asarray(lm).shape[:2]:
                raise ValueError(f"label map {i} has size {np.asarray(lm).shape[:2]} but its image "
                                 f"{np.asarray(images[i]).shape[:2]}")
            lm = self._prepare_label_map(lm, i)
            out.append(label_patch_features(lm, self.id_vectors, self.config.patch_size))
        shapes = {o.shape for o in out}
        if len(shapes) > 1:
            raise ValueError(f"label maps of different sizes give different grids {sorted(shapes)}")
        return torch.from_numpy(np.stack(out))

    # -- identity -----------------------------------------------------------------------------------
    def cache_key(self) -> dict[str, Any]:
        settings = to_dict(self.config)
        settings.pop("dataset")  # the table itself is part of the key
        return {"type": self.name, "version": _CACHE_VERSION, "settings": settings, "label_table": self.table}
