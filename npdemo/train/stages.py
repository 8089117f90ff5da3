"""Rebuild the shipped checkpoints: `python -m npdemo.train [synthetic|corpus|quality|reward|policy|policy_mixed]
[--key=value]`.

With no stage, every stage runs in order and finished ones are skipped; name a stage to rebuild it.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from ..config import (CHECKPOINTS, POLICY_DIR, POLICY_MIXED_DIR, REWARD_DIR, REWARD_MODELS, SYNTHETIC_DIR,
                      SYNTHETIC_MODELS, parse_cli, split_words)
from ..data import base_model, synthetic, users
from ..data.bank import BankError, load_bank
from ..data.corpus import CORPUS
from ..data.quality_scores import QUALITY
from ..model import checkpoints
from ..model.context_encoder import EncoderConfig
from ..model.policy import ConditionalPolicy, LoRAConfig, PolicyConfig
from ..model.policy_checkpoint import OFFPOLICY_RECIPE, RECIPE, check_base, load_weights, reward_pairing, save_policy
from ..model.logprobs import reference_key
from ..model.reward import RewardConfig, build_reward_model, load_reward_model
from . import corpus_build, distributed, dpo, onpolicy
from .bank_build import build_quality, embed_corpus
from .corpus_build import CorpusConfig
from .dpo import DPOConfig
from .onpolicy import OnPolicyConfig
from .fit import FitConfig, fit


@dataclass
class UserBatchConfig:
    """What every reward stage shares: steps of batches of simulated users, validation users, network width."""
    steps: int = 2000        # optimiser steps per model
    lr: float = 1e-3         # peak learning rate
    batch_users: int = 64    # users per batch (the paper's 64)
    n_targets: int = 20      # target pairs per user (the paper's 20)
    k_max: int = 10          # context sizes drawn uniformly from 0..k_max per user
    val_batches: int = 8     # fixed validation batches for checkpoint selection
    eval_every: int = 250    # steps between validation passes
    hidden: int = 128        # H
    seed: int = 0


@dataclass
class SyntheticConfig(UserBatchConfig):
    steps: int = 6000        # optimiser steps per NP model
    baseline_steps: int = 1500  # BTL and DPL plateau within a few hundred steps


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
    return [str(corpus_build.build(cfg, lm))]


@dataclass
class QualityConfig:
    model: str = ""          # base model whose fluency is measured (default: the default id)


def score_quality(cfg: QualityConfig) -> list[str]:
    """Fluency, relevance and junk of every corpus response (assets/quality-v1.npz), beside the bank."""
    return [str(build_quality(cfg.model))]


@dataclass
class RewardTrainConfig(UserBatchConfig):
    latent: int = 64         # size of z
    weight_decay: float = 0.01
    beta_kl: float = 0.1     # NP-BTL KL weight: at 1.0 the latent collapsed on this corpus (NP-BTL = BTL-mixed)
    model: str = ""          # base model for the embeddings (default: the default id)
    quality_weight: float = users.QUALITY_WEIGHT  # the users' lambda (README compares 0 with the default)
    dir: str = str(REWARD_DIR)  # where the checkpoints go


def train_reward(cfg: RewardTrainConfig) -> list[str]:
    """NP-BTL (Gaussian latent) and BTL-mixed on simulated users over the corpus pair bank."""
    users.QUALITY_WEIGHT = cfg.quality_weight
    try:
        bank = load_bank()  # the shipped bank, if it matches the corpus and the model
        if bank.meta["model"] != base_model.model_name(cfg.model or None):
            raise BankError("another base model")
    except BankError:
        embed_corpus(cfg.model)  # cached per row: only new corpus rows are embedded
        bank = load_bank()
    val_rng = np.random.default_rng(cfg.seed + 1)
    val_eps = [users.sample_users(bank, "val", cfg.batch_users, cfg.n_targets,
                                  np.arange(cfg.batch_users) % (cfg.k_max + 1), val_rng)[0]
               for _ in range(cfg.val_batches)]

    def sample_batch(rng: np.random.Generator):
        k = rng.integers(0, cfg.k_max + 1, size=cfg.batch_users)
        return users.sample_users(bank, "train", cfg.batch_users, cfg.n_targets, k, rng)[0]

    fit_cfg = FitConfig(steps=cfg.steps, lr=cfg.lr, eval_every=cfg.eval_every, seed=cfg.seed,
                        weight_decay=cfg.weight_decay)
    return [fit_and_save(Path(cfg.dir) / name, reward_config({**spec, "beta_kl": cfg.beta_kl}, bank.features.shape[1],
                                                          cfg.hidden, cfg.latent),
                         sample_batch, val_eps, fit_cfg, train=asdict(cfg), bank=bank.meta)
            for name, spec in REWARD_MODELS.items()]


@dataclass
class PolicyTrainConfig(LoRAConfig, OnPolicyConfig, DPOConfig):
    """The DPO recipe (recipe 5's off-policy steps, then recipe 7's styled round; other rounds are ablations) plus
    the policy's LoRA settings (its latent size comes from the NP-BTL encoder)."""
    model: str = ""          # base model (default: the default id); must be the one the pair bank was built from
    quant: str = "fp32"      # training precision of the frozen base (NF4 trains too, slower on CPUs; int4 cannot)
    film_bound: float = 0.1   # bounded FiLM: |gamma - 1|, |beta| < film_bound (0: unbounded, recipe v1)
    film_squash: str = "soft"  # "soft" clamp s tanh(x / s) (recipe 3) or recipe 2's "scaled" s tanh(x) (ablation)
    out: str = ""            # where to save (default checkpoints/policy or policy_mixed; ablation runs elsewhere)
    offpolicy_from: str = ""  # a checkpoint of this config's off-policy steps (recipe 5), or of them and its first
                              # rounds: run only the rounds after it

    def policy_config(self, latent: int) -> PolicyConfig:
        return PolicyConfig(latent=latent, film_bound=self.film_bound or None, film_squash=self.film_squash,
                            **{f.name: getattr(self, f.name) for f in fields(LoRAConfig)})


def offpolicy_weights(pol: ConditionalPolicy, directory: Path, cfg: PolicyTrainConfig) -> list[dict]:
    """Load the weights of a checkpoint of this run's earlier training (so the rest need not wait for it again):
    its off-policy steps alone (a recipe-5 checkpoint), or them and its first rounds (fewer than cfg.rounds, with
    this run's settings and sources). Returns its training log; the rounds go on after the ones it holds."""
    manifest = checkpoints.read_manifest(directory, "policy")
    check_base(manifest, pol.lm, directory)
    train = manifest.get("train", {})
    done = train.get("rounds") or 0
    compared = [f.name for f in fields(DPOConfig) if f.name != "snapshot_every"]
    ran = OnPolicyConfig(rounds=done, round_source=train.get("round_source", ""))
    sources = [onpolicy.round_source(ran, r) for r in range(done)]
    if done:  # its rounds must be this run's first ones (in the settings they read)
        compared += [f.name for f in fields(OnPolicyConfig) if f.name not in ("rounds", "round_source")
                     and ("ends" in sources or f.name not in onpolicy.ENDS_ONLY)]
    own = {k: getattr(cfg, k) for k in compared} | {f"policy.{k}": v for k, v in asdict(pol.cfg).items()}
    default = PolicyTrainConfig()  # a setting newer than the checkpoint: it trained as the default does
    theirs = {k: train.get(k, getattr(default, k)) for k in compared}
    theirs |= {f"policy.{k}": v for k, v in {**asdict(pol.cfg), **manifest["config"]["policy"]}.items()}
    differ = {k: v for k, v in theirs.items() if v != own[k]}
    if done >= cfg.rounds:
        differ["rounds"] = done  # nothing left for this run to train
    if sources != [onpolicy.round_source(cfg, r) for r in range(done)]:
        differ["round_source"] = ran.round_source
    recipe_ok = manifest.get("recipe") == OFFPOLICY_RECIPE if not done else not manifest.get("ablation")
    if not recipe_ok or manifest.get("conditioned", True) != cfg.conditioned or differ:
        raise SystemExit(f"--offpolicy_from {directory}: not a {'NP-DPO' if cfg.conditioned else 'DPO-mixed'} "
                         f"checkpoint of this run's earlier training (recipe-{OFFPOLICY_RECIPE} off-policy steps, "
                         f"then fewer than {cfg.rounds} of its rounds): recipe {manifest.get('recipe')}"
                         f"{', an ablation' if manifest.get('ablation') else ''}; "
                         f"it has {differ or 'the same settings'}")
    load_weights(pol, directory, manifest)
    return manifest.get("log", [])


RUN_SETTINGS = {"seed", "snapshot_every", "conditioned"}  # a rerun's or the DPO-mixed stage's, not the recipe's


def ablated(cfg: PolicyTrainConfig) -> dict:
    """The recipe settings (DPO and round settings) in which this run differs from the shipped recipe's: the
    defaults. Non-empty: the run is an ablation, and its checkpoint says so (the app refuses it)."""
    default = PolicyTrainConfig()
    names = [f.name for f in (*fields(DPOConfig), *fields(OnPolicyConfig)) if f.name not in RUN_SETTINGS]
    if not cfg.rounds:  # off-policy steps alone are recipe 5's, whatever rounds the defaults name
        names = [n for n in names if n not in {f.name for f in fields(OnPolicyConfig)}]
    return {n: getattr(cfg, n) for n in names if getattr(cfg, n) != getattr(default, n)}


def train_policy(cfg: PolicyTrainConfig) -> list[str]:
    """NP-DPO: LoRA + FiLM trained with DPO on simulated users, z from the frozen NP-BTL context encoder.

    With conditioned=False (the policy_mixed stage) the same run trains the DPO-mixed baseline (no latent) into
    checkpoints/policy_mixed. Under `accelerate launch` / `torchrun` the ranks share each step (data parallel).
    """
    if cfg.quant in ("int4", "auto"):
        raise SystemExit(f"--quant {cfg.quant}: the int4 kernel has no backward; train in fp32, bf16 or nf4")
    ranks = distributed.init()
    bank = load_bank()
    np_btl = load_reward_model(REWARD_DIR / "np_btl")
    lm = base_model.load(cfg.model or None, quant=cfg.quant, device=distributed.device(ranks))
    bank.check_model(lm)
    pol = ConditionalPolicy(lm, cfg.policy_config(np_btl.cfg.encoder.latent))
    start = time.time()
    out = Path(cfg.out) if cfg.out else POLICY_DIR if cfg.conditioned else POLICY_MIXED_DIR

    def save(directory: Path, log: list[dict], rounds: bool) -> Path:  # off-policy steps alone are recipe 5's
        return save_policy(pol, np_btl.encoder, directory, conditioned=cfg.conditioned,
                           recipe=RECIPE if rounds else OFFPOLICY_RECIPE, ablation=ablated(cfg), train=asdict(cfg),
                           log=log, bank=bank.meta, reward=reward_pairing(REWARD_DIR / "np_btl"),
                           train_seconds=round(time.time() - start, 1))

    ref_key = reference_key(lm, bank, cfg.max_tokens)
    if cfg.offpolicy_from:
        log = offpolicy_weights(pol, Path(cfg.offpolicy_from), cfg)
    elif cfg.rounds and onpolicy.has_state(cfg, cfg, ref_key):
        log = []  # an interrupted run of rounds: its cached state holds the off-policy weights and log
    else:
        log = dpo.train_dpo(pol, np_btl.encoder, bank, cfg, ref_key=ref_key, ranks=ranks,
                            snapshot=lambda step, log: save(out.with_name(f"{out.name}-step{step}"), log, False))
    if not ranks.main:
        return []  # the rounds generate text: they run in the main process only
    if cfg.rounds:
        log = onpolicy.train_rounds(pol, np_btl.encoder, bank, cfg, cfg, ref_key, log)
    path = save(out, log, cfg.rounds > 0)
    return [str(path.parent)]


def has_checkpoints(directory: Path, names) -> bool:
    return all((directory / n / checkpoints.MANIFEST).is_file() for n in names)


# stage: (config class, run, finished?) -- with no stage named, finished stages are skipped
STAGES = {
    "synthetic": (SyntheticConfig, train_synthetic, lambda: has_checkpoints(SYNTHETIC_DIR, SYNTHETIC_MODELS)),
    "corpus": (CorpusConfig, build_corpus, CORPUS.is_file),
    "quality": (QualityConfig, score_quality, QUALITY.is_file),
    "reward": (RewardTrainConfig, train_reward, lambda: has_checkpoints(REWARD_DIR, REWARD_MODELS)),
    "policy": (PolicyTrainConfig, train_policy, lambda: has_checkpoints(CHECKPOINTS, ["policy"])),
    "policy_mixed": (lambda: PolicyTrainConfig(conditioned=False), train_policy,
                     lambda: has_checkpoints(CHECKPOINTS, ["policy_mixed"])),
}


def main(argv: list[str]) -> None:
    stages, _ = split_words(argv)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise SystemExit(f"unknown stage {unknown[0]!r}; stages: {', '.join(STAGES)}")
    for stage in stages or list(STAGES):
        config_cls, run, finished = STAGES[stage]
        if not stages and finished():
            print(f"== {stage}: already built, skipped (name the stage to rebuild it)")
            continue
        _, cfg = parse_cli(argv, config_cls())
        print(f"== {stage}: {cfg}")
        for path in run(cfg):
            print(f"wrote {path}")

