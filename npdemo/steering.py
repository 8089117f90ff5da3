"""Does the policy steer? The measurements behind `python -m npdemo.evaluate policy`.

- implicit-reward accuracy: r(y) = beta (log pi(y | x, z) - log ref(y | x)) ranks the user's chosen response
  first, on test-prompt pairs outside the context, by context size k and user group;
- steering: users at each simplex corner and the centre label 10 pairs; greedy generations for test prompts
  are scored by the attributes and by the true user's reward against the unsteered base model's answer;
- the in-context baseline: the same labelled pairs written into the base model's prompt;
- z-swap: each user's attribute shift must follow its latent (swap latents, the shift swaps), measured from the
  unsteered base and from the policy's own answers for a user with no labels.
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
from .episodes import Episodes
from .evaluate import mean_se
from .policy import ConditionalPolicy, Sampling
from .users import sample_users, sample_weights

KS = (0, 1, 3, 5, 10)


@dataclass
class SteeringConfig:
    users_per_k: int = 40       # implicit-reward test users (the same users at every context size)
    targets: int = 8            # scored target pairs per user (outside its context)
    corner_fraction: float = 0.75  # implicit reward: each corner and the interior get about a quarter of users
    prompts: int = 50           # test prompts generated for per steering user
    context: int = 10           # labelled pairs of each steering user
    new_tokens: int = 64
    beta: float = 0.1           # the DPO beta the policy was trained with
    seed: int = 1234


@dataclass
class ImplicitRewardUsers:
    """The test users of the implicit-reward measurement, the same for every model and context size.

    Paired across k: each user labels max(KS) pairs and context size k reads the first k of them, so only z
    changes with k; the targets, all outside the largest context, stay the same. The rise with k is then
    measured without the noise of new users and pairs per k.
    """
    ep: Episodes          # contexts (first max(KS) pairs) and targets as drawn
    weights: np.ndarray   # (U, 3) true user weights
    groups: np.ndarray    # (U,)
    targets: np.ndarray   # (U, T, 2) bank rows of the scored pairs
    y: np.ndarray         # (U, T) bool, True = the first response was chosen

    @classmethod
    def sample(cls, bank: Bank, cfg: SteeringConfig) -> "ImplicitRewardUsers":
        n, k_max, rng = cfg.users_per_k, max(KS), np.random.default_rng(cfg.seed)
        weights, _ = sample_weights(n, rng, cfg.corner_fraction)
        ep, _, groups = sample_users(bank, "test", n, k_max + cfg.targets, np.full(n, k_max), rng, weights=weights)
        return cls(ep, weights, groups, bank.pairs.numpy()[ep.tgt_pair.numpy()[:, k_max:]],
                   ep.tgt_y.numpy()[:, k_max:].astype(bool))

    def latent(self, encoder: ContextEncoder, k: int) -> torch.Tensor:
        """Each user's z from its first k labelled pairs: (U, Z)."""
        return encoder.latent(self.ep.ctx, self.ep.ctx_mask & (torch.arange(self.ep.ctx.shape[1]) < k))

    def accuracy(self, ra: np.ndarray, rb: np.ndarray, tol: float = 0.0) -> np.ndarray:
        """Per-user share of targets whose chosen response gets the higher score (|gap| <= tol: half)."""
        return np.where(np.abs(ra - rb) <= tol, 0.5, np.where(self.y, ra > rb, rb > ra)).mean(-1)


@torch.no_grad()
def implicit_reward_accuracy(policy: ConditionalPolicy, encoder: ContextEncoder | None, ref: torch.Tensor, rows,
                             users: ImplicitRewardUsers, cfg: SteeringConfig) -> dict[int, np.ndarray]:
    """Per-user accuracy {k: (U,)} of r(y) = beta log pi(y | x, z) / ref(y | x) on the users' targets.

    encoder = None scores the policy without a latent (DPO-mixed): its scores cannot depend on k, computed once.
    """
    n = len(users.groups)
    ks = KS if encoder is not None else KS[:1]
    acc, bar = {}, tqdm(total=len(ks) * n, desc="implicit reward (users x context sizes)", unit="user")
    for k in ks:
        z = None if encoder is None else users.latent(encoder, k)
        r = np.zeros(users.targets.shape)
        for u in range(n):
            a, b = users.targets[u, :, 0], users.targets[u, :, 1]
            zu = None if z is None else z[u:u + 1].expand(2 * len(a), -1)
            lp = logprobs(policy, [rows[i] for i in a] + [rows[i] for i in b], zu)
            r[u] = (cfg.beta * (lp.cpu() - ref[np.concatenate([a, b])])).view(2, -1).T.numpy()
            bar.update()
        acc[k] = users.accuracy(r[..., 0], r[..., 1], tol=cfg.beta * 1e-3)  # float noise of batched log-probs
        bar.write(f"k = {k}: implicit-reward accuracy {100 * acc[k].mean():.1f} %")
    bar.close()
    return {k: acc.get(k, acc[KS[0]]) for k in KS}


@torch.no_grad()
def reference_accuracy(users: ImplicitRewardUsers, bank: Bank, reward_model) -> dict[str, dict[int, np.ndarray]]:
    """Reference rows on the same targets: the true reward r_w (what any model can reach: near ties are coin
    flips) and the NP-BTL reward model given the same k labels (what the shared latent carries)."""
    true_r = (bank.attributes[users.targets] * users.weights[:, None, None]).sum(-1)  # (U, T, 2)
    out = {"true reward (oracle)": {k: users.accuracy(true_r[..., 0], true_r[..., 1]) for k in KS}}
    if reward_model is not None:
        out["np_btl reward model"] = {
            k: users.accuracy(*reward_model.decoder(bank.features[torch.from_numpy(users.targets)],
                                                    users.latent(reward_model.encoder, k)[:, None, None]).numpy()
                              .transpose(2, 0, 1)) for k in KS}
    return out


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
    base_attrs = attributes.score_many(base)
    out = {"prompts": len(prompts), "base": base_attrs.mean(0).round(4).tolist(), "users": {}}
    if mixed is not None:  # any z gives the mixed policy identity FiLM; a z (not None) keeps its LoRA on
        mixed_out = mixed.generate(prompts, torch.zeros(len(prompts), mixed.cfg.latent), sampling)
        out["dpo_mixed"] = attributes.score_many(mixed_out).mean(0).round(4).tolist()
    per_prompt = {}
    for name, w in tqdm(users.items(), desc="steering users", unit="user"):
        ep, _, _ = sample_users(bank, "train", 1, cfg.context, np.array([cfg.context]), rng, weights=w[None])
        z = encoder.latent(ep.ctx, ep.ctx_mask)
        steered = policy.generate(prompts, z.expand(len(prompts), -1), sampling)
        per_prompt[name] = attributes.score_many(steered)
        pairs = bank.pairs.numpy()[ep.tgt_pair.numpy()[0]]
        chosen = np.where(ep.tgt_y.numpy()[0] == 1, pairs[:, 0], pairs[:, 1])
        rejected = np.where(ep.tgt_y.numpy()[0] == 1, pairs[:, 1], pairs[:, 0])
        in_ctx = policy.generate_base_shared_prefix([in_context_prompt(bank, chosen, rejected, p) for p in prompts],
                                                    sampling)  # the labelled pairs are encoded once per user
        out["users"][name] = {
            "w": w.round(3).tolist(),
            "np_dpo_attributes": per_prompt[name].mean(0).round(4).tolist(),
            "in_context_attributes": attributes.score_many(in_ctx).mean(0).round(4).tolist(),
            "np_dpo_win_rate": win_rate(w, steered, base), "in_context_win_rate": win_rate(w, in_ctx, base),
            "example": steered[0]}
        if mixed is not None:
            out["users"][name] |= {"dpo_mixed_win_rate": win_rate(w, mixed_out, base),
                                   "np_dpo_vs_dpo_mixed_win_rate": win_rate(w, steered, mixed_out)}
    prior = attributes.score_many(policy.generate(prompts, encoder.latent(*bank.context([])).expand(len(prompts), -1),
                                                  sampling))  # the policy for a user it knows nothing about
    out["prior"] = prior.mean(0).round(4).tolist()
    out["per_prompt"] = {"base": base_attrs.round(4).tolist(), "prior": prior.round(4).tolist(),
                         **{n: a.round(4).tolist() for n, a in per_prompt.items()}}
    out["z_swap"] = z_swap(per_prompt, {"base": base_attrs, "prior": prior})
    return out


def z_swap(per_prompt: dict[str, np.ndarray], references: dict[str, np.ndarray],
           a: str = attributes.ATTRIBUTES[0], b: str = attributes.ATTRIBUTES[2]) -> dict:
    """Do users a's and b's latents move answers in opposite directions along the a - b attribute axis?

    per_prompt {user: (P, 3) attributes of its steered answers}, references {name: (P, 3)} on the same prompts.
    From each reference, a latent's shift is the mean over prompts of axis . (steered - reference); the latents
    "swap the direction" when a's shift is positive and b's negative. From the unsteered base this also counts
    what every latent does (the shared DPO move); from the policy's own k = 0 latent ("prior") only what the
    user's labels add. Head to head, the per-prompt gap axis . (a's answer - b's answer) and its share > 0.
    """
    axis = np.array([1.0, -1.0]) @ np.eye(len(attributes.ATTRIBUTES))[[attributes.ATTRIBUTES.index(n) for n in (a, b)]]

    def stats(x: np.ndarray) -> dict:
        return dict(zip(("mean", "se"), mean_se(x)))

    out: dict = {"axis": f"{a} - {b}"}
    for ref_name, ref in references.items():
        shift = {n: stats((per_prompt[n] - ref) @ axis) for n in (a, b)}
        out[f"from_{ref_name}"] = {**{f"shift_with_z_{n}": v for n, v in shift.items()},
                                   "swaps": bool(shift[a]["mean"] > 0 > shift[b]["mean"])}
    gap = (per_prompt[a] - per_prompt[b]) @ axis
    out[f"{a}_vs_{b}"] = {**stats(gap), "share_positive": float((gap > 0).mean())}
    return out


def implicit_reward_table(policies: dict[str, tuple[ConditionalPolicy, ContextEncoder | None]], bank: Bank,
                          cfg: SteeringConfig, max_tokens: int, reward_model=None
                          ) -> tuple[dict[str, dict[int, np.ndarray]], np.ndarray]:
    """({row: {k: per-user accuracy}}, groups): the reference rows, then each policy, on the same test users."""
    users = ImplicitRewardUsers.sample(bank, cfg)
    out = reference_accuracy(users, bank, reward_model)
    for name, (pol, enc) in policies.items():
        rows = encode_rows(pol, bank, max_tokens)
        ref = reference_logprobs(pol, rows, reference_key(pol.lm, bank, max_tokens), split_rows(bank, "test"))
        out[name] = implicit_reward_accuracy(pol, enc, ref, rows, users, cfg)
    return out, users.groups
