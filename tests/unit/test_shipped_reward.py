"""The shipped text-corpus checkpoints: NP-BTL uses the labels (beats BTL-mixed at k = 10, not at k = 0) and its
simplex estimate improves with k, on fresh test users."""
import numpy as np
import torch

from npdemo.data import users
from npdemo.data.bank import load_bank
from npdemo.evaluate.metrics import heldout_accuracy
from npdemo.evaluate.reward_tasks import predict
from npdemo.model.reward import load_reward_model
from npdemo.model.simplex import Locator
from npdemo.config import REWARD_DIR


def test_shipped_np_btl_adapts_to_the_user():
    bank = load_bank()
    np_btl, btl = load_reward_model(REWARD_DIR / "np_btl"), load_reward_model(REWARD_DIR / "btl_mixed")
    locate = Locator(np_btl, bank)
    acc, err = {}, {}
    for k in (0, 10):
        ep, w, _ = users.sample_users(bank, "test", 300, 20, np.full(300, k), np.random.default_rng(k))
        acc[k] = {name: heldout_accuracy(predict(m, ep), ep).mean() for name, m in (("np", np_btl), ("btl", btl))}
        with torch.no_grad():
            err[k] = np.abs(locate(np_btl.encoder.latent(ep.ctx, ep.ctx_mask)) - w).sum(1).mean()
    assert acc[10]["np"] > acc[10]["btl"] + 0.03  # measured 73.1 vs 67.4 % (1,000 users)
    assert acc[10]["np"] > acc[0]["np"] + 0.03
    assert err[10] < err[0] - 0.3  # measured 0.97 -> 0.475
