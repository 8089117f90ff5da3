"""Where is a user on the (concise, structured, warm) simplex?

(a) `Locator`: project the NP reward r(y; z) over a fixed reference set of bank responses onto their
    attribute scores by non-negative least squares and normalise. NP training never sees attributes;
    this only reads off the learned reward. Rewards and attributes are centred per prompt, because BTL
    identifies a reward only up to a shift within a prompt. The quality part every user shares
    (`users.bank_shared`) is a fourth column, fitted and dropped, so it is not mistaken for style.
(b) `BayesPosterior`: the exact posterior over w on a simplex grid given the same labelled pairs, under
    the simulated users' prior (corners plus uniform interior) and their BTL likelihood: a reference.
(c) NP uncertainty: Gaussian-latent samples z ~ q(z | context) projected by the same locator: a cloud
    that shrinks as the user labels more pairs.
"""
from __future__ import annotations

from itertools import combinations

import numpy as np
import torch

from ..data.bank import Bank
from ..data.users import CORNER_FRACTION, TEMPERATURE, bank_shared


def nnls(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """argmin ||A x - b|| subject to x >= 0, exactly, by trying every active set (A has few columns)."""
    n = A.shape[1]
    best, best_err = np.zeros(n), float(b @ b)
    for size in range(1, n + 1):
        for cols in combinations(range(n), size):
            x_s, *_ = np.linalg.lstsq(A[:, cols], b, rcond=None)
            if (x_s >= 0).all():
                x = np.zeros(n)
                x[list(cols)] = x_s
                err = float(((A @ x - b) ** 2).sum())
                if err < best_err:
                    best, best_err = x, err
    return best


def to_simplex(x: np.ndarray) -> np.ndarray:
    """Normalise non-negative weights to sum 1 (the centre when all are 0)."""
    s = x.sum()
    return x / s if s > 1e-12 else np.full(len(x), 1 / len(x))


class Locator:
    """z -> simplex weights by NNLS of the per-prompt-centred NP reward on per-prompt-centred attributes."""

    def __init__(self, model, bank: Bank, split: str = "train", n_prompts: int = 64, seed: int = 0):
        rng = np.random.default_rng(seed)
        prompts = sorted({r["prompt_id"] for r in bank.records if r["split"] == split})
        chosen = set(rng.choice(prompts, min(n_prompts, len(prompts)), replace=False))
        self.rows = np.array([i for i, r in enumerate(bank.records) if r["prompt_id"] in chosen])
        ids = np.array([bank.records[i]["prompt_id"] for i in self.rows])
        self.group = np.unique(ids, return_inverse=True)[1]  # prompt index of each reference row
        self.model, self.features = model, bank.features[self.rows]
        values = np.column_stack([bank.attributes, bank_shared(bank)])[self.rows]
        self.A = self.centre(values)  # (M, 4): attributes and the shared quality part

    def centre(self, x: np.ndarray) -> np.ndarray:
        """Subtract each prompt's mean along the first axis of x (M, ...)."""
        sums = np.zeros((self.group.max() + 1, *x.shape[1:]))
        np.add.at(sums, self.group, x)
        counts = np.bincount(self.group).reshape(-1, *([1] * (x.ndim - 1)))
        return x - (sums / counts)[self.group]

    @torch.no_grad()
    def __call__(self, z: torch.Tensor) -> np.ndarray:
        """z (..., Z) -> simplex weights (..., 3)."""
        flat = z.reshape(-1, z.shape[-1])
        r = torch.cat([self.model.rewards(self.features.expand(len(chunk), -1, -1), chunk)  # (N, M)
                       for chunk in flat.split(128)]).numpy()  # chunks bound the memory
        r = self.centre(r.T).T
        w = np.stack([to_simplex(nnls(self.A, ri)[:3]) for ri in r])
        return w.reshape(*z.shape[:-1], 3)


def simplex_grid(n: int = 40) -> np.ndarray:
    """All w with coordinates in {0, 1/n, ..., 1} summing to 1: (G, 3), corners included."""
    pts = [(i, j, n - i - j) for i in range(n + 1) for j in range(n + 1 - i)]
    return np.array(pts, dtype=np.float64) / n


class BayesPosterior:
    """Exact grid posterior over w given labelled pairs, under the simulated users' prior and likelihood."""

    def __init__(self, n: int = 40):
        self.grid = simplex_grid(n)
        corner = np.isclose(self.grid.max(1), 1.0)
        prior = np.full(len(self.grid), (1 - CORNER_FRACTION) / len(self.grid))
        prior[corner] += CORNER_FRACTION / corner.sum()
        self.log_prior = np.log(prior)

    def posterior(self, ctx_diff: np.ndarray, mask: np.ndarray, ctx_shared: np.ndarray | float = 0.0) -> np.ndarray:
        """ctx_diff (B, K, 3) = attributes(chosen) - attributes(rejected), mask (B, K), ctx_shared (B, K) the same
        difference of the shared quality reward -> weights (B, G)."""
        shared = np.broadcast_to(np.asarray(ctx_shared, dtype=np.float64), mask.shape)[..., None]
        logits = (np.einsum("bkc,gc->bkg", ctx_diff, self.grid) + shared) / TEMPERATURE
        loglik = (-np.logaddexp(0, -logits) * mask[..., None]).sum(1)  # sum_k log sigmoid
        logp = loglik + self.log_prior
        p = np.exp(logp - logp.max(1, keepdims=True))
        return p / p.sum(1, keepdims=True)

    def mean(self, post: np.ndarray) -> np.ndarray:
        """Posterior mean of w: (B, 3)."""
        return post @ self.grid

    def predictive(self, post: np.ndarray, tgt_diff: np.ndarray, tgt_shared: np.ndarray | float = 0.0
                   ) -> np.ndarray:
        """P(a > b) for targets with tgt_diff (B, T, 3) = attributes(a) - attributes(b) and the shared quality
        reward's difference tgt_shared (B, T): (B, T)."""
        shared = np.broadcast_to(np.asarray(tgt_shared, dtype=np.float64), tgt_diff.shape[:-1])[..., None]
        p = 1 / (1 + np.exp(-(np.einsum("btc,gc->btg", tgt_diff, self.grid) + shared) / TEMPERATURE))
        return np.einsum("bg,btg->bt", post, p)


@torch.no_grad()
def np_cloud(model, locate: Locator, ctx: torch.Tensor, mask: torch.Tensor, n_samples: int = 32) -> np.ndarray:
    """Simplex points of n_samples z ~ q(z | context) per user: (n_samples, B, 3), for the uncertainty cloud."""
    return locate(model.encoder(ctx, mask).sample((n_samples,)))


def spread(cloud: np.ndarray) -> np.ndarray:
    """Mean L1 distance of cloud points to their centre, per user: (B,). Shrinks as the context grows."""
    return np.abs(cloud - cloud.mean(0, keepdims=True)).sum(-1).mean(0)
