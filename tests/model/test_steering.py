"""The policy evaluation runs end to end on a tiny model and reports bounded, sensible figures."""
import json

import numpy as np
import pytest
import torch

from conftest import make_tiny_lm, text_bank
from npdemo import config
from npdemo.evaluate import policy_tasks as steering
from npdemo.evaluate import steering_tasks
from npdemo.model.answer_scores import ScoredAnswers
from npdemo.model.context_encoder import ContextEncoder, EncoderConfig
from npdemo.model.in_context import in_context_prompt
from npdemo.model.policy import ConditionalPolicy, PolicyConfig

CFG = steering.SteeringConfig(users_per_k=4, targets=2)
GEN = steering_tasks.GenerationConfig(prompts=2, context=3, contexts=2, new_tokens=4, fluency_tokens=3,
                                      dirichlet_users=5, dirichlet_prompts=2)


def test_identity_policy_has_chance_implicit_reward(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "CACHE", tmp_path)
    bank = text_bank(12, splits=("train", "test"))
    pol = ConditionalPolicy(make_tiny_lm(), PolicyConfig(latent=8, lora_r=4, lora_dropout=0.0))
    enc = ContextEncoder(EncoderConfig(d=8, hidden=16, latent=8)).eval()
    table, groups = steering.implicit_reward_table({"np_dpo": (pol, enc), "dpo_mixed": (pol, None)}, bank, CFG, 64)
    assert len(groups) == CFG.users_per_k
    for name in ("np_dpo", "dpo_mixed"):
        acc = table[name]
        assert set(acc) == set(steering.KS)
        for k in steering.KS:  # at init the policy equals its reference: every implicit reward ties
            assert (acc[k] == 0.5).all()


def test_implicit_reward_is_paired_across_k(tmp_path, monkeypatch):
    """Same users and targets at every k; a random FiLM makes z matter, so k changes NP scores, not DPO-mixed."""
    monkeypatch.setattr(config, "CACHE", tmp_path)
    bank = text_bank(12, splits=("train", "test"))
    pol = ConditionalPolicy(make_tiny_lm(), PolicyConfig(latent=8, lora_r=4, lora_dropout=0.0, film_bound=None))
    with torch.no_grad():
        for p in pol.film.parameters():
            p.normal_(0, 0.5)
    enc = ContextEncoder(EncoderConfig(d=8, hidden=16, latent=8)).eval()
    cfg = steering.SteeringConfig(users_per_k=6, targets=6, seed=3)
    table, _ = steering.implicit_reward_table({"np_dpo": (pol, enc), "dpo_mixed": (pol, None)}, bank, cfg, 64)
    np_acc, mixed_acc = table["np_dpo"], table["dpo_mixed"]
    assert all((mixed_acc[k] == mixed_acc[0]).all() for k in steering.KS)
    assert any((np_acc[k] != np_acc[0]).any() for k in steering.KS)


def test_steering_report(tmp_path):
    bank = text_bank(12, splits=("train", "test"))
    pol = ConditionalPolicy(make_tiny_lm(), PolicyConfig(latent=8, lora_r=4))
    with torch.no_grad():
        for p in pol.film.parameters():
            p.normal_(0, 0.5)
    enc = ContextEncoder(EncoderConfig(d=8, hidden=16, latent=8)).eval()
    out = steering_tasks.steering(pol, enc, bank, GEN, mixed=pol)
    assert set(out["decodings"]) == {"greedy", "sampled"}
    for d, res in out["decodings"].items():
        assert set(res["win_rate"]) == {"concise", "structured", "warm", "centre"}
        for u in res["win_rate"].values():
            assert set(u) == {"np_dpo", "in_context", "dpo_mixed", "np_dpo_vs_dpo_mixed"}
            assert all(0 <= v <= 1 for v in u.values())
        users = [f"{m}, {u}" for m in ("np_dpo", "in_context") for u in out["users"]]
        extra = [f"np_dpo, {u} (context 2)" for u in out["users"]] if d == "greedy" else []  # other contexts: greedy
        assert set(res["rows"]) == {"base", "dpo_mixed", "np_dpo, no labels", *users, *extra}
        for row in res["rows"].values():
            assert len(row["attributes"]) == 3 and 0 <= row["junk_rate"] <= 1 and 0 <= row["eos_share"] <= 1
            assert len(row["answers"]) == out["prompts"] and row["examples"] == row["answers"][:3]
            assert -1 <= row["relevance"] <= 1 and row["junk"] == round(row["junk_rate"] * out["prompts"])
    assert len(out["z_swap"]) == 2
    assert set(out["z_swap"][0]) == {"axis", "from_base", "from_prior", "concise_vs_warm"}
    bars = steering_tasks.targets(out)
    assert set(bars["greedy"]["np_dpo, concise"]) == {"junk", "fluency", "relevance", "win_vs_base", "win_vs_dpo_mixed"}
    assert out["corpus"]["responses"] > 0
    stored = json.loads(json.dumps(out))  # as written to and read back from the run's JSON
    same = steering_tasks.rescore(stored, pol, bank)  # the same verdict re-reads the same texts to the same numbers
    assert json.dumps(same["decodings"]) == json.dumps(out["decodings"])  # (NaN fluency of short rows included)
    assert same["z_swap"] == out["z_swap"] and same["rescored"]
    again = steering_tasks.steering(pol, enc, bank, GEN, mixed=pol)  # seeded: sampled rows are reproducible
    assert all(again["decodings"]["sampled"]["rows"][k]["answers"] == r["answers"]
               for k, r in out["decodings"]["sampled"]["rows"].items())
    steer = steering_tasks.steerability(pol, enc, bank, GEN, batch=4)
    assert steer["users"] == 5 and len(steer["prompts"]) == 2
    for name in ("point control", "10 random labelled pairs"):
        for c in steer[name]["correlation"].values():
            assert np.isnan(c["r"]) or c["low"] <= c["r"] <= c["high"]


def test_correlation_interval_by_hand():
    x = np.arange(10.0)
    c = steering_tasks.correlation(x, 2 * x + 1)
    assert c["r"] == pytest.approx(1.0)
    c = steering_tasks.correlation(x, np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1.0]))
    half = 1.96 / np.sqrt(7)
    assert c["low"] == pytest.approx(np.tanh(np.arctanh(c["r"]) - half))
    assert np.isnan(steering_tasks.correlation(x, np.ones(10))["r"])


def test_win_rate_counts_junk_as_a_loss():
    """By hand: prompt 1 both real (ours better), 2 ours junk, 3 the other's junk, 4 both junk."""
    def answers(concise, junk):
        n = len(junk)
        return ScoredAnswers([""] * n, np.ones(n, bool), np.column_stack([concise, np.zeros((n, 2))]),
                                      np.full(n, 2.0), np.full(n, 0.5), np.array(junk))
    ours = answers([0.9, 0.0, 0.2, 0.0], [False, True, False, True])
    other = answers([0.1, 0.9, 0.0, 0.0], [False, False, True, True])
    w = np.array([1.0, 0.0, 0.0])
    assert steering_tasks.win_rate(w, ours, other) == pytest.approx((1 + 0 + 1 + 0) / 4)
    assert steering_tasks.win_rate(w, other, ours) == pytest.approx((0 + 1 + 0 + 0) / 4)


def test_in_context_prompt_holds_the_labels():
    bank = text_bank(2)
    text = in_context_prompt(bank, np.array([0]), np.array([2]), "How do I fry an egg?")
    assert "Liked: " + bank.records[0]["response"] in text and "Liked less: Boil it." in text
    assert text.endswith("My question: How do I fry an egg?")


def test_implicit_reward_report_rise(tmp_path, monkeypatch, capsys):
    """The printed report: accuracies in [0, 1] per k and group, and a zero rise for the latent-free policy."""
    from npdemo.evaluate.policy_tasks import implicit_reward_report
    from npdemo.model.reward import RewardConfig, build_reward_model

    monkeypatch.setattr(config, "CACHE", tmp_path)
    bank = text_bank(12, splits=("train", "test"))
    pol = ConditionalPolicy(make_tiny_lm(), PolicyConfig(latent=8, lora_r=4, lora_dropout=0.0))
    enc = ContextEncoder(EncoderConfig(d=8, hidden=16, latent=8)).eval()
    reward_model = build_reward_model(RewardConfig(d=8, hidden=16, encoder=EncoderConfig(d=8, hidden=16, latent=8)))
    out = implicit_reward_report({"np_dpo": (pol, enc), "dpo_mixed": (pol, None)}, bank,
                                 steering.SteeringConfig(users_per_k=6, targets=3), 64, reward_model.eval())
    assert list(out) == ["true reward (oracle)", "np_btl reward model", "np_dpo", "dpo_mixed"]
    assert set(out["np_dpo"]["by_k"]) == {str(k) for k in steering.KS}
    for row in ("true reward (oracle)", "dpo_mixed"):  # neither reads the context
        assert out[row]["rise"]["all"]["mean"] == 0.0 and out[row]["users"]["all"] == 6
    assert all(0 <= v <= 1 for by_k in out["np_btl reward model"]["by_k"].values() for v in by_k.values()
               if v == v)  # NaN for an empty group
    assert "rise 0 to 10" in capsys.readouterr().out


def test_true_reward_reference_by_hand():
    """The oracle row: a user's true reward ranks each target; the accuracy counts agreement with its labels."""
    bank = text_bank(12, splits=("train", "test"))
    users = steering.ImplicitRewardUsers.sample(bank, steering.SteeringConfig(users_per_k=5, targets=2, seed=1))
    oracle = steering.reference_accuracy(users, bank, None)["true reward (oracle)"]
    for u in range(5):
        r = bank.attributes[users.targets[u]] @ users.weights[u]  # (T, 2); a toy bank has no quality part
        expected = np.mean([0.5 if a == b else float((a > b) == y) for (a, b), y in zip(r, users.y[u])])
        assert oracle[0][u] == expected == oracle[10][u]


def test_z_swap_by_hand():
    """Shifts along concise - warm from each reference, the strict sign rule, and the head-to-head gap."""
    concise = np.array([[0.9, 0.0, 0.5], [0.7, 0.0, 0.5]])
    warm = np.array([[0.5, 0.0, 0.9], [0.5, 0.0, 0.7]])
    base = np.array([[0.5, 0.0, 0.5], [0.5, 0.0, 0.5]])
    shared = np.array([[0.5, 0.0, 0.0], [0.5, 0.0, 0.0]])  # a reference both latents move "warmer" from
    out = steering_tasks.z_swap({"concise": concise, "warm": warm}, {"base": base, "shared": shared})
    assert out["axis"] == "concise - warm"
    assert out["from_base"]["shift_with_z_concise"]["mean"] == pytest.approx(0.3)
    assert out["from_base"]["shift_with_z_warm"]["mean"] == pytest.approx(-0.3)
    assert out["from_base"]["swaps"] and out["from_base"]["swaps_2se"]  # shifts 0.4, 0.2: s.e. 0.1, mean 3 s.e.
    wide = steering_tasks.z_swap({"concise": concise[:, [0, 1, 2]] * [[1, 1, 1], [0.6, 1, 1]], "warm": warm}, {"base": base})
    assert wide["from_base"]["swaps"] and not wide["from_base"]["swaps_2se"]  # shifts 0.4, -0.08: under 2 s.e.
    assert out["from_shared"]["shift_with_z_concise"]["mean"] == pytest.approx(-0.2)
    assert not out["from_shared"]["swaps"]
    assert out["concise_vs_warm"]["mean"] == pytest.approx(0.6)
    assert out["concise_vs_warm"]["share_positive"] == 1.0
