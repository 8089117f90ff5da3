"""The paper's synthetic 1-D task and its exact Bayes-optimal predictor.

20,000 pairs of options y ~ U[0, 1] (numpy seed 0), split 80/10/10 per pair. Two user types:
    type 0: r(y) = y if y < 0.5 else 2y       (prefers larger y)
    type 1: r(y) = y if y < 0.5 else 1 - y   (prefers y close to 0.5)
Choices are argmax r (ties at random), with no label noise. The types disagree on half the pairs, so an
unconditional model is capped at 75 % and Bayes-optimal accuracy is 1 - 0.25 * 0.5**k.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .episodes import Episodes, make_episodes

N_PAIRS = 20_000
N_TYPES = 2
SPLITS = {"train": (0.0, 0.8), "val": (0.8, 0.9), "test": (0.9, 1.0)}


def reward(y: np.ndarray, user_type: int) -> np.ndarray:
    """The hidden reward of a user type."""
    high = 2 * y if user_type == 0 else 1 - y
    return np.where(y < 0.5, y, high)


@dataclass
class SyntheticTask:
    """One split of the synthetic task: option values, pairs, and each type's choices."""
    options: torch.Tensor  # (M, 1) option values
    pairs: torch.Tensor    # (N, 2) option indices
    choices: np.ndarray    # (N_TYPES, N) 1 if the type prefers option a

    @property
    def n_pairs(self) -> int:
        return len(self.pairs)

    def disagreement(self) -> float:
        """Fraction of pairs on which the two types choose differently."""
        return float((self.choices[0] != self.choices[1]).mean())

    def sample(self, n_users: int, n_targets: int, k: np.ndarray, rng: np.random.Generator
               ) -> tuple[Episodes, np.ndarray]:
        """n_users users: a uniform type and n_targets distinct pairs each; context = first k[i] targets."""
        types = rng.integers(0, N_TYPES, size=n_users)
        tgt_pair = np.stack([rng.choice(self.n_pairs, n_targets, replace=False) for _ in range(n_users)])
        tgt_y = self.choices[types[:, None], tgt_pair]
        return make_episodes(self.options, self.pairs, tgt_pair, tgt_y, k), types


def load(split: str, seed: int = 0) -> SyntheticTask:
    """Generate the full task with the paper's seed and return one split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {tuple(SPLITS)}, got {split!r}")
    rng = np.random.default_rng(seed)
    y = rng.uniform(0, 1, size=(N_PAIRS, 2))
    ties = rng.integers(0, 2, size=N_PAIRS)  # tie-breaks, fixed per pair
    choices = np.empty((N_TYPES, N_PAIRS), dtype=np.int64)
    for t in range(N_TYPES):
        ra, rb = reward(y[:, 0], t), reward(y[:, 1], t)
        choices[t] = np.where(ra == rb, ties, ra > rb)
    lo, hi = (int(f * N_PAIRS) for f in SPLITS[split])
    n = hi - lo
    options = torch.as_tensor(y[lo:hi].reshape(-1, 1), dtype=torch.float32)  # option 2i = a, 2i+1 = b
    pairs = torch.arange(2 * n).reshape(n, 2)
    return SyntheticTask(options, pairs, choices[:, lo:hi])


def bayes_predict(choices: np.ndarray, ep: Episodes) -> np.ndarray:
    """Exact posterior-predictive P(a > b) for each target, given the context, under a uniform type prior.

    choices (N_TYPES, N). A type survives iff it reproduces every context choice (no label noise); the
    prediction averages the surviving types' choices. Returns (B, T).
    """
    tgt = ep.tgt_pair.numpy()
    y = ep.tgt_y.numpy()
    in_ctx = ep.tgt_in_ctx.numpy()
    per_type = choices[:, tgt]  # (N_TYPES, B, T)
    consistent = ((per_type == y) | ~in_ctx).all(axis=-1)  # (N_TYPES, B)
    weights = consistent / consistent.sum(axis=0, keepdims=True)
    return np.einsum("sb,sbt->bt", weights, per_type.astype(np.float64))
