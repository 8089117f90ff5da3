"""Rounds of NP-DPO after the off-policy steps (`--rounds N`): two answers per simulated user and prompt, ranked by
the user's reward, become the DPO pairs of the next steps. Recipe 7 ships one round of styled base samples (below);
rounds of the policy's own answers are an ablation (README says why they are not shipped).

Corpus pairs never show the policy its own failures. Recipe 3's warm user ended 7 of 50 greedy test answers in
emoji soup that no corpus response holds, and off-policy DPO cannot push down text it never scores. So after the
off-policy steps, each round: simulated train users label `round_context` pairs (their z); the policy answers
train prompts twice, greedy and with the app's default sampling; the user's quality-aware reward ranks the two
(junk loses to any real answer: `npdemo.model.answer_scores`); DPO + RPO trains on (better, worse). The better
answer is the policy's own text, so the RPO term anchors what the policy already writes well.

`--round_source styled` makes the same rounds off-policy and long: each user's two answers are the base model's
styled samples (the corpus's sampler: a style demonstration, a temperature and a repetition penalty) up to
`round_tokens`, filtered as the corpus's are. The corpus stops its responses at 80 tokens, the app writes up to
192, and the steered answers that fell into mark soup did so past token 80: these pairs show the policy styled
text, and its end, at the app's length. Samples at temperature 0.6 only: the corpus's 0.8 and 1.0 ramble into mark
and emoji runs past about 100 tokens, and the policy learns whatever the winners hold. A sample cut after its last
sentence ends there, as the corpus's cut responses do (recipe 7): recipe 6 left 110 of its 150 winners without an
end, and its structured answers rarely ended.

`--round_source ends` (e.g. `styled,ends`: one source per round) asks where to end. The policy samples its own
answers; each that hit the limit, or turned to soup part way (the junk recipe 7 still writes: rambling into
",,,,,,,,,,,,,,,,", one token), pairs with itself ended after its last sentence before the soup, and the user's
reward ranks the two. They share their start, so the pair moves only where that user's answers end.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import config
from ..data.bank import Bank
from ..data.base_model import LoadedModel
from ..data.corpus import read_jsonl
from ..data.junk import check_text, emoji_run, soup_onset
from ..data.tokens import chat_ids
from ..data.users import sample_users
from ..model.answer_scores import ScoredAnswers, score_answers
from ..model.context_encoder import ContextEncoder
from ..model.generation import Answers, Sampling, answer
from ..model.logprobs import Rows, logprobs
from ..model.policy import ConditionalPolicy
from .corpus_build import CorpusConfig, complete_text, degenerate, generate, load_style_demos, sampling_job
from .dpo import DPOConfig, dpo_update, load_run_state, save_run_state, trainable


@dataclass
class OnPolicyConfig:
    # The defaults are recipe 7's one styled round; the ablations before it ran --round_source policy
    # --round_users 48 --round_tokens 160 --round_temperatures 0.6,0.8,1.0 (README, *Ablation*)
    rounds: int = 1               # generate-then-train rounds after the off-policy steps (0: recipe 5)
    round_users: int = 96         # simulated train users per round, each with its own z
    round_prompts: int = 3        # train prompts each user answers, twice (two answers to rank)
    round_context: int = 10       # labelled pairs behind each user's z: the app's count
    round_tokens: int = 192       # new tokens per answer: the app's default length
    round_min_gap: float = 0.05   # a pair trains only if the user's reward gap is at least this (BTL: 73 %)
    round_junk_only: bool = False  # pairs only where one answer is junk and the other is not (the clean one wins):
                                   # fixes junk without the reward's other preferences (brevity) riding along
    round_source: str = "styled"  # whose answers pair up, one per round, comma-separated (the last one repeats):
                                  # "policy" (its greedy and sampled answers), "styled" (two of the base model's
                                  # styled samples in different styles, the corpus's filter) or "ends" (the policy's
                                  # sampled answers, each against itself ended after its last sentence before any soup)
    round_temperatures: str = "0.6"  # styled samples' temperatures (the corpus's 0.8 and 1.0 ramble past ~100 tokens)
    round_chosen_nll: float = 0.0  # > 0: a winner must be at least this fluent (mean NLL under the base; the
                                   # corpus's kept responses: 2.65), since RPO raises its likelihood
    round_cut_ends: bool = True   # a styled sample cut after its last sentence ends there (gets its EOS), as the
                                  # corpus's responses do in the off-policy steps (recipe 7; recipe 6: False)
    round_balance: bool = False   # an "ends" round keeps as many "write on" as "end there" pairs (the larger side
                                  # drawn down at random); other rounds ignore it


@dataclass
class RoundPairs:
    """One round's pairs: token rows of the better and worse answer, their reference log-probs and latents."""
    chosen: Rows
    rejected: Rows
    ref_chosen: torch.Tensor  # (P,)
    ref_rejected: torch.Tensor  # (P,)
    z: torch.Tensor           # (P, Z)
    stats: dict               # what the round's answers were like (junk shares, pairs kept)


def answer_rows(policy: ConditionalPolicy, prompts: list[str], answers: Answers) -> Rows:
    """Token rows of generated answers in their chat context; an answer that ended on its own gets its EOS."""
    eos = policy.tokenizer.eos_token_id
    rows = []
    for p, text, ended in zip(prompts, answers.texts, answers.ended):
        ids, start = chat_ids(policy.tokenizer, p, text)
        rows.append((ids + [eos] * ended, start))
    return rows


@torch.no_grad()
def reference_of(policy: ConditionalPolicy, rows: Rows, batch: int = 16) -> torch.Tensor:
    """log ref(answer | prompt) of each row: the base model (LoRA and FiLM off)."""
    if not rows:
        return torch.zeros(0)
    with policy.reference():
        return torch.cat([logprobs(policy, rows[i:i + batch], None).float().cpu()
                          for i in tqdm(range(0, len(rows), batch), desc="reference log-probs")])


def rank_answers(w: np.ndarray, a: ScoredAnswers, b: ScoredAnswers, min_gap: float,
                 junk_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Which rows make a pair, and whether a won. A pair needs a reward gap of at least min_gap for its user (w: one
    row per answer) and a winner that is not junk: RPO raises the chosen answer's likelihood, so it must be text
    worth writing; a junk loser is what the rounds are for. `junk_only`: only pairs of one junk and one clean
    answer, whatever the gap."""
    if junk_only:
        return a.junk != b.junk, b.junk
    gap = a.reward(w) - b.reward(w)
    winner_junk = np.where(gap > 0, a.junk, b.junk)
    return (np.abs(gap) >= min_gap) & ~winner_junk, gap > 0


def policy_answers(policy: ConditionalPolicy, prompts: list[str], steer: torch.Tensor, cfg: OnPolicyConfig,
                   seed: int) -> tuple[Answers, Answers, np.ndarray]:
    """The policy's greedy and sampled answer to each prompt (every pair usable)."""
    greedy = answer(policy, prompts, steer, Sampling(max_new_tokens=cfg.round_tokens, greedy=True),
                    progress=f"{len(prompts)} greedy answers")
    torch.manual_seed(seed)
    sampled = answer(policy, prompts, steer, Sampling(max_new_tokens=cfg.round_tokens),
                     progress=f"{len(prompts)} sampled answers")
    return greedy, sampled, np.ones(len(prompts), bool)


def sample_ends(record: dict, cut_ends: bool) -> bool:
    """Does a styled sample end (get its EOS)? If it stopped on its own; and with cut_ends, if it was cut after its
    last sentence, as the corpus's cut responses end in the off-policy steps. One cut mid-sentence never does."""
    return record["finished"] or (cut_ends and complete_text(record) is not None)


def styled_answers(lm: LoadedModel, prompts: list[str], cfg: OnPolicyConfig, rng: np.random.Generator,
                   path: Path) -> tuple[Answers, Answers, np.ndarray]:
    """Two base-model samples per prompt in two different styles, sampled and filtered as the corpus's are, but up
    to round_tokens (short styles: 40, as there) and at round_temperatures: one that hit the limit is cut after
    its last sentence (and ends there if cfg.round_cut_ends), and a pair is usable if neither side is degenerate
    (cut off, repetitive, ...). Samples are appended to `path`, so an interrupted round resumes."""
    corpus, styles = CorpusConfig(), sorted(load_style_demos())
    temps = [float(t) for t in cfg.round_temperatures.split(",")]
    jobs = []
    for i, p in enumerate(prompts):
        for side, style in zip("ab", rng.choice(styles, 2, replace=False)):
            jobs.append(sampling_job(f"{i}:{side}", str(i), p, str(style), int(rng.integers(4)),
                                     float(rng.choice(temps)), cfg.round_tokens, corpus))
    generate(lm, jobs, path, corpus.batch_size, corpus.chunk_prompts)
    done = {r["key"]: r for r in read_jsonl(path)}
    a, b = ([done[f"{i}:{side}"] for i in range(len(prompts))] for side in "ab")
    usable = np.array([not (degenerate(x) or degenerate(y)) for x, y in zip(a, b)])
    return (*(Answers([complete_text(r) or r["response"] for r in side],
                      [sample_ends(r, cfg.round_cut_ends) for r in side]) for side in (a, b)), usable)


def winner_fit_to_learn(a: ScoredAnswers, b: ScoredAnswers, a_won: np.ndarray, chosen_emoji_run: int,
                        chosen_nll: float) -> np.ndarray:
    """Whether each pair's winner is text worth raising (RPO does): no emoji run longer than `chosen_emoji_run`
    (recipe 5's rule for corpus pairs; < 0: any) and, if `chosen_nll` > 0, a mean NLL under the base at most that."""
    fit = np.ones(len(a_won), bool)
    if chosen_emoji_run >= 0:
        fit &= np.array([emoji_run(x if won else y) for x, y, won in zip(a.texts, b.texts, a_won)]) <= chosen_emoji_run
    if chosen_nll > 0:
        fit &= np.where(a_won, a.fluency, b.fluency) <= chosen_nll  # NaN (too short to score) fails too
    return fit


ENDS_ONLY = {"round_balance"}  # settings only an "ends" round reads


def round_source(cfg: OnPolicyConfig, r: int) -> str:
    """Round r's source (0-based): the r-th of cfg.round_source's comma-separated names, the last one repeating."""
    sources = cfg.round_source.split(",")
    return sources[min(r, len(sources) - 1)]


def ended_early(text: str, ended: bool) -> str | None:
    """The answer ended after its last sentence before any soup, if that is another answer than the one written:
    one that hit the token limit, or turned to soup part way (None: it ended cleanly, or has no sentence to end
    after, or would lose over 40 % of its text, as `complete_text` rules)."""
    onset = soup_onset(text)
    if ended and onset is None:
        return None
    kept = complete_text({"response": text[:onset], "finished": False})
    return kept if kept and kept != text.strip() and not check_text(kept).junk else None


def ends_answers(policy: ConditionalPolicy, prompts: list[str], steer: torch.Tensor, cfg: OnPolicyConfig,
                 seed: int) -> tuple[Answers, Answers, np.ndarray]:
    """The policy's sampled answer to each prompt (the app's sampling; `round_pairs` asks each prompt twice), each
    against itself ended after its last sentence before any soup (`ended_early`): usable where that is another
    answer. The two share their start, so the user's reward ranks only where to end: write on,
    end there, or end there rather than ramble into soup; a junk-only round pairing junk with another, clean
    answer taught "end sooner, write plainer" to every user (README)."""
    sampling, batch = Sampling(max_new_tokens=cfg.round_tokens), 48
    torch.manual_seed(seed)
    texts, ended = [], []
    for i in tqdm(range(0, len(prompts), batch), desc=f"{len(prompts)} sampled answers"):
        out = answer(policy, prompts[i:i + batch], steer[i:i + batch], sampling)
        texts += out.texts
        ended += out.ended
    early = [ended_early(t, e) for t, e in zip(texts, ended)]
    usable = np.array([e is not None for e in early])
    return Answers(texts, ended), Answers([e or t for e, t in zip(early, texts)], [True] * len(texts)), usable


def balanced(keep: np.ndarray, a_won: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`keep` with as many kept pairs won by a as by b: the larger side's pairs drawn down at random."""
    sides = [np.flatnonzero(keep & a_won), np.flatnonzero(keep & ~a_won)]
    n = min(map(len, sides))
    out = np.zeros_like(keep)
    for side in sides:
        out[rng.choice(side, n, replace=False)] = True
    return out


def ranked_pairs(policy: ConditionalPolicy, prompts: list[str], steer: torch.Tensor, w: np.ndarray,
                 cfg: OnPolicyConfig, source: str, rng: np.random.Generator, seed: int, samples: Path,
                 chosen_emoji_run: int) -> tuple[np.ndarray, Answers, Answers, dict]:
    """Two answers to each prompt (the policy's, or styled base samples kept in `samples`), ranked by the user's
    reward (w: one row per prompt); only winners fit to learn train (`winner_fit_to_learn`). Returns each pair's
    prompt index, the winners, the losers and what the answers were like."""
    if source == "styled":
        with policy.reference():
            first, second, usable = styled_answers(policy.lm, prompts, cfg, rng, samples)
    elif source == "ends":
        first, second, usable = ends_answers(policy, prompts, steer, cfg, seed)
    else:
        first, second, usable = policy_answers(policy, prompts, steer, cfg, seed)
    a, b = score_answers(policy, prompts, first), score_answers(policy, prompts, second)
    keep, a_won = rank_answers(w, a, b, cfg.round_min_gap, cfg.round_junk_only)
    keep &= usable
    keep &= winner_fit_to_learn(a, b, a_won, chosen_emoji_run, cfg.round_chosen_nll)
    if cfg.round_balance and source == "ends":
        keep = balanced(keep, a_won, rng)
    idx = np.flatnonzero(keep)
    pick = lambda won: Answers([(first if x else second).texts[i] for i, x in zip(idx, won)],
                               [(first if x else second).ended[i] for i, x in zip(idx, won)])
    stats = {"answers": len(prompts) * (1 if source == "ends" else 2), "junk_first": int(a.junk.sum()),
             "junk_second": int(b.junk.sum()), "usable": int(usable.sum()), "first_won": int(a_won[idx].sum())}
    return idx, pick(a_won[idx]), pick(~a_won[idx]), stats


@torch.no_grad()
def round_pairs(policy: ConditionalPolicy, encoder: ContextEncoder, bank: Bank, cfg: OnPolicyConfig,
                conditioned: bool, rng: np.random.Generator, seed: int, samples: Path,
                chosen_emoji_run: int = -1, source: str = "styled") -> RoundPairs:
    """Draw users and prompts, pair answers to them (`ranked_pairs`) and return the pairs as token rows with their
    reference log-probs and the users' latents. An "ends" round asks each prompt twice (two samples)."""
    if source not in ("policy", "styled", "ends"):
        raise ValueError(f"round_source {source!r}: use 'policy', 'styled' or 'ends'")
    U, P = cfg.round_users, cfg.round_prompts
    ep, w, _ = sample_users(bank, "train", U, cfg.round_context, np.full(U, cfg.round_context), rng)
    pool = sorted({r["prompt"] for r in bank.records if r["split"] == "train"})
    prompts = [pool[i] for _ in range(U) for i in rng.choice(len(pool), P, replace=False)]
    user = np.repeat(np.arange(U), P)
    if source == "ends":
        prompts, user = prompts * 2, np.tile(user, 2)
    z = encoder.latent(ep.ctx, ep.ctx_mask)[torch.from_numpy(user)]
    steer = z if conditioned else torch.zeros_like(z)  # DPO-mixed: identity FiLM, its LoRA on
    policy.model.eval()
    idx, better, worse, stats = ranked_pairs(policy, prompts, steer, w[user], cfg, source, rng, seed, samples,
                                             chosen_emoji_run)
    asked = [prompts[i] for i in idx]
    chosen, rejected = answer_rows(policy, asked, better), answer_rows(policy, asked, worse)
    tokens = [len(ids) - start for ids, start in chosen]
    stats |= {"pairs": len(idx), "chosen_tokens": float(np.mean(tokens)) if tokens else 0.0}
    return RoundPairs(chosen, rejected, reference_of(policy, chosen), reference_of(policy, rejected),
                      z[torch.from_numpy(idx)], stats)


def _state_path(cfg: OnPolicyConfig, dpo_cfg: DPOConfig, ref_key: str) -> Path:
    """Where the rounds keep their state between rounds; the name pins both configs and the reference."""
    key = json.dumps([asdict(cfg), asdict(dpo_cfg), ref_key], sort_keys=True, default=str)
    return config.CACHE / "dpo" / f"onpolicy-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


def _samples_path(cfg: OnPolicyConfig, seed: int, ref_key: str, r: int) -> Path:
    """Where round r's styled samples are kept. They depend on what draws the users and prompts, the seed and the
    base model and bank (ref_key), not on the policy or on how pairs are kept, so NP-DPO and DPO-mixed share them
    (the same users rank the same pairs) and a change of pair rules samples nothing again."""
    drawn = [cfg.round_users, cfg.round_prompts, cfg.round_context, cfg.round_tokens, cfg.round_temperatures]
    key = json.dumps([drawn, seed, ref_key])
    return config.CACHE / "dpo" / f"styled-{hashlib.sha256(key.encode()).hexdigest()[:16]}-round{r + 1}.jsonl"


def has_state(cfg: OnPolicyConfig, dpo_cfg: DPOConfig, ref_key: str) -> bool:
    """An unfinished run of rounds is cached: the off-policy steps before it are done (their weights are in it)."""
    return _state_path(cfg, dpo_cfg, ref_key).is_file()


def train_rounds(policy: ConditionalPolicy, encoder: ContextEncoder, bank: Bank, cfg: OnPolicyConfig,
                 dpo_cfg: DPOConfig, ref_key: str, log: list[dict]) -> list[dict]:
    """Run cfg.rounds on-policy rounds after the training whose `log` is given (the off-policy steps, and any rounds
    it already ran: the run goes on after them); returns the whole log.

    Each round is a new DPO problem on new pairs, with a fresh optimiser, so a run that starts from a checkpoint of
    its first rounds trains as one that ran them. The weights and log are cached before the first round and after
    each one, so an interrupted run resumes at its last finished round. One process: generation is not sharded."""
    params = trainable(policy)
    modules = {"film": policy.film}
    path, first = _state_path(cfg, dpo_cfg, ref_key), sum("round" in entry for entry in log)
    if path.is_file():
        state = load_run_state(path, policy, modules)
        log, first = state["log"], state["round"]
        print(f"resuming {path.name} at on-policy round {first + 1}")
    save_run_state(path, policy, modules, round=first, log=log)
    per_step = dpo_cfg.users * dpo_cfg.pairs_per_user
    step = log[-1]["step"] if log else 0
    for r in range(first, cfg.rounds):
        rng = np.random.default_rng([dpo_cfg.seed, r])
        pairs = round_pairs(policy, encoder, bank, cfg, dpo_cfg.conditioned, rng, seed=dpo_cfg.seed + r,
                            samples=_samples_path(cfg, dpo_cfg.seed, ref_key, r),
                            chosen_emoji_run=dpo_cfg.chosen_emoji_run, source=round_source(cfg, r))
        print(f"on-policy round {r + 1}: {pairs.stats}")
        policy.model.train()
        opt = torch.optim.AdamW(params, lr=dpo_cfg.lr, weight_decay=0.0)
        order = rng.permutation(len(pairs.chosen))
        window = []
        for s in tqdm(range(0, len(order), per_step), desc=f"on-policy round {r + 1}/{cfg.rounds}"):
            i = order[s:s + per_step]
            stats = dpo_update(policy, opt, params, [pairs.chosen[j] for j in i], [pairs.rejected[j] for j in i],
                               pairs.ref_chosen[i], pairs.ref_rejected[i], pairs.z[i], dpo_cfg, len(i))
            window.append((stats / len(i)).tolist())
            step += 1
        policy.model.eval()
        loss, acc, chosen_nll = np.mean(window, axis=0) if window else (np.nan,) * 3
        log.append({"step": step, "round": r + 1, "loss": float(loss), "implicit_reward_acc": float(acc),
                    "chosen_nll": float(chosen_nll), **pairs.stats})
        save_run_state(path, policy, modules, round=r + 1, log=log)
    path.unlink(missing_ok=True)  # finished: the caller saves the checkpoint
    return log
