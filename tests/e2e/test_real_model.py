"""The real default model (SmolLM2-135M-Instruct, fp32): what a tiny random model cannot show."""
from npdemo.model.generation import Sampling, generate, generate_base_shared_prefix
from npdemo.model.policy import ConditionalPolicy, PolicyConfig


def test_shared_prefix_generation_matches_each_prompt_alone(real_lm):
    """The in-context baseline's fast path (one KV cache for the common labelled-pairs prefix) changes nothing
    (on the real model: the tiny random one answers every prompt alike)."""
    policy = ConditionalPolicy(real_lm, PolicyConfig())
    shared = "Here are answers I liked: Boil it. Liked less: a long story about eggs and kitchens.\n\nMy question: "
    prompts = [shared + q for q in ("Any tips for sleeping better?", "How do I boil an egg?", "Why?")]
    sampling = Sampling(max_new_tokens=12, greedy=True)
    alone = [generate(policy, [p], None, sampling)[0] for p in prompts]
    assert len(set(alone)) == len(alone)  # distinct answers: the comparison is not vacuous
    assert generate_base_shared_prefix(policy, prompts, sampling).texts == alone
