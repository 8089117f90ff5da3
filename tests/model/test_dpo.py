"""NP-DPO: targets disjoint from the context, a cached reference, and one step that moves only LoRA and FiLM."""
import numpy as np
import torch

from conftest import RESPONSES, make_tiny_lm, text_bank
from npdemo import config
from npdemo.data.tokens import right_pad
from npdemo.data.users import sample_users
from npdemo.model.context_encoder import ContextEncoder, EncoderConfig
from npdemo.model.logprobs import encode_rows
from npdemo.model.policy import ConditionalPolicy, PolicyConfig
from npdemo.train import dpo


def unpack(batch: dpo.DPOBatch):
    return batch.ep, batch.chosen, batch.rejected, batch.user

def test_targets_never_include_the_context():
    bank, cfg = text_bank(), dpo.DPOConfig(users=16, pairs_per_user=2, k_max=6)
    ep, c, r, user = unpack(dpo.dpo_step_batch(bank, cfg, np.random.default_rng(0)))
    pair_of = {tuple(sorted(p)): i for i, p in enumerate(bank.pairs.tolist())}
    for ci, ri, u in zip(c, r, user):
        ctx = set(ep.tgt_pair[u][ep.tgt_in_ctx[u]].tolist())
        assert pair_of[tuple(sorted((ci, ri)))] not in ctx
    assert len(c) == 32


def test_targets_are_the_users_clearest_pairs():
    """The kept target has the largest true reward gap among the user's candidates after its context."""
    bank, cfg = text_bank(), dpo.DPOConfig(users=12, pairs_per_user=1, k_max=2, target_candidates=4)
    ep, c, r, user = unpack(dpo.dpo_step_batch(bank, cfg, np.random.default_rng(3)))
    rng = np.random.default_rng(3)  # replay the draw to recover the users' weights
    k = rng.integers(0, cfg.k_max + 1, size=cfg.users)
    _, w, _ = sample_users(bank, "train", cfg.users, cfg.k_max + cfg.target_candidates, k, rng)
    kept_first = []
    for ci, ri, u in zip(c, r, user):
        cands = bank.pairs.numpy()[ep.tgt_pair[u, k[u]:k[u] + cfg.target_candidates].numpy()]
        gaps = np.abs((bank.attributes[cands[:, 0]] - bank.attributes[cands[:, 1]]) @ w[u])
        kept = [i for i, p in enumerate(cands) if set(p) == {ci, ri}]
        assert gaps[kept[0]] == gaps.max()
        kept_first.append(kept[0] == 0)
    assert not all(kept_first)  # a real choice, not the first candidate every time


def test_no_chosen_target_holds_an_emoji_run():
    """Recipe 5: a response with two emoji in a row is never the chosen side (with RPO it would teach emoji soup),
    but it stays a target as the rejected side; -1 (recipe 3) lets it win."""
    bank = text_bank(responses=RESPONSES + ["Yay!! 😊🎉 Boil it, enjoy, you've got this!"])
    assert bank.emoji_runs.tolist() == [1, 0, 0, 0, 2] * 6

    def sides(run: int) -> tuple[np.ndarray, np.ndarray]:
        cfg = dpo.DPOConfig(users=64, k_max=2, target_candidates=6, chosen_emoji_run=run)
        _, c, r, _ = unpack(dpo.dpo_step_batch(bank, cfg, np.random.default_rng(0)))
        return bank.emoji_runs[c], bank.emoji_runs[r]

    chosen, rejected = sides(1)
    assert chosen.max() == 1 and rejected.max() == 2
    assert sides(-1)[0].max() == 2


def test_response_mask_covers_only_the_response():
    lm = make_tiny_lm()
    policy = ConditionalPolicy(lm, PolicyConfig(latent=8, lora_r=4))
    rows = encode_rows(policy, text_bank(1), 192)
    ids, attn, resp = right_pad(rows[:2], lm.tokenizer.pad_token_id)
    for i, (seq, start) in enumerate(rows[:2]):
        text = lm.tokenizer.decode(ids[i][resp[i].bool()])
        assert text == RESPONSES[i] + lm.tokenizer.eos_token
        assert attn[i].sum() == len(seq) and resp[i, :start].sum() == 0


def test_one_training_run_moves_only_lora_and_film(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "CACHE", tmp_path)
    lm = make_tiny_lm()
    policy = ConditionalPolicy(lm, PolicyConfig(latent=8, lora_r=4, lora_dropout=0.0))
    torch.manual_seed(0)
    encoder = ContextEncoder(EncoderConfig(d=8, hidden=16, latent=8)).eval()
    before = {n: p.detach().clone() for n, p in policy.model.named_parameters()}
    film_before = [p.detach().clone() for p in policy.film.parameters()]
    enc_before = [p.detach().clone() for p in encoder.parameters()]
    log = dpo.train_dpo(policy, encoder, text_bank(), dpo.DPOConfig(steps=3, users=2, k_max=2, lr=1e-2),
                        ref_key="test", log_every=1)
    assert len(log) == 3 and all(np.isfinite(e["loss"]) for e in log)
    # at init the policy is its reference: DPO loss = log 2, plus the RPO term alpha * (chosen per-token NLL)
    assert abs(log[0]["loss"] - np.log(2) - log[0]["chosen_nll"]) < 1e-4
    changed = {n for n, p in policy.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any(not torch.equal(a, b) for a, b in zip(film_before, policy.film.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(enc_before, encoder.parameters()))
    assert list(tmp_path.glob("dpo/ref-*.pt"))  # the reference log-probs were cached


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "CACHE", tmp_path)
    cfg = dpo.DPOConfig(steps=4, users=2, k_max=2, lr=1e-2)

    def run(fail_at: int | None = None):
        torch.manual_seed(0)
        policy = ConditionalPolicy(make_tiny_lm(), PolicyConfig(latent=8, lora_r=4, lora_dropout=0.0))
        encoder = ContextEncoder(EncoderConfig(d=8, hidden=16, latent=8)).eval()
        calls = {"n": 0}
        real = dpo.dpo_loss

        def loss(*args):  # called once per training step
            calls["n"] += 1
            if calls["n"] == fail_at:
                raise KeyboardInterrupt
            return real(*args)

        monkeypatch.setattr(dpo, "dpo_loss", loss)
        log = dpo.train_dpo(policy, encoder, text_bank(), cfg, ref_key="test", log_every=1, save_every=2)
        return log, [p.detach().clone() for p in policy.film.parameters()], calls["n"]

    log_once, film_once, _ = run()
    try:
        run(fail_at=4)  # dies in step 4, after the state of step 2 was saved
    except KeyboardInterrupt:
        pass
    assert list(tmp_path.glob("dpo/run-*.pt"))
    log_resumed, film_resumed, steps_run = run()
    assert steps_run == 2  # steps 3 and 4 only: it resumed rather than starting over
    assert [e["step"] for e in log_resumed] == [1, 2, 3, 4]
    assert np.allclose([e["loss"] for e in log_resumed], [e["loss"] for e in log_once])
    assert all(torch.allclose(a, b) for a, b in zip(film_once, film_resumed))
    assert not list(tmp_path.glob("dpo/run-*.pt"))  # a finished run leaves no state behind
