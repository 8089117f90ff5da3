"""Simulated users, the NNLS simplex locator and the exact Bayes posterior, on a small hand-made bank."""
import numpy as np
import pytest
import torch

from npdemo.data import users
from npdemo.data.bank import Bank
from npdemo.model.simplex import BayesPosterior, Locator, nnls, simplex_grid


def make_bank(n_prompts=30, per_prompt=6, seed=0) -> Bank:
    """A bank whose features are the attribute scores themselves (d = 3)."""
    rng = np.random.default_rng(seed)
    attrs = rng.random((n_prompts * per_prompt, 3))
    records, pairs, split = [], [], []
    for p in range(n_prompts):
        s = ("train", "val", "test")[p % 3]
        rows = list(range(p * per_prompt, (p + 1) * per_prompt))
        records += [{"prompt_id": f"p{p}", "split": s} for _ in rows]
        pairs += [(a, b) for i, a in enumerate(rows) for b in rows[i + 1:]]
        split += [s] * (len(rows) * (len(rows) - 1) // 2)
    feats = torch.tensor(attrs, dtype=torch.float32)
    return Bank(features=feats, attributes=attrs, pairs=torch.tensor(pairs), pair_split=np.array(split),
                mean=torch.zeros(3), std=torch.ones(3), meta={}, records=records)


class LinearReward(torch.nn.Module):
    """r(y; z) = z . y: the reward a perfect NP would learn when features are attributes."""

    def rewards(self, options, z):
        return (options * z.unsqueeze(-2)).sum(-1)


def test_sample_weights_groups_and_simplex():
    w, groups = users.sample_weights(4000, np.random.default_rng(0))
    np.testing.assert_allclose(w.sum(1), 1.0)
    assert (w >= 0).all()
    assert abs((groups != "interior").mean() - users.CORNER_FRACTION) < 0.03
    np.testing.assert_array_equal(users.group_of(w), groups)


def test_choice_prob_hand_value():
    p = users.choice_prob(np.array([1.0, 0, 0]), np.array([0.55, 0, 0]), np.array([0.5, 1, 1]))
    assert p == pytest.approx(1 / (1 + np.exp(-0.05 / users.TEMPERATURE)))


def test_users_choose_by_btl_within_a_prompt():
    bank = make_bank()
    w = np.tile([0.0, 1.0, 0.0], (2000, 1))
    ep, _, groups = users.sample_users(bank, "train", 2000, 5, np.zeros(2000, dtype=int),
                                       np.random.default_rng(1), weights=w)
    assert set(groups) == {"structured"}
    assert set(bank.pair_split[ep.tgt_pair.flatten().numpy()]) == {"train"}
    pairs = bank.pairs.numpy()[ep.tgt_pair.numpy()]
    prompt = np.array([r["prompt_id"] for r in bank.records])
    assert (prompt[pairs[..., 0]] == prompt[pairs[..., 1]]).all()
    p = users.choice_prob(w[:, None], bank.attributes[pairs[..., 0]], bank.attributes[pairs[..., 1]])
    assert abs(ep.tgt_y.numpy().mean() - p.mean()) < 0.01  # labels follow BTL
    assert ((ep.tgt_y.numpy() == 1) == (p > 0.5)).mean() > 0.8


def test_nnls_recovers_non_negative_weights():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(50, 3))
    np.testing.assert_allclose(nnls(A, A @ np.array([0.5, 0.0, 0.2])), [0.5, 0.0, 0.2], atol=1e-9)
    x = nnls(A, A @ np.array([1.0, -2.0, 0.5]))
    assert (x >= 0).all() and x[1] == 0


def test_locator_reads_weights_off_a_linear_reward():
    bank = make_bank()
    locate = Locator(LinearReward(), bank, n_prompts=10)
    z = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [0.0, 2.0, 2.0]])
    np.testing.assert_allclose(locate(z), [[0.2, 0.3, 0.5], [1, 0, 0], [0, 0.5, 0.5]], atol=1e-6)
    assert locate(z.expand(4, -1, -1)).shape == (4, 3, 3)  # samples first


def test_bayes_posterior_concentrates_on_the_true_user():
    bank, bayes = make_bank(), BayesPosterior(n=20)
    assert len(simplex_grid(20)) == 231 and np.exp(bayes.log_prior).sum() == pytest.approx(1.0)
    rng = np.random.default_rng(3)
    errors = []
    for k in (0, 3, 10, 40):
        w = np.tile([0.0, 0.0, 1.0], (200, 1))
        ep, _, _ = users.sample_users(bank, "train", 200, 45, np.full(200, k), rng, weights=w)
        pairs = bank.pairs.numpy()[ep.tgt_pair.numpy()]
        diff = bank.attributes[pairs[..., 0]] - bank.attributes[pairs[..., 1]]
        ctx_diff = np.where(ep.tgt_y.numpy()[..., None] == 1, diff, -diff)
        post = bayes.posterior(ctx_diff, ep.tgt_in_ctx.numpy())
        np.testing.assert_allclose(post.sum(1), 1.0)
        errors.append(np.abs(bayes.mean(post) - w).sum(1).mean())
        if k == 40:  # posterior predictive close to the oracle's choice probabilities
            oracle = users.choice_prob(w[:, None], diff, 0 * diff)
            assert np.abs(bayes.predictive(post, diff) - oracle).mean() < 0.05
    assert errors[0] > errors[1] > errors[2] > errors[3] and errors[3] < 0.15
