"""Evaluate shipped checkpoints: `python -m npdemo.evaluate {synthetic,reward,policy,selection} [--json PATH] [--users N]`.

Clean evaluation: every model sees the same test users, and only target pairs that are NOT in the user's
context are scored. Accuracy is per user (a tie P = 0.5 counts half), reported as mean +- standard error
over users, with the baselines and the exact Bayes-optimal predictor beside the NP models.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import checkpoints, synthetic
from .config import ROOT
from .episodes import Episodes
from .reward import load_reward_model
from .train import SYNTHETIC_DIR, SYNTHETIC_MODELS

KS = (0, 1, 3, 5, 10)
RUNS = ROOT / "runs"


def heldout_accuracy(p: np.ndarray, ep: Episodes) -> np.ndarray:
    """Per-user accuracy of P(a > b) = p (B, T) on the targets outside the context; ties count half."""
    y = ep.tgt_y.numpy()
    correct = np.where(p == 0.5, 0.5, (p > 0.5) == (y == 1)).astype(np.float64)
    scored = ~ep.tgt_in_ctx.numpy()
    if not scored.any(axis=1).all():
        raise ValueError("a user has no target outside its context: nothing to score")
    return (correct * scored).sum(axis=1) / scored.sum(axis=1)


def mean_se(x: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error over the first axis (NaN where there are too few values)."""
    n = len(x)
    return (float(x.mean()) if n else float("nan"), float(x.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"))


@torch.no_grad()
def predict(model, ep: Episodes) -> np.ndarray:
    return torch.sigmoid(model(ep)).numpy()


def print_table(title: str, columns: list[str], rows: dict[int, dict[str, tuple[float, float]]]) -> None:
    print(f"\n{title}")
    print("| k | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for k, row in rows.items():
        print(f"| {k} | " + " | ".join(f"{100 * m:.1f} ± {100 * s:.1f}" for m, s in (row[c] for c in columns)) + " |")


def reward_curves_figure(models: dict, task: synthetic.SyntheticTask, rng: np.random.Generator):
    """Learned reward curves r(y; z) per user type with k = 10 context pairs, beside the true rewards."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

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


def evaluate_synthetic(n_users: int, seed: int) -> dict:
    task = synthetic.load("test")
    models = {name: load_reward_model(SYNTHETIC_DIR / name) for name in SYNTHETIC_MODELS}
    rng = np.random.default_rng(seed)
    columns = ["bayes_optimal", *models]
    results: dict[int, dict[str, tuple[float, float]]] = {}
    for k in KS:
        ep, _ = task.sample(n_users, 20, np.full(n_users, k), rng)
        preds = {"bayes_optimal": synthetic.bayes_predict(task.choices, ep)}
        preds.update({name: predict(m, ep) for name, m in models.items()})
        results[k] = {name: mean_se(heldout_accuracy(p, ep)) for name, p in preds.items()}
    print_table(f"Synthetic task: held-out accuracy (%) ± s.e., {n_users} test users per k, 20 targets, "
                f"only targets outside the context scored", columns, results)
    return {"task": "synthetic", "n_users": n_users, "seed": seed, "disagreement": task.disagreement(),
            "accuracy": {str(k): {c: {"mean": m, "se": s} for c, (m, s) in row.items()} for k, row in results.items()},
            "figure": reward_curves_figure(models, task, rng)}


def attribute_diffs(bank, ep: Episodes, attrs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Attribute differences of context pairs (chosen - rejected) and of targets (a - b): (B, T, 3) each.

    attrs (R, 3) replaces the true scores of the bank rows, e.g. the attributes as read from the features."""
    attrs = bank.attributes if attrs is None else attrs
    pairs = bank.pairs.numpy()[ep.tgt_pair.numpy()]  # (B, T, 2)
    tgt_diff = attrs[pairs[..., 0]] - attrs[pairs[..., 1]]
    sign = np.where(ep.tgt_y.numpy() == 1, 1.0, -1.0)[..., None]
    return sign * tgt_diff, tgt_diff


def simplex_figure(w_true: np.ndarray, w_np: np.ndarray, w_bayes: np.ndarray, k: int):
    """Ternary plot of NP and Bayes simplex estimates against the true user weights."""
    import plotly.graph_objects as go

    from .attributes import ATTRIBUTES

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


def attribute_probe(bank, alpha: float = 0.1) -> np.ndarray:
    """Attributes of every bank response as read linearly from its features (ridge fit on train prompts).

    With the true w this is the "feature oracle": the ceiling of any reward that is linear in these features,
    however well the user is known. It separates what the features allow from what the NP learns. Fed to the
    exact grid posterior in place of the true scores ("Bayes on features") it is the Bayes reference that sees
    only what the NP sees: the labelled pairs through these features.
    """
    train = np.array([r["split"] == "train" for r in bank.records])
    x, y = bank.features.numpy().astype(np.float64), bank.attributes
    a = x[train]
    coef = np.linalg.solve(a.T @ a + alpha * len(a) * np.eye(x.shape[1]), a.T @ (y[train] - y[train].mean(0)))
    return x @ coef + y[train].mean(0)


def evaluate_reward(n_users: int, seed: int) -> dict:
    from . import users
    from .embeddings import load_bank
    from .simplex import BayesPosterior, Locator, np_cloud, spread
    from .train import REWARD_DIR

    bank = load_bank()
    np_model, btl = load_reward_model(REWARD_DIR / "np_btl"), load_reward_model(REWARD_DIR / "btl_mixed")
    locate, bayes = Locator(np_model, bank), BayesPosterior()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)  # the NP cloud samples z
    columns = ["oracle", "bayes_posterior", "feature_oracle", "bayes_on_features", "np_btl", "btl_mixed"]
    probe = attribute_probe(bank)
    acc, simplex_err, out = {}, {}, {"task": "reward", "n_users": n_users, "seed": seed, "accuracy": {},
                                      "simplex_l1": {}}
    for k in KS:
        ep, w, groups = users.sample_users(bank, "test", n_users, 20, np.full(n_users, k), rng)
        ctx_diff, tgt_diff = attribute_diffs(bank, ep)
        ctx_read, tgt_read = attribute_diffs(bank, ep, probe)  # what the features say about the same pairs
        post = bayes.posterior(ctx_diff, ep.tgt_in_ctx.numpy())
        post_read = bayes.posterior(ctx_read, ep.tgt_in_ctx.numpy())
        preds = {"oracle": users.choice_prob(w[:, None], tgt_diff, 0 * tgt_diff),
                 "bayes_posterior": bayes.predictive(post, tgt_diff),
                 "feature_oracle": users.choice_prob(w[:, None], tgt_read, 0 * tgt_read),
                 "bayes_on_features": bayes.predictive(post_read, tgt_read),
                 "np_btl": predict(np_model, ep),
                 "btl_mixed": predict(btl, ep)}
        per_user = {name: heldout_accuracy(p, ep) for name, p in preds.items()}
        with torch.no_grad():
            w_np = locate(np_model.encoder.latent(ep.ctx, ep.ctx_mask))
        w_bayes = bayes.mean(post)
        err = {"np_btl": np.abs(w_np - w).sum(1), "bayes_posterior": np.abs(w_bayes - w).sum(1),
               "bayes_on_features": np.abs(bayes.mean(post_read) - w).sum(1),
               "np_cloud_spread": spread(np_cloud(np_model, locate, ep.ctx[:200], ep.ctx_mask[:200]))}
        acc[k] = {name: mean_se(a) for name, a in per_user.items()}
        simplex_err[k] = {name: mean_se(e) for name, e in err.items()}
        out["accuracy"][str(k)] = {g: {name: dict(zip(("mean", "se"), mean_se(a[groups == g] if g != "all" else a)))
                                       for name, a in per_user.items()} for g in ("all", *users.GROUPS)}
        out["simplex_l1"][str(k)] = {name: dict(zip(("mean", "se"), mean_se(e))) for name, e in err.items()}
        if k == max(KS):
            last = (w[:60], w_np[:60], w_bayes[:60], k)
    print_table(f"Text corpus: held-out accuracy (%) ± s.e., {n_users} test users (test prompts) per k, "
                f"20 targets, only targets outside the context scored", columns, acc)
    print(f"\nPer user group at k = {max(KS)} (accuracy %):")
    groups_table = out["accuracy"][str(max(KS))]
    print("| model | " + " | ".join(users.GROUPS) + " | corner sum |")
    print("|---" * (len(users.GROUPS) + 2) + "|")
    for name in columns:
        row = [groups_table[g][name]["mean"] for g in users.GROUPS]
        print(f"| {name} | " + " | ".join(f"{100 * v:.1f}" for v in row) + f" | {100 * sum(row[:3]):.1f} |")
    print_table("Simplex error ||w_hat - w||_1 (x100) ± s.e., and the spread of the NP cloud (x100)",
                ["np_btl", "bayes_posterior", "bayes_on_features", "np_cloud_spread"], simplex_err)
    out["figure"] = simplex_figure(*last)
    return out


def implicit_reward_report(policies: dict, bank, cfg, max_tokens: int, reward_model=None) -> dict:
    """Implicit-reward accuracy by model, k and group, and each group's rise from k = 0 to the largest k
    (paired: the same users and targets at every k), beside the reference rows; printed, and returned as
    {row: {"by_k", "rise", "users"}}."""
    from .steering import KS as POLICY_KS, implicit_reward_table
    from .users import GROUPS

    table, groups = implicit_reward_table(policies, bank, cfg, max_tokens, reward_model)
    members = {g: np.ones(len(groups), bool) if g == "all" else groups == g for g in ("all", *GROUPS)}
    out = {}
    for name, acc in table.items():
        rise = acc[max(POLICY_KS)] - acc[0]
        out[name] = {"by_k": {str(k): {g: mean_se(a[m])[0] for g, m in members.items()} for k, a in acc.items()},
                     "rise": {g: dict(zip(("mean", "se"), mean_se(rise[m]))) for g, m in members.items()},
                     "users": {g: int(m.sum()) for g, m in members.items()}}
    print(f"\nImplicit-reward accuracy (%) on {cfg.targets} test-prompt pairs per user outside its {max(POLICY_KS)}"
          f" labelled pairs; context size k uses the first k labels of the same users ("
          + ", ".join(f"{g} {int(m.sum())}" for g, m in members.items()) + " users):")
    print("| model | k | " + " | ".join(members) + " |")
    print("|---" * (len(members) + 2) + "|")
    for name, res in out.items():
        for k, row in res["by_k"].items():
            print(f"| {name} | {k} | " + " | ".join(f"{100 * v:.1f}" for v in row.values()) + " |")
        print(f"| {name} | rise 0 to {max(POLICY_KS)} | " + " | ".join(
            f"{100 * r['mean']:+.1f} ± {100 * r['se']:.1f}" for r in res["rise"].values()) + " |")
    return out


def evaluate_policy(n_users: int, seed: int, models: str = "np_dpo,dpo_mixed", parts: str = "implicit,steering"
                    ) -> dict:
    """NP-DPO vs DPO-mixed implicit-reward accuracy by k and group; steering, in-context baseline, z-swap.

    `models` picks which checkpoints to score (steering needs np_dpo) and `parts` which measurements; no number
    depends on another model or part, so they can be evaluated in separate runs (in parallel on 2 cores)."""
    from . import base_model
    from .embeddings import load_bank
    from .policy import load_policy
    from .steering import SteeringConfig, steering
    from .train import POLICY_DIR, POLICY_MIXED_DIR, REWARD_DIR

    bank = load_bank()
    policies, train_cfg = {}, None
    chosen = models.split(",")
    if not chosen or set(chosen) - {"np_dpo", "dpo_mixed"}:
        raise SystemExit(f"--models takes np_dpo and/or dpo_mixed, got {models!r}")
    if not parts.split(",") or set(parts.split(",")) - {"implicit", "steering"}:
        raise SystemExit(f"--parts takes implicit and/or steering, got {parts!r}")
    for name, directory in (("np_dpo", POLICY_DIR), ("dpo_mixed", POLICY_MIXED_DIR)):
        if name not in chosen:
            continue
        train_cfg = checkpoints.read_manifest(directory, "policy")["train"]
        lm = base_model.load(train_cfg.get("model") or None, quant=train_cfg["quant"])  # peft wraps in place
        bank.check_model(lm)
        pol, enc = load_policy(directory, lm)
        policies[name] = (pol, enc)  # enc is None for the unconditioned DPO-mixed policy
    cfg = SteeringConfig(users_per_k=n_users, beta=train_cfg["beta"], seed=seed)
    out: dict = {"task": "policy", "users_per_k": n_users}
    if "implicit" in parts:
        out["implicit_reward_accuracy"] = implicit_reward_report(policies, bank, cfg, train_cfg["max_tokens"],
                                                                 load_reward_model(REWARD_DIR / "np_btl"))
    if "steering" not in parts or "np_dpo" not in policies:
        return out
    mixed = policies["dpo_mixed"][0] if "dpo_mixed" in policies else None
    steer = steering(*policies["np_dpo"], bank, cfg, np.random.default_rng(seed), mixed=mixed)
    print(f"\nSteering on {steer['prompts']} test prompts (greedy). Mean attributes (concise, structured, warm): "
          f"base {steer['base']}" + (f", DPO-mixed {steer['dpo_mixed']}" if mixed else ""))
    print("Win-rate = share of prompts where the true user's reward prefers the answer over the base model's.")
    print("| user | NP-DPO attributes | NP-DPO win-rate | in-context attributes | in-context win-rate"
          + (" | DPO-mixed win-rate | NP-DPO vs DPO-mixed |" if mixed else " |"))
    print("|---" * (7 if mixed else 5) + "|")
    for name, u in steer["users"].items():
        print(f"| {name} | {u['np_dpo_attributes']} | {u['np_dpo_win_rate']:.2f} | {u['in_context_attributes']} | "
              f"{u['in_context_win_rate']:.2f} |" + (f" {u['dpo_mixed_win_rate']:.2f} | "
                                                     f"{u['np_dpo_vs_dpo_mixed_win_rate']:.2f} |" if mixed else ""))
    print(f"NP-DPO with no labels (the k = 0 latent): {steer['prior']}")
    print_z_swap(steer["z_swap"])
    return {**out, "steering": steer}


def print_z_swap(swap: dict) -> None:
    """The z-swap check as a table: each latent's shift along the axis from each reference, and head to head."""
    a, b = (n.strip() for n in swap["axis"].split(" - "))
    print(f"\nz-swap along {swap['axis']} (mean over prompts ± s.e.):")
    print(f"| shift from | with z of {a} user | with z of {b} user | swaps |\n|---|---|---|---|")
    for ref, row in swap.items():
        if ref.startswith("from_"):
            print(f"| {ref[5:]} | " + " | ".join(f"{row[f'shift_with_z_{n}']['mean']:+.3f} ± "
                                                 f"{row[f'shift_with_z_{n}']['se']:.3f}" for n in (a, b))
                  + f" | {'yes' if row['swaps'] else 'no'} |")
    gap = swap[f"{a}_vs_{b}"]
    print(f"Head to head, {a} user's answer minus {b} user's on the same prompt: {gap['mean']:+.3f} ± {gap['se']:.3f}"
          f" ({100 * gap['share_positive']:.0f} % of prompts > 0)")


@torch.no_grad()
def evaluate_selection(n_users: int, seed: int) -> dict:
    """Informative (BALD) vs random pair order: simplex error and held-out accuracy after k labels.

    Each test user labels pairs chosen from the test-prompt pool one at a time (BTL choices from its true w);
    20 held-out target pairs, never offered for labelling, are scored after k = 3, 6 and 10 labels.
    """
    from .acquisition import next_pair
    from .embeddings import load_bank
    from .simplex import Locator
    from .train import REWARD_DIR
    from .users import choice_prob, sample_weights

    bank = load_bank()
    model = load_reward_model(REWARD_DIR / "np_btl")
    locate, pool, pairs = Locator(model, bank), bank.split_pairs("test"), bank.pairs.numpy()
    rng = np.random.default_rng(seed)
    checkpoints_k, orders = (3, 6, 10), ("random", "informative")
    err = {o: {k: [] for k in checkpoints_k} for o in orders}
    acc = {o: {k: [] for k in checkpoints_k} for o in orders}
    weights, _ = sample_weights(n_users, rng)
    for w in tqdm(weights, desc="simulated users"):
        targets = rng.choice(pool, 20, replace=False)
        t_attr = bank.attributes[pairs[targets]]  # (20, 2, 3)
        t_y = rng.random(20) < choice_prob(w, t_attr[:, 0], t_attr[:, 1])
        for order in orders:
            labels: list[tuple[int, int]] = []
            order_rng = np.random.default_rng(rng.integers(2**32))
            while len(labels) < max(checkpoints_k):
                ctx, mask = bank.context(labels)
                p = next_pair(model, bank.features, bank.pairs, pool, {*targets, *(q for q, _ in labels)}, ctx,
                              mask, order_rng, order)
                a_attr, b_attr = bank.attributes[pairs[p]]
                labels.append((p, int(order_rng.random() < choice_prob(w, a_attr, b_attr))))
                if len(labels) in checkpoints_k:
                    z = model.encoder.latent(*bank.context(labels))
                    err[order][len(labels)].append(np.abs(locate(z)[0] - w).sum())
                    logit = model.pair_logits(bank.features[bank.pairs[targets]][None], z)[0].numpy()
                    acc[order][len(labels)].append(np.mean(np.where(logit == 0, 0.5, (logit > 0) == t_y)))
    out = {"task": "selection", "n_users": n_users, "seed": seed, "pool": "test prompts",
           "simplex_l1": {o: {str(k): dict(zip(("mean", "se"), mean_se(np.array(v)))) for k, v in e.items()}
                          for o, e in err.items()},
           "accuracy": {o: {str(k): dict(zip(("mean", "se"), mean_se(np.array(v)))) for k, v in a.items()}
                        for o, a in acc.items()}}
    print(f"\nPair selection, {n_users} simulated test users: simplex L1 error (x100) and held-out accuracy (%)")
    print("| order | " + " | ".join(f"L1 @ {k}" for k in checkpoints_k) + " | "
          + " | ".join(f"acc @ {k}" for k in checkpoints_k) + " |")
    print("|---" * (1 + 2 * len(checkpoints_k)) + "|")
    for o in orders:
        print(f"| {o} | " + " | ".join(f"{100 * np.mean(err[o][k]):.1f}" for k in checkpoints_k) + " | "
              + " | ".join(f"{100 * np.mean(acc[o][k]):.1f}" for k in checkpoints_k) + " |")
    return out


TASKS = {"synthetic": evaluate_synthetic, "reward": evaluate_reward, "policy": evaluate_policy,
         "selection": evaluate_selection}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m npdemo.evaluate", description=__doc__)
    ap.add_argument("task", choices=list(TASKS))
    ap.add_argument("--json", type=Path, default=None, help="write the numbers here (default runs/<task>.json)")
    ap.add_argument("--html", type=Path, default=None, help="write the figure here (default runs/<task>.html)")
    ap.add_argument("--users", type=int, default=2000, help="test users per context size")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--models", default="np_dpo,dpo_mixed", help="policy: which checkpoints to evaluate")
    ap.add_argument("--parts", default="implicit,steering", help="policy: which measurements to run")
    args = ap.parse_args(argv)
    out = (evaluate_policy(args.users, args.seed, args.models, args.parts) if args.task == "policy"
           else TASKS[args.task](args.users, args.seed))
    fig = out.pop("figure", None)
    json_path = args.json or RUNS / f"{args.task}.json"
    html_path = args.html or RUNS / f"{args.task}.html"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(out, indent=2) + "\n")
    if fig is not None:
        fig.write_html(html_path, include_plotlyjs="cdn")
    print(f"\nwrote {json_path}" + (f" and {html_path}" if fig is not None else ""))


if __name__ == "__main__":
    main()
