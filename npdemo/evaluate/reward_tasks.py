"""Reward-model evaluations: the synthetic task against exact Bayes, NP-BTL on the text corpus against the
oracle, Bayes and feature references, and informative vs random pair order.

Clean evaluation: every model sees the same test users, and only target pairs that are NOT in the user's
context are scored. Accuracy is per user (a tie P = 0.5 counts half), reported as mean +- standard error
over users, with the baselines and the exact Bayes-optimal predictor beside the NP models.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..config import REWARD_DIR, SYNTHETIC_DIR, SYNTHETIC_MODELS
from ..data import synthetic, users
from ..data.bank import Bank, load_bank
from ..data.episodes import Episodes, orient
from ..model.acquisition import next_pair
from ..model.probe import ridge
from ..model.reward import load_reward_model
from ..model.simplex import BayesPosterior, Locator, np_cloud, spread
from .figures import reward_curves_figure, simplex_figure
from .metrics import flip_rate, heldout_accuracy, mean_se, mean_se_dict, print_table, tie_half

KS = (0, 1, 3, 5, 10)


@torch.no_grad()
def predict(model, ep: Episodes) -> np.ndarray:
    return torch.sigmoid(model(ep)).numpy()


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


def pair_diffs(bank: Bank, ep: Episodes, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Differences of per-row values (R, ...) for context pairs (chosen - rejected) and targets (a - b): (B, T, ...)
    each. values: the attributes, the attributes as read from the features, or the shared quality reward."""
    pairs = bank.pairs.numpy()[ep.tgt_pair.numpy()]  # (B, T, 2)
    rows = orient(pairs, ep.tgt_y.numpy())  # [chosen, rejected]
    return values[rows[..., 0]] - values[rows[..., 1]], values[pairs[..., 0]] - values[pairs[..., 1]]


def attribute_probe(bank: Bank, alpha: float = 0.1) -> np.ndarray:
    """Attributes of every bank response as read linearly from its features (ridge fit on train prompts).

    With the true w this is the "feature oracle": the ceiling of any reward that is linear in these features,
    however well the user is known. It separates what the features allow from what the NP learns. Fed to the
    exact grid posterior in place of the true scores ("Bayes on features") it is the Bayes reference that sees
    only what the NP sees: the labelled pairs through these features.
    """
    train = np.array([r["split"] == "train" for r in bank.records])
    x, y = bank.features.numpy().astype(np.float64), bank.attributes
    coef, intercept = ridge(x[train], y[train], alpha)
    return x @ coef + intercept


def evaluate_reward(n_users: int, seed: int, reward_dir: Path = REWARD_DIR) -> dict:
    bank = load_bank()
    np_model, btl = load_reward_model(reward_dir / "np_btl"), load_reward_model(reward_dir / "btl_mixed")
    locate, bayes = Locator(np_model, bank), BayesPosterior()
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)  # the NP cloud samples z
    columns = ["oracle", "bayes_posterior", "feature_oracle", "bayes_on_features", "np_btl", "btl_mixed"]
    probe, shared = attribute_probe(bank), users.bank_shared(bank)
    acc, simplex_err, out = {}, {}, {"task": "reward", "n_users": n_users, "seed": seed, "accuracy": {},
                                      "simplex_l1": {}}
    for k in KS:
        ep, w, groups = users.sample_users(bank, "test", n_users, 20, np.full(n_users, k), rng)
        ctx_diff, tgt_diff = pair_diffs(bank, ep, bank.attributes)
        ctx_read, tgt_read = pair_diffs(bank, ep, probe)  # what the features say about the same pairs
        ctx_q, tgt_q = pair_diffs(bank, ep, shared)  # the quality part, known to both Bayes references
        mask = ep.tgt_in_ctx.numpy()
        post = bayes.posterior(ctx_diff, mask, ctx_q)
        post_read = bayes.posterior(ctx_read, mask, ctx_q)
        preds = {"oracle": users.choice_prob(w[:, None], tgt_diff, 0 * tgt_diff, tgt_q),
                 "bayes_posterior": bayes.predictive(post, tgt_diff, tgt_q),
                 "feature_oracle": users.choice_prob(w[:, None], tgt_read, 0 * tgt_read, tgt_q),
                 "bayes_on_features": bayes.predictive(post_read, tgt_read, tgt_q),
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
        out["accuracy"][str(k)] = {g: {name: mean_se_dict(a[groups == g] if g != "all" else a)
                                       for name, a in per_user.items()} for g in ("all", *users.GROUPS)}
        out["simplex_l1"][str(k)] = {name: mean_se_dict(e) for name, e in err.items()}
        if k == max(KS):
            last = (w[:60], w_np[:60], w_bayes[:60], k)
            flipped = replace(ep, ctx=ep.ctx.flip(2))  # every context label flipped: [rejected, chosen]
            post_flip = bayes.posterior(-ctx_diff, mask, -ctx_q)
            flips = {"np_btl": flip_rate(preds["np_btl"], predict(np_model, flipped), ep),
                     "bayes_posterior": flip_rate(preds["bayes_posterior"], bayes.predictive(post_flip, tgt_diff, tgt_q), ep),
                     "btl_mixed": flip_rate(preds["btl_mixed"], predict(btl, flipped), ep)}
            out["label_flip"] = {"k": k, **{name: mean_se_dict(f) for name, f in flips.items()}}
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
    print(f"\nLabel flip at k = {max(KS)}: share of held-out targets whose predicted winner flips when every "
          "context label is flipped (%): " + ", ".join(f"{n} {100 * v['mean']:.1f} ± {100 * v['se']:.1f}"
                                                       for n, v in out["label_flip"].items() if n != "k"))
    out["figure"] = simplex_figure(*last)
    return out


@torch.no_grad()
def evaluate_selection(n_users: int, seed: int, reward_dir: Path = REWARD_DIR) -> dict:
    """Informative (BALD) vs random pair order: simplex error and held-out accuracy after k labels.

    Each test user labels pairs chosen from the test-prompt pool one at a time (BTL choices from its true w);
    20 held-out target pairs, never offered for labelling, are scored after k = 3, 6 and 10 labels.
    """
    bank = load_bank()
    model = load_reward_model(reward_dir / "np_btl")
    locate, pool, pairs = Locator(model, bank), bank.split_pairs("test"), bank.pairs.numpy()
    shared = users.bank_shared(bank)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)  # BALD samples z: unseeded, the informative row changed from run to run
    checkpoints_k, orders = (3, 6, 10), ("random", "informative")
    err = {o: {k: [] for k in checkpoints_k} for o in orders}
    acc = {o: {k: [] for k in checkpoints_k} for o in orders}
    weights, _ = users.sample_weights(n_users, rng)
    for w in tqdm(weights, desc="simulated users"):
        targets = rng.choice(pool, 20, replace=False)
        t_attr = bank.attributes[pairs[targets]]  # (20, 2, 3)
        t_y = rng.random(20) < users.choice_prob(w, t_attr[:, 0], t_attr[:, 1],
                                                 shared[pairs[targets, 0]] - shared[pairs[targets, 1]])
        for order in orders:
            labels: list[tuple[int, int]] = []
            order_rng = np.random.default_rng(rng.integers(2**32))
            while len(labels) < max(checkpoints_k):
                p = next_pair(model, model.encoder(*bank.context(labels)), bank.features, bank.pairs, pool,
                              {*targets, *(q for q, _ in labels)}, order_rng, order)
                a_attr, b_attr = bank.attributes[pairs[p]]
                gap = shared[pairs[p, 0]] - shared[pairs[p, 1]]
                labels.append((p, int(order_rng.random() < users.choice_prob(w, a_attr, b_attr, gap))))
                if len(labels) in checkpoints_k:
                    z = model.encoder.latent(*bank.context(labels))
                    err[order][len(labels)].append(np.abs(locate(z)[0] - w).sum())
                    logit = model.pair_logits(bank.features[bank.pairs[targets]][None], z)[0].numpy()
                    acc[order][len(labels)].append(np.mean(tie_half(logit, t_y)))
    out = {"task": "selection", "n_users": n_users, "seed": seed, "pool": "test prompts",
           "simplex_l1": {o: {str(k): mean_se_dict(np.array(v)) for k, v in e.items()}
                          for o, e in err.items()},
           "accuracy": {o: {str(k): mean_se_dict(np.array(v)) for k, v in a.items()}
                        for o, a in acc.items()}}
    print(f"\nPair selection, {n_users} simulated test users: simplex L1 error (x100) and held-out accuracy (%)")
    print("| order | " + " | ".join(f"L1 @ {k}" for k in checkpoints_k) + " | "
          + " | ".join(f"acc @ {k}" for k in checkpoints_k) + " |")
    print("|---" * (1 + 2 * len(checkpoints_k)) + "|")
    for o in orders:
        print(f"| {o} | " + " | ".join(f"{100 * np.mean(err[o][k]):.1f}" for k in checkpoints_k) + " | "
              + " | ".join(f"{100 * np.mean(acc[o][k]):.1f}" for k in checkpoints_k) + " |")
    return out
