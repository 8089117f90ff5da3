"""The shipped synthetic checkpoints load strictly and beat the unconditional ceiling on held-out pairs."""
import numpy as np

from npdemo.data import synthetic
from npdemo.evaluate.metrics import heldout_accuracy
from npdemo.evaluate.reward_tasks import predict
from npdemo.model.reward import load_reward_model
from npdemo.config import SYNTHETIC_DIR, SYNTHETIC_MODELS


def test_shipped_synthetic_checkpoints():
    task = synthetic.load("test")
    ep, _ = task.sample(300, 20, np.full(300, 10), np.random.default_rng(7))
    acc = {name: heldout_accuracy(predict(load_reward_model(SYNTHETIC_DIR / name), ep), ep).mean()
           for name in SYNTHETIC_MODELS}
    assert acc["np_deterministic"] > 0.98 and acc["np_gaussian"] > 0.97
    assert 0.65 < acc["btl"] < 0.85 and 0.65 < acc["dpl"] < 0.85  # capped near 75 % without the context
