"""Cross-session batching: visitors who ask at the same time share one batched generate call.

A batch of rows decodes in little more time than one row on a CPU (and far less than one after another on a
GPU), so concurrent requests are merged instead of queued: requests that arrive while a batch runs wait and go
together into the next one. Each row keeps its own latent (per-row FiLM), so merging never mixes users; only
requests with the same sampling settings share a batch, and a batch's padded prompt size is capped so that one
long prompt (the in-context baseline's labelled pairs) does not slow everyone else's prefill.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Iterator

import torch

from ..model.generation import Sampling, prompt_ids
from .streaming import Streamer


@dataclass
class _Request:
    prompts: list[str]
    zs: list[torch.Tensor | None]
    sampling: Sampling
    length: int                                             # tokens of its longest prompt (rows are left-padded)
    strengths: list[float]                                  # each row's steering strength
    out: queue.Queue = field(default_factory=queue.Queue)   # lists of this request's texts, an error, or None
    left: threading.Event = field(default_factory=threading.Event)  # the consumer stopped reading


class Batcher:
    """Serves `stream(prompts, zs, sampling)` calls from many threads with one worker and batched generation."""

    def __init__(self, streamer: Streamer, max_rows: int = 16, max_tokens: int = 2048):
        self.streamer, self.max_rows, self.max_tokens = streamer, max_rows, max_tokens
        self.pending: list[_Request] = []
        self.cond = threading.Condition()
        self.batch_sizes: list[int] = []  # requests per batch served, for the load benchmark
        threading.Thread(target=self._serve, daemon=True, name="npdemo-batcher").start()

    def stream(self, prompts: list[str], zs: list[torch.Tensor | None], sampling: Sampling,
               strengths: list[float] | None = None) -> Iterator[list[str]]:
        """Like Streamer.stream_rows, but merged with other callers' requests."""
        strengths = [1.0] * len(zs) if strengths is None else strengths
        self.streamer.check_rows(prompts, zs, sampling, strengths)  # bad input fails here, in the caller's thread
        request = _Request(prompts, zs, sampling, max(len(prompt_ids(self.streamer.policy, p)[0]) for p in prompts),
                           strengths)
        with self.cond:
            self.pending.append(request)
            self.cond.notify()
        try:
            while (item := request.out.get()) is not None:  # the worker always ends every request it takes
                if isinstance(item, Exception):
                    raise RuntimeError(str(item)) from item
                yield item
        finally:
            request.left.set()

    def _next_batch(self) -> list[_Request]:
        """The oldest pending request plus every later one with the same sampling that fits in max_rows rows and
        max_tokens padded prompt tokens (rows x longest prompt)."""
        with self.cond:
            while not self.pending:
                self.cond.wait()
            first, batch, rows, length = self.pending[0], [], 0, 0
            for r in list(self.pending):
                fits = (rows + len(r.prompts) <= self.max_rows
                        and (rows + len(r.prompts)) * max(length, r.length) <= self.max_tokens)
                if not batch or (r.sampling == first.sampling and fits):
                    batch.append(r)
                    rows, length = rows + len(r.prompts), max(length, r.length)
                    self.pending.remove(r)
            return batch

    def _serve(self) -> None:
        while True:
            batch = [r for r in self._next_batch() if not r.left.is_set()]
            if not batch:
                continue
            self.batch_sizes.append(len(batch))
            spans, start = [], 0
            for r in batch:
                spans.append((start, start + len(r.prompts)))
                start += len(r.prompts)
            rows = self.streamer.stream_rows([p for r in batch for p in r.prompts], [z for r in batch for z in r.zs],
                                           batch[0].sampling, strengths=[a for r in batch for a in r.strengths],
                                           stop=lambda batch=batch: all(r.left.is_set() for r in batch))
            try:
                for texts in rows:
                    for r, (a, b) in zip(batch, spans):
                        if not r.left.is_set():
                            r.out.put(texts[a:b])
                    if all(r.left.is_set() for r in batch):
                        break  # every consumer left (generation also stops after its current step)
            except Exception as e:  # noqa: BLE001 - handed to every request in the batch
                for r in batch:
                    r.out.put(e)
            finally:
                rows.close()
                for r in batch:
                    r.out.put(None)
