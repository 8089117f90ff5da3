"""Sequence log-probabilities log pi(y | x, z) of bank responses, and the reference model's, cached on disk.

What DPO trains on and what the implicit reward r(y) = beta log pi(y | x, z) / ref(y | x) reads. Log-probs are
summed over response tokens only. A response's reference log-prob does not depend on the user, so it is computed
once per bank response (base weights, precision, corpus and sequence cut name the cache file).
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch
from tqdm import tqdm

from .. import config
from ..data.bank import Bank
from ..data.base_model import LoadedModel, fingerprint
from ..data.tokens import chat_ids, right_pad
from .losses import sequence_logprob
from .policy import ConditionalPolicy

Rows = list[tuple[list[int], int]]  # token ids of each (prompt, response) and where its response starts


def encode_rows(policy: ConditionalPolicy, bank: Bank, max_tokens: int) -> Rows:
    """Token ids of each bank response in its chat context (end-of-sequence appended, cut to max_tokens)."""
    eos = policy.tokenizer.eos_token_id
    rows = []
    for r in bank.records:
        ids, start = chat_ids(policy.tokenizer, r["prompt"], r["response"])
        rows.append(((ids + [eos])[:max_tokens], start))
    return rows


def logprobs(policy: ConditionalPolicy, rows: Rows, z: torch.Tensor | None) -> torch.Tensor:
    """Summed response-token log-probs of each row under pi(. | z) (z = None: as conditioned outside)."""
    ids, attn, resp = right_pad(rows, policy.tokenizer.pad_token_id)
    first = min(start for _, start in rows)  # logits are needed only from the earliest response token on
    keep = ids.shape[1] - first + 1
    dev = policy.lm.device
    with policy.conditioned(z):
        logits = policy.model(input_ids=ids.to(dev), attention_mask=attn.to(dev), logits_to_keep=keep).logits
    return sequence_logprob(logits, ids[:, first - 1:].to(dev), resp[:, first - 1:].to(dev))


def reference_key(lm: LoadedModel, bank: Bank, max_tokens: int) -> str:
    """What the cached reference log-probs depend on: base weights and precision, corpus, sequence cut."""
    return f"{fingerprint(lm.model)}-{lm.quant}-{bank.meta.get('corpus_sha256')}-{max_tokens}"


@torch.no_grad()
def reference_logprobs(policy: ConditionalPolicy, rows: Rows, key: str, needed: np.ndarray | None = None,
                       batch: int = 16) -> torch.Tensor:
    """log ref(response | prompt) per bank row (NaN where not needed yet), cached on disk under `key`.

    Only `needed` rows (default all) are computed, shortest first (less padding), and the cache is written
    every few batches, so an interrupted run resumes and a later caller only pays for rows it adds.
    """
    path = config.CACHE / "dpo" / f"ref-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
    ref = torch.load(path) if path.is_file() else torch.full((len(rows),), float("nan"))
    if len(ref) != len(rows):
        raise ValueError(f"{path} holds {len(ref)} rows but the bank has {len(rows)}: delete it to recompute")
    needed = np.arange(len(rows)) if needed is None else np.asarray(needed)
    todo = sorted((int(i) for i in needed if torch.isnan(ref[i])), key=lambda i: len(rows[i][0]))
    if not todo:
        return ref
    path.parent.mkdir(parents=True, exist_ok=True)
    with policy.reference():
        for n, start in enumerate(tqdm(range(0, len(todo), batch), desc="reference log-probs")):
            chunk = todo[start:start + batch]
            ref[chunk] = logprobs(policy, [rows[i] for i in chunk], None).float().cpu()
            if n % 20 == 19 or start + batch >= len(todo):
                torch.save(ref, path)
    return ref
