"""The NP context encoder: a set of labelled pairs -> a user latent z (deterministic or Gaussian).

Stages, as in the paper (section 1 of shared/reference/paper.md):
    1. pair encoder     [chosen; rejected] (2d) -> H, order alone encodes the choice
    2. aggregation      permutation-invariant pooling over the set: "mean", "sum", or "attention"
                        (self-attention over the pairs, then sum); an empty context pools to zeros
    3. latent head      H -> z. "deterministic" (CNP): z = MLP(pooled). "gaussian": mean and
                        std = floor + softplus(raw), sampled by reparameterisation.
With k = 0 the pooled vector is zero, so z = head(0): a learned "prior user", never NaN.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.distributions import Independent, Normal

AGGREGATIONS = ("mean", "sum", "attention")
LATENTS = ("deterministic", "gaussian")


@dataclass
class EncoderConfig:
    d: int = 1                      # option feature size
    hidden: int = 256               # H
    latent: int = 256               # size of z
    aggregation: str = "sum"        # one of AGGREGATIONS
    latent_kind: str = "deterministic"  # one of LATENTS
    pair_layers: int = 2            # 1 = Linear, 2 = Linear-ReLU-Linear
    std_floor: float = 0.01         # Gaussian latent: std never below this
    attention_heads: int = 8

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.latent_kind not in LATENTS:
            raise ValueError(f"latent_kind must be one of {LATENTS}, got {self.latent_kind!r}")
        if self.pair_layers not in (1, 2):
            raise ValueError(f"pair_layers must be 1 or 2, got {self.pair_layers}")


def mlp(d_in: int, hidden: int, d_out: int, layers: int = 2) -> nn.Sequential:
    """Linear (layers=1) or Linear-ReLU-Linear (layers=2)."""
    if layers == 1:
        return nn.Sequential(nn.Linear(d_in, d_out))
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))


class ContextEncoder(nn.Module):
    """Maps a context set of labelled pairs to the latent distribution q(z | context)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        H = cfg.hidden
        self.pair_encoder = mlp(2 * cfg.d, H, H, cfg.pair_layers)
        self.attention = (nn.MultiheadAttention(H, cfg.attention_heads, batch_first=True)
                          if cfg.aggregation == "attention" else None)
        out = cfg.latent * (2 if cfg.latent_kind == "gaussian" else 1)
        self.head = mlp(H, H, out)

    def pool(self, ctx: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ctx (B, K, 2, d) [chosen, rejected], mask (B, K) bool -> pooled (B, H)."""
        B, K, two, d = ctx.shape
        if two != 2 or d != self.cfg.d:
            raise ValueError(f"context must have shape (B, K, 2, {self.cfg.d}), got {tuple(ctx.shape)}")
        if mask.shape != (B, K):
            raise ValueError(f"context mask must have shape {(B, K)}, got {tuple(mask.shape)}")
        h = self.pair_encoder(ctx.reshape(B, K, 2 * d))  # (B, K, H)
        m = mask.unsqueeze(-1).to(h.dtype)  # (B, K, 1)
        if self.attention is not None and K > 0:
            # rows with no context would attend to nothing (NaN): let them attend freely, then mask
            pad = ~mask & mask.any(dim=1, keepdim=True)
            h, _ = self.attention(h, h, h, key_padding_mask=pad, need_weights=False)
        pooled = (h * m).sum(dim=1)  # (B, H); zeros for an empty context
        if self.cfg.aggregation == "mean":
            pooled = pooled / m.sum(dim=1).clamp(min=1.0)
        return pooled

    def forward(self, ctx: torch.Tensor, mask: torch.Tensor) -> Normal | Independent:
        """Returns q(z | context): a point mass (Normal with zero std) or a diagonal Gaussian, batch (B,)."""
        out = self.head(self.pool(ctx, mask))
        if self.cfg.latent_kind == "deterministic":  # a point mass: samples equal the mean
            return Independent(Normal(out, torch.zeros_like(out), validate_args=False), 1)
        mean, raw = out.chunk(2, dim=-1)
        std = self.cfg.std_floor + nn.functional.softplus(raw)
        return Independent(Normal(mean, std), 1)

    def latent(self, ctx: torch.Tensor, mask: torch.Tensor, n_z: int = 0) -> torch.Tensor:
        """z for prediction: the mean (B, Z) when n_z = 0, else n_z reparameterised samples (n_z, B, Z)."""
        q = self(ctx, mask)
        return q.mean if n_z == 0 else q.rsample((n_z,))
