"""The response corpus: styled samples from the base model, filtered, and a spread subset kept per prompt.

SmolLM2-135M ignores style *instructions* but imitates a *demonstrated* style, so each candidate is sampled
after one demonstration turn (assets/style_demos.json) at a varied temperature, with a repetition penalty.
Jobs sharing a demonstration are batched and its keys/values computed once (most of the tokens are the
demonstration). Raw candidates are appended to the shipped assets/corpus-v1-candidates.jsonl (resumable:
finished keys are skipped, so generation also continues across machines); degenerate
ones (empty, cut off, repeating, template debris) are dropped; per prompt a farthest-point subset in
attribute space is kept and written to the versioned, shipped assets/corpus-v1.jsonl.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import LogitsProcessor, LogitsProcessorList

from ..config import ASSETS, CACHE
from ..data import attributes
from ..data.base_model import DEFAULT_MODEL, LoadedModel, log
from ..data.corpus import CORPUS, VERSION, read_jsonl
from ..data.prompts import Prompt, load_prompts
from ..data.tokens import chat_text, encode, generate_after_prefix, left_pad

STYLE_DEMOS = ASSETS / "style_demos.json"
SHORT_STYLES = ("concise", "concise_warm", "concise_structured")


@dataclass
class CorpusConfig:
    candidates: int = 12          # sampled candidates per prompt in the first round
    top_up: int = 6               # extra candidates for prompts with too few valid ones
    rounds: int = 3               # at most this many rounds (first + top-ups)
    keep: int = 8                 # responses kept per prompt (farthest-point in attribute space)
    min_keep: int = 6             # a prompt needs at least this many valid responses
    batch_size: int = 48          # bigger batches sample faster on CPU (65 tok/s at 16, 128 at 64)
    chunk_prompts: int = 256      # prompts finished together, so a partial run holds complete prompts
    max_new_tokens: int = 80      # long styles; short styles get 40
    temperatures: str = "0.6,0.8,1.0"
    top_k: int = 50               # top-k, not top-p: a full-vocabulary sort per step is slow on CPU
    repetition_penalty: float = 1.15
    model: str = ""               # base model (default: the default id)
    quant: str = "fp32"           # fp32 samples fastest on CPUs without AVX512-BF16 (bf16 where they have it)
    seed: int = 0


def load_style_demos() -> dict[str, list[dict]]:
    return json.loads(STYLE_DEMOS.read_text(encoding="utf-8"))["styles"]


def sampling_job(key: str, prompt_id: str, prompt: str, style: str, demo: int, temperature: float,
                 max_new_tokens: int, cfg: CorpusConfig) -> dict:
    """One generation job: a prompt in a style with the corpus's sampler (short styles stop at 40 tokens)."""
    return {"key": key, "prompt_id": prompt_id, "prompt": prompt, "style": style, "demo": demo,
            "temperature": temperature, "top_k": cfg.top_k, "repetition_penalty": cfg.repetition_penalty,
            "max_new_tokens": 40 if style in SHORT_STYLES else max_new_tokens}


def plan(prompt: Prompt, first: int, count: int, styles: list[str], cfg: CorpusConfig) -> list[dict]:
    """Generation jobs number first..first+count-1 for a prompt: style cycles, demo and temperature by hash."""
    temps = [float(t) for t in cfg.temperatures.split(",")]
    jobs = []
    for c in range(first, first + count):
        h = int(hashlib.sha256(f"{prompt.id}:{c}:{cfg.seed}".encode()).hexdigest()[:8], 16)
        style = styles[(c + h) % len(styles)] if c >= len(styles) else styles[c]
        jobs.append(sampling_job(f"{prompt.id}:{c}", prompt.id, prompt.text, style, h % 4,
                                 temps[(h // 4) % len(temps)], cfg.max_new_tokens, cfg))
    return jobs


class RowTemperature(LogitsProcessor):
    """Divide each row's logits by its own temperature (generate takes only one temperature per call)."""

    def __init__(self, temperatures: list[float]):
        self.t = torch.tensor(temperatures)[:, None]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores / self.t.to(scores)


def shared_prefix_batch(tokenizer, demo: dict, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Token ids [demo prefix | padding | prompt turn] per row, the attention mask, and the prefix length.

    Every row shares the demonstration turn, so its keys/values are computed once and copied to all rows;
    padding sits between prefix and prompt (masked; positions follow the mask), not at the left.
    """
    turns = [{"role": "user", "content": demo["user"]}, {"role": "assistant", "content": demo["assistant"]}]
    prefix = chat_text(tokenizer, turns, generation_prompt=False)
    fulls = [chat_text(tokenizer, turns + [{"role": "user", "content": p}]) for p in prompts]
    if not all(f.startswith(prefix) for f in fulls):
        prefix = ""  # a template that rewrites earlier turns: no sharing, plain left padding
    pre = encode(tokenizer, prefix)
    ids, mask = left_pad([encode(tokenizer, f[len(prefix):]) for f in fulls], tokenizer.pad_token_id, prefix=pre)
    return ids, mask, len(pre)


@torch.no_grad()
def sample_batch(lm: LoadedModel, jobs: list[dict], demos: dict[str, list[dict]]) -> list[dict]:
    """Sample one batch of jobs sharing style, demonstration and length; returns them with their responses."""
    tok, model = lm.tokenizer, lm.model
    demo = demos[jobs[0]["style"]][jobs[0]["demo"] % len(demos[jobs[0]["style"]])]
    ids, mask, P = shared_prefix_batch(tok, demo, [j["prompt"] for j in jobs])
    ids, mask = ids.to(lm.device), mask.to(lm.device)
    torch.manual_seed(int(hashlib.sha256(jobs[0]["key"].encode()).hexdigest()[:8], 16))
    out = generate_after_prefix(model, ids, mask, P, do_sample=True, temperature=1.0, top_k=jobs[0]["top_k"],
                                top_p=1.0,
                                logits_processor=LogitsProcessorList([RowTemperature([j["temperature"] for j in jobs])]),
                                repetition_penalty=jobs[0]["repetition_penalty"],
                                max_new_tokens=jobs[0]["max_new_tokens"], pad_token_id=tok.pad_token_id)
    new = out[:, ids.shape[1]:]
    results = []
    for j, row in zip(jobs, new):
        finished = bool((row == tok.eos_token_id).any())
        n = int((row == tok.eos_token_id).nonzero()[0, 0]) if finished else len(row)
        results.append({**j, "response": tok.decode(row[:n], skip_special_tokens=True).strip(),
                        "finished": finished, "n_tokens": n, "model": lm.name})
    return results


def raw_path(model: str) -> Path:
    """Candidates of the default model ship with the repo; other models' go to the cache."""
    if model == DEFAULT_MODEL:
        return ASSETS / f"corpus-v{VERSION}-candidates.jsonl"
    return CACHE / "corpus" / re.sub(r"[^A-Za-z0-9._-]+", "_", model) / "candidates.jsonl"


def drop_partial_tail(path: Path) -> None:
    """Cut a line left half-written by an interrupted run, so appended records start on a fresh line."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[:data.rfind(b"\n") + 1])
        log(f"{path}: dropped a half-written last line (an interrupted run); it will be redone")


def generate(lm: LoadedModel, jobs: list[dict], path: Path, batch_size: int, chunk_prompts: int) -> None:
    """Run the jobs not yet in `path`, appending each finished batch (so an interruption loses one batch)."""
    demos = load_style_demos()
    if path.exists():
        drop_partial_tail(path)
    done = {r["key"] for r in read_jsonl(path)} if path.exists() else set()
    todo = [j for j in jobs if j["key"] not in done]
    chunk = {pid: i // chunk_prompts for i, pid in enumerate(dict.fromkeys(j["prompt_id"] for j in jobs))}
    # chunk by chunk, batch jobs that share style, demonstration and length: one generate call serves them all
    groups = defaultdict(list)
    for j in todo:
        groups[(chunk[j["prompt_id"]], j["style"], j["demo"], j["max_new_tokens"])].append(j)
    batches = [g[i:i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f, tqdm(total=len(todo), desc="sampling responses", unit="resp") as bar:
        if done:
            bar.write(f"resuming: {len(done)} candidates already in {path}")
        for batch in batches:
            for r in sample_batch(lm, batch, demos):
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
            f.flush()
            bar.update(len(batch))


_WORDS = re.compile(r"\w+")
_DEBRIS = re.compile(r"<\|im_(start|end)\|>|^\s*(user|assistant|system)\s*[:\n]", re.I | re.M)


_SENTENCE_END = re.compile(r"(?<![0-9])[.!?](?=\s)|[\U0001F300-\U0001FAFF\u2600-\u27BF](?=\s)|\n")


def complete_text(record: dict) -> str | None:
    """The response, or for one that hit the token limit, its text up to the last complete sentence or line.

    A response that would lose more than 40 % of its characters this way counts as cut off (None).
    """
    text = record["response"]
    if record["finished"]:
        return text
    ends = [m.end() for m in _SENTENCE_END.finditer(text + " ")]
    if not ends or ends[-1] < 0.6 * len(text):
        return None
    return text[:ends[-1]].strip()


def degenerate(record: dict) -> str | None:
    """Why a candidate is unusable (empty, cut off, repetitive, template debris), or None if it is fine."""
    text = complete_text(record)
    if text is None:
        return "cut off"
    words = _WORDS.findall(text.lower())
    if len(words) < 3:
        return "empty"
    if _DEBRIS.search(text):
        return "template debris"
    grams = [tuple(words[i:i + 4]) for i in range(len(words) - 3)]
    if grams and 1 - len(set(grams)) / len(grams) > 0.15:
        return "repetition"
    sentences = [s.strip().lower() for s in re.split(r"[.!?\n]+", text) if len(s.split()) >= 4]
    if len(sentences) != len(set(sentences)):
        return "repeated sentence"
    return None


def farthest_points(x: np.ndarray, k: int) -> list[int]:
    """Greedy farthest-point subset of the rows of x (start: the row farthest from the mean)."""
    chosen = [int(np.argmax(((x - x.mean(0)) ** 2).sum(1)))]
    dist = ((x - x[chosen[0]]) ** 2).sum(1)
    while len(chosen) < min(k, len(x)):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, ((x - x[nxt]) ** 2).sum(1))
    return chosen


def select(raw: list[dict], cfg: CorpusConfig) -> tuple[list[dict], dict[str, int]]:
    """Drop degenerate candidates and keep a spread subset per prompt; returns (kept, counts of drop reasons)."""
    by_prompt, reasons = defaultdict(list), defaultdict(int)
    for r in raw:
        why = degenerate(r)
        reasons[why or "kept as candidate"] += 1
        if why is None:
            by_prompt[r["prompt_id"]].append({**r, "response": complete_text(r), "trimmed": not r["finished"]})
    kept = []
    for pid, cands in by_prompt.items():
        uniq = list({c["response"]: c for c in cands}.values())
        scores = attributes.score_many([c["response"] for c in uniq])
        for i in sorted(farthest_points(scores, cfg.keep)):
            kept.append({**uniq[i], "attributes": dict(zip(attributes.ATTRIBUTES, scores[i].round(4).tolist()))})
    return kept, dict(reasons)


def build(cfg: CorpusConfig, lm: LoadedModel) -> Path:
    """Sample, filter and select the corpus; top up prompts with too few valid responses; write CORPUS."""
    prompts = load_prompts()
    styles = list(load_style_demos())
    path = raw_path(lm.name)
    counts = {p.id: 0 for p in prompts}
    for rnd in range(cfg.rounds):
        jobs = []
        for p in prompts:
            if rnd == 0:
                jobs += plan(p, 0, cfg.candidates, styles, cfg)
            elif counts[p.id] < cfg.min_keep:
                jobs += plan(p, cfg.candidates + (rnd - 1) * cfg.top_up, cfg.top_up, styles, cfg)
        if not jobs:
            break
        log(f"round {rnd}: {len(jobs)} candidates for {len({j['prompt_id'] for j in jobs})} prompts")
        generate(lm, jobs, path, cfg.batch_size, cfg.chunk_prompts)
        kept, reasons = select(read_jsonl(path, tolerate_truncated_tail=True), cfg)
        counts = defaultdict(int, {p.id: 0 for p in prompts})
        for r in kept:
            counts[r["prompt_id"]] += 1
        log(f"round {rnd}: filter {reasons}; prompts below {cfg.min_keep}: "
            f"{sum(c < cfg.min_keep for c in counts.values())}")
    split = {p.id: p.split for p in prompts}
    kept = [{"corpus_version": VERSION, "split": split[r["prompt_id"]], **r}
            for r in kept if counts[r["prompt_id"]] >= cfg.min_keep]
    CORPUS.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
    log(f"wrote {len(kept)} responses for {len({r['prompt_id'] for r in kept})} prompts to {CORPUS}")
    corr = np.corrcoef(attributes.score_many([r["response"] for r in kept]).T).round(3).tolist()
    log(f"attribute correlations over the corpus {attributes.ATTRIBUTES}: {corr}")
    CORPUS.with_suffix(".config.json").write_text(json.dumps(
        {"config": asdict(cfg), "filter": reasons, "attribute_correlation": corr}, indent=2) + "\n")
    return CORPUS

