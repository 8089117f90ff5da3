"""The pair bank (assets/bank-v1.safetensors): every corpus response as a feature vector, with its attribute
scores, every within-prompt pair of responses (pairs always share a prompt), and the feature standardisation the
NP models expect. It is built by `npdemo.train.bank_build`; here it is read, checked and queried.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from ..config import ASSETS
from .base_model import LoadedModel, fingerprint
from .corpus import CORPUS, file_sha256, load_corpus
from .embeddings import parts, pooled_features
from .episodes import orient
from .junk import emoji_run
from .quality_scores import QualityError, QualityScores, load_quality_scores

BANK = ASSETS / "bank-v1.safetensors"


class BankError(RuntimeError):
    """A pair bank that is missing, damaged, or belongs to another corpus or base model."""


@dataclass
class Bank:
    """The shipped pair bank: features, attributes and within-prompt pairs, aligned with the corpus rows."""
    features: torch.Tensor    # (R, D) float32, standardised
    attributes: np.ndarray    # (R, 3)
    pairs: torch.Tensor       # (N, 2) response row indices, same prompt
    pair_split: np.ndarray    # (N,) "train" / "val" / "test"
    mean: torch.Tensor        # (D,) standardisation of raw pooled states
    std: torch.Tensor         # (D,)
    meta: dict
    records: list[dict]       # corpus rows
    quality: QualityScores | None = None  # answer quality of each row (None: a toy bank in tests)

    def standardise(self, pooled: torch.Tensor) -> torch.Tensor:
        return (pooled - self.mean) / self.std

    def features_for(self, lm: LoadedModel, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """Features of new (prompt, response) rows, pooled and standardised exactly like the bank's: (N, D)."""
        return self.standardise(torch.tensor(pooled_features(lm, self.meta["pooling"], prompts, responses)))

    def check_model(self, lm: LoadedModel) -> None:
        """Refuse a base model other than the one whose hidden states the bank (and its checkpoints) hold."""
        n = len(parts(self.meta.get("pooling", "")))  # a combination joins two poolings
        d = lm.model.config.hidden_size
        if d * n != self.features.shape[1]:
            raise BankError(f"model {lm.name!r} has hidden size {d}, but the pair bank and reward checkpoints "
                            f"were built from {self.meta.get('model')!r} with {self.features.shape[1] // n}")
        if fingerprint(lm.model) != self.meta.get("model_fingerprint"):
            raise BankError(f"model {lm.name!r} has other weights than {self.meta.get('model')!r}, which the "
                            "pair bank was built from; rebuild with `python -m npdemo.train reward --model=...`")

    def split_pairs(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.pair_split == split)

    def split_rows(self, split: str) -> np.ndarray:
        """Rows (responses) whose prompt is in `split`."""
        return np.array([i for i, r in enumerate(self.records) if r["split"] == split])

    def oriented(self, labels: list[tuple[int, int]]) -> np.ndarray:
        """Rows [chosen, rejected] (K, 2) of labelled pairs given as (pair index, 1 if its first row won)."""
        if not labels:
            return np.zeros((0, 2), dtype=np.int64)
        index, a_won = (np.array(x, dtype=np.int64) for x in zip(*labels))
        return orient(self.pairs.numpy()[index], a_won)

    def context(self, labels: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Labelled pairs as one user's NP context: features (1, K, 2, d) [chosen, rejected] and mask (1, K)."""
        return self.features[torch.from_numpy(self.oriented(labels))][None], torch.ones(1, len(labels), dtype=torch.bool)

    def row_diffs(self, values: np.ndarray, labels: list[tuple[int, int]]) -> np.ndarray:
        """Per-row values (R, ...) of chosen minus rejected for labelled pairs: (1, K, ...); with the attributes
        and the shared reward part, what the exact Bayes posterior reads."""
        rows = self.oriented(labels)
        return (values[rows[:, 0]] - values[rows[:, 1]])[None]

    @cached_property
    def emoji_runs(self) -> np.ndarray:
        """(R,) the longest emoji run in each response (NP-DPO keeps long runs off the chosen side)."""
        return np.array([emoji_run(r["response"]) for r in self.records], dtype=np.int64)

    def clean_pairs(self) -> np.ndarray:
        """Indices of pairs with no junk response: the ones people are shown and DPO may target."""
        if self.quality is None:
            return np.arange(len(self.pairs))
        pairs = self.pairs.numpy()
        return np.flatnonzero(~(self.quality.junk[pairs[:, 0]] | self.quality.junk[pairs[:, 1]]))


def load_bank(path: Path = BANK) -> Bank:
    """Load the bank and check it belongs to the shipped corpus."""
    from safetensors import safe_open

    if not path.is_file():
        raise BankError(f"pair bank {path} is missing: run `python -m npdemo.train reward`")
    records = load_corpus()
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        t = load_file(str(path))
    except Exception as e:  # safetensors raises several types for a damaged file
        raise BankError(f"pair bank {path} is unreadable ({e}); rebuild it with `python -m npdemo.train reward`") from e
    if meta.get("corpus_sha256") != file_sha256(CORPUS) or len(t["features"]) != len(records):
        raise BankError(f"pair bank {path} was built from another corpus than {CORPUS}; rebuild it")
    mean, std = t["mean"], t["std"]
    try:
        quality = load_quality_scores()
    except QualityError as e:
        raise BankError(str(e)) from e
    return Bank(features=(t["features"].float() - mean) / std, attributes=t["attributes"].numpy(),
                pairs=t["pairs"].long(), pair_split=np.array(json.loads(meta.pop("splits"))), mean=mean, std=std,
                meta=meta, records=records, quality=quality)
