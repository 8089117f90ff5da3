"""Generating from pi(y | x, z): sampling settings, chat-formatted prompts cut to the context window, and one
batched `generate` call whose rows each carry their own z (None: the unsteered base model).

Single-threaded here (evaluation); serving many visitors at once, with streaming and cancellation, is
`npdemo.serve.streaming`, which runs the same `generate_rows` in a worker thread.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from tqdm import tqdm
from transformers.generation.streamers import BaseStreamer

from ..data.tokens import chat_text, common_prefix, encode, generate_after_prefix, left_pad
from .film import Fade
from .policy import ConditionalPolicy


@dataclass
class Sampling:
    """Generation settings; `check` turns bad values into one clear error."""
    max_new_tokens: int = 192  # the app default: most steered answers end on their own (README, The app)
    temperature: float = 0.7
    top_k: int = 50
    repetition_penalty: float = 1.15
    greedy: bool = False

    def check(self) -> "Sampling":
        problems = []
        if not 1 <= int(self.max_new_tokens) <= 1024:
            problems.append(f"max_new_tokens must be 1..1024, got {self.max_new_tokens}")
        if not 0.05 <= float(self.temperature) <= 2.0:
            problems.append(f"temperature must be 0.05..2, got {self.temperature}")
        if not 1 <= int(self.top_k) <= 1000:
            problems.append(f"top_k must be 1..1000, got {self.top_k}")
        if not 1.0 <= float(self.repetition_penalty) <= 2.0:
            problems.append(f"repetition_penalty must be 1..2, got {self.repetition_penalty}")
        if problems:
            raise ValueError("invalid sampling settings: " + "; ".join(problems))
        return self

    def generate_kwargs(self) -> dict:
        if self.greedy:
            return {"do_sample": False, "max_new_tokens": int(self.max_new_tokens),
                    "repetition_penalty": float(self.repetition_penalty)}
        return {"do_sample": True, "temperature": float(self.temperature), "top_k": int(self.top_k), "top_p": 1.0,
                "max_new_tokens": int(self.max_new_tokens), "repetition_penalty": float(self.repetition_penalty)}


def check_prompt(prompt: str) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty: type a question or request")


def prompt_limit(policy: ConditionalPolicy) -> int:
    """Most tokens a prompt may take: half the context window, the other half is left for the answer."""
    return getattr(policy.lm.model.config, "max_position_embeddings", 2048) // 2


def prompt_ids(policy: ConditionalPolicy, prompt: str) -> tuple[list[int], str | None]:
    """Chat-formatted ids of one prompt, cut to fit the context window; the note says if it was cut."""
    check_prompt(prompt)
    tok, limit, note = policy.tokenizer, prompt_limit(policy), None
    ids = encode(tok, prompt)
    if len(ids) > limit:
        prompt = tok.decode(ids[:limit])
        note = f"the prompt was {len(ids)} tokens; it was cut to the first {limit} to fit the context window"
    return encode(tok, chat_text(tok, [{"role": "user", "content": prompt}])), note


MAX_STRENGTH = 2.0  # steering strength a scales FiLM's move: gamma = 1 + a (gamma - 1); 1 is as trained
DEFAULT_STRENGTH = 0.75  # the app's and evaluate's default: recipe 5 at 1.0 ends 28-30 % of its warm answers in mark soup
                         # (README, *Recipe 5 at strength 0.75*)
DEFAULT_FADE = Fade(start=192)  # FiLM fades out past new token 192, where the styled round's responses stop
                                # (recipe 5's stopped at 80 and faded from 64: README, *The trained horizon*)


def check_rows(policy: ConditionalPolicy, prompts: list[str], zs: list[torch.Tensor | None], sampling: Sampling,
               strengths: list[float] | None = None) -> None:
    """Refuse bad sampling settings, an empty prompt, a missing z, a z of the wrong size, or a steering strength
    outside [0, MAX_STRENGTH] with a clear ValueError."""
    sampling.check()
    for prompt in prompts:
        check_prompt(prompt)
    if len(prompts) != len(zs) or not prompts:
        raise ValueError(f"need one z per prompt, got {len(prompts)} prompts and {len(zs)} latents")
    for z in zs:
        policy.check_latent(z)
    if strengths is not None:
        if len(strengths) != len(zs):
            raise ValueError(f"need one steering strength per row, got {len(strengths)} for {len(zs)} rows")
        for a in strengths:
            if not (isinstance(a, (int, float)) and 0 <= a <= MAX_STRENGTH):
                raise ValueError(f"steering strength must be a number from 0 to {MAX_STRENGTH}, got {a!r}")


class RowTokens(BaseStreamer):
    """Collects the new tokens of each row of a batched `generate` up to its end-of-sequence token; `on_step`,
    if given, receives every row's text so far after each decoding step (for streaming)."""

    def __init__(self, tokenizer, rows: int, eos: int | list[int] | None,
                 on_step: Callable[[list[str]], None] | None = None):
        self.tokenizer, self.on_step = tokenizer, on_step
        self.eos = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.finished = [False] * rows
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate hands over the prompt first
            self.prompt_seen = True
            return
        for i, token in enumerate(value.reshape(len(self.tokens), -1)[:, -1].tolist()):
            if self.finished[i] or token in self.eos:
                self.finished[i] = True
                continue
            self.tokens[i].append(token)
        if self.on_step is not None:
            self.on_step(self.texts())

    def end(self) -> None:
        pass

    def texts(self) -> list[str]:
        return [self.tokenizer.decode(t, skip_special_tokens=True) for t in self.tokens]


@torch.no_grad()
def generate_rows(policy: ConditionalPolicy, prompts: list[str], zs: list[torch.Tensor | None], sampling: Sampling,
                  collector: RowTokens, strengths: list[float] | None = None, fade: Fade | None = DEFAULT_FADE,
                  **generate_kwargs) -> None:
    """One batched generate call, row i steered by zs[i] (None: base) at strengths[i] (default 1) with FiLM faded
    past the trained horizon (`fade`; None: steered to the end), its tokens collected by `collector`."""
    check_rows(policy, prompts, zs, sampling, strengths)
    ids, mask = left_pad([prompt_ids(policy, p)[0] for p in prompts], policy.tokenizer.pad_token_id)
    dev = policy.lm.device
    with policy.conditioned(zs, strengths, fade):
        policy.model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), streamer=collector,
                              pad_token_id=policy.tokenizer.pad_token_id, **sampling.generate_kwargs(),
                              **generate_kwargs)


def row_tokens(policy: ConditionalPolicy, rows: int, on_step: Callable[[list[str]], None] | None = None) -> RowTokens:
    """A collector for `rows` rows that knows the model's end-of-sequence tokens."""
    return RowTokens(policy.tokenizer, rows, policy.lm.model.generation_config.eos_token_id, on_step)


@dataclass
class Answers:
    """Generated answers and whether each ended on its own (end-of-sequence before the token limit)."""
    texts: list[str]
    ended: list[bool]


def answer(policy: ConditionalPolicy, prompts: list[str], z: torch.Tensor | None, sampling: Sampling,
           strength: float = 1.0, progress: str | None = None, fade: Fade | None = DEFAULT_FADE) -> Answers:
    """Batched answers, row i conditioned on z[i] at one steering strength and fade; z = None: the base model.
    `progress`: show a progress bar of that name over the decoding steps (a long batch)."""
    zs = [None] * len(prompts) if z is None else list(z)
    with tqdm(total=sampling.max_new_tokens, desc=progress, unit="token", disable=progress is None) as bar:
        collector = row_tokens(policy, len(prompts), None if progress is None else lambda _: bar.update())
        generate_rows(policy, prompts, zs, sampling, collector, [strength] * len(prompts), fade)
    return Answers(collector.texts(), list(collector.finished))


def generate(policy: ConditionalPolicy, prompts: list[str], z: torch.Tensor | None, sampling: Sampling) -> list[str]:
    """The texts of `answer`."""
    return answer(policy, prompts, z, sampling).texts


@torch.no_grad()
def generate_base_shared_prefix(policy: ConditionalPolicy, prompts: list[str], sampling: Sampling) -> Answers:
    """Base-model answers to prompts that begin alike (the in-context baseline: the same labelled pairs, then a
    question). The common token prefix is encoded once and its KV cache reused by every row; each row's own tail
    is padded in the middle (masked), so positions, and the answers, match generating alone."""
    check_rows(policy, prompts, [None] * len(prompts), sampling)
    rows = [prompt_ids(policy, p)[0] for p in prompts]
    P = common_prefix(rows)
    ids, mask = left_pad([r[P:] for r in rows], policy.tokenizer.pad_token_id, prefix=rows[0][:P])
    dev = policy.lm.device
    with policy.reference():
        out = generate_after_prefix(policy.model, ids.to(dev), mask.to(dev), P,
                                    pad_token_id=policy.tokenizer.pad_token_id, **sampling.generate_kwargs())
    new = out[:, ids.shape[1]:]
    eos = set(row_tokens(policy, 0).eos)
    return Answers(policy.tokenizer.batch_decode(new, skip_special_tokens=True),
                   [any(t in eos for t in row) for row in new.tolist()])
