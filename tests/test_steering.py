"""The policy evaluation runs end to end on a tiny model and reports bounded, sensible figures."""
import numpy as np
import torch

from conftest import make_tiny_lm, text_bank
from npdemo import dpo, steering
from npdemo.context_encoder import ContextEncoder, EncoderConfig
from npdemo.policy import ConditionalPolicy, PolicyConfig

CFG = steering.SteeringConfig(users_per_k=4, targets=2, prompts=2, context=3, new_tokens=4)


def test_identity_policy_has_chance_implicit_reward(tmp_path, monkeypatch):
    monkeypatch.setattr(dpo, "CACHE", tmp_path)
    bank = text_bank(12, splits=("train", "test"))
    pol = ConditionalPolicy(make_tiny_lm(), PolicyConfig(latent=8, lora_r=4, lora_dropout=0.0))
    enc = ContextEncoder(EncoderConfig(d=8, hidden=16, latent=8)).eval()
    table = steering.implicit_reward_table({"np_dpo": (pol, enc), "dpo_mixed": (pol, None)}, bank, CFG, 64)
    for name in ("np_dpo", "dpo_mixed"):
        assert set(table[name]) == set(steering.KS)
        for k in steering.KS:  # at init the policy equals its reference: every implicit reward ties
            assert table[name][k]["all"] == 0.5


def test_steering_report(tmp_path):
    bank = text_bank(12, splits=("train", "test"))
    pol = ConditionalPolicy(make_tiny_lm(), PolicyConfig(latent=8, lora_r=4))
    with torch.no_grad():
        for p in pol.film.parameters():
            p.normal_(0, 0.5)
    enc = ContextEncoder(EncoderConfig(d=8, hidden=16, latent=8)).eval()
    out = steering.steering(pol, enc, bank, CFG, np.random.default_rng(0), mixed=pol)
    assert set(out["users"]) == {"concise", "structured", "warm", "centre"}
    for u in out["users"].values():
        for key in ("np_dpo_win_rate", "in_context_win_rate", "dpo_mixed_win_rate", "np_dpo_vs_dpo_mixed_win_rate"):
            assert 0 <= u[key] <= 1
        assert len(u["np_dpo_attributes"]) == 3
    assert len(out["dpo_mixed"]) == 3
    assert set(out["z_swap"]) >= {"axis", "swaps"}


def test_in_context_prompt_holds_the_labels():
    bank = text_bank(2)
    text = steering.in_context_prompt(bank, np.array([0]), np.array([2]), "How do I fry an egg?")
    assert "Liked: " + bank.records[0]["response"] in text and "Liked less: Boil it." in text
    assert text.endswith("My question: How do I fry an egg?")
