"""Pairwise-softmax relevancy (LERF/F3RM) and cosine similarity against hand computation."""

import math

import pytest
import torch

from f3rm_ros.core.features import (DEFAULT_NEGATIVES, cosine_similarity, pairwise_softmax_similarity,
                                    pairwise_softmax_similarity_reference)
from f3rm_ros.core.features.text import TextEmbeddingCache, normalize_text


def test_pairwise_softmax_hand_computed():
    # 2-D example: feature along x (length 3, normalised away); query at 60 deg; negatives at 0 and 90 deg
    feats = torch.tensor([[3.0, 0.0]])
    pos = torch.tensor([0.5, math.sqrt(3) / 2])
    negs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # s_pos = cos 60 = 0.5; s_neg = 1.0 and 0.0
    # softmax([0.5, 1.0]/0.1)[0] = 1/(1+e^5); softmax([0.5, 0.0]/0.1)[0] = 1/(1+e^-5); min -> 1/(1+e^5)
    expected = 1.0 / (1.0 + math.exp(5.0))
    got = pairwise_softmax_similarity(feats, pos, negs, temperature=0.1)
    ref = pairwise_softmax_similarity_reference(feats, pos, negs, temperature=0.1)
    print(f"hand {expected:.8f}  fast {got.item():.8f}  reference {ref.item():.8f}")
    assert got.shape == (1,)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert ref.item() == pytest.approx(expected, rel=1e-5)
    # temperature 1: min(sigmoid(-0.5), sigmoid(0.5)) = sigmoid(-0.5)
    t1 = pairwise_softmax_similarity(feats, pos, negs, temperature=1.0).item()
    assert t1 == pytest.approx(1 / (1 + math.exp(0.5)), rel=1e-6)
    # a feature that matches the query exactly: s_pos = 1 vs 0.5 and 0.866
    hit = pairwise_softmax_similarity(pos[None] * 2, pos, negs).item()
    assert hit == pytest.approx(1 / (1 + math.exp(-(1 - math.sqrt(3) / 2) / 0.1)), rel=1e-5)
    print(f"T=1: {t1:.6f}; exact match: {hit:.6f}")


def test_pairwise_softmax_fast_equals_reference_random():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(4, 5, 6, 32, generator=g) * 3
    pos = torch.nn.functional.normalize(torch.randn(32, generator=g), dim=0)
    negs = torch.nn.functional.normalize(torch.randn(len(DEFAULT_NEGATIVES), 32, generator=g), dim=-1)
    fast = pairwise_softmax_similarity(feats, pos, negs)
    ref = pairwise_softmax_similarity_reference(feats, pos, negs)
    err = (fast - ref).abs().max().item()
    print(f"shape {tuple(fast.shape)}, range [{fast.min():.4f}, {fast.max():.4f}], max |fast - ref| {err:.2e}")
    assert fast.shape == (4, 5, 6) and err < 1e-6
    assert ((fast > 0) & (fast < 1)).all()


def test_cosine_similarity_and_errors():
    feats = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    s = cosine_similarity(feats, emb)
    print(s)
    assert torch.allclose(s, torch.tensor([[1.0, 0.0], [2 ** -0.5, 2 ** -0.5], [0.0, 0.0]]), atol=1e-6)
    assert cosine_similarity(feats, emb[0]).shape == (3,)
    with pytest.raises(ValueError, match="D=2"):
        cosine_similarity(feats, torch.ones(3))
    with pytest.raises(ValueError, match="temperature"):
        pairwise_softmax_similarity(feats, emb[0], emb, temperature=0)
    with pytest.raises(ValueError, match="at least one negative"):
        pairwise_softmax_similarity(feats, emb[0], torch.zeros(0, 2))


def test_text_cache_lru_and_normalize_text():
    calls = []

    def enc(texts):
        calls.append(list(texts))
        return torch.stack([torch.full((3,), float(len(t))) for t in texts])

    cache = TextEmbeddingCache(enc, max_size=2)
    a = cache(["ab", "abc", "ab"])
    assert calls == [["ab", "abc"]] and a[:, 0].tolist() == [2, 3, 2]
    cache(["ab"])  # hit
    cache(["abcd"])  # evicts the least recently used ("abc")
    cache(["abc"])
    print("encoder calls", calls, "hits", cache.hits, "misses", cache.misses)
    assert calls[-1] == ["abc"] and cache.hits == 2 and cache.misses == 4
    assert normalize_text("  The Red_Mug-Handle!! ") == "the red mug handle"
