"""Corpus building blocks: prompts split by prompt, degenerate-text filter, spread selection, robust JSONL."""
import json

import numpy as np
import pytest

from npdemo.data import corpus
from npdemo.data.prompts import Prompt, load_prompts
from npdemo.data.tokens import chat_text, generate_after_prefix
from npdemo.train import corpus_build


def rec(text, finished=True, pid="p"):
    return {"response": text, "finished": finished, "prompt_id": pid}


def test_prompts_are_many_unique_and_split_by_prompt():
    prompts = load_prompts()
    assert len(prompts) >= 500
    assert len({p.text.lower() for p in prompts}) == len(prompts)
    splits = [p.split for p in prompts]
    for name, lo, hi in (("train", 0.6, 0.8), ("val", 0.1, 0.2), ("test", 0.1, 0.2)):
        assert lo < splits.count(name) / len(splits) < hi
    assert Prompt("x", "How do I boil an egg?", "handwritten").split == Prompt("y", "How do I boil an egg?", "t").split


def test_degenerate_filter():
    assert corpus_build.degenerate(rec("")) == "empty"
    assert corpus_build.degenerate(rec("Yes.")) == "empty"
    loop = "I like tea very much. " * 6
    assert corpus_build.degenerate(rec(loop)) == "repetition"
    assert corpus_build.degenerate(rec("<|im_start|>user hello there friend")) == "template debris"
    assert corpus_build.degenerate(rec("Boil water, add the tea, wait three minutes, and enjoy it.")) is None
    # cut off: trimmed to the last complete sentence when that keeps most of the text, else dropped
    cut = rec("Boil the water first. Then add the tea bag and let it steep. Finally rem", finished=False)
    assert corpus_build.complete_text(cut) == "Boil the water first. Then add the tea bag and let it steep."
    assert corpus_build.degenerate(rec("Boil the water. Then pour it over the leaves and wait for a long while", False)) == "cut off"
    assert corpus_build.complete_text(rec("1. Boil water\n2. Add tea\n3. Wa", False)) == "1. Boil water\n2. Add tea"


def test_farthest_points_spread():
    x = np.array([[0, 0, 0], [0.01, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0.02, 0.01, 0]], dtype=float)
    chosen = corpus_build.farthest_points(x, 4)
    assert len(set(chosen)) == 4 and {2, 3, 4} <= set(chosen)
    assert len(corpus_build.farthest_points(x, 10)) == len(x)


def test_plan_is_deterministic_and_covers_every_style():
    styles = list(corpus_build.load_style_demos())
    p = Prompt("abc", "How do I fold a shirt?", "handwritten")
    cfg = corpus_build.CorpusConfig()
    a, b = corpus_build.plan(p, 0, 12, styles, cfg), corpus_build.plan(p, 0, 12, styles, cfg)
    assert a == b and len({j["key"] for j in a}) == 12
    assert set(styles) <= {j["style"] for j in a}
    assert all(j["max_new_tokens"] == 40 for j in a if j["style"] in corpus_build.SHORT_STYLES)


def test_corrupt_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "raw.jsonl"
    path.write_text(json.dumps({"key": 1}) + "\n" + '{"key": 2, "resp')
    assert corpus.read_jsonl(path, tolerate_truncated_tail=True) == [{"key": 1}]  # resumable after a crash
    with pytest.raises(corpus.CorpusError, match=r"raw.jsonl line 2"):
        corpus.read_jsonl(path)
    path.write_text('{"key": 1\n' + json.dumps({"key": 2}) + "\n")
    with pytest.raises(corpus.CorpusError, match="line 1"):
        corpus.read_jsonl(path, tolerate_truncated_tail=True)
    with pytest.raises(corpus.CorpusError, match="is missing"):
        corpus.load_corpus(tmp_path / "none.jsonl")


def test_shared_prefix_cache_matches_each_prompt_alone(tiny_lm):
    import torch

    tok, model = tiny_lm.tokenizer, tiny_lm.model
    demo = corpus_build.load_style_demos()["warm"][0]
    prompts = ["How do I boil an egg?", "Any tips for a rainy Sunday with kids at home?"]
    ids, mask, P = corpus_build.shared_prefix_batch(tok, demo, prompts)
    assert P > 0 and (mask[:, :P] == 1).all()
    with torch.no_grad():
        out = generate_after_prefix(model, ids, mask, P, do_sample=False, max_new_tokens=6,
                                    pad_token_id=tok.pad_token_id)
        for row, prompt in enumerate(prompts):
            alone = tok(chat_text(tok, [{"role": "user", "content": demo["user"]},
                                          {"role": "assistant", "content": demo["assistant"]},
                                          {"role": "user", "content": prompt}]),
                        add_special_tokens=False, return_tensors="pt")["input_ids"]
            ref = model.generate(input_ids=alone, attention_mask=torch.ones_like(alone), do_sample=False,
                                 max_new_tokens=6, pad_token_id=tok.pad_token_id)
            assert torch.equal(out[row, ids.shape[1]:], ref[0, alone.shape[1]:])


def test_resume_drops_a_half_written_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"key": 1}) + "\n" + '{"key": 2, "resp')
    corpus_build.drop_partial_tail(path)
    assert corpus.read_jsonl(path) == [{"key": 1}]
    corpus_build.drop_partial_tail(path)  # a clean file is left alone
    assert path.read_text() == json.dumps({"key": 1}) + "\n"
