"""Rounds: the user's reward ranks two answers (the policy's, or styled base samples), junk never wins, a round
trains."""
import json

import numpy as np
import pytest
import torch

from conftest import make_tiny_lm, text_bank
from npdemo import config
from npdemo.data.users import JUNK_PENALTY, QUALITY_WEIGHT
from npdemo.model.answer_scores import ScoredAnswers
from npdemo.model.context_encoder import ContextEncoder, EncoderConfig
from npdemo.model.generation import Answers
from npdemo.model.policy import ConditionalPolicy, PolicyConfig
from npdemo.train import onpolicy
from npdemo.train.corpus_build import SHORT_STYLES, complete_text, degenerate
from npdemo.train.dpo import DPOConfig


def scored(concise: list[float], junk: list[bool]) -> ScoredAnswers:
    n = len(concise)
    attrs = np.column_stack([concise, np.zeros(n), np.full(n, 0.5)])
    return ScoredAnswers([""] * n, np.ones(n, bool), attrs, np.full(n, 2.0), np.full(n, 0.6), np.array(junk))


def test_the_users_reward_ranks_the_answers_and_junk_never_wins():
    # rows: a clearly more concise; a near tie; b junk; both junk (a "wins" on its concise score alone)
    a, b = scored([0.9, 0.50, 0.2, 0.3], [False, False, False, True]), scored([0.3, 0.52, 0.8, 0.1], [False, False, True, True])
    w = np.array([[1.0, 0, 0], [1, 0, 0], [1, 0, 0], [0.5, 0, 0.5]])
    keep, a_won = onpolicy.rank_answers(w, a, b, min_gap=0.05)
    # hand-computed gaps: 0.6, -0.02, -0.6 + 0.95 (b pays the junk penalty), 0.1 (both pay it)
    gap = a.reward(w) - b.reward(w)
    assert np.allclose(gap, [0.6, -0.02, -0.6 + JUNK_PENALTY, 0.1])
    assert QUALITY_WEIGHT > 0 and keep.tolist() == [True, False, True, False] and a_won.tolist() == [True, False, True, True]


def test_junk_only_rounds_pair_a_junk_answer_with_a_clean_one_whatever_the_reward():
    # rows: b junk (a wins though b is more concise); a junk; both clean; both junk
    a = scored([0.2, 0.9, 0.9, 0.5], [False, True, False, True])
    b = scored([0.8, 0.1, 0.1, 0.5], [True, False, False, True])
    keep, a_won = onpolicy.rank_answers(np.tile([1.0, 0, 0], (4, 1)), a, b, min_gap=0.05, junk_only=True)
    assert keep.tolist() == [True, True, False, False] and a_won[keep].tolist() == [True, False]


def test_a_winner_trains_only_without_an_emoji_run_and_if_fluent_enough():
    a = ScoredAnswers(["Great idea! 🎉🎉🎉", "Sure.", "Fine."], np.ones(3, bool), np.zeros((3, 3)),
                      np.array([2.0, 3.1, np.nan]), np.full(3, 0.6), np.zeros(3, bool))
    b = ScoredAnswers(["Try it.", "Lovely 🌟🌟", "Ok."], np.ones(3, bool), np.zeros((3, 3)),
                      np.array([2.9, 2.2, 2.0]), np.full(3, 0.6), np.zeros(3, bool))
    a_won, b_won = np.ones(3, bool), np.zeros(3, bool)
    assert onpolicy.winner_fit_to_learn(a, b, a_won, -1, 0.0).tolist() == [True, True, True]
    assert onpolicy.winner_fit_to_learn(a, b, a_won, 1, 0.0).tolist() == [False, True, True]  # a's 3-emoji run
    assert onpolicy.winner_fit_to_learn(a, b, b_won, 1, 0.0).tolist() == [True, False, True]  # b's 2-emoji run
    # NLL bar 2.65: a's 3.1 and unscored (NaN) fail; b's 2.9 fails
    assert onpolicy.winner_fit_to_learn(a, b, a_won, -1, 2.65).tolist() == [True, False, False]
    assert onpolicy.winner_fit_to_learn(a, b, b_won, -1, 2.65).tolist() == [False, True, True]


def test_an_answer_row_gets_its_eos_only_if_it_ended():
    policy = ConditionalPolicy(make_tiny_lm(), PolicyConfig(latent=8, lora_r=4))
    rows = onpolicy.answer_rows(policy, ["Hi?", "Hi?"], Answers(["Hello there.", "Hello there."], [True, False]))
    eos = policy.tokenizer.eos_token_id
    assert rows[0][0][:-1] == rows[1][0] and rows[0][0][-1] == eos and rows[0][1] == rows[1][1]


@pytest.mark.parametrize("source", ["policy", "styled", "ends"])
def test_a_round_generates_ranks_and_trains_then_leaves_no_state(tmp_path, monkeypatch, source):
    monkeypatch.setattr(config, "CACHE", tmp_path)
    torch.manual_seed(0)
    policy = ConditionalPolicy(make_tiny_lm(), PolicyConfig(latent=8, lora_r=4, lora_dropout=0.0))
    encoder = ContextEncoder(EncoderConfig(d=8, hidden=16, latent=8)).eval()
    film_before = [p.detach().clone() for p in policy.film.parameters()]
    cfg = onpolicy.OnPolicyConfig(rounds=1, round_users=3, round_prompts=2, round_context=2, round_tokens=6,
                                  round_min_gap=0.0, round_source=source)
    log = onpolicy.train_rounds(policy, encoder, text_bank(), cfg, DPOConfig(users=2, lr=1e-2), "test",
                                [{"step": 5}])
    entry = log[-1]
    assert len(log) == 2 and entry["round"] == 1 and entry["answers"] == 12
    usable = 12 if source == "ends" else 6  # "ends": each prompt asked twice, each answer paired with itself ended
    assert 0 <= entry["pairs"] <= entry["usable"] <= usable and entry["junk_first"] + entry["junk_second"] <= 24
    moved = any(not torch.equal(x, y) for x, y in zip(film_before, policy.film.parameters()))
    assert moved == (entry["pairs"] > 0)
    assert entry["step"] == 5 + -(-entry["pairs"] // 2)
    assert not list(tmp_path.glob("dpo/onpolicy-*"))
    assert len(list(tmp_path.glob("dpo/styled-*.jsonl"))) == (source == "styled")  # kept for DPO-mixed's run


@pytest.mark.parametrize("cut_ends", [True, False])
def test_styled_answers_pair_two_styles_filtered_as_the_corpus_is(tmp_path, cut_ends):
    torch.manual_seed(0)
    lm = make_tiny_lm()
    cfg = onpolicy.OnPolicyConfig(round_tokens=5, round_temperatures="0.7", round_cut_ends=cut_ends)
    prompts = ["How do I start running?", "What is a good breakfast?", "How do plants grow?"]
    path = tmp_path / "styled.jsonl"
    a, b, usable = onpolicy.styled_answers(lm, prompts, cfg, np.random.default_rng(0), path)
    records = {r["key"]: r for r in map(json.loads, path.read_text().splitlines())}
    assert len(records) == 6 and len(a.texts) == len(b.texts) == 3
    assert not all(r["finished"] for r in records.values())  # some hit the limit: what round_cut_ends is about
    for i in range(3):
        x, y = records[f"{i}:a"], records[f"{i}:b"]
        assert x["style"] != y["style"] and x["prompt"] == y["prompt"] == prompts[i]
        assert x["temperature"] == y["temperature"] == 0.7
        assert x["max_new_tokens"] == (40 if x["style"] in SHORT_STYLES else 5)
        assert usable[i] == (not degenerate(x) and not degenerate(y))
        assert (a.texts[i], a.ended[i]) == (complete_text(x) or x["response"], onpolicy.sample_ends(x, cut_ends))


def test_a_styled_sample_ends_if_it_stopped_or_was_cut_after_a_sentence():
    stopped = {"response": "Drink water. Sleep", "finished": True}
    cut = {"response": "Drink plenty of water every day. Sleep well at night. Then walk", "finished": False}  # kept
    mid = {"response": "Drink water and then walk for an hour or so every", "finished": False}  # cut off
    assert [onpolicy.sample_ends(r, True) for r in (stopped, cut, mid)] == [True, True, False]
    assert [onpolicy.sample_ends(r, False) for r in (stopped, cut, mid)] == [True, False, False]


def test_rounds_start_only_from_a_recipe_5_checkpoint_of_the_same_offpolicy_settings(tmp_path):
    import json
    from dataclasses import asdict, replace

    from npdemo.model.policy_checkpoint import OFFPOLICY_RECIPE, save_policy
    from npdemo.train.stages import PolicyTrainConfig, offpolicy_weights

    cfg = PolicyTrainConfig(lora_r=4)
    trained = ConditionalPolicy(make_tiny_lm(), cfg.policy_config(8))
    with torch.no_grad():
        trained.film.gamma.weight.normal_()
    save_policy(trained, ContextEncoder(EncoderConfig(d=4, hidden=8, latent=8)), tmp_path / "trained",
                recipe=OFFPOLICY_RECIPE, train=asdict(replace(cfg, rounds=0)), log=[{"step": 240}])  # --rounds 0
    manifest_path = tmp_path / "trained" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    fresh = ConditionalPolicy(make_tiny_lm(), cfg.policy_config(8))
    for changed, reason in (({"recipe": 3}, "recipe 3"), ({"recipe": 6}, "recipe 6"),
                            ({"train": {**manifest["train"], "rounds": 2}}, "'rounds': 2")):
        manifest_path.write_text(json.dumps({**manifest, **changed}))  # recipe 3's pairs; a round run; rounds run
        with pytest.raises(SystemExit, match=reason):
            offpolicy_weights(fresh, tmp_path / "trained", cfg)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(SystemExit, match="'steps': 240"):  # another off-policy run than this one's
        offpolicy_weights(fresh, tmp_path / "trained", replace(cfg, steps=80))
    assert offpolicy_weights(fresh, tmp_path / "trained", cfg) == [{"step": 240}]
    assert torch.equal(fresh.film.gamma.weight, trained.film.gamma.weight)


def test_rounds_go_on_from_a_checkpoint_of_this_runs_first_rounds(tmp_path):
    from dataclasses import asdict, replace

    from npdemo.model.policy_checkpoint import RECIPE, save_policy
    from npdemo.train.stages import PolicyTrainConfig, offpolicy_weights

    shipped = PolicyTrainConfig(lora_r=4)  # one styled round
    trained = ConditionalPolicy(make_tiny_lm(), shipped.policy_config(8))
    save_policy(trained, ContextEncoder(EncoderConfig(d=4, hidden=8, latent=8)), tmp_path / "r1", recipe=RECIPE,
                train=asdict(shipped), log=[{"step": 240}, {"step": 278, "round": 1}])
    fresh = ConditionalPolicy(make_tiny_lm(), shipped.policy_config(8))
    more = replace(shipped, rounds=2, round_source="styled,ends")
    assert offpolicy_weights(fresh, tmp_path / "r1", more) == [{"step": 240}, {"step": 278, "round": 1}]
    assert offpolicy_weights(fresh, tmp_path / "r1", replace(more, round_balance=True))  # read by ends rounds only
    for other, reason in ((replace(more, round_source="ends"), "'round_source': 'styled'"),  # round 1 was styled
                          (replace(more, round_tokens=160), "'round_tokens': 192"),
                          (shipped, "'rounds': 1")):  # nothing left to train
        with pytest.raises(SystemExit, match=reason):
            offpolicy_weights(fresh, tmp_path / "r1", other)


def test_interrupted_rounds_resume_at_the_last_finished_round(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "CACHE", tmp_path)
    cfg = onpolicy.OnPolicyConfig(rounds=2, round_users=2, round_prompts=1, round_context=2, round_tokens=4)
    real, calls = onpolicy.round_pairs, {"n": 0, "fail_at": 2}

    def counted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(onpolicy, "round_pairs", counted)
    policy = ConditionalPolicy(make_tiny_lm(), PolicyConfig(latent=8, lora_r=4, lora_dropout=0.0))
    encoder = ContextEncoder(EncoderConfig(d=8, hidden=16, latent=8)).eval()
    args = (policy, encoder, text_bank(), cfg, DPOConfig(users=2), "test")
    with pytest.raises(KeyboardInterrupt):  # dies in round 2, after round 1 was saved
        onpolicy.train_rounds(*args, [{"step": 5}])
    assert list(tmp_path.glob("dpo/onpolicy-*.pt"))
    calls["n"], calls["fail_at"] = 0, None
    log = onpolicy.train_rounds(*args, [])  # the cached state brings back the log given to the first call
    assert calls["n"] == 1 and [e.get("round") for e in log] == [None, 1, 2] and log[0] == {"step": 5}
    assert not list(tmp_path.glob("dpo/onpolicy-*.pt"))


def test_styled_samples_are_shared_by_np_dpo_dpo_mixed_and_other_pair_rules():
    from npdemo.train.stages import PolicyTrainConfig
    path = lambda cfg: onpolicy._samples_path(cfg, 0, "ref", 0)
    styled = PolicyTrainConfig()  # recipe 7: one styled round
    assert path(styled) == path(PolicyTrainConfig(conditioned=False, out="x"))
    assert path(styled) == path(PolicyTrainConfig(round_min_gap=0.2, round_chosen_nll=2.65, round_cut_ends=False))
    assert path(styled) != path(PolicyTrainConfig(round_tokens=96))
    assert path(styled) != path(PolicyTrainConfig(round_temperatures="0.6,0.8,1.0"))


def test_round_sources_are_named_per_round_and_the_last_repeats():
    cfg = onpolicy.OnPolicyConfig(rounds=3, round_source="styled,ends")
    assert [onpolicy.round_source(cfg, r) for r in range(3)] == ["styled", "ends", "ends"]


def test_an_answer_pairs_with_itself_ended_after_its_last_sentence_before_any_soup():
    soup = "Bake them low and slow. Let them cool on a rack first. Store them in a tin if you can,,,,,,,,,,,,,,,,u adores"
    capped = "Bake them low and slow. Let them cool on a rack first. Store them in a tin if"
    assert onpolicy.ended_early(soup, ended=True) == "Bake them low and slow. Let them cool on a rack first."
    assert onpolicy.ended_early(capped, ended=False) == "Bake them low and slow. Let them cool on a rack first."
    assert onpolicy.ended_early("Bake them low and slow. Let them cool.", ended=True) is None  # ended cleanly
    assert onpolicy.ended_early("Bake them low and slow. Let them cool.", ended=False) is None  # nothing to cut
    assert onpolicy.ended_early("Really,,,,,,,,,,,,,,,, yes", ended=True) is None  # no sentence before the soup
    assert onpolicy.ended_early("Bake them. Then let them cool on a rack for an hour or", ended=False) is None  # > 40 %


def test_each_capped_or_soup_answer_pairs_with_itself_ended_and_a_clean_end_with_nothing(monkeypatch):
    texts = ["Bake them low and slow. Let them cool on a rack first. Store them,,,,,,,,,,,,,,,,u adores",
             "Bake them low and slow. Let them cool on a rack first. Store them in a tin if",
             "Bake them low and slow. Let them cool."]
    monkeypatch.setattr(onpolicy, "answer", lambda policy, prompts, steer, sampling: Answers(
        texts[:len(prompts)], [True, False, True][:len(prompts)]))
    written, early, usable = onpolicy.ends_answers(None, ["How?"] * 3, torch.zeros(3, 4),
                                                   onpolicy.OnPolicyConfig(round_tokens=8), seed=0)
    assert usable.tolist() == [True, True, False] and written.texts == texts
    assert early.texts[:2] == ["Bake them low and slow. Let them cool on a rack first."] * 2 and all(early.ended)


def test_a_run_goes_on_after_the_rounds_its_log_holds(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "CACHE", tmp_path)
    sources = []
    real = onpolicy.round_pairs
    monkeypatch.setattr(onpolicy, "round_pairs", lambda *a, **k: sources.append(k["source"]) or real(*a, **k))
    policy = ConditionalPolicy(make_tiny_lm(), PolicyConfig(latent=8, lora_r=4, lora_dropout=0.0))
    encoder = ContextEncoder(EncoderConfig(d=8, hidden=16, latent=8)).eval()
    cfg = onpolicy.OnPolicyConfig(rounds=2, round_users=2, round_prompts=1, round_context=2, round_tokens=4,
                                  round_source="styled,policy")
    log = onpolicy.train_rounds(policy, encoder, text_bank(), cfg, DPOConfig(users=2), "test",
                                [{"step": 5}, {"step": 7, "round": 1}])  # a checkpoint after round 1
    assert sources == ["policy"] and [e.get("round") for e in log] == [None, 1, 2]


def test_a_balanced_round_keeps_as_many_pairs_won_by_each_side():
    keep = np.array([True, True, True, True, False, True])
    a_won = np.array([True, False, False, False, True, True])
    out = onpolicy.balanced(keep, a_won, np.random.default_rng(0))
    assert out.sum() == 4 and (out & a_won).sum() == 2 and not (out & ~keep).any()
    assert out[[0, 5]].all()  # the smaller side (a won twice) is kept whole
