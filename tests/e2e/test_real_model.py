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


def test_int4_greedy_text_equals_fp32(real_lm):
    """The CPU int4 path (groups of 32, recovering the GGUF's Q4_1 blocks) writes what fp32 writes; steered, its
    next-token choices follow fp32's far more closely than steering moves them (greedy text is too brittle: one
    flipped token diverges the rest, and a FiLM as strong as the shipped one flips some in 24 tokens)."""
    import torch

    from npdemo.data import base_model

    prompts = ["How do I boil an egg?", "Any tips for keeping houseplants alive?", "Explain what a neural network is.",
               "Write a short note thanking a colleague for their help."]
    sampling = Sampling(max_new_tokens=24, greedy=True)
    fp32 = ConditionalPolicy(real_lm, PolicyConfig(latent=8))
    int4 = ConditionalPolicy(base_model.load(quant="int4"), PolicyConfig(latent=8))
    assert generate(int4, prompts, None, sampling) == generate(fp32, prompts, None, sampling)
    for pol in (fp32, int4):  # the same FiLM on both, |gamma - 1| about the shipped policy's (mean 0.035)
        for p in pol.film.parameters():
            torch.nn.init.normal_(p, 0, 0.02, generator=torch.Generator().manual_seed(1))
    z = torch.randn(len(prompts), 8, generator=torch.Generator().manual_seed(2))
    texts = [p + " " + a for p, a in zip(prompts, generate(fp32, prompts, z, sampling))]

    def top1(pol: ConditionalPolicy, steered: bool) -> torch.Tensor:
        picks = []
        for i, text in enumerate(texts):
            ids = real_lm.tokenizer(text, return_tensors="pt").input_ids
            with torch.no_grad(), pol.conditioned(z[i:i + 1] if steered else None):
                picks.append(pol.model(input_ids=ids).logits[0].argmax(-1))
        return torch.cat(picks)

    fp32_steered = top1(fp32, True)
    int4_agrees = (top1(int4, True) == fp32_steered).float().mean()
    steering_moves = (top1(fp32, False) != fp32_steered).float().mean()
    assert int4_agrees >= 0.9  # measured 0.97 over 129 positions
    assert steering_moves >= 0.1  # measured 0.22: FiLM takes effect, 7x more than int4's error
