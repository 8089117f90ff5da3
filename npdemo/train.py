"""Rebuild the shipped checkpoints: `python -m npdemo.train [synthetic|corpus|reward|policy|policy_mixed] [--key=value]`.

With no stage, every stage runs in order and finished ones are skipped; name a stage to rebuild it.
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import attributes, base_model, checkpoints, corpus, distributed, dpo, embeddings, policy, synthetic, users
from .config import ASSETS, CACHE, CHECKPOINTS, apply_overrides
from .context_encoder import EncoderConfig
from .corpus import CorpusConfig
from .dpo import DPOConfig
from .fit import FitConfig, fit
from .reward import RewardConfig, build_reward_model, load_reward_model

SYNTHETIC_DIR = CHECKPOINTS / "synthetic"
REWARD_DIR = CHECKPOINTS / "reward"
POLICY_DIR = CHECKPOINTS / "policy"
POLICY_MIXED_DIR = CHECKPOINTS / "policy_mixed"  # the unconditioned DPO-mixed baseline (stage policy_mixed)


@dataclass
class SyntheticConfig:
    steps: int = 6000        # optimiser steps per NP model
    baseline_steps: int = 1500  # BTL and DPL plateau within a few hundred steps
    lr: float = 1e-3         # peak learning rate
    batch_users: int = 64    # users per batch (the paper's 64)
    n_targets: int = 20      # target pairs per user (the paper's 20)
    k_max: int = 10          # context sizes drawn uniformly from 0..k_max per user
    val_batches: int = 8     # fixed validation batches for checkpoint selection
    eval_every: int = 250    # steps between validation passes
    hidden: int = 128        # H
    seed: int = 0


SYNTHETIC_MODELS = {
    "np_deterministic": dict(kind="np", latent_kind="deterministic"),
    "np_gaussian": dict(kind="np", latent_kind="gaussian"),
    "btl": dict(kind="btl"),
    "dpl": dict(kind="dpl"),
}


def reward_config(spec: dict, d: int, hidden: int, latent: int) -> RewardConfig:
    """A RewardConfig from a model spec such as SYNTHETIC_MODELS' entries."""
    spec = dict(spec)
    latent_kind = spec.pop("latent_kind", "deterministic")
    enc = EncoderConfig(d=d, hidden=hidden, latent=latent, aggregation="sum", latent_kind=latent_kind)
    return RewardConfig(d=d, hidden=hidden, encoder=enc, **spec)


def fit_and_save(directory: Path, model_cfg: RewardConfig, sample_batch, val_eps, fit_cfg: FitConfig,
                 **manifest) -> str:
    """Train one reward model with checkpoint selection and write it (weights + manifest) to `directory`."""
    start = time.time()
    model, best = fit(build_reward_model(model_cfg), sample_batch, val_eps, fit_cfg, directory.name)
    path = checkpoints.save(directory, {"model": model}, kind="reward", config=model_cfg.to_dict(), best=best,
                            train_seconds=round(time.time() - start, 1), **manifest)
    return str(path.parent)


def train_synthetic(cfg: SyntheticConfig) -> list[str]:
    """Train NP-BTL (both latents), BTL and DPL on the synthetic task; write checkpoints/synthetic/<name>."""
    train, val = synthetic.load("train"), synthetic.load("val")
    val_rng = np.random.default_rng(cfg.seed + 1)
    val_eps = [val.sample(cfg.batch_users, cfg.n_targets, np.arange(cfg.batch_users) % (cfg.k_max + 1), val_rng)[0]
               for _ in range(cfg.val_batches)]

    def sample_batch(rng: np.random.Generator):
        k = rng.integers(0, cfg.k_max + 1, size=cfg.batch_users)
        return train.sample(cfg.batch_users, cfg.n_targets, k, rng)[0]

    written = []
    for name, spec in SYNTHETIC_MODELS.items():
        model_cfg = reward_config(spec, d=1, hidden=cfg.hidden, latent=cfg.hidden)
        steps = cfg.steps if model_cfg.kind == "np" else cfg.baseline_steps
        fit_cfg = FitConfig(steps=steps, lr=cfg.lr, eval_every=cfg.eval_every, seed=cfg.seed)
        written.append(fit_and_save(SYNTHETIC_DIR / name, model_cfg, sample_batch, val_eps, fit_cfg,
                                    train=asdict(cfg)))
    return written


def build_corpus(cfg: CorpusConfig) -> list[str]:
    """Sample the styled response corpus from the unquantized base model."""
    lm = base_model.load(cfg.model or None, quant=cfg.quant)
    return [str(corpus.build(cfg, lm))]


@dataclass
class RewardTrainConfig:
    steps: int = 2000        # optimiser steps per model
    lr: float = 1e-3         # peak learning rate
    batch_users: int = 64    # simulated users per batch
    n_targets: int = 20      # target pairs per user
    k_max: int = 10          # context sizes drawn uniformly from 0..k_max per user
    val_batches: int = 8     # fixed validation batches (val prompts) for checkpoint selection
    eval_every: int = 250
    hidden: int = 128        # H
    latent: int = 64         # size of z
    weight_decay: float = 0.01
    beta_kl: float = 0.1     # NP-BTL KL weight: at 1.0 the latent collapsed on this corpus (NP-BTL = BTL-mixed)
    model: str = ""          # base model for the embeddings (default: the default id)
    seed: int = 0


# the bilinear decoder beat the paper's MLP decoder on validation users (k = 10: 74.5 vs 72.7 % held-out accuracy)
REWARD_MODELS = {"np_btl": dict(kind="np", latent_kind="gaussian", decoder="bilinear"), "btl_mixed": dict(kind="btl")}


def cached_embeddings(lm: base_model.LoadedModel, records: list[dict]) -> dict[str, np.ndarray]:
    """Pooled states of every corpus row; rows embedded before (keyed by model and text) come from the cache."""
    path = CACHE / "embeddings" / f"{base_model.fingerprint(lm.model)}.npz"
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


def embed_corpus(model: str) -> Path:
    """Embed every corpus response with each candidate pooling, pick the pooling by probe R^2, write the bank."""
    records = corpus.load_corpus()
    lm = base_model.load(model or None, quant="fp32")
    pooled = embeddings.with_combinations(cached_embeddings(lm, records))
    attrs = np.array([[r["attributes"][a] for a in attributes.ATTRIBUTES] for r in records])
    train = np.array([r["split"] == "train" for r in records])
    probe = {p: embeddings.ridge_r2(x, attrs, train).round(3).tolist() for p, x in pooled.items()}
    best = max(probe, key=lambda p: np.mean(probe[p]))
    report = {"targets": list(attributes.ATTRIBUTES), "test_r2": probe, "chosen": best,
              "note": "ridge probe, fit on train-prompt responses, R^2 on val+test-prompt responses"}
    (ASSETS / "embedding_probe.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return embeddings.build_bank(lm, best, pooled[best], records)


def train_reward(cfg: RewardTrainConfig) -> list[str]:
    """NP-BTL (Gaussian latent) and BTL-mixed on simulated users over the corpus pair bank."""
    try:
        bank = embeddings.load_bank()  # the shipped bank, if it matches the corpus and the model
        if bank.meta["model"] != base_model.model_name(cfg.model or None):
            raise corpus.CorpusError("another base model")
    except corpus.CorpusError:
        embed_corpus(cfg.model)  # cached per row: only new corpus rows are embedded
        bank = embeddings.load_bank()
    val_rng = np.random.default_rng(cfg.seed + 1)
    val_eps = [users.sample_users(bank, "val", cfg.batch_users, cfg.n_targets,
                                  np.arange(cfg.batch_users) % (cfg.k_max + 1), val_rng)[0]
               for _ in range(cfg.val_batches)]

    def sample_batch(rng: np.random.Generator):
        k = rng.integers(0, cfg.k_max + 1, size=cfg.batch_users)
        return users.sample_users(bank, "train", cfg.batch_users, cfg.n_targets, k, rng)[0]

    fit_cfg = FitConfig(steps=cfg.steps, lr=cfg.lr, eval_every=cfg.eval_every, seed=cfg.seed,
                        weight_decay=cfg.weight_decay)
    return [fit_and_save(REWARD_DIR / name, reward_config({**spec, "beta_kl": cfg.beta_kl}, bank.features.shape[1],
                                                          cfg.hidden, cfg.latent),
                         sample_batch, val_eps, fit_cfg, train=asdict(cfg), bank=bank.meta)
            for name, spec in REWARD_MODELS.items()]


@dataclass
class PolicyTrainConfig(DPOConfig):
    model: str = ""          # base model (default: the default id); must be the one the pair bank was built from
    quant: str = "fp32"      # training precision of the frozen base (NF4 trains too, slower on CPUs)
    lora_r: int = 16
    lora_alpha: int = 32


def train_policy(cfg: PolicyTrainConfig) -> list[str]:
    """NP-DPO: LoRA + FiLM trained with DPO on simulated users, z from the frozen NP-BTL context encoder.

    With conditioned=False (the policy_mixed stage) the same run trains the DPO-mixed baseline (no latent) into
    checkpoints/policy_mixed. Under `accelerate launch` / `torchrun` the ranks share each step (data parallel).
    """
    ranks = distributed.init()
    bank = embeddings.load_bank()
    np_btl = load_reward_model(REWARD_DIR / "np_btl")
    lm = base_model.load(cfg.model or None, quant=cfg.quant, device=distributed.device(ranks))
    bank.check_model(lm)
    pol = policy.ConditionalPolicy(lm, policy.PolicyConfig(latent=np_btl.cfg.encoder.latent, lora_r=cfg.lora_r,
                                                           lora_alpha=cfg.lora_alpha))
    start = time.time()
    log = dpo.train_dpo(pol, np_btl.encoder, bank, cfg, ref_key=dpo.reference_key(lm, bank, cfg.max_tokens),
                        ranks=ranks)
    if not ranks.main:
        return []
    path = policy.save_policy(pol, np_btl.encoder, POLICY_DIR if cfg.conditioned else POLICY_MIXED_DIR,
                              conditioned=cfg.conditioned, train=asdict(cfg), log=log, bank=bank.meta, train_seconds=round(time.time() - start, 1))
    return [str(path.parent)]


def has_checkpoints(directory: Path, names) -> bool:
    return all((directory / n / checkpoints.MANIFEST).is_file() for n in names)


# stage: (config class, run, finished?) -- with no stage named, finished stages are skipped
STAGES = {
    "synthetic": (SyntheticConfig, train_synthetic, lambda: has_checkpoints(SYNTHETIC_DIR, SYNTHETIC_MODELS)),
    "corpus": (CorpusConfig, build_corpus, corpus.CORPUS.is_file),
    "reward": (RewardTrainConfig, train_reward, lambda: has_checkpoints(REWARD_DIR, REWARD_MODELS)),
    "policy": (PolicyTrainConfig, train_policy, lambda: has_checkpoints(CHECKPOINTS, ["policy"])),
    "policy_mixed": (lambda: PolicyTrainConfig(conditioned=False), train_policy,
                     lambda: has_checkpoints(CHECKPOINTS, ["policy_mixed"])),
}


def main(argv: list[str]) -> None:
    stages = [a for a in argv if not a.startswith("--")]
    overrides = [a for a in argv if a.startswith("--")]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise SystemExit(f"unknown stage {unknown[0]!r}; stages: {', '.join(STAGES)}")
    for stage in stages or list(STAGES):
        config_cls, run, finished = STAGES[stage]
        if not stages and finished():
            print(f"== {stage}: already built, skipped (name the stage to rebuild it)")
            continue
        cfg = apply_overrides(config_cls(), overrides)
        print(f"== {stage}: {cfg}")
        for path in run(cfg):
            print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
