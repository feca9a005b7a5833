"""Small building blocks shared by the fields: L-inf scene contraction, truncated exp, plain MLPs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["contract_linf", "contract_to_unit", "trunc_exp", "make_mlp"]


def contract_linf(x: Tensor) -> Tensor:  # [..., 3] -> [..., 3] in [-2, 2]
    """mip-NeRF 360 scene contraction with the L-inf norm (as nerfacto uses it).

    ``x`` unchanged where ``|x|_inf <= 1``, else ``(2 - 1/|x|_inf) * x / |x|_inf``: the unit cube
    stays linear and all of space maps into the cube of half-size 2.
    """
    n = x.abs().amax(dim=-1, keepdim=True)
    safe = n.clamp_min(1.0)
    return torch.where(n <= 1.0, x, (2.0 - 1.0 / safe) * x / safe)


def contract_to_unit(x: Tensor) -> Tensor:  # [..., 3] field frame -> [..., 3] in [0, 1]
    """Contraction followed by ``(p + 2) / 4``: the hash grids' input."""
    return (contract_linf(x) + 2.0) / 4.0


class _TruncExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # noqa: D102
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: Tensor) -> Tensor:
    """``exp(x)`` whose gradient uses ``exp(min(x, 15))`` (density activation, avoids blow-ups)."""
    return _TruncExp.apply(x)


def make_mlp(in_dim: int, hidden_dim: int, num_hidden_layers: int, out_dim: int,
             out_activation: nn.Module | None = None) -> nn.Sequential:
    """``in -> [hidden, ReLU] x num_hidden_layers -> out`` (tcnn ``n_hidden_layers`` semantics:
    nerfstudio's ``num_layers=k`` is ``num_hidden_layers=k-1``)."""
    if num_hidden_layers < 0 or hidden_dim < 1:
        raise ValueError(f"bad MLP sizes: hidden_dim={hidden_dim}, num_hidden_layers={num_hidden_layers}")
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(num_hidden_layers):
        layers += [nn.Linear(d, hidden_dim), nn.ReLU()]
        d = hidden_dim
    layers.append(nn.Linear(d, out_dim))
    if out_activation is not None:
        layers.append(out_activation)
    return nn.Sequential(*layers)
