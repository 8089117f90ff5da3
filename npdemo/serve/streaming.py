"""Streaming one policy to many threads: a batched generation runs on the model thread under one lock (the FiLM
hooks and the LoRA switch are shared state, so two visitors' latents never mix), its rows' text is yielded as it
grows, a consumer that leaves cancels it, and an error or a stall inside it reaches the consumer as an exception."""
from __future__ import annotations

import queue
import threading
from concurrent.futures import wait
from typing import Callable, Iterator, TypeVar

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from ..model.generation import Sampling, check_rows, generate_rows, row_tokens
from ..model.policy import ConditionalPolicy
from .model_thread import ModelThread

T = TypeVar("T")


class _Cancelled(StoppingCriteria):
    """Stops generation after the current decode step once `stop()` is true (e.g. the consumer went away)."""

    def __init__(self, stop: Callable[[], bool]):
        self.stop = stop

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.stop(), dtype=torch.bool, device=input_ids.device)


class Streamer:
    """Serves `stream_rows` calls from any thread, one generation at a time, on the model thread."""

    def __init__(self, policy: ConditionalPolicy, worker: ModelThread | None = None):
        self.policy, self.worker = policy, worker or ModelThread()
        self.lock = threading.Lock()  # held for a whole generation (and by anything else that runs the model)

    def call(self, fn: Callable[[], T]) -> T:
        """fn() on the model thread under the lock (scoring with the base model between generations)."""
        def locked() -> T:
            with self.lock:
                return fn()
        return self.worker.call(locked)

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

        job = self.worker.submit(run)
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
            job.cancel()  # or, if it is still queued, never start
            wait([job], timeout=120)
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
