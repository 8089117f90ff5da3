"""Episodes: a batch of users, each with labelled target pairs and a context drawn from them.

As in the paper, a user is a set of target pairs with the user's choices; the context is the first k
targets of a random order (k may differ per user). Evaluation scores only `tgt_in_ctx == False`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Episodes:
    ctx: torch.Tensor         # (B, K, 2, d) [chosen, rejected] features
    ctx_mask: torch.Tensor    # (B, K) bool, True = a real context pair
    tgt: torch.Tensor         # (B, T, 2, d) [a, b] features
    tgt_y: torch.Tensor       # (B, T) float, 1 = a chosen
    tgt_in_ctx: torch.Tensor  # (B, T) bool, True = this target is also in the context
    tgt_pair: torch.Tensor    # (B, T) long, index of each target pair in its pool

    def targets_as_context(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All targets oriented [chosen, rejected] by their labels, for q(z | targets)."""
        return orient(self.tgt, self.tgt_y), torch.ones_like(self.tgt_y, dtype=torch.bool)


def orient(pairs, y):
    """[a, b] -> [chosen, rejected], with y = 1 where a was chosen: the one place a label orders a pair.

    pairs has y's shape then (2, ...): pair rows (..., 2) or pair features (..., 2, d); numpy or torch alike."""
    axis = y.ndim
    if isinstance(pairs, torch.Tensor):
        a_first = y.bool().reshape(*y.shape, *[1] * (pairs.dim() - axis))
        return torch.where(a_first, pairs, pairs.flip(axis))
    a_first = np.asarray(y).astype(bool).reshape(*y.shape, *[1] * (pairs.ndim - axis))
    return np.where(a_first, pairs, np.flip(pairs, axis))


def make_episodes(options: torch.Tensor, pairs: torch.Tensor, tgt_pair: np.ndarray, tgt_y: np.ndarray,
                  k: np.ndarray) -> Episodes:
    """Build an episode batch; the context of user i is its first k[i] targets.

    options (M, d) features; pairs (N, 2) option indices; tgt_pair (B, T) pair indices; tgt_y (B, T) {0,1};
    k (B,) context sizes, 0 <= k <= T.
    """
    B, T = tgt_pair.shape
    if tgt_y.shape != (B, T):
        raise ValueError(f"tgt_y must have shape {(B, T)}, got {tgt_y.shape}")
    if T == 0:
        raise ValueError("an episode needs at least one target pair")
    k = np.asarray(k)
    if k.shape != (B,) or k.min() < 0 or k.max() > T:
        raise ValueError(f"k must be {B} context sizes in [0, {T}], got {k}")
    idx = torch.as_tensor(tgt_pair, dtype=torch.long)
    tgt = options[pairs[idx]]  # (B, T, 2, d)
    y = torch.as_tensor(tgt_y, dtype=torch.float32)
    K = int(k.max())
    in_ctx = torch.as_tensor(np.arange(T)[None, :] < k[:, None])  # (B, T)
    return Episodes(ctx=orient(tgt[:, :K], y[:, :K]), ctx_mask=in_ctx[:, :K], tgt=tgt, tgt_y=y,
                    tgt_in_ctx=in_ctx, tgt_pair=idx)
