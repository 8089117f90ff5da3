"""Concurrent sessions on a real `python app.py` (npdemo.bench.load, the load benchmark at a small size).

Three gradio_client sessions label 10 pairs each and ask for 3 greedy generations at the same time; every
request must succeed, and each session replayed alone (its exported profile, the same prompts) must get the
same simplex estimate and the same texts: no cross-talk between sessions' latents. The app runs in fp32, whose
batched greedy answers equal the solo ones exactly (see npdemo/bench/load.py for why NF4's do not).
"""
from npdemo.bench import load as loadtest
from npdemo.bench.server import running_app


def test_concurrent_sessions_finish_without_errors_or_cross_talk():
    with running_app("--quant", "fp32") as url:
        out = loadtest.load(url, sessions=3, seed=1)
    assert out["errors"] == []
    assert out["requests"] == 3 * (1 + 10 + len(loadtest.PROMPTS) + 1)
    assert out["cross_talk_mismatches"] == []
    assert out["ttft_s"]["n"] == 3 * len(loadtest.PROMPTS)
