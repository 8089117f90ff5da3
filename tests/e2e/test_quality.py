"""The quality verdict with the real base model: the fixtures, the precisions the app serves, the junk penalty
every simulated user shares, and bad input."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from npdemo.data import attributes, base_model, users
from npdemo.data.bank import load_bank
from npdemo.data.quality_scores import quality_score
from npdemo.model import quality

FIXTURES = json.loads((Path(__file__).parent.parent / "fixtures" / "quality.json").read_text())
PROMPT = FIXTURES["prompt"]


def verdicts(lm, prompts, texts):
    return [q.junk for q in quality.assess(lm.model, lm.tokenizer, prompts, texts)]


def test_fixtures_with_fluency(real_lm):
    texts = FIXTURES["junk"] + FIXTURES["fluent"]
    qs = quality.assess(real_lm.model, real_lm.tokenizer, [PROMPT] * len(texts), texts)
    junk, fluent = qs[:len(FIXTURES["junk"])], qs[len(FIXTURES["junk"]):]
    assert all(q.junk and q.reason for q in junk), junk
    assert not any(q.junk for q in fluent), fluent
    caught_by_fluency = [q for t, q in zip(FIXTURES["junk"], junk) if t in FIXTURES["needs_fluency"]]
    assert all("not fluent" in q.reason for q in caught_by_fluency)
    assert np.mean([q.relevance for q in fluent[1:]]) > np.mean([q.relevance for q in junk]) + 0.2
    assert np.isnan(fluent[0].fluency)  # "Water it weekly.": too short to rate, and not junk for it


def test_verdict_agrees_across_fp32_bf16_and_int4(real_lm):
    """The app judges with its own base model (int4 on a CPU, bf16 where asked), evaluation with fp32: the
    verdicts must agree, on the fixtures and on corpus responses on both sides of the line. (NF4, the CUDA
    default, agreed on 44 such rows when measured once; at 5 tok/s on a CPU it is too slow for every CI run.)"""
    bank = load_bank()
    flagged = np.flatnonzero(bank.quality.junk)[::2]
    clean = np.flatnonzero(~bank.quality.junk)[::331][:len(flagged)]
    rows = np.concatenate([flagged, clean])
    prompts = [PROMPT] * (len(FIXTURES["junk"]) + len(FIXTURES["fluent"])) + [bank.records[i]["prompt"] for i in rows]
    texts = FIXTURES["junk"] + FIXTURES["fluent"] + [bank.records[i]["response"] for i in rows]
    reference = verdicts(real_lm, prompts, texts)
    for quant in ("bf16", "int4"):
        lm = base_model.load(quant=quant)
        assert verdicts(lm, prompts, texts) == reference, quant


def test_junk_penalty_is_the_smallest_that_makes_every_junk_answer_lose(real_lm):
    """P (users.JUNK_PENALTY) is the smallest step of 0.05 with which, for every corner and the centre, every junk
    fixture (put under each corpus prompt) and every junk corpus response loses to every non-junk corpus response
    of the same prompt. The fixtures' fluency is computed exactly where it can matter: prompts are visited by an
    upper bound (fluency counted as perfect), exact values until no bound can beat the best exact one."""
    bank = load_bank()
    lam, junk = users.QUALITY_WEIGHT, FIXTURES["junk"]
    ws = np.vstack([np.eye(3), np.full(3, 1 / 3)])
    r_junk = attributes.score_many(junk, [True] * len(junk)) @ ws.T  # (J, W) style part
    r_bank = bank.attributes @ ws.T + lam * bank.quality.q[:, None]  # (R, W)
    prompts = sorted({r["prompt"] for r in bank.records})
    by_prompt = {p: np.array([i for i, r in enumerate(bank.records) if r["prompt"] == p]) for p in prompts}
    emb = quality.embedder()
    cos = emb.encode(prompts, normalize_embeddings=True) @ emb.encode(junk, normalize_embeddings=True).T  # (P, J)
    rel = dict(zip(prompts, cos))

    def need(p, nll):  # the largest r_w(junk) - r_w(real) before the penalty, over users, fixtures, real answers
        real = by_prompt[p][~bank.quality.junk[by_prompt[p]]]
        gap = (r_junk + lam * quality_score(nll, rel[p])[:, None])[:, None] - r_bank[real][None]  # (J, Y, W)
        return float(gap.max())

    needed = max(float((r_bank[i] - r_bank[by_prompt[bank.records[i]["prompt"]]][
        ~bank.quality.junk[by_prompt[bank.records[i]["prompt"]]]].min(0)).max()) for i in np.flatnonzero(bank.quality.junk))
    bound = {p: need(p, np.zeros(len(junk))) for p in prompts}  # NLL 0: fluency score 1
    for p in sorted(prompts, key=bound.get, reverse=True):
        if bound[p] <= needed:  # no prompt left can need more
            break
        needed = max(needed, need(p, quality.fluency(real_lm.model, real_lm.tokenizer, [p] * len(junk), junk)))
    assert needed < users.JUNK_PENALTY <= needed + 0.05, needed


def test_bad_input_gets_a_verdict_and_a_score(real_lm):
    texts = ["", "   \n ", "🌿🌿😊", "** | --- |", "Riega la planta una vez por semana.", "Water the plant. " * 6000]
    qs = quality.assess(real_lm.model, real_lm.tokenizer, [PROMPT] * len(texts), texts)
    assert [q.junk for q in qs] == [True, True, True, True, False, True]
    assert "not English" in qs[4].reason and "repeated" in qs[5].reason
    assert np.isnan(qs[0].fluency) and np.isnan(qs[1].fluency) and np.isfinite(qs[5].fluency)  # nothing to rate
    assert all(isinstance(q.fluency, float) and isinstance(q.relevance, float) for q in qs)


def test_missing_embedder_names_the_package_and_the_install_line(monkeypatch):
    quality.embedder.cache_clear()
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # what an uninstalled package looks like
    with pytest.raises(ImportError, match=r"sentence_transformers is missing.*pip install sentence-transformers"):
        quality.relevance([PROMPT], ["Water it weekly."])
    quality.embedder.cache_clear()


def test_app_scores_warn_about_junk():
    """The app's score text: quality under every output, a visible warning on junk, a note for other languages."""
    from npdemo.serve.engine import Engine
    from npdemo.serve.session import Session
    from npdemo.serve.views import scores_markdown

    engine = Engine.load()  # the app's own: default model, 4-bit where it works, shipped checkpoints
    s = Session(seed=4)
    texts = {"steered": "💏 | 1. **2.**) *30* )+) | +_4.) (&)))", "base": "Boil it for nine minutes, then cool it.",
             "in_context": "Hierve el huevo durante nueve minutos y luego enfríalo en agua."}
    scores = engine.score(s, "How do I boil an egg?", texts)
    assert scores["steered"]["junk"] and not scores["base"]["junk"] and not scores["in_context"]["junk"]
    junk_md, base_md, other_md = (scores_markdown(scores[n]) for n in texts)
    assert "⚠️ **This output is junk** (no words)" in junk_md and "fluency" in junk_md
    assert "junk" not in base_md and "relevance" in base_md and "fluency" in base_md
    assert "not English" in other_md


def test_shipped_policy_writes_no_junk_in_the_app():
    """The app's engine (default model and precision, shipped checkpoints): each preset and a simulated user who
    clicks 10 pairs answer 3 prompts with the app's default sampling (seeded, 48 new tokens); none is junk."""
    import numpy as np
    import torch

    from npdemo.data.users import bank_shared
    from npdemo.model.generation import Sampling
    from npdemo.serve.engine import Engine
    from npdemo.serve.session import Session
    from npdemo.serve.ui import EXAMPLES, PRESETS

    engine = Engine.load()
    sessions = {name: Session(seed=0, target=w) for name, w in PRESETS.items()}
    clicker, w, shared = Session(seed=1), np.array([0.2, 0.2, 0.6]), bank_shared(engine.bank)
    engine.next_pair(clicker)
    for _ in range(10):  # a warm-leaning user picks the response its reward prefers
        a, b = engine.bank.pairs[clicker.current].tolist()
        gap = (engine.bank.attributes[a] - engine.bank.attributes[b]) @ w + shared[a] - shared[b]
        engine.label(clicker, "a" if gap > 0 else "b")
    sessions["10 clicks"] = clicker
    assert len(clicker.labels) == 10
    sampling = Sampling(max_new_tokens=48)
    for name, session in sessions.items():
        for prompt in EXAMPLES[:3]:
            torch.manual_seed(0)
            texts = list(engine.stream(session, prompt, sampling))[-1]
            scores = engine.score(session, prompt, texts)
            assert not scores["steered"]["junk"], (name, prompt, texts["steered"], scores["steered"]["junk_reason"])
