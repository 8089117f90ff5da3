"""The NP-DPO conditional policy: base LLM + shared LoRA + FiLM(z), and its generation API.

pi(y | x, z): LoRA adapters (peft) shared by all users, per-user behaviour only through FiLM(z) on every
decoder layer. The DPO reference is the same network with LoRA and FiLM switched off (`reference()`), never
a deep copy (a copy would keep the live hooks: official-code bug). Generation holds one lock for the whole
call, so two visitors' latents never mix (the hooks are shared state). One batched call can stream steered
and base rows side by side: FiLM is per row, and peft's mixed-adapter batches switch LoRA off per row.
"""
from __future__ import annotations

import queue
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from . import checkpoints
from .base_model import LoadedModel, fingerprint
from .context_encoder import ContextEncoder, EncoderConfig
from .film import FiLM, FiLMHooks


@dataclass
class PolicyConfig:
    latent: int = 64                   # size of z (from the NP context encoder)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: str = "q_proj,v_proj"


@dataclass
class Sampling:
    """Generation settings; `check` turns bad values into one clear error."""
    max_new_tokens: int = 160
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


class _Cancelled(StoppingCriteria):
    """Stops generation when the consumer went away (e.g. a client disconnected mid-stream)."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class ConditionalPolicy:
    """pi(y | x, z) with LoRA + FiLM on a (possibly NF4) base model."""

    def __init__(self, lm: LoadedModel, cfg: PolicyConfig):
        from peft import LoraConfig, get_peft_model

        self.lm, self.cfg, self.tokenizer = lm, cfg, lm.tokenizer
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, bias="none",
                          target_modules=cfg.lora_targets.split(","), task_type="CAUSAL_LM")
        self.model = get_peft_model(lm.model, lora)
        config = lm.model.config
        self.film = FiLM(cfg.latent, config.hidden_size, config.num_hidden_layers).to(lm.device)
        self.hooks = FiLMHooks(self.model)
        self.lock = threading.Lock()
        self.model.eval()

    @contextmanager
    def conditioned(self, z: torch.Tensor | None):
        """Apply FiLM(z) (z (B, Z), one row per sequence) inside the block; z = None is unsteered."""
        if z is None:
            with self.hooks.applied(None, None):
                yield
            return
        if z.dim() != 2 or z.shape[1] != self.cfg.latent:
            raise ValueError(f"z must have shape (B, {self.cfg.latent}), got {tuple(z.shape)}")
        gamma, beta = self.film(z.to(self.lm.device))
        with self.hooks.applied(gamma, beta):
            yield

    @contextmanager
    def reference(self):
        """The DPO reference: LoRA disabled and FiLM off (the base model), restored on exit."""
        with self.model.disable_adapter(), self.hooks.applied(None, None):
            yield

    def prompt_ids(self, prompt: str) -> tuple[torch.Tensor, str | None]:
        """Chat-formatted ids of one prompt, cut to fit the context window; the note says if it was cut."""
        check_prompt(prompt)
        limit = getattr(self.lm.model.config, "max_position_embeddings", 2048) // 2
        note = None
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if len(ids) > limit:
            prompt = self.tokenizer.decode(ids[:limit])
            note = f"the prompt was {len(ids)} tokens; it was cut to the first {limit} to fit the context window"
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                  add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"], note

    def _modulation(self, zs: list[torch.Tensor | None]) -> tuple[torch.Tensor | None, torch.Tensor | None, list[str]]:
        """Per-row FiLM (gamma, beta) and peft adapter names: a None row is the base model (no FiLM, no LoRA)."""
        adapters = ["__base__" if z is None else "default" for z in zs]
        if all(z is None for z in zs):
            return None, None, adapters  # nothing to modulate: the hooks stay idle
        config = self.lm.model.config
        gamma = torch.ones(len(zs), config.num_hidden_layers, config.hidden_size, device=self.lm.device)
        beta = torch.zeros_like(gamma)
        steered = [i for i, z in enumerate(zs) if z is not None]
        z = torch.cat([zs[i].reshape(1, -1) for i in steered])
        gamma[steered], beta[steered] = self.film(z.to(self.lm.device))
        return gamma, beta, adapters

    def _batch(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded chat-formatted prompt ids and attention mask."""
        rows = [self.prompt_ids(p)[0][0] for p in prompts]
        L = max(len(r) for r in rows)
        ids = torch.full((len(rows), L), self.tokenizer.pad_token_id)
        mask = torch.zeros(len(rows), L, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, L - len(r):], mask[i, L - len(r):] = r, 1
        return ids.to(self.lm.device), mask.to(self.lm.device)

    @torch.no_grad()
    def generate(self, prompts: list[str], z: torch.Tensor | None, sampling: Sampling) -> list[str]:
        """Batched generation, row i conditioned on z[i]; z = None: the unsteered base model for every row."""
        texts: list[str] = []
        zs = [None] * len(prompts) if z is None else list(z)
        for texts in self.stream_rows(prompts, zs, sampling, stall_s=None):  # a long batched prefill is no stall
            pass
        return texts

    @torch.no_grad()
    def generate_base_shared_prefix(self, prompts: list[str], sampling: Sampling) -> list[str]:
        """Base-model answers to prompts that begin alike (the in-context baseline: the same labelled pairs, then
        a question). The common token prefix is encoded once and its KV cache reused by every row; each row's
        own tail is padded in the middle (masked), so positions, and the answers, match generating alone."""
        self.check_rows(prompts, [None] * len(prompts), sampling)
        rows = [self.prompt_ids(p)[0][0].tolist() for p in prompts]
        P = 0
        while P < min(map(len, rows)) - 1 and all(r[P] == rows[0][P] for r in rows):
            P += 1
        tails = [r[P:] for r in rows]
        L = max(map(len, tails))
        ids = torch.full((len(rows), P + L), self.tokenizer.pad_token_id)
        mask = torch.zeros_like(ids)
        ids[:, :P], mask[:, :P] = torch.tensor(rows[0][:P]), 1
        for i, t in enumerate(tails):
            ids[i, P + L - len(t):], mask[i, P + L - len(t):] = torch.tensor(t), 1
        dev = self.lm.device
        with self.lock, self.reference():
            cache = self.model(input_ids=ids[:1, :P].to(dev), use_cache=True).past_key_values
            cache.batch_repeat_interleave(len(rows))
            out = self.model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), cache=cache,
                                      pad_token_id=self.tokenizer.pad_token_id, **sampling.generate_kwargs())
        return self.tokenizer.batch_decode(out[:, P + L:], skip_special_tokens=True)

    def stream(self, prompt: str, z: torch.Tensor | None, sampling: Sampling) -> Iterator[str]:
        """Yield the text so far as it is produced (z = None: the unsteered base)."""
        for texts in self.stream_rows([prompt], [z], sampling):
            yield texts[0]

    def check_rows(self, prompts: list[str], zs: list[torch.Tensor | None], sampling: Sampling) -> None:
        """Refuse bad sampling settings, a missing z, or a z of the wrong size with a clear ValueError."""
        sampling.check()
        for prompt in prompts:
            check_prompt(prompt)
        if len(prompts) != len(zs) or not prompts:
            raise ValueError(f"need one z per prompt, got {len(prompts)} prompts and {len(zs)} latents")
        for z in zs:
            if z is not None and z.numel() != self.cfg.latent:
                raise ValueError(f"z must have shape ({self.cfg.latent},) or (1, {self.cfg.latent}), "
                                 f"got {tuple(z.shape)}")

    def stream_rows(self, prompts: list[str], zs: list[torch.Tensor | None], sampling: Sampling,
                    stall_s: float | None = 120.0) -> Iterator[list[str]]:
        """One batched generate call, row i steered by zs[i] (None: base); yields every row's text so far.

        Runs in a worker thread under the policy lock; an error inside generation is raised here, a consumer
        that stops early cancels the generation, and a stream with no new text for stall_s seconds is an error
        (the worker always ends the stream, so stall_s = None cannot hang either).
        """
        self.check_rows(prompts, zs, sampling)
        ids, mask = self._batch(prompts)
        streamer = _RowStreamer(self.tokenizer, len(prompts), self.lm.model.generation_config.eos_token_id, stall_s)
        cancelled, errors = threading.Event(), []

        def run() -> None:
            try:
                with torch.no_grad(), self.lock:
                    gamma, beta, adapters = self._modulation(zs)
                    with self.hooks.applied(gamma, beta):
                        self.model.generate(input_ids=ids, attention_mask=mask, streamer=streamer,
                                            adapter_names=adapters, pad_token_id=self.tokenizer.pad_token_id,
                                            stopping_criteria=StoppingCriteriaList([_Cancelled(cancelled)]),
                                            **sampling.generate_kwargs())
            except Exception as e:  # noqa: BLE001 - handed to the consumer below
                errors.append(e)
            finally:
                streamer.end()  # always unblock the consumer

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        try:
            yield from streamer
        finally:
            cancelled.set()  # the consumer stopped early: stop generating
            worker.join(timeout=120)
        if errors:
            raise RuntimeError(f"generation failed: {errors[0]}") from errors[0]


def check_prompt(prompt: str) -> None:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("the prompt is empty: type a question or request")


class _RowStreamer(BaseStreamer):
    """Collects the new tokens of each row of a batched `generate`; iterating yields all rows' text so far."""

    def __init__(self, tokenizer, rows: int, eos: int | list[int] | None, timeout: float | None):
        self.tokenizer, self.timeout = tokenizer, timeout
        self.eos = set(eos if isinstance(eos, list) else [eos]) | {tokenizer.eos_token_id}
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.finished = [False] * rows
        self.queue: queue.Queue = queue.Queue()
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
        self.queue.put([self.tokenizer.decode(t, skip_special_tokens=True) for t in self.tokens])

    def end(self) -> None:
        self.queue.put(None)

    def __iter__(self) -> Iterator[list[str]]:
        while True:
            try:
                texts = self.queue.get(timeout=self.timeout)
            except queue.Empty:
                raise RuntimeError(f"generation stalled: no new text for {self.timeout:.0f} s") from None
            if texts is None:
                return
            yield texts


def save_policy(policy: ConditionalPolicy, encoder: ContextEncoder, directory: Path, conditioned: bool = True,
                **extra) -> Path:
    """Checkpoint = LoRA + FiLM + context encoder + a manifest naming the base model and its weights hash.

    An unconditioned policy (the DPO-mixed baseline) never used FiLM or the encoder: only its LoRA is saved."""
    from peft import get_peft_model_state_dict

    config = policy.lm.model.config
    base = {"name": policy.lm.name, "fingerprint": fingerprint(policy.lm.model), "hidden_size": config.hidden_size,
            "layers": config.num_hidden_layers}
    modules = {"lora": get_peft_model_state_dict(policy.model)}
    if conditioned:
        modules |= {"film": policy.film, "encoder": encoder}
    return checkpoints.save(directory, modules, kind="policy", conditioned=conditioned,
                            config={"policy": asdict(policy.cfg), "encoder": asdict(encoder.cfg)}, base_model=base,
                            **extra)


def load_policy(directory: Path, lm: LoadedModel) -> tuple[ConditionalPolicy, ContextEncoder | None]:
    """Strictly load a policy checkpoint onto `lm`; a checkpoint trained on other base weights is refused.

    Returns the policy and its context encoder (None for an unconditioned policy, whose FiLM stays identity)."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    manifest = checkpoints.read_manifest(directory, "policy")
    base, fp = manifest["base_model"], fingerprint(lm.model)
    if fp != base["fingerprint"]:
        raise checkpoints.CheckpointError(
            f"{directory} was trained on {base['name']!r} (weights {base['fingerprint']}), but the loaded model "
            f"{lm.name!r} has weights {fp}: load the same base model or retrain with `python -m npdemo.train policy`")
    policy = ConditionalPolicy(lm, PolicyConfig(**manifest["config"]["policy"]))
    lora = checkpoints.load_state(directory, "lora", get_peft_model_state_dict(policy.model), "the LoRA adapters")
    set_peft_model_state_dict(policy.model, lora)
    if not manifest.get("conditioned", True):
        return policy, None
    encoder = ContextEncoder(EncoderConfig(**manifest["config"]["encoder"]))
    checkpoints.load_into(directory, "film", policy.film)
    checkpoints.load_into(directory, "encoder", encoder)
    return policy, encoder.eval()
