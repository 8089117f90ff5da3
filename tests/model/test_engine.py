"""The engine behind the app: teach (next pair, label, skip, undo), locate, point latents, stream, score, profiles."""
import json

import numpy as np
import pytest
import torch

from conftest import make_tiny_engine
from npdemo.model.acquisition import information
from npdemo.model.context_encoder import EncoderConfig
from npdemo.model.generation import Sampling
from npdemo.model.reward import NPBTL, RewardConfig
from npdemo.serve.session import ProfileError, Session

GREEDY = Sampling(max_new_tokens=6, greedy=True)


@pytest.fixture(scope="module")
def engine():
    return make_tiny_engine()


def test_teach_flow_label_skip_undo_and_double_clicks(engine):
    s = Session(seed=1)
    first = engine.next_pair(s)
    engine.label(s, "a")
    assert s.labels == [(first, 1)] and len(s.trail) == 1 and s.current != first
    second = s.current
    engine.label(s, "skip")
    assert s.skipped == [second] and len(s.labels) == 1
    s.label(first, False)  # a repeated label of the same pair is ignored
    assert s.labels == [(first, 1)]
    engine.undo(s)
    assert s.labels == [] and s.trail == [] and s.current == first
    with pytest.raises(ValueError, match="choice"):
        engine.label(s, "c")


@pytest.mark.parametrize("order", ["informative", "random"])
def test_next_pair_never_repeats_and_ends(engine, order):
    s = Session(seed=2, order=order)
    shown = []
    while engine.next_pair(s) is not None:
        shown.append(s.current)
        engine.label(s, "b" if len(shown) % 2 else "skip")
    assert sorted(shown) == list(range(len(engine.bank.pairs)))  # every pair once, then None


def test_information_is_zero_without_latent_uncertainty(engine):
    cand = engine.bank.features[engine.bank.pairs[:10]]
    ctx, mask = engine.bank.context([(0, 1)])
    assert (information(engine.reward, engine.encoder(ctx, mask), cand) >= -1e-6).all()
    det = NPBTL(RewardConfig(d=cand.shape[-1], hidden=16, encoder=EncoderConfig(d=cand.shape[-1], hidden=16,
                                                                                latent=4)))
    assert torch.allclose(information(det, det.encoder(ctx, mask), cand), torch.zeros(10), atol=1e-5)


def test_position_point_latents_and_summary(engine):
    s = Session(seed=3)
    prior = engine.position(s)
    assert prior.source == "prior" and prior.k == 0 and np.isclose(prior.w.sum(), 1)
    assert prior.cloud.shape[1] == 3 and np.isclose(prior.bayes_post.sum(), 1)
    concise, warm = engine.latent_for_point([1, 0, 0]), engine.latent_for_point([0, 0, 5])
    assert torch.equal(concise, engine.latent_for_point([2, 0, 0]))  # weights are normalised
    assert not torch.equal(concise, warm)
    s.target = [0, 0, 1]
    assert engine.position(s).source == "target" and torch.equal(engine.latent(s), warm)
    engine.next_pair(s)
    engine.label(s, "a")
    assert s.target is None and "1 labelled pair" in engine.position(s).summary()


def test_stream_side_by_side_and_scores(engine):
    s = Session(seed=4)
    engine.next_pair(s)
    engine.label(s, "a")
    steps = list(engine.stream(s, "How do I boil an egg?", GREEDY, in_context=True))
    final = steps[-1]
    assert set(final) == {"steered", "base", "in_context"} and len(steps) > 1
    scores = engine.score(s, "How do I boil an egg?", final)
    for name in final:
        if final[name].strip():
            assert set(scores[name]) == {"concise", "structured", "warm", "reward", "fluency", "relevance", "junk",
                                         "junk_reason", "relevance_note"}
            assert isinstance(scores[name]["junk"], bool) and -1 <= scores[name]["relevance"] <= 1
    assert "I liked" in engine.in_context_prompt(s, "Q?") and engine.in_context_prompt(s, "Q?").endswith("Q?")


def test_profile_round_trip_and_refusals(engine):
    s = Session(seed=5)
    engine.next_pair(s)
    for choice in "abab":
        engine.label(s, choice)
    text = engine.export_profile(s)
    back = engine.import_profile(text)
    assert back.labels == s.labels and np.allclose(back.trail, s.trail)
    foreign = json.loads(text) | {"checkpoint": "another"}
    with pytest.raises(ProfileError, match="another model checkpoint"):
        engine.import_profile(json.dumps(foreign))
    for bad in ["{not json", "[]", json.dumps(json.loads(text) | {"labels": [[10**9, 1]]}),
                json.dumps(json.loads(text) | {"labels": [[0, 1], [0, 0]]}),
                json.dumps(json.loads(text) | {"target": [-1, 0, 0]}), b"\xff\xfe"]:
        with pytest.raises(ProfileError):
            engine.import_profile(bad)
