"""Label features for the synthetic world: vectors, text parsing, patch means, semantics."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from f3rm_ros.core.features import (DEFAULT_NEGATIVES, LabelFeatureConfig, cosine_similarity, create_extractor,
                                    pairwise_softmax_similarity)
from f3rm_ros.core.features.labels import (LabelFeatureExtractor, concept_vectors, label_patch_features,
                                           label_patch_features_reference, parse_label_table)

TABLE = {
    "1": {"object": "table", "category": "table", "part": None},
    "2": {"object": "red mug", "category": "mug", "part": None, "synonyms": ["cup"]},
    "3": {"object": "red mug", "category": "mug", "part": "handle", "synonyms": ["cup"]},
    "4": {"object": "blue mug", "category": "mug", "part": None, "synonyms": ["cup", "coffee mug"]},
    "5": {"object": "blue mug", "category": "mug", "part": "handle", "synonyms": ["cup"]},
    "6": {"object": "Power_Drill", "category": "drill", "part": "handle"},
    "7": {"object": "Power_Drill", "category": "drill", "part": None},
    "9": {"object": "glass", "category": "glass", "part": None},
}
IDS = [0, 1, 2, 3, 4, 5, 6, 7, 9]  # 0 = background


@pytest.fixture(scope="module")
def ext():
    return LabelFeatureExtractor(LabelFeatureConfig(dim=32), TABLE)


def _scores(ext, text):
    feats = torch.from_numpy(ext.id_vectors[IDS]).float()
    s = cosine_similarity(feats, ext.encode_text([text])[0])
    return dict(zip(IDS, s.tolist(), strict=True))


def test_same_name_same_vector_and_unit_length(ext):
    emb = ext.encode_text(["mug", "Mugs", "the mug", "MUG", "cup", "red mug", "red  mug!", "banana", "banana"])
    norms = emb.norm(dim=-1)
    print("norms", [round(x, 6) for x in norms.tolist()])
    assert torch.allclose(norms, torch.ones(len(emb)), atol=1e-6)
    for i in (1, 2, 3, 4):  # plural, article, case, synonym listed for every mug
        assert torch.allclose(emb[0], emb[i], atol=1e-7)
    assert torch.allclose(emb[5], emb[6], atol=1e-7) and torch.equal(emb[7], emb[8])
    # a new extractor (table keys in another order) gives identical vectors
    other = LabelFeatureExtractor(LabelFeatureConfig(dim=32), dict(reversed(list(TABLE.items()))))
    assert torch.equal(other.encode_text(["red mug", "banana"]), ext.encode_text(["red mug", "banana"]))
    assert np.array_equal(other.id_vectors, ext.id_vectors)


def test_vectors_do_not_depend_on_python_hash(ext):
    code = ("from f3rm_ros.core.features.labels import concept_vectors; "
            "print(repr(concept_vectors(['category:mug', 'object:red mug'], 16, 0)[1, :3].tolist()))")
    seed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"  # differs from this process's
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}).stdout}
    here = repr(concept_vectors(["category:mug", "object:red mug"], 16, 0)[1, :3].tolist())
    print("across processes:", outs, "here:", here)
    assert outs == {here + "\n"}


def test_concept_vectors_orthonormal(ext):
    B = ext.basis
    gram = B @ B.T
    err = np.abs(gram - np.eye(len(B))).max()
    print(f"{len(B)} concepts in {B.shape[1]} dims, max |B B^T - I| = {err:.2e}")
    assert err < 1e-12


def test_unknown_text_is_orthogonal_to_every_label(ext):
    feats = torch.from_numpy(ext.id_vectors).float()
    for text in ("banana", "a photo of a cat", *DEFAULT_NEGATIVES):
        s = cosine_similarity(feats, ext.encode_text([text])[0]).abs().max().item()
        print(f"{text!r}: {ext.parse(text).describe()}  max |cos| with any label {s:.2e}")
        assert ext.parse(text).kind == "unknown"
        assert s < 1e-5


def test_object_category_part_semantics(ext):
    s = _scores(ext, "mug")
    print("mug      ", {k: round(v, 3) for k, v in s.items()})
    mug_ids, other = (2, 3, 4, 5), (0, 1, 6, 7, 9)
    assert min(s[i] for i in mug_ids) > 0.5 and max(abs(s[i]) for i in other) < 1e-5
    s = _scores(ext, "red mug")
    print("red mug  ", {k: round(v, 3) for k, v in s.items()})
    assert min(s[2], s[3]) > 0.5 and max(abs(s[i]) for i in (0, 1, 4, 5, 6, 7, 9)) < 1e-5
    s = _scores(ext, "coffee mug")  # a synonym of the blue mug only
    assert min(s[4], s[5]) > 0.5 and max(abs(s[i]) for i in (2, 3)) < 1e-5
    s = _scores(ext, "mug handle")
    print("mug handle", {k: round(v, 3) for k, v in s.items()})
    assert min(s[3], s[5]) > 0.5 and max(abs(s[i]) for i in IDS if i not in (3, 5)) < 1e-5
    for text in ("red mug handle", "handle of the red mug", "red mug's handle", "Red-Mug Handles"):
        s = _scores(ext, text)
        best = max(s, key=s.get)
        print(f"{text!r:26} {ext.parse(text).describe()}; best id {best}, {s[best]:.3f} vs blue handle {s[5]:.3f}")
        assert best == 3 and s[3] > s[2] + 0.2 and s[3] > s[5] + 0.2
    s = _scores(ext, "handle")  # both categories' handles
    assert min(s[3], s[5], s[6]) > 0.3 and max(abs(s[i]) for i in (0, 1, 2, 4, 7, 9)) < 1e-5
    s = _scores(ext, "power drill")
    assert min(s[6], s[7]) > 0.5
    s = _scores(ext, "glasses")  # plural "es"
    assert s[9] > 0.5
    s = _scores(ext, "green mug")  # unknown instance of a known category: partial credit
    print("green mug", ext.parse("green mug").describe(), round(s[2], 3))
    assert 0.2 < s[2] < _scores(ext, "mug")[2] and s[2] == pytest.approx(s[4])


def test_head_noun_of_instance_synonyms():
    """As the sim's cluttered_table: mugs with synonyms "red cup"/"blue cup" only; "cup" names both."""
    table = {"1": {"object": "red mug", "category": "mug", "part": "handle", "synonyms": ["red cup"]},
             "2": {"object": "red mug", "category": "mug", "part": "body", "synonyms": ["red cup"]},
             "3": {"object": "blue mug", "category": "mug", "part": "body", "synonyms": ["blue cup"]},
             "4": {"object": "box", "category": "box", "part": None, "synonyms": ["tea box", "carton"]},
             "5": {"object": "can", "category": "can", "part": None, "synonyms": ["soda can", "tin"], "extra": 1}}
    e = LabelFeatureExtractor(LabelFeatureConfig(dim=24), table)
    ids = [0, 1, 2, 3, 4, 5]
    feats = torch.from_numpy(e.id_vectors[ids]).float()
    for text, want in (("cup", {1, 2, 3}), ("cups", {1, 2, 3}), ("red cup", {1, 2}), ("blue cup", {3}),
                       ("tea box", {4}), ("soda can", {5}), ("mug body", {2, 3})):
        s = cosine_similarity(feats, e.encode_text([text])[0])
        hi = {i for i, v in zip(ids, s.tolist(), strict=True) if v > 0.3}
        print(f"{e.parse(text).describe():60s} high on {sorted(hi)}")
        assert hi == want, text
    s = cosine_similarity(feats, e.encode_text(["red cup handle"])[0])
    print("red cup handle", [round(v, 3) for v in s.tolist()])
    assert int(s.argmax()) == 1 and s[1] > s[2] + 0.2


def test_pairwise_softmax_relevancy_with_default_negatives(ext):
    feats = torch.from_numpy(ext.id_vectors[IDS]).float()
    negs = ext.encode_text(list(DEFAULT_NEGATIVES))
    rel_red = pairwise_softmax_similarity(feats, ext.encode_text(["red mug"])[0], negs)
    rel_mug = pairwise_softmax_similarity(feats, ext.encode_text(["mug"])[0], negs)
    print("relevancy 'red mug'", dict(zip(IDS, rel_red.round(decimals=4).tolist(), strict=True)))
    print("relevancy 'mug'    ", dict(zip(IDS, rel_mug.round(decimals=4).tolist(), strict=True)))
    assert rel_red[IDS.index(2)] > 0.99 and rel_red[IDS.index(4)] == pytest.approx(0.5, abs=1e-4)
    assert rel_mug[IDS.index(2)] > 0.99 and rel_mug[IDS.index(4)] > 0.99 and rel_mug[IDS.index(1)] < 0.51


def test_patch_means_fast_equals_reference_and_grid():
    ext = LabelFeatureExtractor(LabelFeatureConfig(dim=24, patch_size=7), TABLE)
    rng = np.random.default_rng(0)
    lm = rng.choice(np.array(IDS, dtype=np.uint16), size=(50, 66))
    lm[:14, :14] = 3  # a pure patch block
    fast = label_patch_features(lm, ext.id_vectors, 7)
    ref = label_patch_features_reference(lm, ext.id_vectors, 7)
    err = np.abs(fast - ref).max()
    print(f"grid {fast.shape}, max |fast - ref| {err:.2e}")
    assert fast.shape == (7, 9, 24) and err < 1e-6
    assert np.allclose(fast[0, 0], ext.id_vectors[3], atol=1e-6)
    out = ext.extract([np.zeros((50, 66, 3), np.uint8)], [lm])
    assert out.shape == (1, 7, 9, 24) and ext.grid_shape(50, 66) == (7, 9)
    assert torch.allclose(out[0], torch.from_numpy(fast))
    # CLIP-like grid: 1280x720 resized to short side 336, patch 14 -> 24 x 42
    clip_like = LabelFeatureExtractor(LabelFeatureConfig(dim=24, patch_size=14, image_size=336), TABLE)
    big = np.full((720, 1280), 2, np.uint16)
    assert clip_like.extract(None, [big]).shape == (1, 24, 42, 24) and clip_like.grid_shape(720, 1280) == (24, 42)


def test_errors_and_factory_round_trip(ext):
    with pytest.raises(ValueError, match=r"label id\(s\) \[8\]"):
        ext.extract(None, [np.full((14, 14), 8, np.uint16)])
    with pytest.raises(ValueError, match="needs label_maps"):
        ext.extract([np.zeros((14, 14, 3), np.uint8)])
    with pytest.raises(ValueError, match="labels.dim"):
        LabelFeatureExtractor(LabelFeatureConfig(dim=12), TABLE)
    with pytest.raises(ValueError, match="category"):
        parse_label_table({"1": {"object": "mug", "category": "mug"}, "2": {"object": "mug", "category": "cup"}})
    with pytest.raises(ValueError, match="0 means"):
        parse_label_table({"0": {"object": "mug", "category": "mug"}})
    rebuilt = create_extractor(ext.cache_key())
    assert isinstance(rebuilt, LabelFeatureExtractor)
    assert torch.equal(rebuilt.encode_text(["mug handle", "banana"]), ext.encode_text(["mug handle", "banana"]))
    via_dict = create_extractor({"extractor": "labels", "labels": {"dim": 32}}, label_table=TABLE)
    assert np.array_equal(via_dict.id_vectors, ext.id_vectors)
