"""Response embeddings: each (prompt, response) chat-formatted, run once through the base model, its hidden
states pooled into one vector.

The pooling is chosen by measurement when the bank is built (`npdemo.train.bank_build`): a ridge probe from each
candidate (`POOLINGS`, `COMBINATIONS`) to the three attribute scores, R^2 on held-out prompts. The paper took the
last token of an 8B model; on SmolLM2 the mean over response tokens carried style better, so both (and a middle
layer) are candidates.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from .base_model import LoadedModel
from .tokens import chat_ids, right_pad

POOLINGS = ("last_token", "mean_all", "mean_response", "mean_response_mid")
# candidate features that join two poolings of the same pass (style lives in several places)
COMBINATIONS = {"mean_response+last_token": ("mean_response", "last_token"),
                "mean_response+mean_response_mid": ("mean_response", "mean_response_mid")}


def parts(pooling: str) -> tuple[str, ...]:
    """The poolings a feature is made of (one, or the two of a combination)."""
    return COMBINATIONS.get(pooling, (pooling,))


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L, D) states averaged over positions where mask (B, L) is 1."""
    m = mask.to(states.dtype)[..., None]
    return (states * m).sum(1) / m.sum(1)


@torch.no_grad()
def embed(lm: LoadedModel, prompts: list[str], responses: list[str], poolings: tuple[str, ...] = ("mean_response",),
          batch_size: int = 16, max_tokens: int = 384, progress: bool = True) -> dict[str, np.ndarray]:
    """Pooled hidden states {pooling: (N, D) float32} of each (prompt, response), right-padded batches."""
    unknown = set(poolings) - set(POOLINGS)
    if unknown:
        raise ValueError(f"unknown pooling {sorted(unknown)}; choose from {POOLINGS}")
    backbone = lm.model.get_decoder()  # no lm_head: hidden states only
    mid = lm.model.config.num_hidden_layers // 2
    out: dict[str, list[np.ndarray]] = {p: [] for p in poolings}
    order = np.argsort([-len(r) for r in responses])  # similar lengths together: less padding
    for start in tqdm(range(0, len(order), batch_size), desc="embedding responses", disable=not progress):
        idx = order[start:start + batch_size]
        rows = []
        for ids, r0 in (chat_ids(lm.tokenizer, prompts[i], responses[i]) for i in idx):
            ids = ids[:max_tokens]
            rows.append((ids, min(r0, len(ids) - 1)))  # at least the last token counts as response
        ids, attn, resp = right_pad(rows, lm.tokenizer.pad_token_id)
        hs = backbone(input_ids=ids.to(lm.device), attention_mask=attn.to(lm.device),
                      output_hidden_states="mean_response_mid" in poolings)
        final = hs.last_hidden_state.float().cpu()  # (B, L, D)
        last = attn.sum(1) - 1
        for p in poolings:
            if p == "last_token":
                v = final[torch.arange(len(idx)), last]
            elif p == "mean_response_mid":
                v = masked_mean(hs.hidden_states[mid].float().cpu(), resp)
            else:
                v = masked_mean(final, attn if p == "mean_all" else resp)
            out[p].append(v.numpy())
    inverse = np.argsort(order)
    return {p: np.concatenate(v)[inverse] for p, v in out.items()}


def pooled_features(lm: LoadedModel, pooling: str, prompts: list[str], responses: list[str]) -> np.ndarray:
    """Raw (unstandardised) features of one pooling or combination: (N, D · parts)."""
    pooled = embed(lm, prompts, responses, poolings=parts(pooling), progress=False)
    return np.concatenate([pooled[p] for p in parts(pooling)], axis=1)
