"""Does the policy steer? The measurements behind `python -m npdemo.evaluate policy`.

- implicit-reward accuracy: r(y) = beta (log pi(y | x, z) - log ref(y | x)) ranks the user's chosen response
  first, on test-prompt pairs outside the context, by context size k and user group;
- steering: users at each simplex corner and the centre label 10 pairs; greedy generations for test prompts
  are scored by the attributes and by the true user's reward against the unsteered base model's answer;
- the in-context baseline: the same labelled pairs written into the base model's prompt;
- z-swap: each user's attribute shift must follow its latent (swap latents, the shift swaps).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from . import attributes
from .context_encoder import ContextEncoder
from .dpo import encode_rows, logprobs, reference_key, reference_logprobs, split_rows
from .embeddings import Bank
from .policy import ConditionalPolicy, Sampling
from .users import GROUPS, sample_users

KS = (0, 1, 3, 5, 10)


@dataclass
class SteeringConfig:
    users_per_k: int = 40       # test users per context size for implicit-reward accuracy
    targets: int = 4            # scored target pairs per user (outside its context)
    prompts: int = 50           # test prompts generated for per steering user
    context: int = 10           # labelled pairs of each steering user
    new_tokens: int = 64
    beta: float = 0.1           # the DPO beta the policy was trained with
    seed: int = 1234


@torch.no_grad()
def implicit_reward_accuracy(policy: ConditionalPolicy, encoder: ContextEncoder | None, bank: Bank,
                             ref: torch.Tensor, rows, k: int, cfg: SteeringConfig, rng: np.random.Generator
                             ) -> tuple[np.ndarray, np.ndarray]:
    """Per-user accuracy of the implicit reward on targets outside a k-pair context (ties count half), and groups.

    encoder = None scores the policy without a latent (the DPO-mixed baseline).
    """
    n = cfg.users_per_k
    ep, _, groups = sample_users(bank, "test", n, k + cfg.targets, np.full(n, k), rng)
    pairs = bank.pairs.numpy()[ep.tgt_pair.numpy()]  # (U, T, 2) bank rows
    y = ep.tgt_y.numpy().astype(bool)
    z = encoder.latent(ep.ctx, ep.ctx_mask) if encoder is not None else None
    correct = np.zeros((n, cfg.targets))
    for u in range(n):
        a, b = pairs[u, k:, 0], pairs[u, k:, 1]  # targets after the context only
        zu = None if z is None else z[u:u + 1].expand(2 * cfg.targets, -1)
        lp = logprobs(policy, [rows[i] for i in a] + [rows[i] for i in b], zu)
        ra, rb = (cfg.beta * (lp.cpu() - ref[np.concatenate([a, b])])).chunk(2)
        tie = (ra - rb).abs() < cfg.beta * 1e-3  # equal up to float noise of batched log-probs
        correct[u] = np.where(tie, 0.5, np.where(y[u, k:], ra > rb, rb > ra))
    return correct.mean(1), groups


def in_context_prompt(bank: Bank, chosen: np.ndarray, rejected: np.ndarray, prompt: str) -> str:
    """The labelled pairs written into the prompt: the in-context baseline's input."""
    parts = ["Here are answers I liked and answers I liked less. Answer my question in the style I liked."]
    for c, r in zip(chosen, rejected):
        parts.append(f"Question: {bank.records[c]['prompt']}\nLiked: {bank.records[c]['response']}\n"
                     f"Liked less: {bank.records[r]['response']}")
    parts.append(f"My question: {prompt}")
    return "\n\n".join(parts)


def reward_of(w: np.ndarray, texts: list[str]) -> np.ndarray:
    return attributes.score_many(texts) @ w


def win_rate(w: np.ndarray, ours: list[str], base: list[str]) -> float:
    """Share of prompts where the true user's reward prefers ours over the base answer (ties count half)."""
    a, b = reward_of(w, ours), reward_of(w, base)
    return float(np.mean(np.where(a == b, 0.5, a > b)))


@torch.no_grad()
def steering(policy: ConditionalPolicy, encoder: ContextEncoder, bank: Bank, cfg: SteeringConfig,
             rng: np.random.Generator, mixed: ConditionalPolicy | None = None) -> dict:
    """Generations for corner and centre users (NP-DPO, in-context, unsteered base), scored, plus a z-swap.

    With `mixed` (the DPO-mixed policy: LoRA on, FiLM identity) its one answer per prompt is scored for every
    user too: it separates "steers towards this user" from "improves what all users like"."""
    users = {**{a: np.eye(3)[i] for i, a in enumerate(attributes.ATTRIBUTES)}, "centre": np.full(3, 1 / 3)}
    prompts = sorted({r["prompt"] for r in bank.records if r["split"] == "test"})[:cfg.prompts]
    sampling = Sampling(max_new_tokens=cfg.new_tokens, greedy=True)
    base = policy.generate(prompts, None, sampling)
    out = {"prompts": len(prompts), "base": attributes.score_many(base).mean(0).round(4).tolist(), "users": {}}
    if mixed is not None:  # any z gives the mixed policy identity FiLM; a z (not None) keeps its LoRA on
        mixed_out = mixed.generate(prompts, torch.zeros(len(prompts), mixed.cfg.latent), sampling)
        out["dpo_mixed"] = attributes.score_many(mixed_out).mean(0).round(4).tolist()
    latents = {}
    for name, w in tqdm(users.items(), desc="steering users", unit="user"):
        ep, _, _ = sample_users(bank, "train", 1, cfg.context, np.array([cfg.context]), rng, weights=w[None])
        z = encoder.latent(ep.ctx, ep.ctx_mask)
        latents[name] = z
        steered = policy.generate(prompts, z.expand(len(prompts), -1), sampling)
        pairs = bank.pairs.numpy()[ep.tgt_pair.numpy()[0]]
        chosen = np.where(ep.tgt_y.numpy()[0] == 1, pairs[:, 0], pairs[:, 1])
        rejected = np.where(ep.tgt_y.numpy()[0] == 1, pairs[:, 1], pairs[:, 0])
        in_ctx = policy.generate_base_shared_prefix([in_context_prompt(bank, chosen, rejected, p) for p in prompts],
                                                    sampling)  # the labelled pairs are encoded once per user
        out["users"][name] = {
            "w": w.round(3).tolist(),
            "np_dpo_attributes": attributes.score_many(steered).mean(0).round(4).tolist(),
            "in_context_attributes": attributes.score_many(in_ctx).mean(0).round(4).tolist(),
            "np_dpo_win_rate": win_rate(w, steered, base), "in_context_win_rate": win_rate(w, in_ctx, base),
            "example": steered[0]}
        if mixed is not None:
            out["users"][name] |= {"dpo_mixed_win_rate": win_rate(w, mixed_out, base),
                                   "np_dpo_vs_dpo_mixed_win_rate": win_rate(w, steered, mixed_out)}
    a, b = attributes.ATTRIBUTES[0], attributes.ATTRIBUTES[2]  # concise vs warm corner
    axis = users[a] - users[b]
    shift = {n: np.array(out["users"][n]["np_dpo_attributes"]) - np.array(out["base"]) for n in (a, b)}
    out["z_swap"] = {"axis": f"{a} - {b}", f"shift_with_z_{a}": float(shift[a] @ axis),
                     f"shift_with_z_{b}": float(shift[b] @ axis),
                     "swaps": bool(np.sign(shift[a] @ axis) != np.sign(shift[b] @ axis))}
    return out


def by_group(acc: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """Mean accuracy over all users and per group (NaN for a group with no users)."""
    out = {"all": float(acc.mean())}
    for g in GROUPS:
        out[g] = float(acc[groups == g].mean()) if (groups == g).any() else float("nan")
    return out


def implicit_reward_table(policies: dict[str, tuple[ConditionalPolicy, ContextEncoder | None]], bank: Bank,
                          cfg: SteeringConfig, max_tokens: int) -> dict:
    """{model: {k: {group: accuracy}}} on the same test users for every model (same seed per k)."""
    out = {}
    for name, (pol, enc) in policies.items():
        rows = encode_rows(pol, bank, max_tokens)
        ref = reference_logprobs(pol, rows, reference_key(pol.lm, bank, max_tokens), split_rows(bank, "test"))
        out[name] = {}
        for k in tqdm(KS, desc=f"implicit reward, {name}", unit="k"):
            acc, groups = implicit_reward_accuracy(pol, enc, bank, ref, rows, k, cfg,
                                                   np.random.default_rng(cfg.seed + k))
            out[name][k] = by_group(acc, groups)
    return out
