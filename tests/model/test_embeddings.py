"""Response embeddings: pooling over the right tokens, independent of batching and padding."""
import numpy as np
import pytest

from npdemo.data import embeddings
from npdemo.data.tokens import chat_ids
from npdemo.model.probe import ridge_r2
from npdemo.train.bank_build import with_combinations

PROMPTS = ["How do I boil an egg?", "Tips for sleeping better?", "Say hi"]
RESPONSES = ["Put it in boiling water for nine minutes.", "1. Keep a schedule\n2. No screens late\n3. Dark room",
             "Hi there! 😊"]


def test_pooling_is_batch_and_padding_invariant(tiny_lm):
    together = embeddings.embed(tiny_lm, PROMPTS, RESPONSES, poolings=embeddings.POOLINGS, batch_size=3,
                                progress=False)
    for i in range(3):
        alone = embeddings.embed(tiny_lm, PROMPTS[i:i + 1], RESPONSES[i:i + 1], poolings=embeddings.POOLINGS,
                                 progress=False)
        for p in embeddings.POOLINGS:
            np.testing.assert_allclose(alone[p][0], together[p][i], atol=1e-4, rtol=1e-4)
    assert together["mean_response"].shape == (3, 64)
    assert not np.allclose(together["mean_response"], together["last_token"])
    with pytest.raises(ValueError, match="unknown pooling"):
        embeddings.embed(tiny_lm, PROMPTS, RESPONSES, poolings=("max",))


def test_response_starts_after_the_chat_header(tiny_lm):
    ids, start = chat_ids(tiny_lm.tokenizer, PROMPTS[0], RESPONSES[0])
    assert tiny_lm.tokenizer.decode(ids[start:]) == RESPONSES[0]
    assert "How do I boil an egg?" in tiny_lm.tokenizer.decode(ids[:start])


def test_ridge_probe_r2():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5))
    y = np.stack([x[:, 0] * 2, rng.normal(size=400)], 1)
    r2 = ridge_r2(x, y, np.arange(400) < 300, alpha=1e-3)
    assert r2[0] > 0.99 and r2[1] < 0.1


def test_a_bank_refuses_another_base_model(tiny_lm):
    import torch

    from npdemo.data.bank import Bank, BankError

    bank = Bank(features=torch.zeros(2, 576), attributes=np.zeros((2, 3)), pairs=torch.zeros(0, 2), pair_split=np.array([]),
                mean=torch.zeros(576), std=torch.ones(576), meta={"model": "SmolLM2", "model_fingerprint": "x"},
                records=[])
    with pytest.raises(BankError, match="hidden size 64"):
        bank.check_model(tiny_lm)
    bank.features = torch.zeros(2, 64)
    with pytest.raises(BankError, match="other weights"):
        bank.check_model(tiny_lm)


def test_unknown_model_is_a_clear_error():
    from npdemo.data import base_model

    with pytest.raises(FileNotFoundError, match="no-such-org/no-such-model"):
        base_model.load("no-such-org/no-such-model", quant="fp32")
    with pytest.raises(ValueError, match="quant must be one of"):
        base_model.load(quant="int3")


def test_combined_poolings_concatenate():
    pooled = {p: np.full((2, 3), i, dtype=np.float32) for i, p in enumerate(embeddings.POOLINGS)}
    out = with_combinations(pooled)
    assert set(embeddings.POOLINGS) < set(out)
    joined = out["mean_response+last_token"]
    assert joined.shape == (2, 6)
    np.testing.assert_array_equal(joined[:, :3], pooled["mean_response"])
    np.testing.assert_array_equal(joined[:, 3:], pooled["last_token"])
