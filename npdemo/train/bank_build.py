"""Build the pair bank from the corpus: embed every response with each candidate pooling (cached per row), choose
the pooling by a ridge probe's held-out R^2 (assets/embedding_probe.json), and write assets/bank-v1.safetensors;
score every response's quality (fluency, relevance, junk) into assets/quality-v1.npz."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .. import config
from ..config import ASSETS
from ..data import attributes, base_model, embeddings, junk
from ..data.bank import BANK
from ..data.base_model import LoadedModel, fingerprint
from ..data.corpus import CORPUS, file_sha256, load_corpus
from ..data.quality_scores import QUALITY, is_junk, load_quality_scores
from ..model import quality
from ..model.probe import ridge_r2


def with_combinations(pooled: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The poolings plus the concatenations in COMBINATIONS, all candidates for the probe."""
    return {**pooled, **{name: np.concatenate([pooled[a], pooled[b]], axis=1)
                         for name, (a, b) in embeddings.COMBINATIONS.items()}}


def cached_embeddings(lm: LoadedModel, records: list[dict]) -> dict[str, np.ndarray]:
    """Pooled states of every corpus row; rows embedded before (keyed by model and text) come from the cache."""
    path = config.CACHE / "embeddings" / f"{fingerprint(lm.model)}.npz"
    keys = [hashlib.sha256(f"{r['prompt']}\x00{r['response']}".encode()).hexdigest() for r in records]
    cache = dict(np.load(path)) if path.is_file() else {}
    index = {k: i for i, k in enumerate(cache.get("keys", []))}
    todo = sorted({i for i, k in enumerate(keys) if k not in index})
    if todo:
        new = embeddings.embed(lm, [records[i]["prompt"] for i in todo], [records[i]["response"] for i in todo],
                               poolings=embeddings.POOLINGS)
        cache = {"keys": np.array([*cache.get("keys", []), *(keys[i] for i in todo)]),
                 **{p: np.concatenate([cache[p], new[p]]) if p in cache else new[p] for p in embeddings.POOLINGS}}
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **cache)
        index = {k: i for i, k in enumerate(cache["keys"])}
    rows = [index[k] for k in keys]
    return {p: cache[p][rows] for p in embeddings.POOLINGS}


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
    attrs = row_attributes(records)
    save_file({"features": torch.tensor(pooled, dtype=torch.float16), "attributes": torch.tensor(attrs),
               "pairs": torch.tensor(pairs, dtype=torch.int32), "mean": torch.tensor(mean, dtype=torch.float32),
               "std": torch.tensor(std, dtype=torch.float32)}, str(path), metadata=meta)
    return path


def embed_corpus(model: str) -> Path:
    """Embed every corpus response with each candidate pooling, pick the pooling by probe R^2, write the bank."""
    records = load_corpus()
    lm = base_model.load(model or None, quant="fp32")
    pooled = with_combinations(cached_embeddings(lm, records))
    attrs = np.array([[r["attributes"][a] for a in attributes.ATTRIBUTES] for r in records])
    train = np.array([r["split"] == "train" for r in records])
    probe = {p: ridge_r2(x, attrs, train).round(3).tolist() for p, x in pooled.items()}
    best = max(probe, key=lambda p: np.mean(probe[p]))
    report = {"targets": list(attributes.ATTRIBUTES), "test_r2": probe, "chosen": best,
              "note": "ridge probe, fit on train-prompt responses, R^2 on val+test-prompt responses"}
    (ASSETS / "embedding_probe.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return build_bank(lm, best, pooled[best], records)


def row_attributes(records: list[dict]) -> np.ndarray:
    """Attribute scores of the corpus rows, junk judged with the stored verdict (fluency included) where there is
    one: (R, 3)."""
    try:
        verdict = load_quality_scores().junk
    except Exception:  # no quality scores yet: the text checks alone decide
        verdict = None
    return attributes.score_many([r["response"] for r in records], verdict)


def build_quality(model: str = "") -> Path:
    """Fluency (fp32 base model), relevance and the junk verdict of every corpus response -> QUALITY; then the
    bank's attribute scores are rewritten with that verdict (its features stay)."""
    records = load_corpus()
    prompts, texts = [r["prompt"] for r in records], [r["response"] for r in records]
    lm = base_model.load(model or None, quant="fp32")
    nll = quality.fluency(lm.model, lm.tokenizer, prompts, texts, progress=True)
    rel = quality.relevance(prompts, texts, progress=True)
    text_junk = np.array([junk.check_text(t).junk for t in texts])
    np.savez(QUALITY, fluency=nll, relevance=rel, text_junk=text_junk, corpus_sha256=file_sha256(CORPUS),
             model_fingerprint=fingerprint(lm.model))
    if BANK.is_file():
        with safe_open(str(BANK), "pt") as f:
            meta = f.metadata()
        tensors = load_file(str(BANK))
        tensors["attributes"] = torch.tensor(row_attributes(records))
        save_file(tensors, str(BANK), metadata=meta)
    flagged = is_junk(text_junk, nll)
    print(f"quality: {flagged.sum()} of {len(records)} responses junk ({flagged.mean():.2%}); fluency percentiles "
          f"1/10/50/90/99/100: {np.round(np.nanpercentile(nll, [1, 10, 50, 90, 99, 100]), 2).tolist()}")
    return QUALITY
