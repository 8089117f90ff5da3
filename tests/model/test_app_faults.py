"""The app's Blocks on a tiny engine, served for real and driven by gradio_client: bad input, faults, double clicks.

Every case must give a clear message, keep the session's labels and leave the server serving.
"""
import errno
import json
import time
from pathlib import Path

import pytest

from conftest import make_tiny_engine

SETTINGS = (8, 0.7, 50, 1.15, True, 1.0)  # max_new_tokens, temperature, top_k, repetition_penalty, greedy, strength


@pytest.fixture(scope="module")
def served():
    from gradio_client import Client

    import app

    engine = make_tiny_engine()
    demo = app.build_demo(engine)
    app.serve(demo, "127.0.0.1", None, prevent_thread_lock=True, quiet=True)
    try:
        yield engine, lambda: Client(demo.local_url, verbose=False)
    finally:
        demo.close()


@pytest.fixture()
def labelled(served):
    """A client session with 3 labels."""
    engine, connect = served
    client = connect()
    out = client.predict("informative", False, api_name="/start")
    for choice in "aba":
        out = client.predict(out[3], "informative", False, api_name=f"/label_{choice}")
    assert "3 / 10" in out[4]
    return client


def labels_of(client) -> int:
    return len(json.loads(Path(client.predict(api_name="/export")).read_text())["labels"])


@pytest.mark.parametrize("prompt, error", [
    ("", "prompt is empty"), ("   \n\t", "prompt is empty"), ("word " * 20_000, None),
    ("tab\there\x00nul\x07bell\x1b[31m", None), ("Any tips? 🙂🚀👍🏽", None), ("كيف أتعلم البرمجة؟ שלום", None)])
def test_bad_prompts_get_a_clear_answer_and_keep_labels(labelled, prompt, error):
    if error:
        with pytest.raises(Exception, match=error):
            labelled.predict(prompt, False, *SETTINGS, api_name="/generate")
    else:
        steered, base, *_ = labelled.predict(prompt, False, *SETTINGS, api_name="/generate")
        assert isinstance(steered, str) and isinstance(base, str)
    assert labels_of(labelled) == 3


BOUNDS = "less than minimum|greater than maximum"  # the sliders' own check, before the engine's


@pytest.mark.parametrize("settings, error", [
    ((0, 0.7, 50, 1.15, False, 1.0), BOUNDS), ((8, 0.0, 50, 1.15, False, 1.0), BOUNDS),
    ((8, 0.7, 0, 1.15, False, 1.0), BOUNDS), ((8, 0.7, 50, 5.0, False, 1.0), BOUNDS),
    ((2000, 0.7, 50, 1.15, False, 1.0), BOUNDS), ((8, 0.7, 50, 1.15, False, -0.5), BOUNDS),
    ((8, 0.7, 50, 1.15, False, 3.0), BOUNDS), (("lots", 0.7, 50, 1.15, False, 1.0), "Expected a `float`")])
def test_out_of_range_sampling_settings(labelled, settings, error):
    with pytest.raises(Exception, match=error):
        labelled.predict("Hello", False, *settings, api_name="/generate")
    assert labels_of(labelled) == 3


def test_malformed_api_payloads_are_refused_and_the_server_stays_up(served, labelled):
    import urllib.request

    engine, connect = served
    url = connect().src.rstrip("/") + "/gradio_api/call/generate"
    for body in (b"{not json", b'{"data": "x"}', b'{"data": [1, 2]}', b"[]"):
        req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                event = json.loads(r.read()).get("event_id")
            with urllib.request.urlopen(f"{url}/{event}", timeout=30) as r:
                assert b"error" in r.read()  # accepted, then reported as an error event
        except urllib.error.HTTPError as e:
            assert 400 <= e.code < 500
    assert labels_of(labelled) == 3 and connect().predict("informative", False, api_name="/start")


def test_an_error_inside_generation_is_a_message_and_the_next_request_works(served, labelled, monkeypatch):
    engine, _ = served

    def broken(*args, **kwargs):
        raise RuntimeError("simulated fault in the model")

    with monkeypatch.context() as m:
        m.setattr(engine.policy.model, "generate", broken)
        start = time.time()
        with pytest.raises(Exception, match="simulated fault"):
            labelled.predict("Hello", False, *SETTINGS, api_name="/generate")
        assert time.time() - start < 30  # no hang
    steered, base, *_ = labelled.predict("Hello", False, *SETTINGS, api_name="/generate")
    assert labels_of(labelled) == 3


def test_disk_full_on_export_is_a_message(served, labelled, monkeypatch):
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(Path, "write_text", full)
        with pytest.raises(Exception, match="No space left"):
            labelled.predict(api_name="/export")
    assert labels_of(labelled) == 3


def test_profiles_foreign_or_malformed_are_refused(served, labelled, tmp_path):
    from gradio_client import handle_file

    good = json.loads(Path(labelled.predict(api_name="/export")).read_text())
    cases = {"foreign.json": json.dumps(good | {"checkpoint": "f" * 64}), "broken.json": "{oops",
             "wrong.json": json.dumps({"format": "something else"})}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(Exception, match="Profile not imported"):
            labelled.predict(handle_file(str(tmp_path / name)), False, api_name="/import_profile")
    assert labels_of(labelled) == 3


def test_double_clicks_and_a_client_leaving_mid_stream(served, labelled):
    engine, _ = served
    out = labelled.predict(False, api_name="/undo")
    shown = out[3]
    labelled.predict(shown, "informative", False, api_name="/label_a")
    again = labelled.predict(shown, "informative", False, api_name="/label_b")  # the same pair twice
    assert "3 / 10" in again[4]
    job = labelled.submit("Tell me a long story.", False, 200, 0.7, 50, 1.15, True, 1.0, api_name="/generate")
    for update in job:
        if update[0]:
            break
    job.cancel()  # the visitor goes away mid-stream
    steered, *_ = labelled.predict("Hello", False, *SETTINGS, api_name="/generate")  # the lock was released
    assert labels_of(labelled) == 3 and not engine.streamer.lock.locked()


def test_stop_ends_the_answer_within_one_decode_step(served, labelled):
    """Stop (the button's API) ends a 200-token answer once decoding runs: at most the step under way and one
    more, then the scores of what was written."""
    engine, _ = served
    forwards = []

    def slow(module, args, output):
        forwards.append(time.monotonic())
        time.sleep(0.05)

    hook = engine.policy.lm.model.register_forward_hook(slow)
    try:
        job = labelled.submit("Tell me a long story.", False, 200, 0.7, 50, 1.15, True, 1.0, api_name="/generate")
        for update in job:
            if update[0]:
                break
        labelled.predict(api_name="/stop")
        at_stop = len(forwards)
        final = job.outputs()[-1] if job.result() is not None else None
    finally:
        hook.remove()
    assert len(forwards) - at_stop <= 2 and at_stop < 100  # stopped long before the 200-token limit
    assert "stopped after" in final[3] and "fluency" in final[3]
    assert not engine.streamer.lock.locked()
