"""Load test: `python -m npdemo.bench load [--sessions 20] [--json PATH]` against a real `python app.py`.

Each of N concurrent gradio_client sessions is a simulated user with its own weights w: it labels 10 pairs
(choosing the response with the higher r_w), then asks for 3 greedy generations. Reported: requests done,
errors, p50/p95 latency of a label click (encode + locate + next pair) and of the time to the first streamed
text. Cross-talk check: every session is replayed alone (its exported profile imported into a fresh session,
the same prompts, greedy) and must get the same simplex estimate and the same texts.

The texts match exactly only where the numerics do not depend on the batch: NF4 and bf16 compute in bf16 on
a CPU, whose rounding changes with the batch shape, so a greedy answer batched with other visitors drifts from
the one it gets alone after a few tokens with no cross-talk at all. Run the check with `--quant fp32` (exact);
the latency figures come from the default precision.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from ..data import attributes
from .server import running_app

PROMPTS = ["How do I make a cup of tea?", "Give me a tip for sleeping better.", "What is a good first houseplant?"]
NEW_TOKENS = 24


@dataclass
class SessionResult:
    label_s: list[float] = field(default_factory=list)
    ttft_s: list[float] = field(default_factory=list)
    texts: list[tuple[str, str]] = field(default_factory=list)   # (steered, base) per prompt
    estimate: list[float] | None = None
    profile: str | None = None
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    bar: tqdm | None = None   # shared progress bar over all sessions' requests

    def done(self) -> None:
        """Count one finished request."""
        self.requests += 1
        if self.bar is not None:
            self.bar.update()


def estimate_of(plot: dict) -> list[float]:
    """The NP estimate (the star trace) from the ternary plot's JSON."""
    star = next(t for t in json.loads(plot["plot"])["data"] if t.get("name") == "you (NP estimate)")
    return [round(star[k][0], 4) for k in "abc"]


def generate(client, result: SessionResult) -> None:
    """The 3 greedy generations, timing the first streamed steered text."""
    for prompt in PROMPTS:
        start, first = time.perf_counter(), None
        job = client.submit(prompt, False, NEW_TOKENS, 0.7, 50, 1.15, True, api_name="/generate")
        for update in job:
            if first is None and update[0]:
                first = time.perf_counter() - start
        result.done()
        final = job.outputs()[-1]
        result.ttft_s.append(first if first is not None else float("nan"))
        result.texts.append((final[0], final[1]))


def run_session(url: str, w: np.ndarray, result: SessionResult) -> None:
    """Label 10 pairs as the simulated user w, generate 3 times, export the profile."""
    from gradio_client import Client

    try:
        client = Client(url, verbose=False)
        out = client.predict("informative", False, api_name="/start")
        result.done()
        for _ in range(10):
            _, a, b, shown = out[:4]
            choice = "a" if attributes.score(a) @ w >= attributes.score(b) @ w else "b"
            start = time.perf_counter()
            out = client.predict(shown, "informative", False, api_name=f"/label_{choice}")
            result.label_s.append(time.perf_counter() - start)
            result.done()
        result.estimate = estimate_of(out[5])
        generate(client, result)
        result.profile = open(client.predict(api_name="/export")).read()
        result.done()
    except Exception as e:  # noqa: BLE001 - counted and reported
        result.errors.append(f"{type(e).__name__}: {e}")


def replay_alone(url: str, profile: str, result: SessionResult) -> None:
    """The same session alone: import its profile, regenerate the same prompts."""
    import tempfile

    from gradio_client import Client, handle_file

    try:
        client = Client(url, verbose=False)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            f.write(profile)
        out = client.predict(handle_file(f.name), False, api_name="/import_profile")
        result.done()
        result.estimate = estimate_of(out[5])
        generate(client, result)
    except Exception as e:  # noqa: BLE001 - counted and reported
        result.errors.append(f"replay: {type(e).__name__}: {e}")


def same(shared: SessionResult, alone: SessionResult) -> bool:
    """Did the session get the same texts and simplex estimate alone as under load?"""
    return (alone.estimate is not None and shared.texts == alone.texts
            and np.allclose(shared.estimate, alone.estimate, atol=1e-3))


def percentiles(x: list[float]) -> dict[str, float]:
    a = np.array([v for v in x if np.isfinite(v)])
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "n": int(len(a))} if len(a) else {}


def load(url: str, sessions: int, seed: int = 0) -> dict:
    """N concurrent sessions against the app at `url`, then each replayed alone: the figures and cross-talk."""
    weights = np.random.default_rng(seed).dirichlet(np.ones(3), size=sessions)
    per_session = 1 + 10 + len(PROMPTS) + 1
    bar = tqdm(total=sessions * per_session, desc=f"{sessions} concurrent sessions", unit="req")
    results = [SessionResult(bar=bar) for _ in range(sessions)]
    threads = [threading.Thread(target=run_session, args=(url, w, r)) for w, r in zip(weights, results)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    bar.close()
    alone = [SessionResult() for _ in range(sessions)]
    for r, a in tqdm(list(zip(results, alone)), desc="replaying each session alone", unit="session"):
        if r.profile is not None:
            replay_alone(url, r.profile, a)
    mismatches = [i for i, (r, a) in enumerate(zip(results, alone)) if r.profile is not None and not same(r, a)]
    return {"sessions": sessions, "wall_s": wall, "requests": sum(r.requests for r in results),
           "errors": [e for r in results + alone for e in r.errors],
           "label_latency_s": percentiles([x for r in results for x in r.label_s]),
           "ttft_s": percentiles([x for r in results for x in r.ttft_s]),
           "cross_talk_mismatches": mismatches, "new_tokens": NEW_TOKENS, "generations_per_session": len(PROMPTS)}


def run(sessions: int = 20, seed: int = 0, app_args: tuple[str, ...] = ()) -> dict:
    """The load test against a fresh `python app.py`, printed as a table."""
    with running_app(*app_args) as url:
        out = load(url, sessions, seed)
    wall, mismatches = out["wall_s"], out["cross_talk_mismatches"]
    print(f"\nLoad ({' '.join(app_args) or 'default app'}): {sessions} concurrent sessions x (10 labels + {len(PROMPTS)} generations of {NEW_TOKENS} tokens), "
          f"{wall:.0f} s wall")
    print("| requests | errors | label p50 / p95 s | TTFT p50 / p95 s | cross-talk mismatches |")
    print("|---|---|---|---|---|")
    lab, ttft = out["label_latency_s"], out["ttft_s"]
    print(f"| {out['requests']} | {len(out['errors'])} | {lab.get('p50', float('nan')):.2f} / "
          f"{lab.get('p95', float('nan')):.2f} | {ttft.get('p50', float('nan')):.2f} / {ttft.get('p95', float('nan')):.2f}"
          f" | {len(mismatches)} of {sessions} |")
    for e in out["errors"][:5]:
        print("error:", e)
    return out
