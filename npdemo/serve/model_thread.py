"""The model thread: one persistent thread runs every pass of the language model, with all intra-op threads.

PyTorch's OpenMP (libgomp) keeps a team of worker threads for each thread that has run a parallel op. Once a
second team exists, on this 2-core CPU the workers stop spinning between ops and every op waits for a wake-up:
a generation run in a fresh thread decoded at half the main thread's speed (README, Performance). So the server
loads and runs the model on this one thread, and its other threads (the main one, Gradio's) stay single-threaded.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, TypeVar

import torch

T = TypeVar("T")
DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice (the cores, or OMP_NUM_THREADS), read at import


def single_threaded_requests() -> None:
    """Make the calling thread, and the threads it starts later (a server's request handlers), single-threaded;
    a server calls this before it loads the model, so no second thread team ever forms."""
    torch.set_num_threads(1)


class ModelThread:
    """Runs submitted calls one at a time on one thread with `threads` intra-op threads (default: torch's)."""

    def __init__(self, threads: int | None = None):
        caller = torch.get_num_threads()
        self.threads = threads or DEFAULT_THREADS
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="npdemo-model", initializer=self._start)
        self.pool.submit(lambda: None).result()  # started: its thread count is fixed from here on
        torch.set_num_threads(caller)  # starting it changed the process default that new threads read

    def _start(self) -> None:
        torch.set_num_threads(self.threads)
        torch.ones(1 << 20).add_(1)  # a parallel op now: the thread reads its count once, at its first one

    def submit(self, fn: Callable[..., T], *args, **kwargs) -> Future:
        return self.pool.submit(fn, *args, **kwargs)

    def call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """fn(*args, **kwargs) on the model thread; its result, or its exception raised here."""
        return self.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        """End the thread after its last call (its thread team goes with it)."""
        self.pool.shutdown(wait=True)
