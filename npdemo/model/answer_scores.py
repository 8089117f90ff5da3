"""Every score a simulated user's reward reads off generated answers: junk, fluency, relevance, attributes.

One place for evaluation's rows and for training's on-policy pairs, so the policy is trained on the very reward
it is judged by (junk loses to any real answer; `npdemo.data.users`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data import attributes
from ..data.quality_scores import quality_score
from ..data.users import shared_reward
from . import quality
from .generation import Answers
from .policy import ConditionalPolicy


@dataclass
class ScoredAnswers:
    """One row's answers (a model for a user, on the test prompts) with every score a reader needs beside them."""
    texts: list[str]
    ended: np.ndarray       # (P,) bool: stopped at end-of-sequence (a re-scored old file: the row's share)
    attributes: np.ndarray  # (P, 3), junk scored 0 on concise and structured
    fluency: np.ndarray     # (P,) mean NLL under the fp32 base model over the whole answer (NaN: too short)
    relevance: np.ndarray   # (P,)
    junk: np.ndarray        # (P,) bool
    fluency_start: np.ndarray | None = None  # (P,) the same over the first fluency_tokens tokens: equal length

    def reward(self, w: np.ndarray) -> np.ndarray:
        """The simulated user's reward of each answer, quality part included: (P,); w (3,), or (P, 3) per answer."""
        return (self.attributes * w).sum(-1) + shared_reward(quality_score(self.fluency, self.relevance), self.junk)

    def summary(self, examples: int = 3) -> dict:
        start = self.fluency if self.fluency_start is None else self.fluency_start
        return {"attributes": self.attributes.mean(0).round(4).tolist(), "junk": int(self.junk.sum()),
                "junk_rate": float(self.junk.mean()), "fluency": round(float(np.nanmean(self.fluency)), 3),
                "fluency_start": round(float(np.nanmean(start)), 3),
                "relevance": round(float(self.relevance.mean()), 3), "eos_share": float(self.ended.mean()),
                "examples": self.texts[:examples], "answers": self.texts, "ended": self.ended.tolist()}


def score_answers(scorer: ConditionalPolicy, prompts: list[str], answers: Answers,
                  fluency_tokens: int | None = None) -> ScoredAnswers:
    """Fluency under the frozen base of `scorer` (fp32 in evaluation), relevance, junk, attributes."""
    with scorer.reference():
        nll = quality.fluency(scorer.model, scorer.tokenizer, prompts, answers.texts)
        start = None if fluency_tokens is None else quality.fluency(scorer.model, scorer.tokenizer, prompts,
                                                                    answers.texts, max_tokens=fluency_tokens)
    junk = np.array([quality.verdict(t, n)[0] for t, n in zip(answers.texts, nll)])
    return ScoredAnswers(answers.texts, np.array(answers.ended), attributes.score_many(answers.texts, junk), nll,
                         quality.relevance(prompts, answers.texts), junk, start)
