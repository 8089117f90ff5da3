"""Streaming one policy to many threads: a batched generation runs in a worker thread under one lock (the FiLM
hooks are shared state, so two visitors' latents never mix), its rows' text is yielded as it grows, a consumer
that leaves cancels it, and an error or a stall inside it reaches the consumer as an exception."""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from ..model.generation import Sampling, check_rows, generate_rows, row_tokens
from ..model.policy import ConditionalPolicy


class _Cancelled(StoppingCriteria):
    """Stops generation after the current decode step once `stop()` is true (e.g. the consumer went away)."""

    def __init__(self, stop: Callable[[], bool]):
        self.stop = stop

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.stop(), dtype=torch.bool, device=input_ids.device)


class Streamer:
    """Serves `stream_rows` calls from any thread, one generation at a time."""

    def __init__(self, policy: ConditionalPolicy):
        self.policy = policy
        self.lock = threading.Lock()  # held for a whole generation (and by anything else that runs the model)

    def check_rows(self, prompts: list[str], zs: list[torch.Tensor | None], sampling: Sampling,
                   strengths: list[float] | None = None) -> None:
        check_rows(self.policy, prompts, zs, sampling, strengths)

    def stream_rows(self, prompts: list[str], zs: list[torch.Tensor | None], sampling: Sampling,
                    stall_s: float | None = 120.0, strengths: list[float] | None = None,
                    stop: Callable[[], bool] = lambda: False) -> Iterator[list[str]]:
        """One batched generate call, row i steered by zs[i] (None: base) at strengths[i] (default 1); yields
        every row's text so far.

        An error inside generation is raised here, a consumer that stops early or a true `stop()` ends the
        generation after the decode step under way, and a stream with no new text for stall_s seconds is an
        error (the worker always ends the stream, so stall_s = None cannot hang either).
        """
        self.check_rows(prompts, zs, sampling, strengths)
        texts: queue.Queue = queue.Queue()
        cancelled, errors = threading.Event(), []

        def ended() -> bool:
            return cancelled.is_set() or stop()

        def run() -> None:
            try:
                with self.lock:
                    generate_rows(self.policy, prompts, zs, sampling, row_tokens(self.policy, len(prompts), texts.put),
                                  strengths, stopping_criteria=StoppingCriteriaList([_Cancelled(ended)]))
            except Exception as e:  # noqa: BLE001 - handed to the consumer below
                errors.append(e)
            finally:
                texts.put(None)  # always unblock the consumer

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        try:
            while True:
                try:
                    step = texts.get(timeout=stall_s)
                except queue.Empty:
                    raise RuntimeError(f"generation stalled: no new text for {stall_s:.0f} s") from None
                if step is None:
                    break
                yield step
        finally:
            cancelled.set()  # the consumer stopped early: stop generating
            worker.join(timeout=120)
        if errors:
            raise RuntimeError(f"generation failed: {errors[0]}") from errors[0]

    def stream(self, prompt: str, z: torch.Tensor | None, sampling: Sampling) -> Iterator[str]:
        """Yield one answer's text so far as it is produced (z = None: the unsteered base)."""
        for texts in self.stream_rows([prompt], [z], sampling):
            yield texts[0]

    def generate(self, prompts: list[str], zs: list[torch.Tensor | None], sampling: Sampling) -> list[str]:
        """The finished texts of one batched call (a long batched prefill is no stall)."""
        texts: list[str] = []
        for texts in self.stream_rows(prompts, zs, sampling, stall_s=None):
            pass
        return texts
