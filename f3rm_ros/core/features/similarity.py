"""Comparing features with text embeddings: cosine similarity and the pairwise softmax of LERF/F3RM.

``pairwise_softmax_similarity`` scores every feature against a positive text embedding and a set
of negatives: for each negative n, ``softmax([s_pos, s_n] / T)[0]``, then the minimum over the
negatives (f3rm-method.md section 3). Since ``softmax([a, b])[0] = sigmoid(a - b)``, the fast path
computes ``sigmoid((s_pos - max_n s_n) / T)`` (sigmoid is monotonic, so the minimum over negatives
is reached at the largest negative similarity); :func:`pairwise_softmax_similarity_reference`
does the literal per-negative softmax and the tests compare the two.
"""

from __future__ import annotations


import torch
from torch import Tensor

__all__ = [
    "DEFAULT_NEGATIVES",
    "normalize_features",
    "cosine_similarity",
    "pairwise_softmax_similarity",
    "pairwise_softmax_similarity_reference",
]

#: The canonical negative phrases of F3RM / LERF.
DEFAULT_NEGATIVES: tuple[str, ...] = ("object", "things", "stuff", "texture")


def normalize_features(feats: Tensor,  # [..., D]
                       eps: float = 1e-8) -> Tensor:  # [..., D] unit length (zero stays zero)
    return feats / feats.norm(dim=-1, keepdim=True).clamp_min(eps)


def _as_matrix(emb: Tensor, dim: int, what: str) -> Tensor:
    if emb.ndim == 1:
        emb = emb[None]
    if emb.ndim != 2 or emb.shape[-1] != dim:
        raise ValueError(f"{what}: expected shape [D] or [N, D] with D={dim}, got {tuple(emb.shape)}")
    return emb


def cosine_similarity(feats: Tensor,  # [..., D] raw features
                      text_emb: Tensor,  # [D] or [N, D]
                      ) -> Tensor:  # [...] for a [D] embedding, [..., N] for [N, D]
    """Cosine similarity of (normalised) features with (normalised) text embeddings, in float32."""
    single = text_emb.ndim == 1
    t = normalize_features(_as_matrix(text_emb, feats.shape[-1], "text_emb").float().to(feats.device))
    s = normalize_features(feats.float()) @ t.T
    return s[..., 0] if single else s


def pairwise_softmax_similarity(feats: Tensor,  # [..., D] raw features
                                pos_emb: Tensor,  # [D]
                                neg_embs: Tensor,  # [M, D], M >= 1
                                temperature: float = 0.1) -> Tensor:  # [...] in (0, 1)
    """Relevancy of each feature to ``pos_emb`` against ``neg_embs`` (min over pairwise softmaxes).

    Args:
        feats: features (any leading shape), normalised here.
        pos_emb: the query's text embedding.
        neg_embs: embeddings of the negative phrases (e.g. :data:`DEFAULT_NEGATIVES`).
        temperature: softmax temperature (0.1 in F3RM).

    Returns:
        Relevancy in (0, 1); 0.5 means "as similar to the query as to the closest negative".
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if pos_emb.ndim != 1:
        raise ValueError(f"pos_emb: expected shape [D], got {tuple(pos_emb.shape)}")
    neg = _as_matrix(neg_embs, feats.shape[-1], "neg_embs")
    if neg.shape[0] == 0:
        raise ValueError("neg_embs: need at least one negative")
    s = cosine_similarity(feats, torch.cat([pos_emb[None].to(neg), neg], 0))  # [..., 1 + M]
    return torch.sigmoid((s[..., 0] - s[..., 1:].amax(dim=-1)) / temperature)


def pairwise_softmax_similarity_reference(feats: Tensor, pos_emb: Tensor, neg_embs: Tensor,
                                          temperature: float = 0.1) -> Tensor:
    """Plain twin of :func:`pairwise_softmax_similarity`: one explicit 2-way softmax per negative."""
    s_pos = cosine_similarity(feats, pos_emb)
    per_neg = []
    for n in range(neg_embs.shape[0]):
        s_neg = cosine_similarity(feats, neg_embs[n])
        logits = torch.stack([s_pos, s_neg], dim=-1) / temperature
        per_neg.append(torch.softmax(logits, dim=-1)[..., 0])
    return torch.stack(per_neg, dim=-1).min(dim=-1).values
