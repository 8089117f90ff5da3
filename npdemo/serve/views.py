"""What the app shows, built from engine results: the ternary simplex figure, model text as safe markdown, and
short texts (progress, timing, scores, how to read the page)."""
from __future__ import annotations

import html
import re

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


_CODE = re.compile(r"(```.*?(?:```|$)|`[^`\n]+`)", re.S)  # code is shown as text by the renderer itself
_SCHEME = r"(?!(?:https?|mailto):)[a-z][a-z0-9+.-]*:"  # any link scheme but http(s) and mailto
_INLINE_LINK = re.compile(r"(\]\(\s*)<?\s*" + _SCHEME + r"[^)\s]*", re.I)
_REF_LINK = re.compile(r"^(\s{0,3}\[[^\]\n]+\]:\s*)<?\s*" + _SCHEME + r"\S*", re.I | re.M)


def safe_markdown(text: str, empty: str = "*(empty)*") -> str:
    """Model or corpus text as markdown a chat UI would render, with nothing executable: HTML outside code shows as
    text, links to schemes other than http(s)/mailto lose their target, and blank text says so."""
    if not text.strip():
        return empty
    parts = _CODE.split(text)
    for i in range(0, len(parts), 2):  # even parts are outside code
        safe = html.escape(parts[i], quote=False).replace("&gt;", ">")  # '>' opens no tag; keep quotes
        parts[i] = _REF_LINK.sub(r"\1#unsafe-link", _INLINE_LINK.sub(r"\1#unsafe-link", safe))
    return "".join(parts)


def timing_markdown(tokens: int, elapsed: float, max_new_tokens: int, done: bool = False,
                    stopped: bool = False) -> str:
    """Elapsed time, tokens and tokens/s of one output; while it runs, the longest the rest can take. `tokens` is
    the re-tokenized text, capped at the limit (a decode/encode round trip can differ by a token)."""
    tokens = min(tokens, max_new_tokens)
    rate = tokens / elapsed if elapsed > 0 else 0.0
    line = f"{elapsed:.1f} s · {tokens} tokens · {rate:.1f} tokens/s"
    if stopped:
        return f"stopped after {line}"
    if done:
        end = "ended on its own" if tokens < max_new_tokens else f"cut at the {max_new_tokens}-token limit"
        return f"done in {line} · {end}"
    left = (f" · at most {(max_new_tokens - tokens) / rate:.0f} s more" if rate > 0
            else " · waiting for the first token")
    return f"generating · {line}{left}"


PLOT_HELP = ("**How to read this.** Each corner is one pure taste: short answers, answers with lists and headings, "
             "or friendly ones. The red star is the app's best guess of your taste from your labels so far; the "
             "blue dots are other guesses it still finds plausible (a tight cloud means it is sure), and the grey "
             "line shows how the guess moved with each label.")
OUTPUT_HELP = ("**How to read this.** The same prompt goes to the same small model three ways: *steered* by your "
               "taste, the *unsteered* base model, and optionally the base model shown your labelled pairs as "
               "examples. A good result is a steered answer that still answers the prompt well but reads more "
               "like what you picked. Under each answer: its style scores, quality (fluency, relevance) and "
               "a warning if the text is junk.")
KEYS_HELP = "Keys: **A** or **B** picks a response · **S** skips · **U** undoes (click the pair area first)."
