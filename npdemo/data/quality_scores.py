"""Answer quality of every corpus response, stored beside the bank (assets/quality-v1.npz), and the rules that
turn fluency and relevance into a junk verdict and a quality score q in [0, 1].

Fluency needs the base model, so `npdemo.train.bank_build.build_quality` computes it once per response (fp32)
and simulated users read it from here: r_w(y) = sum_k w_k a_k(y) + lambda q(y) - P junk(y) stays cheap.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config import ASSETS
from .corpus import CORPUS, file_sha256, load_corpus

QUALITY = ASSETS / "quality-v1.npz"
MAX_NLL = 5.5    # mean per-token NLL (nats) under the base model above which a reply is junk: corpus max 5.34
GOOD_NLL = 1.5   # ... at or below which fluency counts fully in q (corpus 1st percentile 1.41)


def fluency_score(nll: np.ndarray) -> np.ndarray:
    """Fluency mapped to [0, 1]: 1 at GOOD_NLL or better, 0 at MAX_NLL; unmeasured (NaN, too short) is 0.5."""
    s = np.clip((MAX_NLL - np.asarray(nll, dtype=np.float64)) / (MAX_NLL - GOOD_NLL), 0.0, 1.0)
    return np.where(np.isnan(s), 0.5, s)


def quality_score(nll: np.ndarray, relevance: np.ndarray) -> np.ndarray:
    """q = the mean of fluency score and relevance (cosine clipped to [0, 1])."""
    return 0.5 * (fluency_score(nll) + np.clip(relevance, 0.0, 1.0))


def is_junk(text_junk: np.ndarray, nll: np.ndarray) -> np.ndarray:
    """Junk by text (real words, symbols, repetition) or by the language model (NLL over MAX_NLL)."""
    return np.asarray(text_junk, dtype=bool) | (np.nan_to_num(np.asarray(nll, dtype=np.float64)) > MAX_NLL)


@dataclass
class QualityScores:
    """Per-row quality of the corpus, aligned with the bank's rows."""
    fluency: np.ndarray     # (R,) mean NLL of the response under the frozen base model, fp32
    relevance: np.ndarray   # (R,) prompt-response cosine from the sentence embedder
    junk: np.ndarray        # (R,) bool: the verdict
    q: np.ndarray           # (R,) quality score in [0, 1]


class QualityError(RuntimeError):
    """The quality file is missing or belongs to another corpus."""


def load_quality_scores() -> QualityScores:
    """The stored scores, checked against the corpus they were computed from."""
    if not QUALITY.is_file():
        raise QualityError(f"{QUALITY} is missing: run `python -m npdemo.train quality`")
    f = np.load(QUALITY)
    if str(f["corpus_sha256"]) != file_sha256(CORPUS) or len(f["fluency"]) != len(load_corpus()):
        raise QualityError(f"{QUALITY} was computed for another corpus: run `python -m npdemo.train quality`")
    return QualityScores(f["fluency"], f["relevance"], is_junk(f["text_junk"], f["fluency"]),
                         quality_score(f["fluency"], f["relevance"]))
