"""Does the policy steer? `python -m npdemo.evaluate policy`: the implicit reward here, generations in
`steering_tasks`.

- implicit-reward accuracy: r(y) = beta (log pi(y | x, z) - log ref(y | x)) ranks the user's chosen response
  first, on test-prompt pairs outside the context, by context size k and user group, beside the oracle and the
  NP-BTL reward model on the same users;
- steering, z-swap, steerability and the app-precision junk check: see `steering_tasks`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..config import POLICY_DIR, POLICY_MIXED_DIR
from ..data import base_model
from ..data.bank import Bank, load_bank
from ..data.episodes import Episodes
from ..data.users import GROUPS, sample_users, bank_shared, sample_weights
from ..model import checkpoints
from ..model.context_encoder import ContextEncoder
from ..model.logprobs import encode_rows, logprobs, reference_key, reference_logprobs
from ..model.policy import ConditionalPolicy
from ..model.policy_checkpoint import load_policy, paired_reward_dir
from ..model.reward import load_reward_model
from .metrics import mean_se, mean_se_dict, tie_half
from .steering_tasks import (GenerationConfig, app_precision, print_app_precision, print_steerability,
                             print_steering, rescore, steerability, steering, targets)

KS = (0, 1, 3, 5, 10)
PARTS = ("implicit", "steering", "steerability", "app")


@dataclass
class SteeringConfig:
    users_per_k: int = 40       # implicit-reward test users (the same users at every context size)
    targets: int = 8            # scored target pairs per user (outside its context)
    corner_fraction: float = 0.75  # implicit reward: each corner and the interior get about a quarter of users
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


def evaluate_policy(n_users: int, seed: int, models: str = "np_dpo,dpo_mixed", parts: str = ",".join(PARTS),
                    gen: GenerationConfig | None = None, policy_dir: Path = POLICY_DIR,
                    mixed_dir: Path = POLICY_MIXED_DIR, old_recipe: bool = False, app_quant: str = "auto",
                    rescore_from: str = "") -> dict:
    """NP-DPO vs DPO-mixed implicit-reward accuracy by k and group; steering beside the in-context baseline and
    DPO-mixed, z-swap, steerability, and the junk check in the app's precision (`app_quant`).

    `models` picks which checkpoints to score (steering needs np_dpo) and `parts` which measurements; no number
    depends on another model or part, so they can be evaluated in separate runs. `old_recipe` loads a recipe-1
    checkpoint (the app refuses it) for README's before rows. `rescore_from` (an earlier run's JSON) re-scores
    that run's stored steering answers with today's verdict instead of generating new ones."""
    bank, gen = load_bank(), gen or GenerationConfig(seed=seed)
    policies, train_cfg = {}, None
    chosen, wanted = models.split(","), parts.split(",")
    if not chosen or set(chosen) - {"np_dpo", "dpo_mixed"}:
        raise SystemExit(f"--models takes np_dpo and/or dpo_mixed, got {models!r}")
    if not wanted or set(wanted) - set(PARTS):
        raise SystemExit(f"--parts takes {', '.join(PARTS)}, got {parts!r}")
    dirs = {"np_dpo": Path(policy_dir), "dpo_mixed": Path(mixed_dir)}
    for name in chosen:
        train_cfg = checkpoints.read_manifest(dirs[name], "policy")["train"]
        lm = base_model.load(train_cfg.get("model") or None, quant=train_cfg["quant"])  # LoRA wraps it in place
        bank.check_model(lm)
        policies[name] = load_policy(dirs[name], lm, old_recipe)  # enc is None for the unconditioned DPO-mixed
    cfg = SteeringConfig(users_per_k=n_users, beta=train_cfg["beta"], seed=seed)
    out: dict = {"task": "policy", "users_per_k": n_users, "checkpoints": {n: str(d) for n, d in dirs.items()
                                                                           if n in chosen}}
    if "implicit" in wanted:
        out["implicit_reward_accuracy"] = implicit_reward_report(policies, bank, cfg, train_cfg["max_tokens"],
                                                                 load_reward_model(paired_reward_dir(dirs["np_dpo"])))
    if "np_dpo" not in policies:
        return out
    policy, encoder = policies["np_dpo"]
    if "steering" in wanted and rescore_from:
        out["steering"] = rescore(json.loads(Path(rescore_from).read_text())["steering"], policy, bank)
        out["rescored_from"] = rescore_from
    elif "steering" in wanted:
        mixed = policies["dpo_mixed"][0] if "dpo_mixed" in policies else None
        out["steering"] = steering(policy, encoder, bank, gen, mixed=mixed)
    if "steering" in wanted:
        out["steering"]["targets"] = targets(out["steering"])
        print_steering(out["steering"])
    if "steerability" in wanted:
        out["steerability"] = steerability(policy, encoder, bank, gen)
        print_steerability(out["steerability"])
    if "app" in wanted:
        lm = base_model.load(train_cfg.get("model") or None, quant=app_quant)
        app_policy, app_encoder = load_policy(dirs["np_dpo"], lm, old_recipe)
        out["app_precision"] = app_precision(app_policy, app_encoder, policy, bank, gen)
        print_app_precision(out["app_precision"])
    return out
