"""Metrics every evaluation shares: accuracy with ties as half, per-user held-out accuracy on targets outside the
context, mean and standard error, and the markdown tables they are printed in."""
from __future__ import annotations

import numpy as np

from ..data.episodes import Episodes


def tie_half(gap: np.ndarray, y: np.ndarray | bool = True, tol: float = 0.0) -> np.ndarray:
    """1 where the sign of `gap` agrees with y (True: the first option should score higher), 0 where it does
    not, 0.5 where |gap| <= tol (a tie is a coin flip): the one accuracy rule of every table here."""
    return np.where(np.abs(gap) <= tol, 0.5, (gap > 0) == y).astype(np.float64)


def heldout_accuracy(p: np.ndarray, ep: Episodes) -> np.ndarray:
    """Per-user accuracy of P(a > b) = p (B, T) on the targets outside the context; ties count half."""
    correct = tie_half(p - 0.5, ep.tgt_y.numpy() == 1)
    scored = ~ep.tgt_in_ctx.numpy()
    if not scored.any(axis=1).all():
        raise ValueError("a user has no target outside its context: nothing to score")
    return (correct * scored).sum(axis=1) / scored.sum(axis=1)


def flip_rate(p: np.ndarray, p_flipped: np.ndarray, ep: Episodes) -> np.ndarray:
    """Per-user share of targets outside the context whose predicted winner changes when every context label is
    flipped (the label-flip check of P-TTT, 2026): a model that reads its context should follow it."""
    flips = np.sign(p - 0.5) != np.sign(p_flipped - 0.5)
    scored = ~ep.tgt_in_ctx.numpy()
    return (flips * scored).sum(axis=1) / scored.sum(axis=1)


def mean_se(x: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error over the first axis (NaN where there are too few values)."""
    n = len(x)
    return (float(x.mean()) if n else float("nan"), float(x.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"))


def mean_se_dict(x: np.ndarray) -> dict[str, float]:
    return dict(zip(("mean", "se"), mean_se(np.asarray(x))))


def print_table(title: str, columns: list[str], rows: dict[int, dict[str, tuple[float, float]]]) -> None:
    """Rows by k of (mean, se) per column, in percent."""
    print(f"\n{title}")
    print("| k | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for k, row in rows.items():
        print(f"| {k} | " + " | ".join(f"{100 * m:.1f} ± {100 * s:.1f}" for m, s in (row[c] for c in columns)) + " |")
