"""The shipped quality scores (assets/quality-v1.npz) beside the bank: few flagged, junk scored as junk, never
shown as a pair, and no simulated user prefers a junk corpus response to a real one of the same prompt."""
import numpy as np
import pytest

from npdemo.data import users
from npdemo.data.bank import load_bank


@pytest.fixture(scope="module")
def bank():
    return load_bank()


def test_few_corpus_responses_are_junk_and_they_score_zero_on_concise_and_structured(bank):
    junk = bank.quality.junk
    assert 0 < junk.mean() < 0.02
    assert (bank.attributes[junk, :2] == 0).all()
    assert np.isfinite(bank.quality.q).all() and ((0 <= bank.quality.q) & (bank.quality.q <= 1)).all()


def test_junk_is_never_a_pair_to_judge(bank):
    pairs = bank.pairs.numpy()[bank.clean_pairs()]
    assert not bank.quality.junk[pairs].any()
    assert len(pairs) > 0.9 * len(bank.pairs)


def test_no_user_prefers_a_junk_corpus_response(bank):
    """Corners and the centre: every junk response's reward is below every real response's of its prompt (a
    linear reward's extremes over the simplex lie at the corners, so this holds for every user)."""
    shared = users.bank_shared(bank)
    ws = np.vstack([np.eye(3), np.full(3, 1 / 3)])
    r = bank.attributes @ ws.T + shared[:, None]  # (R, W)
    prompt = np.array([rec["prompt_id"] for rec in bank.records])
    for i in np.flatnonzero(bank.quality.junk):
        real = (prompt == prompt[i]) & ~bank.quality.junk
        assert (r[i] < r[real].min(0)).all(), bank.records[i]["response"][:80]
