"""Text side of the planner: query checks, similarity (LERF pairwise softmax), language mask.

Features are compared with text only after L2 normalisation (f3rm-method.md s. 1 and 3).
"""

from __future__ import annotations

from typing import Any
from collections.abc import Sequence

import torch

__all__ = ["normalise_query", "is_negative_only", "encode_texts", "pairwise_softmax", "language_mask",
           "similarity_map"]


def normalise_query(text: str | None) -> str:
    """Strip and collapse whitespace; None becomes ""."""
    return " ".join((text or "").split())


def is_negative_only(text: str, negatives: Sequence[str]) -> bool:
    """True if the text is made only of negative phrases (e.g. "object", "stuff and things")."""
    words = [w for w in normalise_query(text).lower().replace(",", " ").split() if w not in ("and", "or", "the", "a",
                                                                                           "an", "some")]
    negs = {n.lower() for n in negatives}
    singular = lambda w: w[:-1] if w.endswith("s") and w[:-1] in negs else w  # noqa: E731
    return bool(words) and all(w in negs or singular(w) in negs for w in words)


def encode_texts(encoder: Any, texts: list[str], device: torch.device) -> torch.Tensor:  # [N, D] unit
    """``encoder.encode_text(texts)`` (or ``encoder(texts)``), L2-normalised, float32 on ``device``."""
    fn = getattr(encoder, "encode_text", encoder)
    emb = torch.as_tensor(fn(list(texts))).float().to(device)
    return emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def pairwise_softmax(feats_unit: torch.Tensor,  # [N, D] unit
                     pos: torch.Tensor,  # [D] unit
                     negs: torch.Tensor,  # [K, D] unit
                     temperature: float) -> torch.Tensor:  # [N]
    """min over negatives of softmax([s_pos, s_neg] / T)[0] (LERF, via the features package's
    ``pairwise_softmax_similarity``); 1 without negatives."""
    if negs.shape[0] == 0:
        return torch.ones(feats_unit.shape[0], device=feats_unit.device)
    from f3rm_ros.core.features.similarity import pairwise_softmax_similarity

    return pairwise_softmax_similarity(feats_unit, pos, negs, temperature)


def language_mask(feats_unit: torch.Tensor,  # [N, D] unit
                  pos: torch.Tensor, negs: torch.Tensor,  # [D], [K, D]
                  temperature: float, sample: bool = False,
                  generator: torch.Generator | None = None) -> torch.Tensor:  # [N] bool
    """Voxels whose label, from softmax([query + negatives] / T), is the query.

    ``sample=True`` draws the label from the distribution (the reference); otherwise the argmax.
    """
    logits = feats_unit @ torch.cat([pos[None, :], negs], dim=0).T / temperature
    if not sample:
        return logits.argmax(dim=1) == 0
    probs = torch.nan_to_num(torch.softmax(logits, dim=1), nan=1e-7).cpu()
    return (torch.multinomial(probs, 1, generator=generator)[:, 0] == 0).to(feats_unit.device)


def similarity_map(feats: torch.Tensor,  # [N, D] raw
                   pos: torch.Tensor, negs: torch.Tensor, temperature: float) -> torch.Tensor:  # [N]
    """Per-point pairwise-softmax similarity in [0, 1] of raw features to a query (for display)."""
    f = feats.float()
    f = f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return pairwise_softmax(f, pos, negs, temperature)
