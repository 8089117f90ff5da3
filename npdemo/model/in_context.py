"""The in-context baseline: a user's labelled pairs written into the base model's prompt, no latent, no training."""
from __future__ import annotations

import numpy as np

from ..data.bank import Bank
from .generation import prompt_limit
from .policy import ConditionalPolicy


def in_context_prompt(bank: Bank, chosen: np.ndarray, rejected: np.ndarray, prompt: str) -> str:
    """The labelled pairs (bank rows, chosen and rejected) written into the prompt."""
    parts = ["Here are answers I liked and answers I liked less. Answer my question in the style I liked."]
    for c, r in zip(chosen, rejected):
        parts.append(f"Question: {bank.records[c]['prompt']}\nLiked: {bank.records[c]['response']}\n"
                     f"Liked less: {bank.records[r]['response']}")
    parts.append(f"My question: {prompt}")
    return "\n\n".join(parts)


def fitted_in_context_prompt(policy: ConditionalPolicy, bank: Bank, labels: list[tuple[int, int]], prompt: str) -> str:
    """The in-context prompt for labels given as (pair, 1 if its first response won), keeping the most recent
    labels that fit the prompt budget of the context window."""
    labels, limit = list(labels), prompt_limit(policy)
    while True:
        rows = bank.oriented(labels)
        text = in_context_prompt(bank, rows[:, 0], rows[:, 1], prompt)
        if not labels or len(policy.tokenizer(text)["input_ids"]) <= limit:
            return text
        labels = labels[1:]
