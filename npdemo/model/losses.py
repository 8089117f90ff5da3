"""Losses as pure functions of tensors (no models inside), each tested against hand-computed values.

    btl_nll        Bradley-Terry-Luce negative log-likelihood of observed choices
    dpl_logits     the DPL mean-variance choice logit (Siththaranjan et al.)
    np_objective   the neural-process objective for a Gaussian latent (negative ELBO)
    sequence_logprob / dpo_loss   for NP-DPO: summed response-token log-probs and the DPO loss
    rpo_loss       DPO plus the chosen response's per-token NLL (RPO): keeps the policy writing fluent text
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.distributions import Distribution, kl_divergence


def btl_nll(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-log P(observed choice) with P(a > b) = sigmoid(logit); y = 1 if a was chosen. Elementwise."""
    return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype), reduction="none")


def dpl_logits(mu_a: torch.Tensor, mu_b: torch.Tensor, sigma_a: torch.Tensor,
               sigma_b: torch.Tensor) -> torch.Tensor:
    """DPL: P(a > b) = sigmoid(sqrt(2 pi) (mu_a - mu_b) / sqrt(sigma_a^2 + sigma_b^2)) (paper.md section 5)."""
    return math.sqrt(2 * math.pi) * (mu_a - mu_b) / torch.sqrt(sigma_a**2 + sigma_b**2)


def np_objective(nll: torch.Tensor, qT: Distribution, qC: Distribution, beta_kl: float = 1.0) -> torch.Tensor:
    """Negative ELBO of a latent NP, per target and averaged over users.

    nll (n_z, B, T): target NLLs under z ~ q(z | targets); the KL is in the standard direction
    KL(q(z | targets) || q(z | context)) (the official code has it reversed).
    """
    n_z, B, T = nll.shape
    kl = kl_divergence(qT, qC)  # (B,)
    return ((nll.mean(dim=0).sum(dim=-1) + beta_kl * kl) / T).mean()


def sequence_logprob(logits: torch.Tensor, ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Sum of log p(token) over response tokens only.

    logits (B, L, V) at position t score token t + 1, so logits[:, :-1] pair with ids[:, 1:];
    response_mask (B, L) marks response tokens of ids (prompt and padding are 0). Returns (B,).
    """
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    tok = torch.gather(logp, 2, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # (B, L-1)
    return (tok * response_mask[:, 1:].to(tok.dtype)).sum(dim=-1)


def dpo_loss(pi_c: torch.Tensor, pi_r: torch.Tensor, ref_c: torch.Tensor, ref_r: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO: -log sigmoid(beta [(pi_c - ref_c) - (pi_r - ref_r)]), per example.

    Returns (losses, chosen_rewards, rejected_rewards); rewards are the implicit beta * log-ratios.
    """
    chosen = beta * (pi_c - ref_c)
    rejected = beta * (pi_r - ref_r)
    return -F.logsigmoid(chosen - rejected), chosen.detach(), rejected.detach()


def rpo_loss(dpo_losses: torch.Tensor, pi_c: torch.Tensor, n_tokens: torch.Tensor, alpha: float) -> torch.Tensor:
    """RPO (Pang et al. 2024): DPO loss + alpha * per-token NLL of the chosen response, -pi_c / n_tokens, per example.

    The likelihood term keeps the chosen (fluent, in-style) text likely, so DPO cannot win by pushing both
    responses down and the policy's mass onto text no user wrote."""
    return dpo_losses + alpha * (-pi_c / n_tokens.to(pi_c))
