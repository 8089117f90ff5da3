"""Response embeddings from the base model, and the pair bank they are shipped in.

Each (prompt, response) is chat-formatted and run through the base model once; its final-layer hidden
states are pooled into one vector. The pooling is chosen by measurement: a ridge probe from each candidate
(`POOLINGS`, `COMBINATIONS`) to the three attribute scores, R^2 on held-out prompts, reported in
assets/embedding_probe.json. The paper took the last token of an 8B model; on 96 SmolLM2 responses the mean
over tokens carried style better, so both (and a middle layer) are candidates.

The bank (assets/bank-v1.safetensors) holds the fp16 embeddings, the attribute scores, every within-prompt
pair of responses (pairs always share a prompt), and the feature standardisation the NP models expect.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from . import attributes
from .base_model import LoadedModel, fingerprint
from .config import ASSETS
from .corpus import CORPUS, CorpusError, load_corpus

BANK = ASSETS / "bank-v1.safetensors"
POOLINGS = ("last_token", "mean_all", "mean_response", "mean_response_mid")
# candidate features that join two poolings of the same pass (style lives in several places)
COMBINATIONS = {"mean_response+last_token": ("mean_response", "last_token"),
                "mean_response+mean_response_mid": ("mean_response", "mean_response_mid")}


def chat_ids(tokenizer, prompt: str, response: str) -> tuple[list[int], int]:
    """Token ids of the chat-formatted exchange and the index where the response starts."""
    head = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    body_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    return head_ids + body_ids, len(head_ids)


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
        seqs = [chat_ids(lm.tokenizer, prompts[i], responses[i]) for i in idx]
        L = min(max_tokens, max(len(ids) for ids, _ in seqs))
        ids = torch.full((len(idx), L), lm.tokenizer.pad_token_id)
        attn = torch.zeros(len(idx), L, dtype=torch.long)
        resp = torch.zeros(len(idx), L)
        for row, (seq, r0) in enumerate(seqs):
            seq = seq[:L]
            ids[row, :len(seq)] = torch.tensor(seq)
            attn[row, :len(seq)] = 1
            resp[row, min(r0, len(seq) - 1):len(seq)] = 1  # at least the last token
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


def with_combinations(pooled: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The poolings plus the concatenations in COMBINATIONS, all candidates for the probe."""
    return {**pooled, **{name: np.concatenate([pooled[a], pooled[b]], axis=1) for name, (a, b) in COMBINATIONS.items()}}


def features_like_bank(lm: LoadedModel, bank: "Bank", prompts: list[str], responses: list[str]) -> torch.Tensor:
    """Features of new (prompt, response) rows, pooled and standardised exactly like the bank's: (N, D)."""
    pooling = bank.meta["pooling"]
    parts = COMBINATIONS.get(pooling, (pooling,))
    pooled = embed(lm, prompts, responses, poolings=parts, progress=False)
    return bank.standardise(torch.tensor(np.concatenate([pooled[p] for p in parts], axis=1)))


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L, D) states averaged over positions where mask (B, L) is 1."""
    m = mask.to(states.dtype)[..., None]
    return (states * m).sum(1) / m.sum(1)


def ridge_r2(x: np.ndarray, y: np.ndarray, train: np.ndarray, alpha: float = 0.1) -> np.ndarray:
    """Test R^2 per target column of a ridge probe fit on rows `train`, scored on the rest.

    The penalty is alpha * n_train on standardised features, the feature oracle's (evaluate.attribute_probe);
    alpha = 10 over-regularised and reported R^2 0.51 / 0.47 / 0.55 for the features that read 0.83 / 0.69 /
    0.66 here (the same pooling wins at alpha = 10, 1 and 0.1)."""
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
    xs = (x - mu) / sd
    A = xs[train]
    w = np.linalg.solve(A.T @ A + alpha * len(A) * np.eye(A.shape[1]), A.T @ (y[train] - y[train].mean(0)))
    pred = xs[~train] @ w + y[train].mean(0)
    resid = ((y[~train] - pred) ** 2).sum(0)
    return 1 - resid / ((y[~train] - y[~train].mean(0)) ** 2).sum(0)


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

    def standardise(self, pooled: torch.Tensor) -> torch.Tensor:
        return (pooled - self.mean) / self.std

    def check_model(self, lm: LoadedModel) -> None:
        """Refuse a base model other than the one whose hidden states the bank (and its checkpoints) hold."""
        parts = len(COMBINATIONS.get(self.meta.get("pooling", ""), (None,)))  # a combination joins two poolings
        d = lm.model.config.hidden_size
        if d * parts != self.features.shape[1]:
            raise CorpusError(f"model {lm.name!r} has hidden size {d}, but the pair bank and reward checkpoints "
                              f"were built from {self.meta.get('model')!r} with {self.features.shape[1] // parts}")
        if fingerprint(lm.model) != self.meta.get("model_fingerprint"):
            raise CorpusError(f"model {lm.name!r} has other weights than {self.meta.get('model')!r}, which the "
                              "pair bank was built from; rebuild with `python -m npdemo.train reward --model=...`")

    def split_pairs(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.pair_split == split)

    def oriented(self, labels: list[tuple[int, int]]) -> np.ndarray:
        """Rows [chosen, rejected] (K, 2) of labelled pairs given as (pair index, 1 if its first row won)."""
        return np.array([self.pairs[p].tolist()[:: 1 if a else -1] for p, a in labels], dtype=np.int64).reshape(-1, 2)

    def context(self, labels: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Labelled pairs as one user's NP context: features (1, K, 2, d) [chosen, rejected] and mask (1, K)."""
        return self.features[torch.from_numpy(self.oriented(labels))][None], torch.ones(1, len(labels), dtype=torch.bool)

    def attribute_diffs(self, labels: list[tuple[int, int]]) -> np.ndarray:
        """Attributes of chosen minus rejected for labelled pairs: (1, K, 3), what the exact Bayes posterior reads."""
        rows = self.oriented(labels)
        return (self.attributes[rows[:, 0]] - self.attributes[rows[:, 1]])[None]


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_bank(lm: LoadedModel, pooling: str, pooled: np.ndarray, records: list[dict], path: Path = BANK) -> Path:
    """Write the bank file from pooled states of the corpus rows."""
    split = np.array([r["split"] for r in records])
    train = split == "train"
    mean, std = pooled[train].mean(0), pooled[train].std(0) + 1e-6
    pairs, pair_split = [], []
    by_prompt: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_prompt.setdefault(r["prompt_id"], []).append(i)
    for rows in by_prompt.values():
        for a in range(len(rows)):
            for b in range(a + 1, len(rows)):
                pairs.append((rows[a], rows[b]))
                pair_split.append(records[rows[a]]["split"])
    meta = {"model": lm.name, "model_fingerprint": fingerprint(lm.model), "pooling": pooling,
            "corpus": CORPUS.name, "corpus_sha256": file_sha256(CORPUS), "splits": json.dumps(pair_split)}
    attrs = attributes.score_many([r["response"] for r in records])
    save_file({"features": torch.tensor(pooled, dtype=torch.float16), "attributes": torch.tensor(attrs),
               "pairs": torch.tensor(pairs, dtype=torch.int32), "mean": torch.tensor(mean, dtype=torch.float32),
               "std": torch.tensor(std, dtype=torch.float32)}, str(path), metadata=meta)
    return path


def load_bank(path: Path = BANK) -> Bank:
    """Load the bank and check it belongs to the shipped corpus."""
    from safetensors import safe_open

    if not path.is_file():
        raise CorpusError(f"pair bank {path} is missing: run `python -m npdemo.train reward`")
    records = load_corpus()
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        t = load_file(str(path))
    except Exception as e:  # safetensors raises several types for a damaged file
        raise CorpusError(f"pair bank {path} is unreadable ({e}); rebuild it with `python -m npdemo.train reward`") from e
    if meta.get("corpus_sha256") != file_sha256(CORPUS) or len(t["features"]) != len(records):
        raise CorpusError(f"pair bank {path} was built from another corpus than {CORPUS}; rebuild it")
    mean, std = t["mean"], t["std"]
    return Bank(features=(t["features"].float() - mean) / std, attributes=t["attributes"].numpy(),
                pairs=t["pairs"].long(), pair_split=np.array(json.loads(meta.pop("splits"))), mean=mean, std=std,
                meta=meta, records=records)
