"""The evaluation figures: learned synthetic reward curves beside the true ones, and simplex estimates beside
the truth (written as HTML next to the JSON of each evaluation)."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from ..data import synthetic
from ..data.attributes import ATTRIBUTES


def reward_curves_figure(models: dict, task: synthetic.SyntheticTask, rng: np.random.Generator):
    """Learned reward curves r(y; z) per user type with k = 10 context pairs, beside the true rewards."""
    grid = torch.linspace(0, 1, 201).reshape(1, -1, 1)  # (1, G, 1)
    fig = make_subplots(rows=1, cols=2, subplot_titles=[f"user type {t}" for t in range(synthetic.N_TYPES)])
    for t in range(synthetic.N_TYPES):
        ep, types = task.sample(64, 20, np.full(64, 10), rng)
        keep = np.flatnonzero(types == t)[:5]
        true = synthetic.reward(grid.flatten().numpy(), t)
        fig.add_scatter(x=grid.flatten(), y=true - true.mean(), name="true reward", line=dict(color="black", width=3),
                        row=1, col=t + 1, showlegend=t == 0)
        for name, model in models.items():
            with torch.no_grad():
                if name.startswith("np"):
                    z = model.encoder.latent(ep.ctx[keep], ep.ctx_mask[keep])
                    r = model.rewards(grid.expand(len(keep), -1, -1), z).numpy()
                elif name == "btl":
                    r = model.decoder(grid).numpy()
                else:
                    r = model.moments(grid)[0].numpy()
            for i, curve in enumerate(r):
                curve = (curve - curve.mean()) / (curve.std() + 1e-9) * true.std()
                fig.add_scatter(x=grid.flatten(), y=curve, name=name, opacity=0.6, legendgroup=name,
                                showlegend=t == 0 and i == 0, row=1, col=t + 1)
    fig.update_layout(title="Synthetic task: learned rewards at k = 10 (standardised), 5 test users per type",
                      xaxis_title="y", yaxis_title="reward")
    return fig


def simplex_figure(w_true: np.ndarray, w_np: np.ndarray, w_bayes: np.ndarray, k: int):
    """Ternary plot of NP and Bayes simplex estimates against the true user weights."""
    fig = go.Figure()
    for name, w, marker in (("true w", w_true, "circle"), ("NP-BTL estimate", w_np, "x"),
                            ("Bayes posterior mean", w_bayes, "diamond")):
        fig.add_trace(go.Scatterternary(a=w[:, 0], b=w[:, 1], c=w[:, 2], mode="markers", name=name,
                                        marker=dict(symbol=marker, size=8, opacity=0.8)))
    for t, e in zip(w_true, w_np):  # a line from each truth to its NP estimate
        fig.add_trace(go.Scatterternary(a=[t[0], e[0]], b=[t[1], e[1]], c=[t[2], e[2]], mode="lines",
                                        line=dict(color="grey", width=1), showlegend=False, hoverinfo="skip"))
    fig.update_layout(title=f"Where test users sit on the simplex: estimates from k = {k} labelled pairs",
                      ternary=dict(aaxis_title=ATTRIBUTES[0], baxis_title=ATTRIBUTES[1], caxis_title=ATTRIBUTES[2]))
    return fig
