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

from ..config import POLICY_DIR, POLICY_MIXED_DIR
from ..data import attributes, base_model
from ..data.bank import Bank, load_bank
from ..data.episodes import Episodes, orient
from ..data.quality_scores import quality_score
from ..data.users import GROUPS, sample_users, bank_shared, sample_weights, shared_reward
from ..model import checkpoints, quality
from ..model.context_encoder import ContextEncoder
from ..model.generation import Answers, Sampling, answer, generate_base_shared_prefix
from ..model.in_context import in_context_prompt
from ..model.logprobs import encode_rows, logprobs, reference_key, reference_logprobs
from ..model.policy import ConditionalPolicy
from ..model.policy_checkpoint import load_policy, paired_reward_dir
from ..model.reward import load_reward_model
from .metrics import mean_se, mean_se_dict, tie_half

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
        return tie_half(ra - rb, self.y, tol).mean(-1)


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
    true_r = ((bank.attributes[users.targets] * users.weights[:, None, None]).sum(-1)
              + bank_shared(bank)[users.targets])  # (U, T, 2)
    out = {"true reward (oracle)": {k: users.accuracy(true_r[..., 0], true_r[..., 1]) for k in KS}}
    if reward_model is not None:
        out["np_btl reward model"] = {
            k: users.accuracy(*reward_model.decoder(bank.features[torch.from_numpy(users.targets)],
                                                    users.latent(reward_model.encoder, k)[:, None, None]).numpy()
                              .transpose(2, 0, 1)) for k in KS}
    return out


@dataclass
class ScoredAnswers:
    """One row's answers (a model for a user, on the test prompts) with every score a reader needs beside them."""
    texts: list[str]
    ended: np.ndarray       # (P,) bool: stopped at end-of-sequence
    attributes: np.ndarray  # (P, 3), junk scored 0 on concise and structured
    fluency: np.ndarray     # (P,) mean NLL under the fp32 base model (NaN: too short to rate)
    relevance: np.ndarray   # (P,)
    junk: np.ndarray        # (P,) bool

    def reward(self, w: np.ndarray) -> np.ndarray:
        """The simulated user's reward of each answer, quality part included: (P,)."""
        return self.attributes @ w + shared_reward(quality_score(self.fluency, self.relevance), self.junk)

    def summary(self, examples: int = 3) -> dict:
        return {"attributes": self.attributes.mean(0).round(4).tolist(), "junk_rate": float(self.junk.mean()),
                "fluency": round(float(np.nanmean(self.fluency)), 3), "relevance": round(float(self.relevance.mean()), 3),
                "eos_share": float(self.ended.mean()), "examples": self.texts[:examples], "answers": self.texts}


def score_answers(scorer: ConditionalPolicy, prompts: list[str], answers: Answers) -> ScoredAnswers:
    """Fluency under the frozen base of `scorer` (fp32 in evaluation), relevance, junk, attributes."""
    with scorer.reference():
        nll = quality.fluency(scorer.model, scorer.tokenizer, prompts, answers.texts)
    junk = np.array([quality.verdict(t, n)[0] for t, n in zip(answers.texts, nll)])
    return ScoredAnswers(answers.texts, np.array(answers.ended), attributes.score_many(answers.texts, junk), nll,
                         quality.relevance(prompts, answers.texts), junk)


def win_rate(w: np.ndarray, ours: ScoredAnswers, other: ScoredAnswers) -> float:
    """Share of prompts where the true user's reward prefers ours (ties half); a junk answer of ours is a loss
    whatever the other is (both junk: a loss for both), a junk answer of the other's a win for a real one."""
    wins = tie_half(ours.reward(w) - other.reward(w))
    return float(np.mean(np.where(ours.junk, 0.0, np.where(other.junk, 1.0, wins))))


@torch.no_grad()
def steering(policy: ConditionalPolicy, encoder: ContextEncoder, bank: Bank, cfg: SteeringConfig,
             rng: np.random.Generator, mixed: ConditionalPolicy | None = None) -> dict:
    """Generations for corner and centre users (NP-DPO, in-context, unsteered base), scored, plus a z-swap.

    With `mixed` (the DPO-mixed policy: LoRA on, FiLM identity) its one answer per prompt is scored for every
    user too: it separates "steers towards this user" from "improves what all users like"."""
    if policy.lm.quant != "fp32":
        raise SystemExit(f"fluency is measured in fp32, but the policy was loaded in {policy.lm.quant}")
    users = {**{a: np.eye(3)[i] for i, a in enumerate(attributes.ATTRIBUTES)}, "centre": np.full(3, 1 / 3)}
    prompts = sorted({r["prompt"] for r in bank.records if r["split"] == "test"})[:cfg.prompts]
    sampling = Sampling(max_new_tokens=cfg.new_tokens, greedy=True)

    def scored(answers: Answers) -> ScoredAnswers:
        return score_answers(policy, prompts, answers)

    base = scored(answer(policy, prompts, None, sampling))
    rows = {"base": base}
    if mixed is not None:  # any z gives the mixed policy identity FiLM; a z (not None) keeps its LoRA on
        rows["dpo_mixed"] = scored(answer(mixed, prompts, torch.zeros(len(prompts), mixed.cfg.latent), sampling))
    rows["np_dpo, no labels"] = scored(answer(policy, prompts, encoder.latent(*bank.context([])).expand(
        len(prompts), -1), sampling))  # the policy for a user it knows nothing about
    wins: dict[str, dict[str, float]] = {}
    for name, w in tqdm(users.items(), desc="steering users", unit="user"):
        ep, _, _ = sample_users(bank, "train", 1, cfg.context, np.array([cfg.context]), rng, weights=w[None])
        z = encoder.latent(ep.ctx, ep.ctx_mask)
        steered = rows[f"np_dpo, {name}"] = scored(answer(policy, prompts, z.expand(len(prompts), -1), sampling))
        pairs = orient(bank.pairs.numpy()[ep.tgt_pair.numpy()[0]], ep.tgt_y.numpy()[0])  # [chosen, rejected]
        in_ctx = rows[f"in_context, {name}"] = scored(generate_base_shared_prefix(
            policy, [in_context_prompt(bank, pairs[:, 0], pairs[:, 1], p) for p in prompts], sampling))
        wins[name] = {"np_dpo": win_rate(w, steered, base), "in_context": win_rate(w, in_ctx, base)}
        if mixed is not None:
            wins[name] |= {"dpo_mixed": win_rate(w, rows["dpo_mixed"], base),
                           "np_dpo_vs_dpo_mixed": win_rate(w, steered, rows["dpo_mixed"])}
    per_prompt = {n: rows[f"np_dpo, {n}"].attributes for n in users}
    return {"prompts": len(prompts), "new_tokens": cfg.new_tokens, "users": {n: w.round(3).tolist() for n, w in users.items()},
            "win_rate": wins, "rows": {n: r.summary() for n, r in rows.items()},
            "z_swap": z_swap(per_prompt, {"base": base.attributes, "prior": rows["np_dpo, no labels"].attributes})}


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

    out: dict = {"axis": f"{a} - {b}"}
    for ref_name, ref in references.items():
        shift = {n: mean_se_dict((per_prompt[n] - ref) @ axis) for n in (a, b)}
        out[f"from_{ref_name}"] = {**{f"shift_with_z_{n}": v for n, v in shift.items()},
                                   "swaps": bool(shift[a]["mean"] > 0 > shift[b]["mean"])}
    gap = (per_prompt[a] - per_prompt[b]) @ axis
    out[f"{a}_vs_{b}"] = {**mean_se_dict(gap), "share_positive": float((gap > 0).mean())}
    return out


def implicit_reward_table(policies: dict[str, tuple[ConditionalPolicy, ContextEncoder | None]], bank: Bank,
                          cfg: SteeringConfig, max_tokens: int, reward_model=None
                          ) -> tuple[dict[str, dict[int, np.ndarray]], np.ndarray]:
    """({row: {k: per-user accuracy}}, groups): the reference rows, then each policy, on the same test users."""
    users = ImplicitRewardUsers.sample(bank, cfg)
    out = reference_accuracy(users, bank, reward_model)
    for name, (pol, enc) in policies.items():
        rows = encode_rows(pol, bank, max_tokens)
        ref = reference_logprobs(pol, rows, reference_key(pol.lm, bank, max_tokens), bank.split_rows("test"))
        out[name] = implicit_reward_accuracy(pol, enc, ref, rows, users, cfg)
    return out, users.groups


def implicit_reward_report(policies: dict, bank, cfg, max_tokens: int, reward_model=None) -> dict:
    """Implicit-reward accuracy by model, k and group, and each group's rise from k = 0 to the largest k
    (paired: the same users and targets at every k), beside the reference rows; printed, and returned as
    {row: {"by_k", "rise", "users"}}."""
    table, groups = implicit_reward_table(policies, bank, cfg, max_tokens, reward_model)
    members = {g: np.ones(len(groups), bool) if g == "all" else groups == g for g in ("all", *GROUPS)}
    out = {}
    for name, acc in table.items():
        rise = acc[max(KS)] - acc[0]
        out[name] = {"by_k": {str(k): {g: mean_se(a[m])[0] for g, m in members.items()} for k, a in acc.items()},
                     "rise": {g: mean_se_dict(rise[m]) for g, m in members.items()},
                     "users": {g: int(m.sum()) for g, m in members.items()}}
    print(f"\nImplicit-reward accuracy (%) on {cfg.targets} test-prompt pairs per user outside its {max(KS)}"
          f" labelled pairs; context size k uses the first k labels of the same users ("
          + ", ".join(f"{g} {int(m.sum())}" for g, m in members.items()) + " users):")
    print("| model | k | " + " | ".join(members) + " |")
    print("|---" * (len(members) + 2) + "|")
    for name, res in out.items():
        for k, row in res["by_k"].items():
            print(f"| {name} | {k} | " + " | ".join(f"{100 * v:.1f}" for v in row.values()) + " |")
        print(f"| {name} | rise 0 to {max(KS)} | " + " | ".join(
            f"{100 * r['mean']:+.1f} ± {100 * r['se']:.1f}" for r in res["rise"].values()) + " |")
    return out


def evaluate_policy(n_users: int, seed: int, models: str = "np_dpo,dpo_mixed", parts: str = "implicit,steering"
                    ) -> dict:
    """NP-DPO vs DPO-mixed implicit-reward accuracy by k and group; steering, in-context baseline, z-swap.

    `models` picks which checkpoints to score (steering needs np_dpo) and `parts` which measurements; no number
    depends on another model or part, so they can be evaluated in separate runs (in parallel on 2 cores)."""
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
                                                                 load_reward_model(paired_reward_dir(POLICY_DIR)))
    if "steering" not in parts or "np_dpo" not in policies:
        return out
    mixed = policies["dpo_mixed"][0] if "dpo_mixed" in policies else None
    steer = steering(*policies["np_dpo"], bank, cfg, np.random.default_rng(seed), mixed=mixed)
    print_steering(steer)
    return {**out, "steering": steer}


def print_steering(steer: dict) -> None:
    """Every generated row with its quality beside its attributes, the win-rates, and example answers."""
    print(f"\nSteering on {steer['prompts']} test prompts (greedy, {steer['new_tokens']} new tokens). Junk = the"
          " verdict of npdemo.model.quality; fluency = mean NLL (nats/token) under the fp32 base model, lower is"
          " better; EOS = share of answers that end on their own.")
    print("| row | junk | fluency | relevance | EOS | " + " | ".join(attributes.ATTRIBUTES) + " |")
    print("|---" * (5 + len(attributes.ATTRIBUTES)) + "|")
    for name, r in steer["rows"].items():
        print(f"| {name} | {r['junk_rate']:.2f} | {r['fluency']:.2f} | {r['relevance']:.2f} | {r['eos_share']:.2f} | "
              + " | ".join(f"{v:.2f}" for v in r["attributes"]) + " |")
    print("\nWin-rate against the base answer, by the true user's reward (quality part included); a junk answer "
          "is a loss for the row under test:")
    cols = list(next(iter(steer["win_rate"].values())))
    print("| user | " + " | ".join(cols) + " |\n" + "|---" * (len(cols) + 1) + "|")
    for user, row in steer["win_rate"].items():
        print(f"| {user} | " + " | ".join(f"{row[c]:.2f}" for c in cols) + " |")
    print("\nExample answers (the first three test prompts):")
    for name, r in steer["rows"].items():
        for i, text in enumerate(r["examples"]):
            print(f"  [{name} #{i + 1}] " + " ".join(text.split())[:220])
    print_z_swap(steer["z_swap"])


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
