"""The speed benchmark (`python -m npdemo.bench speed`).

In one process and one run, per precision (NF4, bf16): load time, time to first streamed text, decode
tokens/s unsteered vs FiLM-steered (every decoder layer modulated), 4 visitors at once (one after another
under the policy lock vs merged by the app's batcher), and resident memory; plus the latency of encoding 10
labelled pairs into z. Ratios (FiLM overhead, NF4 vs bf16) come from the same run.
FiLM and LoRA weights are random non-zero here: their cost does not depend on training.
"""
from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..data import base_model
from ..model.context_encoder import ContextEncoder, EncoderConfig
from ..model.generation import Sampling, prompt_ids
from ..model.policy import ConditionalPolicy, PolicyConfig
from ..serve.batching import Batcher
from ..serve.streaming import Streamer

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


def time_decode(streamer: Streamer, z: torch.Tensor | None, n: int) -> float:
    """Tokens/s for exactly n new tokens (greedy, EOS ignored), prefill included."""
    policy = streamer.policy
    ids = torch.tensor([prompt_ids(policy, PROMPT)[0]])
    start = time.perf_counter()
    with torch.no_grad(), streamer.lock, policy.conditioned(z):
        policy.model.generate(input_ids=ids.to(policy.lm.device), attention_mask=torch.ones_like(ids).to(
            policy.lm.device), do_sample=False, max_new_tokens=n, min_new_tokens=n,
            pad_token_id=policy.tokenizer.pad_token_id)
    return n / (time.perf_counter() - start)


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


def bench_precision(model: str | None, quant: str, new_tokens: int, repeats: int, latent: int) -> dict:
    start = time.perf_counter()
    lm = base_model.load(model, quant=quant)
    load_s = time.perf_counter() - start
    policy = ConditionalPolicy(lm, PolicyConfig(latent=latent))
    randomise(policy)
    streamer = Streamer(policy)
    z = torch.randn(1, latent)
    out = {"quant": lm.quant, "device": lm.device, "load_s": load_s, "hidden_size": lm.model.config.hidden_size}
    time_decode(streamer, None, 4)  # warm-up: first calls are slow (page cache, kernel repacking)
    for name, zz in (("unsteered", None), ("steered", z)):
        out[f"ttft_s_{name}"] = statistics.median(time_first_text(streamer, zz) for _ in range(repeats))
        out[f"tok_s_{name}"] = statistics.median(time_decode(streamer, zz, new_tokens) for _ in range(repeats))
    out["film_overhead"] = out["tok_s_unsteered"] / out["tok_s_steered"] - 1
    sampling = Sampling(max_new_tokens=new_tokens, greedy=True)
    batcher = Batcher(streamer)  # as in the app: concurrent requests merged into one batched generate
    out["concurrent_4_serial"] = time_concurrent(lambda: streamer.stream(PROMPT, z, sampling), 4, new_tokens)
    out["concurrent_4_batched"] = time_concurrent(lambda: batcher.stream([PROMPT], [z], sampling), 4, new_tokens)
    out.update(memory_mb())  # the peak covers this process so far
    policy.hooks.remove()
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


def run_speed(args) -> dict:
    """Both precisions in one run, printed as README's tables; args: a BenchConfig."""
    rows = [bench_precision(args.model or None, q, args.new_tokens, args.repeats, args.latent) for q in ("nf4", "bf16")]
    encode_s = bench_encode(rows[0]["hidden_size"], args.latent)
    print(f"\nSpeed on {rows[0]['device']}, {args.new_tokens} new tokens, greedy, median of {args.repeats}:")
    print("| precision | load s | TTFT s (base / steered) | tok/s (base / steered) | FiLM overhead | RSS MB | peak MB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['quant']} | {r['load_s']:.1f} | {r['ttft_s_unsteered']:.2f} / {r['ttft_s_steered']:.2f} | "
              f"{r['tok_s_unsteered']:.1f} / {r['tok_s_steered']:.1f} | {100 * r['film_overhead']:+.1f} % | "
              f"{r['rss_mb']:.0f} | {r['peak_rss_mb']:.0f} |")
    print("| precision | 4 concurrent users | TTFT p50 / worst s | total tok/s |")
    print("|---|---|---|---|")
    for r in rows:
        for how in ("serial", "batched"):
            c = r[f"concurrent_4_{how}"]
            print(f"| {r['quant']} | {how} | {c['ttft_p50_s']:.2f} / {c['ttft_max_s']:.2f} | {c['total_tok_s']:.1f} |")
    ratio = rows[0]["tok_s_steered"] / rows[1]["tok_s_steered"]
    print(f"NF4 / bf16 steered tok/s: {ratio:.2f}x; encoding 10 pairs into z: {1000 * encode_s:.2f} ms")
    return {"rows": rows, "nf4_over_bf16": ratio, "encode_10_pairs_s": encode_s, "new_tokens": args.new_tokens,
            "repeats": args.repeats}

