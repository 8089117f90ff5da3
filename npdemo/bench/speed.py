"""The speed benchmark (`python -m npdemo.bench speed`).

In one process and one run, per precision (int4, NF4, bf16): load time; decode tokens/s of plain Hugging Face
`generate` (no LoRA, no FiLM, on a second copy of the model) and npdemo's unsteered and FiLM-steered (LoRA on,
every decoder layer modulated), the three interleaved run by run; time to first streamed text, the prefill of 4
prompts, 4 visitors at once each asking for a steered and a base answer (one after another under the policy lock
vs merged by the app's batcher), and resident memory (one model and its policy, as the app holds); plus the
latency of encoding 10 labelled pairs into z, the CPU's flags, and llama.cpp on the same GGUF as the reference
row (llama_cpp.py; skipped, with the reason, where it is absent).
Ratios come from the same run. FiLM and LoRA weights are random non-zero: their cost does not depend on training.
Each precision's model lives on a model thread, as in the app (`npdemo.serve.model_thread`), timed from this
single-threaded one; "streamed" is one steered answer as a visitor receives it.
"""
from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
from transformers import AutoTokenizer

from ..data import base_model
from ..model.context_encoder import ContextEncoder, EncoderConfig
from ..data.tokens import chat_text, encode
from ..model.generation import Sampling
from ..model.policy import ConditionalPolicy, PolicyConfig
from ..serve.batching import Batcher
from ..serve.model_thread import ModelThread
from ..serve.streaming import Streamer
from .llama_cpp import bench_llama_cpp

PROMPT = "What are some simple ways to make a small apartment feel more spacious?"


def memory_mb() -> dict[str, float]:
    """Current and peak resident memory of this process (Linux /proc)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[v].split()[0]) / 1024 for k, v in (("rss_mb", "VmRSS"), ("peak_rss_mb", "VmHWM"))}


def randomise(policy: ConditionalPolicy) -> None:
    """Non-zero FiLM and LoRA weights, so steering does real work in every layer."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in policy.film.parameters():
            p.normal_(0, 1e-3)
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1e-3)


def time_first_text(streamer: Streamer, z: torch.Tensor | None) -> float:
    start = time.perf_counter()
    stream = streamer.stream(PROMPT, z, Sampling(max_new_tokens=8, greedy=True))
    next(stream)
    elapsed = time.perf_counter() - start
    stream.close()  # cancels the rest
    return elapsed


def prompt_ids(tokenizer) -> list[int]:
    return encode(tokenizer, chat_text(tokenizer, [{"role": "user", "content": PROMPT}]))


def prompt_tensor(lm: base_model.LoadedModel, rows: int = 1) -> torch.Tensor:
    return torch.tensor([prompt_ids(lm.tokenizer)] * rows, device=lm.device)


@torch.no_grad()
def time_generate(model, lm: base_model.LoadedModel, n: int) -> float:
    """Tokens/s of `model.generate` for exactly n new tokens (greedy, EOS ignored), prefill included."""
    ids = prompt_tensor(lm)
    start = time.perf_counter()
    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                   min_new_tokens=n, pad_token_id=lm.tokenizer.pad_token_id)
    return n / (time.perf_counter() - start)


def time_stream(streamer: Streamer, z: torch.Tensor | None, n: int) -> float:
    """Tokens/s of one streamed answer (up to n tokens, greedy): what a visitor sees, generated on the model thread,
    not the calling one."""
    start, steps = time.perf_counter(), 0
    for steps, _ in enumerate(streamer.stream(PROMPT, z, Sampling(max_new_tokens=n, greedy=True)), 1):
        pass
    return steps / (time.perf_counter() - start)


def time_decode(streamer: Streamer, z: torch.Tensor | None, n: int) -> float:
    """npdemo's tokens/s: the policy under the streamer's lock, steered by z (None: LoRA and FiLM off)."""
    policy = streamer.policy
    with streamer.lock, policy.conditioned([None] if z is None else z):  # [None]: the app's base row, LoRA off
        return time_generate(policy.model, policy.lm, n)


@torch.no_grad()
def time_prefill(policy: ConditionalPolicy, rows: int, z: torch.Tensor) -> float:
    """Seconds for one steered forward over `rows` copies of the prompt (what a batch of visitors waits for)."""
    ids = prompt_tensor(policy.lm, rows)
    start = time.perf_counter()
    with policy.conditioned(list(z.expand(rows, -1))):
        policy.model(input_ids=ids, attention_mask=torch.ones_like(ids))
    return time.perf_counter() - start


def time_concurrent(stream: Callable[[], Iterator], users: int, n: int) -> dict[str, float]:
    """`users` visitors call `stream()` (n new tokens each) at the same moment: their median and worst time to
    first text, and the total tokens/s."""
    ttft, done = [0.0] * users, threading.Barrier(users + 1)

    def visitor(i: int) -> None:
        done.wait()
        start = time.perf_counter()
        for j, _ in enumerate(stream()):
            if j == 0:
                ttft[i] = time.perf_counter() - start

    threads = [threading.Thread(target=visitor, args=(i,)) for i in range(users)]
    for t in threads:
        t.start()
    done.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"ttft_p50_s": statistics.median(ttft), "ttft_max_s": max(ttft), "total_tok_s": users * n / wall}


def bench_precision(model: str | None, quant: str, new_tokens: int, repeats: int, latent: int, threads: int) -> dict:
    """One precision as the app runs it: the model loaded and run on a model thread with `threads` threads, timed
    from this (single-threaded) thread."""
    worker = ModelThread(threads)
    start = time.perf_counter()
    lm = worker.call(base_model.load, model, quant=quant)
    load_s = time.perf_counter() - start
    policy = worker.call(ConditionalPolicy, lm, PolicyConfig(latent=latent))
    worker.call(randomise, policy)
    footprint = memory_mb()  # the app's: one model and its policy, before the plain copy below
    plain_lm = worker.call(base_model.load, model, quant=quant)  # plain HF: a second, never-wrapped copy
    streamer = Streamer(policy, worker)
    z = torch.randn(1, latent)
    out = {"quant": lm.quant, "device": lm.device, "load_s": load_s, "hidden_size": lm.model.config.hidden_size}
    for name, zz in (("unsteered", None), ("steered", z)):
        out[f"ttft_s_{name}"] = statistics.median(time_first_text(streamer, zz) for _ in range(repeats))
    runs = {"plain_hf": lambda n: time_generate(plain_lm.model, plain_lm, n),
            "unsteered": lambda n: time_decode(streamer, None, n), "steered": lambda n: time_decode(streamer, z, n)}
    for run in runs.values():
        worker.call(run, 4)  # warm-up: first calls are slow (page cache, kernel repacking)
    timed = {name: [] for name in runs}
    for _ in range(repeats):  # interleaved, so plain HF and npdemo meet the same moments of a noisy machine
        for name, run in runs.items():
            timed[name].append(worker.call(run, new_tokens))
    out |= {f"tok_s_{name}": statistics.median(t) for name, t in timed.items()}
    del plain_lm
    out["tok_s_streamed"] = statistics.median(time_stream(streamer, z, new_tokens) for _ in range(repeats))
    out["film_overhead"] = out["tok_s_unsteered"] / out["tok_s_steered"] - 1
    out["overhead_vs_plain_hf"] = out["tok_s_plain_hf"] / out["tok_s_steered"] - 1
    out["prefill_4_s"] = statistics.median(worker.call(time_prefill, policy, 4, z) for _ in range(repeats))
    sampling = Sampling(max_new_tokens=new_tokens, greedy=True)
    batcher = Batcher(streamer)  # as in the app: concurrent requests merged into one batched generate

    def serial():  # the steered and the base answer of one visitor, one after the other under the lock
        yield from streamer.stream(PROMPT, z, sampling)
        yield from streamer.stream(PROMPT, None, sampling)

    out["concurrent_4_serial"] = time_concurrent(serial, 4, 2 * new_tokens)
    out["concurrent_4_batched"] = time_concurrent(lambda: batcher.stream([PROMPT, PROMPT], [z, None], sampling), 4,
                                                  2 * new_tokens)
    out.update(footprint)  # the peak covers this process so far
    worker.call(policy.film_layers.remove)
    worker.close()  # a second live thread team would slow the next precision's model thread
    return out


def bench_encode(d: int, latent: int, repeats: int = 50) -> float:
    """Median seconds to encode 10 labelled pairs into z (the default NP-BTL text encoder shape)."""
    enc = ContextEncoder(EncoderConfig(d=d, hidden=256, latent=latent, latent_kind="gaussian")).eval()
    ctx, mask = torch.randn(1, 10, 2, d), torch.ones(1, 10, dtype=torch.bool)
    times = []
    with torch.no_grad():
        for _ in range(repeats + 5):
            start = time.perf_counter()
            enc.latent(ctx, mask)
            times.append(time.perf_counter() - start)
    return statistics.median(times[5:])


QUANTS = ("int4", "nf4", "bf16")


def run_speed(args) -> dict:
    """Every precision in one run, printed as README's tables; args: a BenchConfig."""
    flags = base_model.cpu_flags()
    shown = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the app: only the model thread runs multi-threaded
    try:
        rows = [bench_precision(args.model or None, q, args.new_tokens, args.repeats, args.latent, threads)
                for q in QUANTS]
    finally:
        torch.set_num_threads(threads)
    encode_s = bench_encode(rows[0]["hidden_size"], args.latent)
    llama = {"skipped": "the reference row runs the default model's GGUF only"} if args.model else bench_llama_cpp(
        prompt_ids(AutoTokenizer.from_pretrained(base_model.resolve())), threads, args.new_tokens, args.repeats)
    print(f"\nSpeed on {rows[0]['device']} ({threads} threads; CPU flags: {' '.join(shown) or 'none of note'}), "
          f"{args.new_tokens} new tokens, greedy, median of {args.repeats}:")
    print("| precision | load s | plain HF tok/s | npdemo tok/s (base / steered) | steered vs plain HF | steered, "
          "streamed tok/s | TTFT s (base / steered) | 4-prompt prefill s | RSS MB | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['quant']} | {r['load_s']:.1f} | {r['tok_s_plain_hf']:.1f} | {r['tok_s_unsteered']:.1f} / "
              f"{r['tok_s_steered']:.1f} | {100 * r['overhead_vs_plain_hf']:+.1f} % | {r['tok_s_streamed']:.1f} | "
              f"{r['ttft_s_unsteered']:.2f} / "
              f"{r['ttft_s_steered']:.2f} | {r['prefill_4_s']:.2f} | {r['rss_mb']:.0f} | {r['peak_rss_mb']:.0f} |")
    print("| precision | 4 visitors (steered + base each) | TTFT p50 / worst s | total tok/s | vs single stream |")
    print("|---|---|---|---|---|")
    for r in rows:
        for how in ("serial", "batched"):
            c = r[f"concurrent_4_{how}"]
            print(f"| {r['quant']} | {how} | {c['ttft_p50_s']:.2f} / {c['ttft_max_s']:.2f} | {c['total_tok_s']:.1f} | "
                  f"{c['total_tok_s'] / r['tok_s_steered']:.2f}x |")
    by = {r["quant"]: r for r in rows}
    ratios = {f"{a}_over_{b}": by[a]["tok_s_steered"] / by[b]["tok_s_steered"]
              for a, b in (("int4", "bf16"), ("int4", "nf4"), ("nf4", "bf16")) if a in by and b in by}
    print("Steered single-stream ratios: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
          + f"; encoding 10 pairs into z: {1000 * encode_s:.2f} ms")
    if "skipped" in llama:
        print(f"llama.cpp reference row: not measured: {llama['skipped']}")
    else:
        print(f"llama.cpp reference row ({llama['quant']}, llama-cpp-python {llama['version']}, unsteered): load "
              f"{llama['load_s']:.1f} s, TTFT {llama['ttft_s']:.2f} s, {llama['tok_s']:.1f} tok/s; int4 steered is "
              f"{by['int4']['tok_s_steered'] / llama['tok_s']:.2f}x of it")
    return {"rows": rows, "ratios": ratios, "llama_cpp": llama, "encode_10_pairs_s": encode_s,
            "new_tokens": args.new_tokens, "repeats": args.repeats, "threads": threads, "cpu_flags": shown}
