"""NP-DPO training: simulated users' labelled pairs -> z (NP context encoder) -> DPO on the FiLM + LoRA policy.

Per step: a few simulated users, each with a context of 0..k_max pairs (giving z) and target pairs disjoint
from the context; loss = DPO(pi(chosen | z), pi(rejected | z), ref(chosen), ref(rejected)) + alpha * the
chosen response's per-token NLL (RPO: the likelihood anchor that keeps the text fluent). The reference
is the base model (LoRA and FiLM off), and a response's reference log-prob does not depend on the user, so it
is computed once per bank response and cached. Log-probs are summed over response tokens only.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from .. import config
from ..data.bank import Bank
from ..data.episodes import Episodes, orient
from ..data.users import bank_shared, sample_users
from ..model.context_encoder import ContextEncoder
from ..model.logprobs import Rows, encode_rows, logprobs, reference_logprobs
from ..model.losses import dpo_loss, rpo_loss
from ..model.policy import ConditionalPolicy
from . import distributed


@dataclass
class DPOConfig:
    steps: int = 240            # optimiser steps (about 30 min on a 2-core CPU in fp32)
    users: int = 4              # simulated users per step, each with its own latent
    pairs_per_user: int = 1     # target pairs per user per step (2 sequences each)
    target_candidates: int = 6  # candidate target pairs per user; it trains on its clearest (largest |r_w gap|)
    k_max: int = 6              # context sizes 0..k_max, as in the paper's DPO runs
    beta: float = 0.1           # DPO beta
    rpo_alpha: float = 1.0      # weight of the chosen response's per-token NLL (0: plain DPO, recipe v1)
    chosen_emoji_run: int = 1   # longest emoji run a chosen target may hold (recipe 5; -1: any, recipe 3)
    lr: float = 5e-4            # LoRA + FiLM learning rate (constant)
    max_grad_norm: float = 1.0  # gradient clipping, as in trl's DPO trainer
    max_tokens: int = 192       # longest (prompt + response) sequence; longer responses are cut
    conditioned: bool = True    # False: the DPO-mixed baseline, same data and steps but no latent (FiLM off)
    train_encoder: bool = False  # fine-tune the NP context encoder with the policy (frozen by default)
    seed: int = 0
    snapshot_every: int = 0     # also save the policy every this many steps (an ablation's shorter runs; 0: never)


@dataclass
class DPOBatch:
    """One step's data: the users' contexts (for z) and their target pairs as bank rows, one user index per pair."""
    ep: Episodes           # users' contexts and drawn targets
    chosen: np.ndarray     # (P,) bank rows of the chosen responses
    rejected: np.ndarray   # (P,) bank rows of the rejected responses
    user: np.ndarray       # (P,) which user each pair belongs to


def dpo_step_batch(bank: Bank, cfg: DPOConfig, rng: np.random.Generator) -> DPOBatch:
    """Users with contexts (for z) and target pairs outside the context, oriented [chosen, rejected] rows.

    Each user draws `target_candidates` target pairs after its context and keeps the `pairs_per_user` it feels most
    strongly about (largest true reward gap; the label is still its BTL choice): a random pair of a 3-attribute
    user is often a near tie, which teaches the policy nothing about that user. A pair with a junk response is
    never a target: DPO must not learn from junk, even as the rejected side's foil. Nor is a pair whose chosen
    side holds an emoji run longer than `chosen_emoji_run`: with RPO it teaches "an emoji follows an emoji", which
    greedy decoding turns into emoji soup (as the rejected side it stays: it then teaches the opposite).
    """
    T = cfg.k_max + cfg.target_candidates
    k = rng.integers(0, cfg.k_max + 1, size=cfg.users)
    ep, w, _ = sample_users(bank, "train", cfg.users, T, k, rng)
    pairs = bank.pairs.numpy()[ep.tgt_pair.numpy()]  # (U, T, 2) rows
    shared = bank_shared(bank)
    gap = np.abs(((bank.attributes[pairs[..., 0]] - bank.attributes[pairs[..., 1]]) * w[:, None]).sum(-1)
                 + shared[pairs[..., 0]] - shared[pairs[..., 1]])
    clean = np.isin(ep.tgt_pair.numpy(), bank.clean_pairs())
    rows = orient(pairs, ep.tgt_y.numpy())  # (U, T, 2) [chosen, rejected]
    if cfg.chosen_emoji_run >= 0:
        clean &= bank.emoji_runs[rows[..., 0]] <= cfg.chosen_emoji_run
    chosen, rejected, user = [], [], []
    for u in range(cfg.users):
        after = np.arange(k[u], k[u] + cfg.target_candidates)  # targets never include the context
        after = after[clean[u, after]]
        for t in after[np.argsort(-gap[u, after], kind="stable")[:cfg.pairs_per_user]]:
            chosen.append(rows[u, t, 0])
            rejected.append(rows[u, t, 1])
            user.append(u)
    return DPOBatch(ep, np.array(chosen), np.array(rejected), np.array(user))


def disable_cpu_weight_packing(model: torch.nn.Module) -> None:
    """bitsandbytes on AVX512-BF16 CPUs: after one no-grad forward, NF4 weights stay repacked for a kernel with
    no autograd, so LoRA gradients silently vanish. Turning the packing off before training avoids it."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False


def trainable(policy: ConditionalPolicy) -> list[torch.nn.Parameter]:
    """What NP-DPO trains: the LoRA adapters, then FiLM (FiLM gets no gradient when not conditioned)."""
    return [p for p in policy.model.parameters() if p.requires_grad] + list(policy.film.parameters())


def dpo_update(policy: ConditionalPolicy, opt: torch.optim.Optimizer, params: list[torch.nn.Parameter],
               chosen: Rows, rejected: Rows, ref_c: torch.Tensor, ref_r: torch.Tensor, z: torch.Tensor, cfg: DPOConfig,
               n_pairs: int, ranks: distributed.Ranks = distributed.Ranks()) -> torch.Tensor:
    """One optimiser step of DPO + RPO on these pairs (z: their latents, unused when not conditioned); the loss is
    the mean over the step's `n_pairs` pairs on all ranks. Returns (loss, implicit-reward hits, chosen per-token
    NLL), each summed over the pairs and ranks."""
    lp = logprobs(policy, chosen + rejected, torch.cat([z, z]).to(policy.lm.device) if cfg.conditioned else None)
    pi_c, pi_r = lp.chunk(2)
    losses, rc, rr = dpo_loss(pi_c, pi_r, ref_c.to(lp), ref_r.to(lp), cfg.beta)
    n_tok = torch.tensor([len(ids) - start for ids, start in chosen])
    nll = -pi_c.detach() / n_tok
    losses = rpo_loss(losses, pi_c, n_tok, cfg.rpo_alpha)
    opt.zero_grad(set_to_none=True)
    (losses.sum() / n_pairs).backward()
    distributed.sum_gradients(params, ranks)
    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    opt.step()
    return distributed.sum_across(torch.tensor([losses.sum().item(), (rc > rr).sum().item(), nll.sum().item()]),
                                  ranks)


def save_run_state(path: Path, policy: ConditionalPolicy, modules: dict, **extra) -> None:
    """An unfinished run's state: the LoRA weights, `modules`' state dicts (FiLM, optimiser, ...) and `extra`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lora = [p.detach().clone() for p in policy.model.parameters() if p.requires_grad]
    torch.save({**extra, "lora": lora, **{name: m.state_dict() for name, m in modules.items()}}, path)


def load_run_state(path: Path, policy: ConditionalPolicy, modules: dict) -> dict:
    """Put a saved run state back into the policy's LoRA and `modules`; returns the state (its `extra` too)."""
    state = torch.load(path, weights_only=False)
    for name, module in modules.items():
        module.load_state_dict(state[name])
    with torch.no_grad():
        for p, saved in zip([p for p in policy.model.parameters() if p.requires_grad], state["lora"]):
            p.copy_(saved)
    return state


def _state_path(cfg: DPOConfig, ref_key: str) -> Path:
    """Where an unfinished run keeps its state; the name pins the run's config and reference."""
    key = json.dumps([asdict(cfg), ref_key], sort_keys=True, default=str)
    return config.CACHE / "dpo" / f"run-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def train_dpo(policy: ConditionalPolicy, encoder: ContextEncoder, bank: Bank, cfg: DPOConfig, ref_key: str,
              log_every: int = 20, save_every: int = 25, ranks: distributed.Ranks = distributed.Ranks(),
              snapshot: Callable[[int, list[dict]], None] | None = None) -> list[dict]:
    """Train LoRA + FiLM (LoRA only when not conditioned; the encoder too with cfg.train_encoder); returns the log.

    Every `save_every` steps the trainable weights, optimiser and random state go to the cache, and a run
    started again with the same config and reference resumes there. Under a launcher each rank trains on its
    slice of every step's users and gradients are summed across ranks (npdemo.distributed). With
    cfg.snapshot_every, `snapshot(step, log)` saves the policy as it is at those steps: the constant learning rate
    makes a snapshot at step n the same policy a run of n steps would give.
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    batches = [dpo_step_batch(bank, cfg, rng) for _ in range(cfg.steps)]  # fixed by the seed: resumable
    disable_cpu_weight_packing(policy.model)
    rows = encode_rows(policy, bank, cfg.max_tokens)
    used = np.unique(np.concatenate([np.concatenate([b.chosen, b.rejected]) for b in batches]))
    if not ranks.main:
        distributed.barrier(ranks)  # rank 0 computes and caches the reference; the others then read it
    ref = reference_logprobs(policy, rows, ref_key, used)  # only the responses this run trains on
    if ranks.main:
        distributed.barrier(ranks)
    mine = ranks.users(cfg.users)
    params = trainable(policy)
    encoder.requires_grad_(cfg.train_encoder)
    if cfg.train_encoder:
        params += list(encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    modules = {"film": policy.film, "encoder": encoder, "opt": opt}
    state_path, log, first = _state_path(cfg, ref_key), [], 1
    if state_path.is_file():
        state = load_run_state(state_path, policy, modules)
        log, first = state["log"], state["step"] + 1
        torch.set_rng_state(state["torch_rng"])
        print(f"resuming {state_path.name} at step {first}")
    policy.model.train()
    encoder.train(cfg.train_encoder)
    window = []
    bar = tqdm(range(first, cfg.steps + 1), desc="NP-DPO" if cfg.conditioned else "DPO-mixed",
               initial=first - 1, total=cfg.steps, disable=not ranks.main)
    for step in bar:
        batch = batches[step - 1]
        ep, c, r, user = batch.ep, batch.chosen, batch.rejected, batch.user
        with torch.set_grad_enabled(cfg.train_encoder):
            z = encoder.latent(ep.ctx, ep.ctx_mask)[user]  # (P, Z), one latent per target pair
        keep = np.isin(user, mine)  # this rank's users' pairs (all of them in one process)
        c, r, z = c[keep], r[keep], z[torch.from_numpy(keep)]
        stats = dpo_update(policy, opt, params, [rows[i] for i in c], [rows[i] for i in r], ref[c], ref[r], z, cfg,
                           len(keep), ranks)
        window.append((stats / len(keep)).tolist())
        if step % log_every == 0 or step == cfg.steps:
            loss, acc, chosen_nll = np.mean(window, axis=0)
            log.append({"step": step, "loss": float(loss), "implicit_reward_acc": float(acc),
                        "chosen_nll": float(chosen_nll)})
            if ranks.main:
                bar.write(f"dpo step {step:5d} | loss {loss:.4f} | implicit-reward acc {acc:.3f} | "
                          f"chosen NLL {chosen_nll:.3f}")
            window = []
        if ranks.main and snapshot is not None and cfg.snapshot_every and step % cfg.snapshot_every == 0 \
                and step < cfg.steps:
            snapshot(step, log)
        if ranks.main and step % save_every == 0 and step < cfg.steps:
            save_run_state(state_path, policy, modules, step=step, log=log, torch_rng=torch.get_rng_state())
    policy.model.eval()
    encoder.eval().requires_grad_(False)
    if ranks.main:
        state_path.unlink(missing_ok=True)  # finished: the caller saves the checkpoint
    return log
