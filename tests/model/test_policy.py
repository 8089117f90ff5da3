"""The conditional policy: identity at init, a clean reference, per-row latents, thread isolation, no hangs."""
import threading

import pytest
import torch

from conftest import GREEDY, make_tiny_lm, perturb
from npdemo.model.film import Fade
from npdemo.model.generation import Sampling, answer, generate, prompt_ids
from npdemo.model.policy import ConditionalPolicy, PolicyConfig


def logits(pol, z):
    with torch.no_grad(), pol.conditioned(z):
        return pol.model(pol.ids).logits


def test_identity_at_init_and_reference_is_the_base(policy):
    z = torch.randn(1, 8)
    torch.testing.assert_close(logits(policy, z), policy.base_logits)
    perturb(policy)
    assert not torch.allclose(logits(policy, z), policy.base_logits)
    with torch.no_grad(), policy.conditioned(z), policy.reference():
        torch.testing.assert_close(policy.model(policy.ids).logits, policy.base_logits)
    assert not torch.allclose(logits(policy, z), policy.base_logits)  # state restored after the reference
    assert policy.film_layers.gamma is None  # nothing left applied outside a block


def test_each_row_gets_its_own_latent(policy):
    perturb(policy)
    z = torch.randn(2, 8) * 3
    prompts = ["How do I boil an egg?", "Tips for a rainy day?"]
    batched = generate(policy, prompts, z, GREEDY)
    alone = [generate(policy, [p], z[i:i + 1], GREEDY)[0] for i, p in enumerate(prompts)]
    assert batched == alone
    assert generate(policy, prompts, None, GREEDY) != alone  # the latent changes the text


def test_one_batch_streams_steered_and_base_rows_side_by_side(policy, streamer):
    perturb(policy)
    z = torch.randn(1, 8) * 3
    prompt = "How do I boil an egg?"
    steps = list(streamer.stream_rows([prompt, prompt], [z, None], GREEDY))
    assert len(steps) > 1 and all(len(texts) == 2 for texts in steps)  # streamed step by step, both rows
    assert steps[-1] == [list(streamer.stream(prompt, z, GREEDY))[-1], list(streamer.stream(prompt, None, GREEDY))[-1]]
    assert steps[-1] == generate(policy, [prompt, prompt], [z, None], GREEDY)  # the same call, not streamed
    ids = torch.tensor([prompt_ids(policy, prompt)[0]])
    with torch.no_grad(), policy.reference():  # the None row is the base model: no LoRA, no FiLM
        base = policy.model.generate(ids, pad_token_id=policy.tokenizer.pad_token_id, **GREEDY.generate_kwargs())
    assert steps[-1][1] == policy.tokenizer.decode(base[0, ids.shape[1]:], skip_special_tokens=True)


def test_concurrent_streams_never_share_a_latent(policy, streamer):
    perturb(policy)
    zs = [torch.randn(1, 8) * 3 for _ in range(2)]
    prompt = "Any tips for sleeping better?"
    solo = [list(streamer.stream(prompt, z, GREEDY))[-1] for z in zs]
    assert solo[0] != solo[1]
    results = [None, None]

    def run(i):
        results[i] = list(streamer.stream(prompt, zs[i], GREEDY))[-1]

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == solo


def test_errors_inside_generation_surface_quickly(policy, streamer):
    def boom(module, args, out):
        raise RuntimeError("kaboom")

    handle = policy.model.get_decoder().layers[0].register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="kaboom"):
            list(streamer.stream("Hello there", None, GREEDY))
    finally:
        handle.remove()
    assert not streamer.lock.locked()
    assert list(streamer.stream("Hello there", None, GREEDY))  # still serves


def test_steering_strength_scales_the_film_move(policy):
    perturb(policy)
    z = torch.randn(3, 8) * 3
    gamma, beta = policy.modulation(list(z))
    g, b = policy.modulation(list(z), [0.0, 0.5, 1.0])
    torch.testing.assert_close(g[0], torch.ones_like(g[0]))  # strength 0: FiLM off, the shared LoRA only
    torch.testing.assert_close(b[0], torch.zeros_like(b[0]))
    torch.testing.assert_close(g[1] - 1, (gamma[1] - 1) / 2)
    torch.testing.assert_close(b[1], beta[1] / 2)
    torch.testing.assert_close((g[2], b[2]), (gamma[2], beta[2]))  # strength 1: as trained
    prompts = ["How do I boil an egg?"]
    weak, full = (answer(policy, prompts, z[:1], GREEDY, strength=a).texts for a in (0.0, 1.0))
    assert weak != full and full == generate(policy, prompts, z[:1], GREEDY)
    for bad in (-0.1, 2.5, float("nan")):
        with pytest.raises(ValueError, match="steering strength"):
            answer(policy, prompts, z[:1], GREEDY, strength=bad)


def test_bounded_film_stays_inside_its_bound():
    from npdemo.model.film import FiLM
    film = FiLM(8, 16, 3, bound=0.1)
    torch.testing.assert_close(film(torch.randn(2, 8))[0], torch.ones(2, 3, 16))  # identity at init
    with torch.no_grad():
        for p in film.parameters():
            p.normal_(0, 5.0)
    gamma, beta = film(torch.randn(4, 8) * 10)
    assert (gamma - 1).abs().max() <= 0.1 + 1e-6 and beta.abs().max() <= 0.1 + 1e-6
    assert (gamma - 1).abs().max() > 0.09  # saturated, not zero


@pytest.mark.parametrize("squash, slope", [("soft", 1.0), ("scaled", 0.1)])
def test_film_soft_clamp_passes_small_moves_unchanged(squash, slope):
    """Soft clamp s tanh(x / s): a small move x passes as x (slope 1 at 0), so FiLM learns as fast as unbounded;
    recipe 2's s tanh(x) scaled every move, and FiLM's learning, by s."""
    from npdemo.model.film import FiLM
    film = FiLM(8, 16, 3, bound=0.1, squash=squash)
    with torch.no_grad():
        film.gamma.bias.fill_(1e-3)
        film.beta.bias.fill_(-1e-3)
    gamma, beta = film(torch.zeros(1, 8))
    torch.testing.assert_close(gamma - 1, torch.full_like(gamma, slope * 1e-3), rtol=1e-3, atol=0)
    torch.testing.assert_close(beta, torch.full_like(beta, -slope * 1e-3), rtol=1e-3, atol=0)
    with pytest.raises(ValueError, match="squash"):
        FiLM(8, 16, 3, bound=0.1, squash="hard")


def test_bad_input_is_a_clear_error(policy, streamer):
    with pytest.raises(ValueError, match="temperature"):
        Sampling(temperature=0).check()
    with pytest.raises(ValueError, match="max_new_tokens"):
        list(streamer.stream("hi", None, Sampling(max_new_tokens=0)))
    with pytest.raises(ValueError, match="prompt is empty"):
        list(streamer.stream("   ", None, GREEDY))
    with pytest.raises(ValueError, match="z must have shape"):
        generate(policy, ["hi"], torch.zeros(1, 3), GREEDY)
    ids, note = prompt_ids(policy, "word " * 5000)
    assert note and "cut" in note and len(ids) < 5000


def test_checkpoint_round_trip_and_refuses_another_base_model(tmp_path):
    from npdemo.model import checkpoints
    from npdemo.model.context_encoder import ContextEncoder, EncoderConfig
    from npdemo.model.policy_checkpoint import load_policy, save_policy

    pol = ConditionalPolicy(make_tiny_lm(), PolicyConfig(latent=8, lora_r=4))
    perturb(pol)
    encoder = ContextEncoder(EncoderConfig(d=4, hidden=8, latent=8))
    save_policy(pol, encoder, tmp_path, train_log=[])
    loaded, enc = load_policy(tmp_path, make_tiny_lm())  # same seed: the same base weights
    z = torch.randn(2, 8)
    ids = torch.tensor([[1, 2, 3, 4, 5]] * 2)
    with torch.no_grad():
        with pol.conditioned(z):
            a = pol.model(ids).logits
        with loaded.conditioned(z):
            b = loaded.model(ids).logits
    torch.testing.assert_close(a, b)
    other = make_tiny_lm()
    with torch.no_grad():
        other.model.get_input_embeddings().weight.add_(0.01)  # other base weights
    with pytest.raises(checkpoints.CheckpointError, match="was trained on"):
        load_policy(tmp_path, other)
    save_policy(pol, encoder, tmp_path / "mixed", conditioned=False)  # the DPO-mixed baseline: LoRA only
    assert sorted(p.name for p in (tmp_path / "mixed").iterdir()) == ["lora.safetensors", "manifest.json"]
    mixed, no_encoder = load_policy(tmp_path / "mixed", make_tiny_lm())
    with torch.no_grad(), pol.conditioned(None), mixed.conditioned(None):
        torch.testing.assert_close(mixed.model(ids).logits, pol.model(ids).logits)
    assert no_encoder is None and all((p == 0).all() for p in mixed.film.parameters())  # FiLM stays identity


def test_old_recipe_and_broken_film_checkpoints_are_refused(tmp_path):
    import json

    from npdemo.model import checkpoints
    from npdemo.model.context_encoder import ContextEncoder, EncoderConfig
    from npdemo.model.policy_checkpoint import load_policy, save_policy

    pol = ConditionalPolicy(make_tiny_lm(), PolicyConfig(latent=8, lora_r=4))
    encoder = ContextEncoder(EncoderConfig(d=4, hidden=8, latent=8))
    save_policy(pol, encoder, tmp_path / "old")
    manifest = json.loads((tmp_path / "old" / "manifest.json").read_text())
    del manifest["recipe"], manifest["config"]["policy"]["film_bound"]  # as recipe 1 wrote it
    del manifest["config"]["policy"]["film_squash"]
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(checkpoints.CheckpointError, match="recipe-1 policy"):
        load_policy(tmp_path / "old", make_tiny_lm())
    old, _ = load_policy(tmp_path / "old", make_tiny_lm(), old_recipe=True)  # evaluate's before rows
    assert old.film.bound is None  # recipe 1's unbounded FiLM
    manifest = json.loads((tmp_path / "old" / "manifest.json").read_text())
    manifest["recipe"], manifest["config"]["policy"]["film_bound"] = 2, 0.1  # as recipe 2 wrote it: no squash key
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(checkpoints.CheckpointError, match="recipe-2 policy"):
        load_policy(tmp_path / "old", make_tiny_lm())
    old, _ = load_policy(tmp_path / "old", make_tiny_lm(), old_recipe=True)
    assert (old.film.bound, old.film.squash) == (0.1, "scaled")  # recipe 2's squash, as it was trained
    manifest["recipe"], manifest["config"]["policy"]["film_squash"] = 3, "soft"  # recipe 3: the emoji-soup pairs
    (tmp_path / "old" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(checkpoints.CheckpointError, match="recipe-3 policy"):
        load_policy(tmp_path / "old", make_tiny_lm())
    save_policy(pol, encoder, tmp_path / "old", recipe=5)  # recipe 5: mark soup past token 80 without its fade
    with pytest.raises(checkpoints.CheckpointError, match="recipe-5 policy"):
        load_policy(tmp_path / "old", make_tiny_lm())
    save_policy(pol, encoder, tmp_path / "old", recipe=6)  # recipe 6: its long answers rarely end
    with pytest.raises(checkpoints.CheckpointError, match="recipe-6 policy"):
        load_policy(tmp_path / "old", make_tiny_lm())
    save_policy(pol, encoder, tmp_path / "old", ablation={"rounds": 2})  # an ablation run of the current recipe
    with pytest.raises(checkpoints.CheckpointError, match=r"ablation of recipe \d+.*'rounds': 2"):
        load_policy(tmp_path / "old", make_tiny_lm())
    load_policy(tmp_path / "old", make_tiny_lm(), old_recipe=True)
    save_policy(pol, encoder, tmp_path / "new", ablation={})
    assert load_policy(tmp_path / "new", make_tiny_lm())[0].film.squash == "soft"  # the current recipe
    with torch.no_grad():
        pol.film.beta.bias[3] = float("nan")
    save_policy(pol, encoder, tmp_path / "nan")
    with pytest.raises(checkpoints.CheckpointError, match="NaN or inf"):
        load_policy(tmp_path / "nan", make_tiny_lm())


@pytest.mark.parametrize("quant", ["nf4", "int4"])
def test_4bit_base_with_lora_and_film(tmp_path, quant):
    import bitsandbytes as bnb

    from npdemo.data import base_model
    from npdemo.data.int4 import Int4Linear

    tiny = make_tiny_lm()
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    lm = base_model.load(str(tmp_path), quant=quant)
    four_bit = bnb.nn.Linear4bit if quant == "nf4" else Int4Linear
    assert lm.quant == quant and any(isinstance(m, four_bit) for m in lm.model.modules())
    assert base_model.fingerprint(lm.model) == base_model.fingerprint(tiny.model)  # same base, any precision
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        base = lm.model(ids).logits
    pol = ConditionalPolicy(lm, PolicyConfig(latent=8, lora_r=4))
    torch.testing.assert_close(logits_of(pol, ids, torch.randn(1, 8)), base)  # identity at init, on NF4
    perturb(pol)
    assert not torch.allclose(logits_of(pol, ids, torch.randn(1, 8)), base)
    assert generate(pol, ["Hello"], torch.randn(1, 8), GREEDY)
    z, rows = torch.randn(3, 8), torch.randint(1, 100, (3, 6))
    assert len(generate(pol, ["Hello", "How do I boil an egg?", "Hi"], z, GREEDY)) == 3
    batched = logits_of(pol, rows, z)
    other = logits_of(pol, rows, torch.cat([torch.randn(1, 8), z[1:]]))
    assert torch.equal(batched[1:], other[1:]) and not torch.equal(batched[0], other[0])  # rows do not talk
    alone = torch.cat([logits_of(pol, rows[i:i + 1], z[i:i + 1]) for i in range(3)])
    # bnb's fast CPU kernel (AVX512-BF16) rounds by batch shape: batched equals solo to bf16 precision only
    torch.testing.assert_close(batched, alone, atol=0.05, rtol=0.02)


def test_int4_linear_is_the_grouped_4bit_weight():
    """By hand: the packed layer multiplies like its dequantized weight (min/max groups of 32, 16 levels)."""
    from npdemo.data.int4 import GROUP, Int4Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(128, 64)
    layer = Int4Linear(linear)
    w = linear.weight.detach().reshape(64, -1, GROUP)
    lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    step = (hi - lo) / 15
    deq = (((w - lo) / step).round() * step + lo).reshape(64, 128)
    x = torch.randn(5, 128)
    torch.testing.assert_close(layer(x), x @ deq.T + linear.bias, atol=0.05, rtol=0.02)  # bf16 activations
    assert (x @ deq.T - x @ linear.weight.T).abs().max() > 0.01  # it really is 4-bit


def logits_of(pol, ids, z):
    with torch.no_grad(), pol.conditioned(z):
        return pol.model(ids).logits


def test_steering_fades_past_the_trained_horizon(policy):
    """Tokens before `start` are the unfaded policy's; FiLM's share then falls linearly to the floor, one step per
    new token, and the state is restored after the block."""
    perturb(policy)
    z, prompts = torch.randn(2, 8) * 3, ["How do I boil an egg?", "Tips for a rainy day?"]
    long = Sampling(max_new_tokens=12, greedy=True)
    shares = []
    film = policy.film_layers
    handle = film.layers[1].register_forward_pre_hook(lambda m, a: shares.append(film.factor))
    fade = Fade(start=4, length=4, floor=0.0)
    try:
        faded = answer(policy, prompts, z, long, fade=fade)
    finally:
        handle.remove()
    assert shares[:12] == [1.0] * 4 + [0.75, 0.5, 0.25] + [0.0] * 5  # forward k writes token k + 1
    full = answer(policy, prompts, z, long, fade=None)
    prefix = answer(policy, prompts, z, Sampling(max_new_tokens=4, greedy=True), fade=None)
    assert all(f.startswith(p) for f, p in zip(faded.texts, prefix.texts))  # the first 4 tokens are unchanged
    assert faded.texts != full.texts  # and the fade does act on the rest
    assert film.fade is None and film.gamma is None and film.factor == 1.0
    assert Fade(start=4, length=4, floor=0.5).factor(20) == 0.5


def test_film_layers_give_back_the_forward_they_replaced():
    """remove() unwinds in order: two policies on one model, the later removed first, leave the plain layers."""
    lm = make_tiny_lm()
    layers = lm.model.get_decoder().layers
    first = ConditionalPolicy(lm, PolicyConfig(latent=8))
    second = ConditionalPolicy(lm, PolicyConfig(latent=8))
    second.film_layers.remove()
    assert all(layer.forward.__name__ == "modulated" for layer in layers)  # the first policy's are back
    first.film_layers.remove()
    assert all("forward" not in layer.__dict__ for layer in layers)
