"""Cross-session batching: merged requests get exactly what they get alone, and one request never hurts another."""
import threading

import pytest
import torch

from npdemo.model.generation import Sampling
from npdemo.serve.batching import Batcher
from conftest import GREEDY, perturb

PROMPTS = ["Any tips for sleeping better?", "How do I boil an egg?", "What should I cook tonight?"]


def last(stream) -> list[str]:
    texts = []
    for texts in stream:
        pass
    return texts


def wait_until(condition) -> None:
    for _ in range(6000):
        if condition():
            return
        threading.Event().wait(0.01)
    raise AssertionError("timed out")


def run_together(batcher: Batcher, requests: list[tuple[list[str], list]], consume=None) -> list:
    """requests[0] starts alone while the policy is busy; requests[1:] queue behind it and go out as one batch.

    consume(i, stream) reads request i's stream (default: to the end); an exception is returned as its result."""
    results: list = [None] * len(requests)

    def run(i):
        try:
            stream = batcher.stream(*requests[i], GREEDY)
            results[i] = consume(i, stream) if consume else last(stream)
        except Exception as e:  # noqa: BLE001 - checked by the caller
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    served = len(batcher.batch_sizes)
    with batcher.streamer.lock:  # a generation is "running": the worker holds requests[0] and the rest must wait
        threads[0].start()
        wait_until(lambda: len(batcher.batch_sizes) > served)
        for queued, t in enumerate(threads[1:], start=1):  # one at a time: they queue in the order given
            t.start()
            wait_until(lambda: len(batcher.pending) == queued)
    for t in threads:
        t.join(timeout=120)
    return results


def test_merged_requests_match_their_solo_runs(policy, streamer):
    perturb(policy)
    zs = [torch.randn(1, 8) * 3 for _ in PROMPTS]
    requests = [([p, p], [z, None]) for p, z in zip(PROMPTS, zs)]  # steered and base side by side, as the app
    solo = [last(streamer.stream_rows(p, z, GREEDY)) for p, z in requests]
    batcher = Batcher(streamer)
    assert run_together(batcher, requests) == solo
    assert batcher.batch_sizes == [1, 2]  # the first started alone, the other two were merged


def test_a_consumer_that_leaves_does_not_stop_the_others_in_its_batch(policy, streamer):
    perturb(policy)
    batcher = Batcher(streamer)
    z = torch.randn(1, 8)
    solo = last(batcher.stream([PROMPTS[0]], [z], GREEDY))
    requests = [([PROMPTS[2]], [None]), ([PROMPTS[1]], [None]), ([PROMPTS[0]], [z])]

    def consume(i, stream):
        if i != 1:
            return last(stream)
        first = next(stream)
        stream.close()  # request 1 leaves after its first text
        return first

    results = run_together(batcher, requests, consume)
    assert batcher.batch_sizes == [1, 1, 2]
    assert results[2] == solo and len(results[1]) == 1  # the leaver got its first text, then left


def test_an_error_reaches_every_merged_request_and_the_batcher_keeps_serving(policy, streamer):
    def boom(module, args, out):
        raise RuntimeError("kaboom")

    batcher = Batcher(streamer)
    handle = policy.model.get_decoder().layers[0].register_forward_hook(boom)
    try:
        results = run_together(batcher, [([p], [None]) for p in PROMPTS])
    finally:
        handle.remove()
    assert all(isinstance(r, RuntimeError) and "kaboom" in str(r) for r in results)
    assert last(batcher.stream([PROMPTS[0]], [None], GREEDY))  # still serves


def test_a_long_prompt_is_not_merged_with_short_ones(policy, streamer):
    """The in-context baseline's long prompt would pad every merged row to its length: it goes out alone."""
    batcher = Batcher(streamer, max_tokens=400)
    long = "Liked: boil it for nine minutes. " * 40 + "My question: how do I boil an egg?"
    requests = [([PROMPTS[0]], [None]), ([PROMPTS[1]], [None]), ([long], [None]), ([PROMPTS[2]], [None])]
    run_together(batcher, requests)
    assert batcher.batch_sizes == [1, 2, 1]  # the two short ones merged, the long one alone


def test_bad_input_fails_in_the_callers_thread_and_never_reaches_a_batch(policy, streamer):
    batcher = Batcher(streamer)
    with pytest.raises(ValueError, match="prompt is empty"):
        next(batcher.stream(["  "], [None], GREEDY))
    with pytest.raises(ValueError, match="z must have shape"):
        next(batcher.stream(["hi"], [torch.zeros(3)], GREEDY))
    with pytest.raises(ValueError, match="max_new_tokens"):
        next(batcher.stream(["hi"], [None], Sampling(max_new_tokens=0)))
    assert batcher.batch_sizes == [] and batcher.pending == []
