"""Simulated users on the 3-attribute simplex (concise, structured, warm), with known hidden preferences.

A user is a weight vector w on the simplex: Dirichlet(1, 1, 1) "interior" users, plus pure-corner users
(like the paper's single-attribute users). Every user also wants an answer: the reward is
    r_w(y) = sum_k w_k a_k(y) + QUALITY_WEIGHT q(y) - JUNK_PENALTY junk(y),
style by w plus a quality part all users share (q, junk: `npdemo.data.quality_scores`). A choice between two
responses to the same prompt is drawn from BTL: P(a > b) = sigmoid((r_w(a) - r_w(b)) / TEMPERATURE).
TEMPERATURE = 0.05: an attribute gap of 0.1 gives 88 %, 0.2 gives 98 %, so clear pairs are near
deterministic and close ones are coin flips, as with people.
"""
from __future__ import annotations

import numpy as np

from .attributes import ATTRIBUTES
from .bank import Bank
from .episodes import Episodes, make_episodes

TEMPERATURE = 0.05
QUALITY_WEIGHT = 0.2   # lambda: small, so the latent still carries style (README: simplex error for 0 vs 0.2)
JUNK_PENALTY = 0.95    # P: the smallest (0.05 steps) with which every junk answer loses to every real one (a test)
CORNER_FRACTION = 0.5          # half the users are pure corners, split evenly
GROUPS = (*ATTRIBUTES, "interior")


def sample_weights(n: int, rng: np.random.Generator, corner_fraction: float = CORNER_FRACTION
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3) weights and (n,) group names: corners with probability corner_fraction, else Dirichlet(1,1,1)."""
    w = rng.dirichlet(np.ones(len(ATTRIBUTES)), size=n)
    corner = rng.random(n) < corner_fraction
    which = rng.integers(0, len(ATTRIBUTES), size=n)
    w[corner] = np.eye(len(ATTRIBUTES))[which[corner]]
    groups = np.where(corner, np.array(ATTRIBUTES)[which], "interior")
    return w, groups


def shared_reward(q: np.ndarray, junk: np.ndarray) -> np.ndarray:
    """The part of the reward every user shares: lambda q - P junk."""
    return QUALITY_WEIGHT * np.asarray(q, dtype=np.float64) - JUNK_PENALTY * np.asarray(junk, dtype=np.float64)


def bank_shared(bank: Bank) -> np.ndarray:
    """shared_reward of every bank row: (R,); zeros for a bank without quality scores (tests' toy banks)."""
    if bank.quality is None:
        return np.zeros(len(bank.attributes))
    return shared_reward(bank.quality.q, bank.quality.junk)


def choice_prob(w: np.ndarray, attrs_a: np.ndarray, attrs_b: np.ndarray, shared_gap: np.ndarray | float = 0.0
                ) -> np.ndarray:
    """BTL P(a > b) for users w (..., 3), attribute scores (..., 3) and shared_reward(a) - shared_reward(b)."""
    return 1 / (1 + np.exp(-(((attrs_a - attrs_b) * w).sum(-1) + shared_gap) / TEMPERATURE))


POINT_PAIRS = 10  # pairs the idealised user behind a simplex point labels (the encoder's training range)


def strongest_labels(bank: Bank, w: np.ndarray, pool: np.ndarray, n: int = POINT_PAIRS) -> list[tuple[int, int]]:
    """A simplex point as labels: the noise-free user at w labels the n pool pairs it feels most strongly about
    (largest |reward gap|, quality part included), as (pair, 1 if a chosen); how the app's point control and the
    steerability test make a latent that means what labels mean."""
    pairs = bank.pairs.numpy()[pool]
    shared = bank_shared(bank)
    gap = ((bank.attributes[pairs[:, 0]] - bank.attributes[pairs[:, 1]]) @ w
           + shared[pairs[:, 0]] - shared[pairs[:, 1]])
    strongest = np.argsort(-np.abs(gap), kind="stable")[:n]
    return [(int(pool[i]), int(gap[i] > 0)) for i in strongest]


def sample_users(bank: Bank, split: str, n_users: int, n_targets: int, k: np.ndarray, rng: np.random.Generator,
                 weights: np.ndarray | None = None) -> tuple[Episodes, np.ndarray, np.ndarray]:
    """Users with n_targets distinct pairs from `split` and BTL-sampled choices; context = first k[i] targets.

    Returns (episodes, weights (B, 3), groups (B,)). Pass `weights` to fix the users (groups are then derived).
    """
    pool = bank.split_pairs(split)
    if len(pool) < n_targets:
        raise ValueError(f"split {split!r} has {len(pool)} pairs, fewer than {n_targets} targets")
    if weights is None:
        weights, groups = sample_weights(n_users, rng)
    else:
        groups = group_of(weights)
    tgt_pair = np.stack([rng.choice(pool, n_targets, replace=False) for _ in range(n_users)])  # (B, T)
    pairs = bank.pairs.numpy()[tgt_pair]  # (B, T, 2)
    shared = bank_shared(bank)
    p = choice_prob(weights[:, None, :], bank.attributes[pairs[..., 0]], bank.attributes[pairs[..., 1]],
                    shared[pairs[..., 0]] - shared[pairs[..., 1]])
    y = (rng.random(p.shape) < p).astype(np.int64)
    return make_episodes(bank.features, bank.pairs, tgt_pair, y, k), weights, groups


def group_of(weights: np.ndarray) -> np.ndarray:
    """The corner a weight vector sits on, else "interior"."""
    corner = np.isclose(weights.max(-1), 1.0)
    return np.where(corner, np.array(ATTRIBUTES)[weights.argmax(-1)], "interior")
