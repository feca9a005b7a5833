"""Rendering features through a linear output head without materialising per-sample features.

The feature field ends in a linear layer with no output activation (``features = W h + b``, h the
last hidden activation, 64-d; features 768-d for CLIP). Volume rendering is a weighted sum over the
samples of a ray, so it commutes with that layer::

    sum_s w_s (W h_s + b) = W (sum_s w_s h_s) + b * sum_s w_s

:func:`render_linear_head_fused` renders the 64-d hidden vectors per ray first and applies the head
once per ray: the [rays, samples, 768] tensor (and its gradient) is never formed, the output layer
costs rays x 64 x 768 instead of rays x samples x 64 x 768 multiply-adds, and the result is the
same function (equal up to floating-point rounding). :func:`render_linear_head_reference` is the
plain per-sample version it is tested against.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["render_linear_head_reference", "render_linear_head_fused"]


def _check(hidden: Tensor, weights: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    if hidden.dim() < 2 or weights.shape != hidden.shape[:-1]:
        raise ValueError(f"hidden must be [..., S, H] and weights [..., S]; "
                         f"got {tuple(hidden.shape)} and {tuple(weights.shape)}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be [D, H={hidden.shape[-1]}], got {tuple(weight.shape)}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must be [{weight.shape[0]}], got {tuple(bias.shape)}")


def render_linear_head_reference(hidden: Tensor,  # [..., S, H]
                                 weights: Tensor,  # [..., S]
                                 weight: Tensor,  # [D, H]
                                 bias: Tensor | None = None) -> Tensor:  # [..., D]
    """Per-sample features ``W h + b`` ([..., S, D]), then the weighted sum over samples (reference).

    Under autocast the linear layer runs in the autocast dtype and the weighted sum in fp32 (weights
    are fp32), like the unfused feature path of a trainer.

    Args:
        hidden: last hidden activations per sample, [..., S, H].
        weights: volume-rendering weights, [..., S].
        weight, bias: the linear output layer (``torch.nn.Linear`` layout), [D, H] and [D].
    Returns:
        rendered features [..., D].
    """
    _check(hidden, weights, weight, bias)
    feats = torch.nn.functional.linear(hidden, weight, bias)  # [..., S, D]
    return (weights.unsqueeze(-1) * feats).sum(-2)


def render_linear_head_fused(hidden: Tensor,  # [..., S, H]
                             weights: Tensor,  # [..., S]
                             weight: Tensor,  # [D, H]
                             bias: Tensor | None = None) -> Tensor:  # [..., D]
    """Same result as :func:`render_linear_head_reference` without forming [..., S, D].

    ``W (sum_s w_s h_s) + b sum_s w_s``: the weighted sum of the hidden vectors is one batched
    matrix product when ``hidden`` is fp16/bf16 (weights rounded to that dtype, fp32 accumulation),
    else an exact fp32/fp64 sum; then the output layer runs once per ray (in the autocast dtype if
    autocast is on).

    Args / Returns: as :func:`render_linear_head_reference`.
    """
    _check(hidden, weights, weight, bias)
    acc = torch.promote_types(torch.promote_types(hidden.dtype, weights.dtype), torch.float32)
    if hidden.dtype in (torch.float16, torch.bfloat16):
        # one batched matrix product in the half dtype (fp32 accumulation inside); the head that
        # follows runs in that dtype anyway under autocast, so the result keeps its precision class
        h_ray = torch.matmul(weights.unsqueeze(-2).to(hidden.dtype), hidden).squeeze(-2)  # [..., H]
    else:
        h_ray = (weights.unsqueeze(-1).to(acc) * hidden.to(acc)).sum(-2)  # [..., H]
    out = torch.nn.functional.linear(h_ray.to(weight.dtype), weight)  # [..., D]
    if bias is not None:
        out = out + weights.to(acc).sum(-1, keepdim=True) * bias
    return out
