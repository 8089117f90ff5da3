"""Response embeddings: pooling over the right tokens, independent of batching and padding."""
import numpy as np
import pytest

from npdemo import embeddings

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
    ids, start = embeddings.chat_ids(tiny_lm.tokenizer, PROMPTS[0], RESPONSES[0])
    assert tiny_lm.tokenizer.decode(ids[start:]) == RESPONSES[0]
    assert "How do I boil an egg?" in tiny_lm.tokenizer.decode(ids[:start])


def test_ridge_probe_r2():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5))
    y = np.stack([x[:, 0] * 2, rng.normal(size=400)], 1)
    r2 = embeddings.ridge_r2(x, y, np.arange(400) < 300, alpha=1e-3)
    assert r2[0] > 0.99 and r2[1] < 0.1
