"""What the app shows, built from engine results: the ternary simplex figure and short texts."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from ..data.attributes import ATTRIBUTES
from .engine import Position

GOAL = 10  # labels a visitor is asked for


def _ternary(w: np.ndarray, **kwargs) -> go.Scatterternary:
    w = np.atleast_2d(w).round(4)
    # plain lists: the figure JSON stays readable by API clients (numpy arrays become base64 typed arrays)
    return go.Scatterternary(a=w[:, 0].tolist(), b=w[:, 1].tolist(), c=w[:, 2].tolist(), **kwargs)


def simplex_figure(pos: Position, trail: list[list[float]], show_bayes: bool = False) -> go.Figure:
    """Ternary plot: NP estimate, its trajectory over the clicks, the NP cloud, optionally the Bayes posterior."""
    fig = go.Figure()
    if show_bayes:
        mass = pos.bayes_post / pos.bayes_post.max()
        keep = mass > 0.02
        fig.add_trace(_ternary(pos.bayes_grid[keep], mode="markers", name="exact Bayes posterior",
                               marker=dict(size=4 + 14 * mass[keep], color="rgba(230,120,30,0.45)"),
                               hoverinfo="skip"))
        fig.add_trace(_ternary(pos.bayes, mode="markers", name="Bayes posterior mean",
                               marker=dict(symbol="diamond", size=12, color="rgb(230,120,30)")))
    fig.add_trace(_ternary(pos.cloud, mode="markers", name="NP uncertainty (z samples)",
                           marker=dict(size=5, color="rgba(60,110,220,0.25)"), hoverinfo="skip"))
    if trail:
        fig.add_trace(_ternary(np.array(trail), mode="lines+markers", name="trajectory over your labels",
                               line=dict(color="rgba(90,90,90,0.7)", width=1.5), marker=dict(size=5)))
    fig.add_trace(_ternary(pos.w, mode="markers", name="you (NP estimate)",
                           marker=dict(symbol="star", size=18, color="rgb(200,30,60)",
                                       line=dict(width=1, color="white"))))
    fig.update_layout(
        ternary=dict(sum=1, aaxis=dict(title=ATTRIBUTES[0], min=0), baxis=dict(title=ATTRIBUTES[1], min=0),
                     caxis=dict(title=ATTRIBUTES[2], min=0)),
        legend=dict(orientation="h", y=-0.08), margin=dict(l=40, r=40, t=30, b=30), height=460)
    return fig


def progress_text(k: int, skipped: int) -> str:
    done = min(k, GOAL)
    bar = "█" * done + "░" * (GOAL - done)
    extra = f" ({k - GOAL} extra)" if k > GOAL else ""
    return f"**{k} / {GOAL} labelled**{extra} {bar} · {skipped} skipped"


def pair_markdown(prompt: str | None) -> str:
    if prompt is None:
        return "**You have seen every pair.** Undo, reset, or go ahead and generate."
    return f"**Prompt:** {prompt}\n\nWhich response do you prefer?"


def scores_markdown(scores: dict | None) -> str:
    """Attributes, reward and quality of one output; junk gets a visible warning."""
    if not scores:
        return ""
    attrs = " · ".join(f"{a} {scores[a]:.2f}" for a in ATTRIBUTES)
    fluency = "too short to rate" if np.isnan(scores["fluency"]) else f"{scores['fluency']:.2f} nats/token"
    relevance = scores["relevance_note"] or f"{scores['relevance']:.2f}"
    lines = [f"{attrs} · **reward under your latent {scores['reward']:+.2f}**",
             f"fluency {fluency} (lower is better) · relevance {relevance}"]
    if scores["junk"]:
        lines.insert(0, f"⚠️ **This output is junk** ({scores['junk_reason']}): it is not a real answer.")
    elif scores["junk_reason"]:
        lines.append(f"note: {scores['junk_reason']}")
    return "\n\n".join(lines)
