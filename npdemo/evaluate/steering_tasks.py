"""Does the policy steer, in fluent text? The generation half of `python -m npdemo.evaluate policy`.

- steering: users at each simplex corner and the centre label 10 pairs; the policy answers test prompts, greedy
  and with the app's default sampling (fixed seeds), beside the unsteered base, the DPO-mixed policy (no latent)
  and the in-context baseline (the same labels in the base model's prompt); every row gets its junk rate, its
  fluency (mean NLL under the fp32 base over the first `fluency_tokens` tokens, so that rows compare at equal
  length), relevance, end-of-sequence share and attributes, and the true user's quality-aware win-rates;
- z-swap: in each of `contexts` labelled contexts, do the concise and warm users' latents move answers in
  opposite directions (from the no-label latent, and from the base)?
- steerability: Dirichlet test users; the correlation over users of w_k with the mean attribute a_k of their
  steered answers, latents from the app's point control and from 10 random labelled pairs;
- app precision: the steered rows sampled again in the app's default precision (int4 on a CPU), junk-checked.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

from ..data import attributes
from ..data.bank import Bank
from ..data.episodes import orient
from ..data.users import sample_users, strongest_labels
from ..model import quality
from ..model.context_encoder import ContextEncoder
from ..model.answer_scores import ScoredAnswers, score_answers
from ..model.film import Fade
from ..model.generation import DEFAULT_FADE, DEFAULT_STRENGTH, Answers, Sampling, answer, generate_base_shared_prefix
from ..model.in_context import in_context_prompt
from ..model.policy import ConditionalPolicy
from .metrics import mean_se_dict, tie_half

USERS = {**{a: np.eye(3)[i] for i, a in enumerate(attributes.ATTRIBUTES)}, "centre": np.full(3, 1 / 3)}


@dataclass
class GenerationConfig:
    prompts: int = 50            # test prompts per steering user
    context: int = 10            # labelled pairs of each steering user
    contexts: int = 3            # labelled contexts per user: the first greedy and sampled, the others greedy
    decodings: str = "greedy,sampled"  # sampled = the app's default sampling, seeded
    new_tokens: int = 256        # long enough that most base answers end on their own (EOS share is printed)
    fluency_tokens: int = 48     # fluency compares rows on their first 48 answer tokens
    in_context: bool = True      # also the in-context baseline (long prompts: the slowest rows)
    dirichlet_users: int = 60    # steerability users, each on `dirichlet_prompts` test prompts
    dirichlet_prompts: int = 5
    strength: float = DEFAULT_STRENGTH  # steering strength of every steered row (the app's default)
    fade_start: int = DEFAULT_FADE.start  # FiLM fades from this new token on (0: steered to the end of the answer)
    fade_length: int = DEFAULT_FADE.length  # over this many tokens
    fade_floor: float = DEFAULT_FADE.floor  # down to this share of its move
    seed: int = 1234

    def fade(self) -> Fade | None:
        return Fade(self.fade_start, self.fade_length, self.fade_floor) if self.fade_start > 0 else None

    def fade_record(self) -> dict | None:
        """The fade as written into a result's JSON."""
        fade = self.fade()
        return None if fade is None else asdict(fade)


def win_rate(w: np.ndarray, ours: ScoredAnswers, other: ScoredAnswers) -> float:
    """Share of prompts where the true user's reward prefers ours (ties half); a junk answer of ours is a loss
    whatever the other is (both junk: a loss for both), a junk answer of the other's a win for a real one."""
    wins = tie_half(ours.reward(w) - other.reward(w))
    return float(np.mean(np.where(ours.junk, 0.0, np.where(other.junk, 1.0, wins))))


def decodings(cfg: GenerationConfig) -> dict[str, Sampling]:
    """Greedy, and the app's default sampling (temperature, top-k, repetition penalty), at cfg.new_tokens."""
    known = {"greedy": Sampling(max_new_tokens=cfg.new_tokens, greedy=True),
             "sampled": Sampling(max_new_tokens=cfg.new_tokens)}
    chosen = cfg.decodings.split(",")
    if not chosen or set(chosen) - set(known):
        raise SystemExit(f"--decodings takes greedy and/or sampled, got {cfg.decodings!r}")
    return {d: known[d] for d in chosen}


def seeded_answer(policy: ConditionalPolicy, prompts: list[str], z: torch.Tensor | None, sampling: Sampling,
                  seed: int, strength: float = 1.0, fade: Fade | None = DEFAULT_FADE) -> Answers:
    """`answer` with torch's generator seeded first: a sampled row is reproducible (greedy ignores the seed)."""
    torch.manual_seed(seed)
    return answer(policy, prompts, z, sampling, strength, fade=fade)


def test_prompts(bank: Bank, n: int) -> list[str]:
    return sorted({r["prompt"] for r in bank.records if r["split"] == "test"})[:n]


def corpus_fluency(scorer: ConditionalPolicy, bank: Bank, prompts: list[str], tokens: int) -> dict:
    """The bar for fluency: the corpus's kept (not junk) responses to these prompts, fluent text in these very
    styles sampled from the base model, scored the same way (first `tokens` tokens)."""
    rows = [i for i, r in enumerate(bank.records) if r["prompt"] in set(prompts)
            and (bank.quality is None or not bank.quality.junk[i])]
    with scorer.reference():
        nll = quality.fluency(scorer.model, scorer.tokenizer, [bank.records[i]["prompt"] for i in rows],
                              [bank.records[i]["response"] for i in rows], max_tokens=tokens)
    return {"responses": len(rows), "fluency_start": round(float(np.nanmean(nll)), 3)}


def row_key(model: str, user: str, context: int = 0) -> str:
    """A row's name: "np_dpo, warm", "np_dpo, warm (context 2)", "in_context, warm"."""
    return f"{model}, {user}" + (f" (context {context + 1})" if context else "")


@torch.no_grad()
def steering(policy: ConditionalPolicy, encoder: ContextEncoder, bank: Bank, cfg: GenerationConfig,
             mixed: ConditionalPolicy | None = None) -> dict:
    """Rows for corner and centre users (NP-DPO, in-context) beside base, DPO-mixed and the no-label latent, in
    each decoding; quality-aware win-rates; the z-swap in every context.

    With `mixed` (the DPO-mixed policy: LoRA on, FiLM identity) its one answer per prompt is scored for every
    user too: it separates "steers towards this user" from "improves what all users like"."""
    if policy.lm.quant != "fp32":
        raise SystemExit(f"fluency is measured in fp32, but the policy was loaded in {policy.lm.quant}")
    prompts, rng = test_prompts(bank, cfg.prompts), np.random.default_rng(cfg.seed)
    n = len(prompts)

    def scored(answers: Answers) -> ScoredAnswers:
        return score_answers(policy, prompts, answers, cfg.fluency_tokens)

    contexts = {name: [sample_users(bank, "train", 1, cfg.context, np.array([cfg.context]), rng, weights=w[None])[0]
                       for _ in range(cfg.contexts)] for name, w in USERS.items()}
    prior = encoder.latent(*bank.context([])).expand(n, -1)
    out: dict = {"prompts": n, "new_tokens": cfg.new_tokens, "fluency_tokens": cfg.fluency_tokens,
                 "contexts": cfg.contexts, "strength": cfg.strength, "fade": cfg.fade_record(),
                 "users": {u: w.round(3).tolist() for u, w in USERS.items()},
                 "corpus": corpus_fluency(policy, bank, prompts, cfg.fluency_tokens), "decodings": {}}
    for d, sampling in decodings(cfg).items():
        seed = cfg.seed  # every row of a decoding draws from the same seed
        rows = {"base": scored(seeded_answer(policy, prompts, None, sampling, seed))}
        if mixed is not None:  # any z gives the mixed policy identity FiLM; a z (not None) keeps its LoRA on
            rows["dpo_mixed"] = scored(seeded_answer(mixed, prompts, torch.zeros(n, mixed.cfg.latent), sampling, seed))
        rows["np_dpo, no labels"] = scored(seeded_answer(policy, prompts, prior, sampling, seed, cfg.strength,
                                                         cfg.fade()))
        for c in range(cfg.contexts if d == "greedy" else 1):
            for name in tqdm(USERS, desc=f"steering users ({d}, context {c + 1})", unit="user"):
                ep = contexts[name][c]
                z = encoder.latent(ep.ctx, ep.ctx_mask).expand(n, -1)
                rows[row_key("np_dpo", name, c)] = scored(seeded_answer(policy, prompts, z, sampling, seed,
                                                                        cfg.strength, cfg.fade()))
                if c == 0 and cfg.in_context:
                    pairs = orient(bank.pairs.numpy()[ep.tgt_pair.numpy()[0]], ep.tgt_y.numpy()[0])
                    torch.manual_seed(seed)
                    rows[row_key("in_context", name)] = scored(generate_base_shared_prefix(
                        policy, [in_context_prompt(bank, pairs[:, 0], pairs[:, 1], p) for p in prompts], sampling))
        out = add_decoding(out, d, rows)
    return out


def add_decoding(out: dict, d: str, rows: dict[str, ScoredAnswers]) -> dict:
    """The win-rates of each user's rows against base (and NP-DPO head to head with DPO-mixed) and the row
    summaries, filed under decoding d; for greedy also the z-swap in each context."""
    wins: dict[str, dict[str, float]] = {}
    for name, w in USERS.items():
        wins[name] = {"np_dpo": win_rate(w, rows[row_key("np_dpo", name)], rows["base"])}
        if row_key("in_context", name) in rows:
            wins[name]["in_context"] = win_rate(w, rows[row_key("in_context", name)], rows["base"])
        if "dpo_mixed" in rows:
            wins[name] |= {"dpo_mixed": win_rate(w, rows["dpo_mixed"], rows["base"]),
                           "np_dpo_vs_dpo_mixed": win_rate(w, rows[row_key("np_dpo", name)], rows["dpo_mixed"])}
    out["decodings"][d] = {"win_rate": wins, "rows": {k: r.summary() for k, r in rows.items()}}
    if d == "greedy":
        references = {"base": rows["base"].attributes, "prior": rows["np_dpo, no labels"].attributes}
        out["z_swap"] = [z_swap({name: rows[row_key("np_dpo", name, c)].attributes for name in USERS}, references)
                         for c in range(out["contexts"])]
    return out


@torch.no_grad()
def rescore(steer: dict, scorer: ConditionalPolicy, bank: Bank) -> dict:
    """The answers a steering run stored, scored again with today's verdict and quality (no generation): when the
    measuring stick changes, the same texts are re-read. Each row keeps its end-of-sequence record (a file that
    stored only each row's share gives every answer that share)."""
    prompts = test_prompts(bank, steer["prompts"])
    kept = {k: v for k, v in steer.items() if k not in ("decodings", "z_swap", "targets")}
    out = {"contexts": len(steer.get("z_swap", [])) or 1, **kept, "decodings": {}, "rescored": True}
    for d, res in steer["decodings"].items():
        rows = {}
        for key, r in tqdm(res["rows"].items(), desc=f"re-scoring ({d})", unit="row"):
            ended = r.get("ended") or [r["eos_share"]] * len(prompts)
            rows[key] = score_answers(scorer, prompts, Answers(r["answers"], ended), steer["fluency_tokens"])
        out = add_decoding(out, d, rows)
    return out


@torch.no_grad()
def steerability(policy: ConditionalPolicy, encoder: ContextEncoder, bank: Bank, cfg: GenerationConfig,
                 batch: int = 50) -> dict:
    """Dirichlet(1,1,1) users on the same few test prompts (greedy): per attribute, the correlation over users of
    w_k with the mean a_k of their answers, with a 95 % interval, for latents from the app's point control
    (`strongest_labels`: the policy's capacity to steer) and from 10 random labelled pairs (end to end)."""
    rng = np.random.default_rng(cfg.seed + 1)
    w = rng.dirichlet(np.ones(3), size=cfg.dirichlet_users)
    prompts = list(rng.choice(test_prompts(bank, 10 ** 6), size=cfg.dirichlet_prompts, replace=False))
    pool = np.intersect1d(bank.clean_pairs(), bank.split_pairs("train"))  # latents never read test prompts
    ep = sample_users(bank, "train", len(w), cfg.context, np.full(len(w), cfg.context), rng, weights=w)[0]
    latents = {"point control": torch.cat([encoder.latent(*bank.context(strongest_labels(bank, wi, pool)))
                                           for wi in w]),
               "10 random labelled pairs": encoder.latent(ep.ctx, ep.ctx_mask)}
    sampling = Sampling(max_new_tokens=cfg.new_tokens, greedy=True)
    out = {"users": len(w), "prompts": prompts, "fade": cfg.fade_record()}
    for name, z in latents.items():
        rows_z = z.repeat_interleave(len(prompts), 0)
        rows_p = prompts * len(w)
        texts, ended = [], []
        for i in tqdm(range(0, len(rows_p), batch), desc=f"steerability ({name})", unit="batch"):
            a = answer(policy, rows_p[i:i + batch], rows_z[i:i + batch], sampling, cfg.strength, fade=cfg.fade())
            texts += a.texts
            ended += a.ended
        scored = score_answers(policy, rows_p, Answers(texts, ended))
        per_user = scored.attributes.reshape(len(w), len(prompts), 3).mean(1)
        out[name] = {"correlation": {a: correlation(w[:, k], per_user[:, k]) for k, a in enumerate(attributes.ATTRIBUTES)},
                     "junk_rate": float(scored.junk.mean()), "eos_share": float(scored.ended.mean()),
                     "fluency": round(float(np.nanmean(scored.fluency)), 3), "examples": texts[:3]}
    return out


def correlation(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Pearson r with its 95 % interval (Fisher z); NaN when one side does not vary."""
    if x.std() == 0 or y.std() == 0:
        return {"r": float("nan"), "low": float("nan"), "high": float("nan")}
    r = float(np.corrcoef(x, y)[0, 1])
    half = 1.96 / np.sqrt(len(x) - 3)
    z = np.arctanh(np.clip(r, -0.999999, 0.999999))
    return {"r": r, "low": float(np.tanh(z - half)), "high": float(np.tanh(z + half))}


@torch.no_grad()
def app_precision(app_policy: ConditionalPolicy, encoder: ContextEncoder, scorer: ConditionalPolicy, bank: Bank,
                  cfg: GenerationConfig) -> dict:
    """The corner and centre users' first contexts sampled in the app's precision (`app_policy`), junk-checked
    with fluency under the fp32 base (`scorer`): the rows the app would stream."""
    prompts, rng = test_prompts(bank, cfg.prompts), np.random.default_rng(cfg.seed)
    sampling = Sampling(max_new_tokens=cfg.new_tokens)
    out = {"quant": app_policy.lm.quant, "prompts": len(prompts), "fade": cfg.fade_record(), "rows": {}}
    rows = {"base": None}
    for name, w in USERS.items():
        ep = sample_users(bank, "train", 1, cfg.context, np.array([cfg.context]), rng, weights=w[None])[0]
        rows[f"np_dpo, {name}"] = encoder.latent(ep.ctx, ep.ctx_mask).expand(len(prompts), -1)
    for name, z in tqdm(rows.items(), desc=f"app precision ({app_policy.lm.quant})", unit="row"):
        scored = score_answers(scorer, prompts, seeded_answer(app_policy, prompts, z, sampling, cfg.seed,
                                                              cfg.strength, cfg.fade()))
        out["rows"][name] = {"junk": int(scored.junk.sum()), "eos_share": float(scored.ended.mean()),
                             "fluency": round(float(np.nanmean(scored.fluency)), 3), "examples": scored.texts[:2],
                             "answers": scored.texts, "junk_answers": np.flatnonzero(scored.junk).tolist()}
    return out


def z_swap(per_prompt: dict[str, np.ndarray], references: dict[str, np.ndarray],
           a: str = attributes.ATTRIBUTES[0], b: str = attributes.ATTRIBUTES[2]) -> dict:
    """Do users a's and b's latents move answers in opposite directions along the a - b attribute axis?

    per_prompt {user: (P, 3) attributes of its steered answers}, references {name: (P, 3)} on the same prompts.
    From each reference, a latent's shift is the mean over prompts of axis . (steered - reference); the latents
    "swap the direction" when a's shift is positive and b's negative, "at 2 s.e." when each is at least two
    standard errors from 0. From the unsteered base this also counts what every latent does (the shared DPO
    move); from the policy's own k = 0 latent ("prior") only what the user's labels add. Head to head, the
    per-prompt gap axis . (a's answer - b's answer) and its share > 0.
    """
    axis = np.array([1.0, -1.0]) @ np.eye(len(attributes.ATTRIBUTES))[[attributes.ATTRIBUTES.index(n) for n in (a, b)]]

    out: dict = {"axis": f"{a} - {b}"}
    for ref_name, ref in references.items():
        shift = {n: mean_se_dict((per_prompt[n] - ref) @ axis) for n in (a, b)}
        out[f"from_{ref_name}"] = {**{f"shift_with_z_{n}": v for n, v in shift.items()},
                                   "swaps": bool(shift[a]["mean"] > 0 > shift[b]["mean"]),
                                   "swaps_2se": bool(shift[a]["mean"] >= 2 * shift[a]["se"] > 0
                                                     and -shift[b]["mean"] >= 2 * shift[b]["se"] > 0)}
    gap = (per_prompt[a] - per_prompt[b]) @ axis
    out[f"{a}_vs_{b}"] = {**mean_se_dict(gap), "share_positive": float((gap > 0).mean())}
    return out


def targets(steer: dict) -> dict[str, dict[str, bool]]:
    """The issue's bars, per decoding and row: junk at most base + 1, fluency at equal length no worse than the
    corpus, relevance at least base - 0.05; win-rate vs base >= 0.65 and vs DPO-mixed >= 0.60 per corner."""
    bar = steer["corpus"]["fluency_start"]
    out = {}
    for d, res in steer["decodings"].items():
        base = res["rows"]["base"]
        out[d] = {name: {"junk": r["junk"] <= base["junk"] + 1, "fluency": r["fluency_start"] <= bar,
                         "relevance": r["relevance"] >= base["relevance"] - 0.05}
                  for name, r in res["rows"].items() if name.startswith("np_dpo")}
        for user, w in res["win_rate"].items():
            if user in attributes.ATTRIBUTES:
                out[d][f"np_dpo, {user}"] |= {"win_vs_base": w["np_dpo"] >= 0.65,
                                              **({"win_vs_dpo_mixed": w["np_dpo_vs_dpo_mixed"] >= 0.60}
                                                 if "np_dpo_vs_dpo_mixed" in w else {})}
    return out


def print_steering(steer: dict) -> None:
    """Every generated row with its quality beside its attributes, the win-rates, the bars, and example answers."""
    corpus = steer["corpus"]
    for d, res in steer["decodings"].items():
        print(f"\nSteering on {steer['prompts']} test prompts ({d}, {steer['new_tokens']} new tokens, steering "
              f"strength {steer['strength']}). Junk = answers (of {steer['prompts']}) the verdict of npdemo.model.quality calls junk; fluency = "
              f"mean NLL (nats/token) under the fp32 base over the first {steer['fluency_tokens']} answer tokens, "
              f"lower is better (the corpus's {corpus['responses']} kept responses to these prompts: "
              f"{corpus['fluency_start']:.2f}); EOS = share of answers that end on their own.")
        print("| row | junk | fluency | relevance | EOS | " + " | ".join(attributes.ATTRIBUTES) + " |")
        print("|---" * (5 + len(attributes.ATTRIBUTES)) + "|")
        for name, r in res["rows"].items():
            print(f"| {name} | {r['junk']} | {r['fluency_start']:.2f} | {r['relevance']:.2f} | {r['eos_share']:.2f} | "
                  + " | ".join(f"{v:.2f}" for v in r["attributes"]) + " |")
        print(f"\nWin-rate ({d}) against the base answer by the true user's reward (quality part included), and NP-DPO "
              "head to head with DPO-mixed; a junk answer is a loss for the row under test:")
        cols = list(next(iter(res["win_rate"].values())))
        print("| user | " + " | ".join(cols) + " |\n" + "|---" * (len(cols) + 1) + "|")
        for user, row in res["win_rate"].items():
            print(f"| {user} | " + " | ".join(f"{row[c]:.2f}" for c in cols) + " |")
        print(f"\nExample answers ({d}, the first three test prompts):")
        for name, r in res["rows"].items():
            for i, text in enumerate(r["examples"]):
                print(f"  [{name} #{i + 1}] " + " ".join(text.split())[:240])
    print("\nBars met (junk <= base + 1, fluency <= corpus, relevance >= base - 0.05, win-rates):")
    for d, rows in targets(steer).items():
        for name, ok in rows.items():
            print(f"  {d:8s} {name:32s} " + "  ".join(f"{k} {'yes' if v else 'NO'}" for k, v in ok.items()))
    for c, swap in enumerate(steer.get("z_swap", [])):
        print_z_swap(swap, f"context {c + 1}")


def print_z_swap(swap: dict, title: str = "") -> None:
    """The z-swap check as a table: each latent's shift along the axis from each reference, and head to head."""
    a, b = (n.strip() for n in swap["axis"].split(" - "))
    print(f"\nz-swap along {swap['axis']} {title} (greedy; mean over prompts ± s.e.):")
    print(f"| shift from | with z of {a} user | with z of {b} user | swaps | at 2 s.e. |\n|---|---|---|---|---|")
    for ref, row in swap.items():
        if ref.startswith("from_"):
            print(f"| {ref[5:]} | " + " | ".join(f"{row[f'shift_with_z_{n}']['mean']:+.3f} ± "
                                                 f"{row[f'shift_with_z_{n}']['se']:.3f}" for n in (a, b))
                  + f" | {'yes' if row['swaps'] else 'no'} | {'yes' if row['swaps_2se'] else 'no'} |")
    gap = swap[f"{a}_vs_{b}"]
    print(f"Head to head, {a} user's answer minus {b} user's on the same prompt: {gap['mean']:+.3f} ± {gap['se']:.3f}"
          f" ({100 * gap['share_positive']:.0f} % of prompts > 0)")


def print_steerability(res: dict) -> None:
    print(f"\nSteerability: {res['users']} Dirichlet(1,1,1) users on {len(res['prompts'])} test prompts (greedy): "
          "correlation over users of w_k with the mean attribute a_k of their steered answers [95 % interval]")
    print("| latent from | " + " | ".join(attributes.ATTRIBUTES) + " | junk | EOS |\n" + "|---" * 6 + "|")
    for name, r in res.items():
        if isinstance(r, dict) and "correlation" in r:
            print(f"| {name} | " + " | ".join(f"{c['r']:+.2f} [{c['low']:+.2f}, {c['high']:+.2f}]"
                                              for c in r["correlation"].values())
                  + f" | {r['junk_rate']:.2f} | {r['eos_share']:.2f} |")


def print_app_precision(res: dict) -> None:
    print(f"\nThe app's precision ({res['quant']}), default sampling, {res['prompts']} prompts: junk answers per row")
    for name, r in res["rows"].items():
        print(f"  {name:24s} junk {r['junk']:3d}  EOS {r['eos_share']:.2f}  fluency {r['fluency']:.2f}  e.g. "
              + " ".join(r["examples"][0].split())[:160])
