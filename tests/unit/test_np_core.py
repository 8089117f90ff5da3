"""NP-BTL core: encoder invariances, losses against hand-computed values, the synthetic task, evaluation hygiene."""
import math

import numpy as np
import pytest
import torch

from npdemo.data import synthetic
from npdemo.model.context_encoder import ContextEncoder, EncoderConfig
from npdemo.data.episodes import make_episodes
from npdemo.evaluate.metrics import heldout_accuracy
from npdemo.model.losses import btl_nll, dpl_logits, np_objective
from npdemo.model.reward import RewardConfig, build_reward_model

D = 3


def encoder(**kw) -> ContextEncoder:
    torch.manual_seed(0)
    return ContextEncoder(EncoderConfig(d=D, hidden=32, latent=16, attention_heads=4, **kw)).eval()


def episodes(B=4, T=6, k=(0, 1, 3, 6), seed=0):
    rng = np.random.default_rng(seed)
    options = torch.randn(40, D)
    pairs = torch.as_tensor(rng.integers(0, 40, size=(25, 2)))
    tgt = np.stack([rng.choice(25, T, replace=False) for _ in range(B)])
    y = rng.integers(0, 2, size=(B, T))
    return make_episodes(options, pairs, tgt, y, np.array(k))


@pytest.mark.parametrize("aggregation", ["mean", "sum", "attention"])
@pytest.mark.parametrize("latent_kind", ["deterministic", "gaussian"])
def test_encoder_shapes_and_permutation_invariance(aggregation, latent_kind):
    enc = encoder(aggregation=aggregation, latent_kind=latent_kind)
    ep = episodes()
    z = enc.latent(ep.ctx, ep.ctx_mask)
    assert z.shape == (4, 16)
    assert enc.latent(ep.ctx, ep.ctx_mask, n_z=5).shape == (5, 4, 16)
    perm = torch.randperm(ep.ctx.shape[1])
    # permute real pairs among themselves: user 3 has all 6 real, so shuffle its pairs
    ctx, mask = ep.ctx.clone(), ep.ctx_mask.clone()
    ctx[3] = ctx[3, perm]
    z_perm = enc.latent(ctx, mask)
    torch.testing.assert_close(z_perm, z, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("aggregation", ["mean", "sum", "attention"])
def test_empty_context_gives_the_prior_without_nan(aggregation):
    enc = encoder(aggregation=aggregation, latent_kind="gaussian")
    ep = episodes(k=(0, 0, 0, 0))
    q = enc(ep.ctx, ep.ctx_mask)
    assert torch.isfinite(q.mean).all() and torch.isfinite(q.stddev).all()
    assert (q.stddev >= 0.01).all()
    torch.testing.assert_close(q.mean[0], q.mean[1])  # every empty context is the same prior user

    # padding never matters: masked-out pairs holding garbage give the same latent
    ep2 = episodes(k=(2, 2, 2, 2))
    padded = torch.cat([ep2.ctx, 1e3 * torch.randn(4, 4, 2, D)], dim=1)
    mask = torch.cat([ep2.ctx_mask, torch.zeros(4, 4, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(enc(padded, mask).mean, enc(ep2.ctx, ep2.ctx_mask).mean, atol=1e-5, rtol=1e-5)


def test_choice_order_matters():
    enc = encoder()
    ep = episodes(k=(3, 3, 3, 3))
    swapped = ep.ctx.flip(-2)
    assert not torch.allclose(enc.latent(swapped, ep.ctx_mask), enc.latent(ep.ctx, ep.ctx_mask))


def test_bad_shapes_are_clear_errors():
    enc = encoder()
    with pytest.raises(ValueError, match="context must have shape"):
        enc(torch.zeros(2, 3, 2, D + 1), torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        enc(torch.zeros(2, 3, 2, D), torch.ones(2, 4, dtype=torch.bool))
    model = build_reward_model(RewardConfig(d=D, hidden=16, encoder=EncoderConfig(d=D, hidden=16, latent=8)))
    ep = episodes()
    ep.tgt = ep.tgt[:, :0]
    with pytest.raises(ValueError, match="empty target set"):
        model(ep)
    with pytest.raises(ValueError, match="aggregation"):
        EncoderConfig(aggregation="max")
    with pytest.raises(ValueError, match="k must be"):
        episodes(k=(0, 1, 3, 7))


def test_btl_nll_hand_values():
    logits = torch.tensor([0.0, 1.0, -2.0])
    y = torch.tensor([1.0, 1.0, 1.0])
    expected = torch.tensor([math.log(2), math.log(1 + math.exp(-1)), math.log(1 + math.exp(2))])
    torch.testing.assert_close(btl_nll(logits, y), expected)
    torch.testing.assert_close(btl_nll(logits, 1 - y), torch.tensor([math.log(2), math.log(1 + math.e),
                                                                     math.log(1 + math.exp(-2))]))
    assert torch.isfinite(btl_nll(torch.tensor([1e4, -1e4]), torch.tensor([0.0, 1.0]))).all()


def test_dpl_logit_hand_value():
    # mu_a - mu_b = 1, sigma_a = sigma_b = 1: logit = sqrt(2 pi) / sqrt(2) = sqrt(pi)
    logit = dpl_logits(torch.tensor(1.5), torch.tensor(0.5), torch.tensor(1.0), torch.tensor(1.0))
    torch.testing.assert_close(logit, torch.tensor(math.sqrt(math.pi)))


def test_np_objective_hand_value_and_kl_direction():
    from torch.distributions import Independent, Normal

    qT = Independent(Normal(torch.tensor([[0.0]]), torch.tensor([[1.0]])), 1)
    qC = Independent(Normal(torch.tensor([[1.0]]), torch.tensor([[2.0]])), 1)
    nll = torch.tensor([[[0.5, 1.5]], [[1.0, 1.0]]])  # (n_z=2, B=1, T=2): mean over z = [0.75, 1.25], sum 2
    # KL(N(0,1) || N(1,2)) = log(2/1) + (1 + 1) / (2 * 4) - 1/2
    kl = math.log(2) + 2 / 8 - 0.5
    torch.testing.assert_close(np_objective(nll, qT, qC, beta_kl=1.0), torch.tensor((2 + kl) / 2))
    # the reverse direction KL(qC || qT) = log(1/2) + (4 + 1) / 2 - 1/2 differs: we must not use it
    assert abs(kl - (math.log(0.5) + 2.5 - 0.5)) > 0.5


def test_synthetic_task_matches_the_paper():
    tasks = {s: synthetic.load(s) for s in ("train", "val", "test")}
    assert {s: t.n_pairs for s, t in tasks.items()} == {"train": 16000, "val": 2000, "test": 2000}
    for t in tasks.values():
        assert abs(t.disagreement() - 0.5) < 0.02
    # type 0 prefers larger y; type 1 prefers y closer to 0.5 above 0.5
    test = tasks["test"]
    a, b = test.options[test.pairs[:, 0], 0].numpy(), test.options[test.pairs[:, 1], 0].numpy()
    assert (test.choices[0] == (a > b)).all()
    assert (test.choices[1] == (synthetic.reward(a, 1) > synthetic.reward(b, 1))).all()


def test_bayes_optimal_accuracy_matches_the_closed_form():
    task = synthetic.load("test")
    rng = np.random.default_rng(0)
    for k in (0, 1, 3):
        ep, _ = task.sample(3000, 20, np.full(3000, k), rng)
        acc = heldout_accuracy(synthetic.bayes_predict(task.choices, ep), ep).mean()
        assert abs(acc - (1 - 0.25 * 0.5**k)) < 0.01


def test_evaluation_never_scores_a_context_pair():
    ep = episodes(B=3, T=5, k=(0, 2, 4))
    y = ep.tgt_y.numpy()
    # predictions right on context pairs, wrong on the rest: held-out accuracy must be 0 for everyone
    p = np.where(ep.tgt_in_ctx.numpy(), y, 1 - y)
    np.testing.assert_array_equal(heldout_accuracy(p, ep), 0.0)
    p = np.where(ep.tgt_in_ctx.numpy(), 1 - y, y)
    np.testing.assert_array_equal(heldout_accuracy(p, ep), 1.0)
    # the context is exactly the first k targets, oriented chosen-first
    for i, k in enumerate((0, 2, 4)):
        assert ep.tgt_in_ctx[i].sum() == k
        assert ep.ctx_mask[i].sum() == k
    with pytest.raises(ValueError, match="no target outside"):
        heldout_accuracy(np.ones((1, 2)), episodes(B=1, T=2, k=(2,)))


def test_dpo_loss_hand_values():
    from npdemo.model.losses import dpo_loss

    zero = torch.zeros(2)
    loss, rc, rr = dpo_loss(zero, zero, zero, zero, beta=0.1)
    torch.testing.assert_close(loss, torch.full((2,), math.log(2)))
    loss, rc, rr = dpo_loss(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), 1.0)
    torch.testing.assert_close(loss, torch.tensor([math.log(1 + math.exp(-1))]))  # 0.3133
    assert loss.item() == pytest.approx(0.3133, abs=1e-4) and rc.item() == 1.0 and rr.item() == 0.0
    pi_c = torch.tensor([0.0], requires_grad=True)
    dpo_loss(pi_c, torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0]), 0.5)[0].sum().backward()
    assert pi_c.grad.item() < 0  # raising the chosen log-prob lowers the loss
    big = torch.tensor([1e4])
    assert torch.isfinite(dpo_loss(-big, big, big, -big, 1.0)[0]).all()


def test_rpo_loss_hand_values():
    from npdemo.model.losses import rpo_loss

    dpo = torch.tensor([math.log(2), 0.3133])
    pi_c = torch.tensor([-20.0, -6.0])  # summed log-probs of 10 and 3 chosen tokens: NLL 2.0 and 2.0 per token
    torch.testing.assert_close(rpo_loss(dpo, pi_c, torch.tensor([10, 3]), 0.5),
                               torch.tensor([math.log(2) + 1.0, 0.3133 + 1.0]))
    torch.testing.assert_close(rpo_loss(dpo, pi_c, torch.tensor([10, 3]), 0.0), dpo)  # alpha 0: plain DPO
    pi = torch.tensor([-20.0], requires_grad=True)
    rpo_loss(torch.zeros(1), pi, torch.tensor([10]), 1.0).sum().backward()
    assert pi.grad.item() == pytest.approx(-0.1)  # d/dpi (-pi / 10): a likelier chosen response lowers the loss


def test_sequence_logprob_sums_response_tokens_only():
    from npdemo.model.losses import sequence_logprob

    # vocabulary of 3; logits at position t score token t + 1
    logits = torch.log(torch.tensor([
        [[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [1 / 3, 1 / 3, 1 / 3]],
        [[0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]],
    ]))
    ids = torch.tensor([[0, 1, 2, 0], [2, 0, 2, 1]])
    # row 0: prompt = token 0, response = tokens 1..2, last is padding; row 1: prompt = 2 tokens, response = 2
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]])
    expected = torch.tensor([math.log(0.25) + math.log(0.1), math.log(0.4) + math.log(0.25)])
    torch.testing.assert_close(sequence_logprob(logits, ids, mask), expected)


@pytest.mark.parametrize("decoder", ["mlp", "bilinear"])
def test_np_btl_decoders_shapes_loss_and_dropout(decoder):
    torch.manual_seed(0)
    cfg = RewardConfig(kind="np", d=D, hidden=16, decoder=decoder, input_dropout=0.5,
                       encoder=EncoderConfig(d=D, hidden=16, latent=8, latent_kind="gaussian"))
    model = build_reward_model(cfg)
    ep = episodes()
    assert model(ep).shape == (4, 6) and model(ep, n_z=5).shape == (5, 4, 6)
    assert model.rewards(torch.randn(4, 7, D), torch.randn(4, 8)).shape == (4, 7)
    model.train()
    assert torch.isfinite(model.loss(ep)) and model.loss(ep) != model.loss(ep)  # dropout is on in training
    model.eval()
    assert torch.equal(model(ep), model(ep))  # no dropout at prediction time
    with pytest.raises(ValueError, match="decoder"):
        RewardConfig(kind="np", d=D, decoder="cubic", encoder=EncoderConfig(d=D))
