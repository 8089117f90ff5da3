"""NP-DPO training: simulated users' labelled pairs -> z (NP context encoder) -> DPO on the FiLM + LoRA policy.

Per step: a few simulated users, each with a context of 0..k_max pairs (giving z) and target pairs disjoint
from the context; loss = DPO(pi(chosen | z), pi(rejected | z), ref(chosen), ref(rejected)). The reference
is the base model (LoRA and FiLM off), and a response's reference log-prob does not depend on the user, so it
is computed once per bank response and cached. Log-probs are summed over response tokens only.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from .config import CACHE
from .context_encoder import ContextEncoder
from .embeddings import Bank
from .losses import dpo_loss, sequence_logprob
from .policy import ConditionalPolicy
from .users import sample_users


@dataclass
class DPOConfig:
    steps: int = 400            # optimiser steps
    users: int = 4              # simulated users per step
    pairs_per_user: int = 2     # target pairs per user per step (2 sequences each)
    k_max: int = 6              # context sizes 0..k_max, as in the paper's DPO runs
    beta: float = 0.1           # DPO beta
    lr: float = 3e-4            # LoRA + FiLM learning rate
    max_tokens: int = 192       # longest (prompt + response) sequence; longer responses are cut
    conditioned: bool = True    # False: the DPO-mixed baseline, same data and steps but no latent (FiLM off)
    seed: int = 0


def encode_rows(policy: ConditionalPolicy, bank: Bank, max_tokens: int) -> list[tuple[list[int], int]]:
    """Token ids of each bank response in its chat context, and where the response starts."""
    from .embeddings import chat_ids

    eos = policy.tokenizer.eos_token_id
    rows = []
    for r in bank.records:
        ids, start = chat_ids(policy.tokenizer, r["prompt"], r["response"])
        rows.append(((ids + [eos])[:max_tokens], start))
    return rows


def pad(rows: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and response mask (1 on response tokens only)."""
    L = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), L), pad_id)
    attn = torch.zeros(len(rows), L, dtype=torch.long)
    resp = torch.zeros(len(rows), L, dtype=torch.long)
    for i, (seq, start) in enumerate(rows):
        ids[i, :len(seq)] = torch.tensor(seq)
        attn[i, :len(seq)] = 1
        resp[i, start:len(seq)] = 1
    return ids, attn, resp


def logprobs(policy: ConditionalPolicy, rows: list[tuple[list[int], int]], z: torch.Tensor | None) -> torch.Tensor:
    """Summed response-token log-probs of each row under pi(. | z) (z = None: as conditioned outside)."""
    ids, attn, resp = pad(rows, policy.tokenizer.pad_token_id)
    dev = policy.lm.device
    with policy.conditioned(z):
        logits = policy.model(input_ids=ids.to(dev), attention_mask=attn.to(dev)).logits
    return sequence_logprob(logits, ids.to(dev), resp.to(dev))


def reference_key(lm, bank: Bank, max_tokens: int) -> str:
    """What the cached reference log-probs depend on: base weights and precision, corpus, sequence cut."""
    from .base_model import fingerprint

    return f"{fingerprint(lm.model)}-{lm.quant}-{bank.meta.get('corpus_sha256')}-{max_tokens}"


@torch.no_grad()
def reference_logprobs(policy: ConditionalPolicy, rows: list[tuple[list[int], int]], key: str,
                       batch: int = 16) -> torch.Tensor:
    """log ref(response | prompt) for every bank row, cached on disk under `key` (model and corpus hashes)."""
    path = CACHE / "dpo" / f"ref-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
    if path.is_file():
        return torch.load(path)
    out = []
    with policy.reference():
        for i in tqdm(range(0, len(rows), batch), desc="reference log-probs"):
            out.append(logprobs(policy, rows[i:i + batch], None).float().cpu())
    ref = torch.cat(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ref, path)
    return ref


def dpo_step_batch(bank: Bank, cfg: DPOConfig, rng: np.random.Generator):
    """Users with contexts (for z) and target pairs outside the context, oriented [chosen, rejected] rows."""
    T = cfg.k_max + cfg.pairs_per_user
    k = rng.integers(0, cfg.k_max + 1, size=cfg.users)
    ep, _, _ = sample_users(bank, "train", cfg.users, T, k, rng)
    pairs = bank.pairs.numpy()[ep.tgt_pair.numpy()]  # (U, T, 2) rows
    y = ep.tgt_y.numpy().astype(bool)
    chosen, rejected, user = [], [], []
    for u in range(cfg.users):
        for t in range(k[u], k[u] + cfg.pairs_per_user):  # targets never include the context
            a, b = pairs[u, t]
            chosen.append(a if y[u, t] else b)
            rejected.append(b if y[u, t] else a)
            user.append(u)
    return ep, np.array(chosen), np.array(rejected), np.array(user)


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


def train_dpo(policy: ConditionalPolicy, encoder: ContextEncoder, bank: Bank, cfg: DPOConfig, ref_key: str,
              log_every: int = 20) -> list[dict]:
    """Train LoRA + FiLM with the NP encoder frozen (LoRA only when not conditioned); returns the log."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    disable_cpu_weight_packing(policy.model)
    rows = encode_rows(policy, bank, cfg.max_tokens)
    ref = reference_logprobs(policy, rows, ref_key)
    params = [p for p in policy.model.parameters() if p.requires_grad] + list(policy.film.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    policy.model.train()
    log, window = [], []
    bar = tqdm(range(1, cfg.steps + 1), desc="NP-DPO")
    for step in bar:
        ep, c, r, user = dpo_step_batch(bank, cfg, rng)
        with torch.no_grad():
            z = encoder.latent(ep.ctx, ep.ctx_mask)[user]  # (P, Z), frozen encoder
        lp = logprobs(policy, [rows[i] for i in c] + [rows[i] for i in r],
                      torch.cat([z, z]) if cfg.conditioned else None)
        pi_c, pi_r = lp.chunk(2)
        losses, rc, rr = dpo_loss(pi_c, pi_r, ref[c].to(lp), ref[r].to(lp), cfg.beta)
        opt.zero_grad(set_to_none=True)
        losses.mean().backward()
        opt.step()
        window.append((losses.mean().item(), (rc > rr).float().mean().item()))
        if step % log_every == 0 or step == cfg.steps:
            loss, acc = np.mean(window, axis=0)
            log.append({"step": step, "loss": float(loss), "implicit_reward_acc": float(acc)})
            bar.write(f"dpo step {step:5d} | loss {loss:.4f} | implicit-reward acc {acc:.3f}")
            window = []
    policy.model.eval()
    return log
