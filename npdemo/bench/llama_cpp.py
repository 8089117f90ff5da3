"""The physical reference row of the speed benchmark: llama.cpp on the very GGUF the default model comes from.

Optional (`pip install .[bench]` builds `llama-cpp-python` from source): without it the row is skipped with the
reason. Same prompt tokens, greedy, exactly n new tokens (EOS ignored), so its tokens/s compare with npdemo's;
llama.cpp runs the GGUF's own Q4_1 blocks, unsteered (it has no FiLM or LoRA).
"""
from __future__ import annotations

import importlib.util
import multiprocessing
import statistics
import time
from pathlib import Path

from ..data import base_model


def time_llama(llm, ids: list[int], n: int) -> tuple[float, float]:
    """(seconds to the first new token, tokens/s for n new tokens, prefill included) of one greedy generation."""
    start = time.perf_counter()
    first = 0.0
    for i, _ in enumerate(llm.generate(ids, temp=0.0, reset=True)):  # temp 0: llama.cpp's greedy sampler
        if i == 0:
            first = time.perf_counter() - start
        if i + 1 == n:
            break
    return first, n / (time.perf_counter() - start)


def measure(prompt_ids: list[int], threads: int, new_tokens: int, repeats: int, out) -> None:
    """In a child process: load the GGUF, warm up, put {load_s, ttft_s, tok_s, version} on the queue `out`."""
    import llama_cpp

    gguf = Path(base_model.offline_package()) / base_model.OFFLINE_GGUF
    start = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(gguf), n_threads=threads, n_ctx=512, verbose=False)
    load_s = time.perf_counter() - start
    time_llama(llm, prompt_ids, 4)  # warm-up
    runs = [time_llama(llm, prompt_ids, new_tokens) for _ in range(repeats)]
    out.put({"quant": "llama.cpp Q4_1 (GGUF)", "version": llama_cpp.__version__, "load_s": load_s,
             "ttft_s": statistics.median(r[0] for r in runs), "tok_s": statistics.median(r[1] for r in runs)})


def bench_llama_cpp(prompt_ids: list[int], threads: int, new_tokens: int, repeats: int) -> dict:
    """llama.cpp's load time, TTFT and tokens/s on the default model's GGUF; {"skipped": reason} when it cannot run.

    It runs in a child process: a native crash there (llama.cpp 0.3.36 segfaults on its first decode on an
    AMX CPU here) becomes a skipped row with the reason instead of killing the whole benchmark."""
    if importlib.util.find_spec("llama_cpp") is None:
        return {"skipped": "llama-cpp-python is not installed; `pip install .[bench]` builds it from source"}
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=measure, args=(prompt_ids, threads, new_tokens, repeats, out))
    child.start()
    child.join()
    if child.exitcode != 0:
        return {"skipped": f"llama.cpp's process died (exit code {child.exitcode}; negative = killed by that signal)"}
    return out.get()
