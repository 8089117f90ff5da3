"""Reward models: NP-BTL r(y; z) with its context encoder, and the unconditional BTL and DPL baselines.

Every model maps an Episodes batch to pair logits (B, T) with P(a > b) = sigmoid(logit), and owns its
training loss (nanoGPT style: the model computes its loss given targets, the loss maths is in losses.py).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from . import checkpoints
from .context_encoder import ContextEncoder, EncoderConfig, mlp
from ..data.episodes import Episodes
from .losses import btl_nll, dpl_logits, np_objective

KINDS = ("np", "btl", "dpl")


@dataclass
class RewardConfig:
    kind: str = "np"               # one of KINDS
    d: int = 1                     # option feature size
    hidden: int = 256              # H of the target encoder and reward head
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # NP only
    n_z_train: int = 1             # Gaussian latent: z samples per user in training
    beta_kl: float = 1.0           # Gaussian latent: weight of KL(qT || qC)
    input_dropout: float = 0.0     # dropout on option features in training (few distinct responses: regularise)
    decoder: str = "mlp"           # NP reward decoder: "mlp" (the paper's) or "bilinear" (see RewardDecoder)

    def __post_init__(self) -> None:
        if isinstance(self.encoder, dict):
            self.encoder = EncoderConfig(**self.encoder)
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.decoder not in ("mlp", "bilinear"):
            raise ValueError(f"decoder must be 'mlp' or 'bilinear', got {self.decoder!r}")
        if self.kind == "np" and self.encoder.d != self.d:
            raise ValueError(f"encoder.d ({self.encoder.d}) must equal d ({self.d})")

    def to_dict(self) -> dict:
        return asdict(self)


def check_pairs(tgt: torch.Tensor, d: int) -> None:
    if tgt.dim() != 4 or tgt.shape[2] != 2 or tgt.shape[3] != d:
        raise ValueError(f"target pairs must have shape (B, T, 2, {d}), got {tuple(tgt.shape)}")
    if tgt.shape[1] == 0:
        raise ValueError("empty target set: nothing to predict")


class RewardDecoder(nn.Module):
    """r(y; z). "mlp": a per-option encoder, then an MLP head on [enc(y); z] (the paper's decoder).
    "bilinear": r = <W y, g(z)>, a user-specific linear reward on a shared learned linear feature map, the
    structure of the simulated users (r_w = w . a(y)); it generalises better from few distinct responses."""

    def __init__(self, d: int, hidden: int, latent: int, kind: str = "mlp"):
        super().__init__()
        self.kind = kind
        if kind == "bilinear":
            self.option_encoder = nn.Linear(d, hidden, bias=False)
            self.head = mlp(latent, hidden, hidden)  # z -> user weights over the hidden features
        else:
            self.option_encoder = mlp(d, hidden, hidden)
            self.head = nn.Sequential(nn.Linear(hidden + latent, hidden), nn.ReLU(),
                                      nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, y: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """y (..., d), z broadcastable to (..., Z) or None -> r (...)."""
        h = self.option_encoder(y)
        if self.kind == "bilinear":
            return (h * self.head(z)).sum(-1) / h.shape[-1] ** 0.5
        if z is not None:
            lead = torch.broadcast_shapes(h.shape[:-1], z.shape[:-1])
            h = torch.cat([h.expand(*lead, -1), z.expand(*lead, -1)], dim=-1)
        return self.head(h).squeeze(-1)


class NPBTL(nn.Module):
    """NP-BTL: z ~ q(z | context), P(a > b | z) = sigmoid(r(a; z) - r(b; z))."""

    def __init__(self, cfg: RewardConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = ContextEncoder(cfg.encoder)
        self.decoder = RewardDecoder(cfg.d, cfg.hidden, cfg.encoder.latent, cfg.decoder)

    def rewards(self, options: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """options (B, M, d), z (B, Z) or (n_z, B, Z) -> r (B, M) or (n_z, B, M)."""
        return self.decoder(options, z.unsqueeze(-2))

    def pair_logits(self, tgt: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """tgt (B, T, 2, d), z (B, Z) or (n_z, B, Z) -> logits (B, T) or (n_z, B, T)."""
        check_pairs(tgt, self.cfg.d)
        r = self.decoder(tgt, z[..., None, None, :])  # (..., B, T, 2)
        return r[..., 0] - r[..., 1]

    def forward(self, ep: Episodes, n_z: int = 0) -> torch.Tensor:
        """Pair logits given the episode's context; the latent mean when n_z = 0."""
        return self.pair_logits(ep.tgt, self.encoder.latent(ep.ctx, ep.ctx_mask, n_z))

    def loss(self, ep: Episodes) -> torch.Tensor:
        """NLL on all targets; for a Gaussian latent the NP objective with z ~ q(z | targets)."""
        if self.training and self.cfg.input_dropout > 0:
            p = self.cfg.input_dropout
            ep = replace(ep, ctx=nn.functional.dropout(ep.ctx, p), tgt=nn.functional.dropout(ep.tgt, p))
        qC = self.encoder(ep.ctx, ep.ctx_mask)
        if self.cfg.encoder.latent_kind == "deterministic":
            return btl_nll(self.pair_logits(ep.tgt, qC.mean), ep.tgt_y).mean()
        qT = self.encoder(*ep.targets_as_context())
        z = qT.rsample((self.cfg.n_z_train,))  # (n_z, B, Z)
        nll = btl_nll(self.pair_logits(ep.tgt, z), ep.tgt_y.expand(self.cfg.n_z_train, -1, -1))
        return np_objective(nll, qT, qC, self.cfg.beta_kl)


class BTL(nn.Module):
    """Unconditional BTL: one reward r(y) for the pooled labels of all users (BTL-mixed)."""

    def __init__(self, cfg: RewardConfig):
        super().__init__()
        self.cfg = cfg
        self.decoder = RewardDecoder(cfg.d, cfg.hidden, 0)

    def forward(self, ep: Episodes, n_z: int = 0) -> torch.Tensor:
        check_pairs(ep.tgt, self.cfg.d)
        r = self.decoder(ep.tgt)
        return r[..., 0] - r[..., 1]

    def loss(self, ep: Episodes) -> torch.Tensor:
        return btl_nll(self(ep), ep.tgt_y).mean()


class DPL(nn.Module):
    """DPL mean-variance baseline: each option has a reward mean and std; choices follow dpl_logits."""

    def __init__(self, cfg: RewardConfig):
        super().__init__()
        self.cfg = cfg
        self.option_encoder = mlp(cfg.d, cfg.hidden, cfg.hidden)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 2))

    def moments(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """y (..., d) -> reward mean and std (...), std = softplus + 1e-3."""
        mu, raw = self.head(self.option_encoder(y)).unbind(-1)
        return mu, nn.functional.softplus(raw) + 1e-3

    def forward(self, ep: Episodes, n_z: int = 0) -> torch.Tensor:
        check_pairs(ep.tgt, self.cfg.d)
        mu, sigma = self.moments(ep.tgt)
        return dpl_logits(mu[..., 0], mu[..., 1], sigma[..., 0], sigma[..., 1])

    def loss(self, ep: Episodes) -> torch.Tensor:
        return btl_nll(self(ep), ep.tgt_y).mean()


def build_reward_model(cfg: RewardConfig) -> NPBTL | BTL | DPL:
    """The model class named by cfg.kind."""
    return {"np": NPBTL, "btl": BTL, "dpl": DPL}[cfg.kind](cfg)


def load_reward_model(directory: Path) -> NPBTL | BTL | DPL:
    """Build the model a reward checkpoint describes and load its weights strictly."""
    manifest = checkpoints.read_manifest(directory, "reward")
    model = build_reward_model(RewardConfig(**manifest["config"]))
    checkpoints.load_into(directory, "model", model)
    return model.eval()
