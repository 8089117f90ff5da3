"""Which pair to ask about next: the one whose answer tells the NP latent the most.

With a Gaussian latent, z ~ q(z | context) carries the NP's uncertainty about the user. A pair is
informative when the sampled users disagree on it (BALD: the mutual information between the answer and z,
H[mean_s p_s] - mean_s H[p_s]), not merely when its answer is a coin flip for everyone (pairs whose
responses barely differ are coin flips and teach nothing).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.distributions import Distribution

from .reward import NPBTL


def _entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return -(p * p.log() + (1 - p) * (1 - p).log())


@torch.no_grad()
def information(model: NPBTL, q: Distribution, candidates: torch.Tensor, n_z: int = 32) -> torch.Tensor:
    """BALD score of each candidate pair for one user: q = q(z | context) (batch 1), candidates (N, 2, d) -> (N,).

    Only the model's reward decoder is used: the latent may come from another encoder (the policy's)."""
    z = q.sample((n_z,))  # (n_z, 1, Z)
    p = torch.sigmoid(model.pair_logits(candidates[None], z))[:, 0]  # (n_z, N)
    return _entropy(p.mean(0)) - _entropy(p).mean(0)


def next_pair(model: NPBTL, q: Distribution, features: torch.Tensor, pairs: torch.Tensor, pool: np.ndarray,
              seen: set[int], rng: np.random.Generator, order: str = "informative",
              n_candidates: int = 256) -> int | None:
    """A pool pair not seen yet: the most informative of n_candidates random ones, or a random one.

    features (R, d) bank features, pairs (N, 2) rows, pool the allowed pair indices; None when all are seen.
    """
    free = np.setdiff1d(pool, np.fromiter(seen, dtype=np.int64, count=len(seen)))
    if len(free) == 0:
        return None
    if order == "random":
        return int(rng.choice(free))
    if order != "informative":
        raise ValueError(f"order must be 'informative' or 'random', got {order!r}")
    cand = rng.choice(free, min(n_candidates, len(free)), replace=False)
    scores = information(model, q, features[pairs[torch.as_tensor(cand)]])
    return int(cand[int(scores.argmax())])
