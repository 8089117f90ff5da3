"""Token ids the way every model pass here wants them: chat-formatted exchanges, padded batches with their
masks, and batches whose rows share a prefix (its keys/values computed once and copied to every row)."""
from __future__ import annotations

import torch


def chat_text(tokenizer, turns: list[dict], generation_prompt: bool = True) -> str:
    """The chat template applied to `turns` (with the assistant header after them by default)."""
    return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt)


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of text as it stands (no special tokens added: the chat template already holds them)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def chat_ids(tokenizer, prompt: str, response: str) -> tuple[list[int], int]:
    """Token ids of the chat-formatted exchange and the index where the response starts."""
    head_ids = encode(tokenizer, chat_text(tokenizer, [{"role": "user", "content": prompt}]))
    return head_ids + encode(tokenizer, response), len(head_ids)


def right_pad(rows: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, start) rows -> right-padded ids, attention mask, and response mask (1 from `start` to the row's end)."""
    L = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), L), pad_id)
    attn = torch.zeros(len(rows), L, dtype=torch.long)
    resp = torch.zeros(len(rows), L, dtype=torch.long)
    for i, (seq, start) in enumerate(rows):
        ids[i, :len(seq)] = torch.tensor(seq)
        attn[i, :len(seq)] = 1
        resp[i, start:len(seq)] = 1
    return ids, attn, resp


def left_pad(rows: list[list[int]], pad_id: int, prefix: list[int] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [prefix | padding | row]: ids and attention mask. Padding sits left of each row's own tokens (after
    a shared prefix, if any), so every row's last token is the last position, as generation needs."""
    P, L = len(prefix), max(map(len, rows))
    ids = torch.full((len(rows), P + L), pad_id)
    mask = torch.zeros(len(rows), P + L, dtype=torch.long)
    if P:
        ids[:, :P], mask[:, :P] = torch.tensor(list(prefix), dtype=torch.long), 1
    for i, r in enumerate(rows):
        ids[i, P + L - len(r):], mask[i, P + L - len(r):] = torch.tensor(r, dtype=torch.long), 1
    return ids, mask


def common_prefix(rows: list[list[int]]) -> int:
    """Length of the token prefix all rows share, leaving every row at least one token of its own."""
    P = 0
    while P < min(map(len, rows)) - 1 and all(r[P] == rows[0][P] for r in rows):
        P += 1
    return P


@torch.no_grad()
def generate_after_prefix(model, ids: torch.Tensor, mask: torch.Tensor, prefix: int, **generate_kwargs
                          ) -> torch.Tensor:
    """`model.generate` on rows that share their first `prefix` tokens: the prefix runs once, its cache is copied
    to every row (positions follow the mask, so each row decodes as it would alone). Returns generate's ids."""
    cache = None
    if prefix:
        cache = model(input_ids=ids[:1, :prefix], use_cache=True).cache
        cache.batch_repeat_interleave(len(ids))
    return model.generate(input_ids=ids, attention_mask=mask, cache=cache, **generate_kwargs)
