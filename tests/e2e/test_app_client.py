"""End to end through the public API: a real `python app.py` (default model, shipped checkpoints) and gradio_client.

A simulated concise-corner user labels 10 pairs by the concise score of the shown texts; the simplex estimate
must move towards the concise corner; a generation streams; bad input gets a clear error and keeps the labels.
"""
import json

import numpy as np
import pytest

from npdemo.bench.load import estimate_of
from npdemo.data import attributes

TRUE_W = np.array([1.0, 0.0, 0.0])  # the concise corner


@pytest.fixture(scope="module")
def client(live_app):
    from gradio_client import Client

    return Client(live_app, verbose=False)


def estimate(plot: dict) -> np.ndarray:
    return np.array(estimate_of(plot))


def test_labelling_moves_the_estimate_towards_the_user_and_generation_streams(client, tmp_path):
    pair_md, a, b, shown, progress, plot, summary = client.predict("informative", False, api_name="/start")
    prior = estimate(plot)
    assert "0 / 10" in progress and a and b and "Prompt" in pair_md
    for _ in range(10):
        choice = "a" if attributes.concise(a) >= attributes.concise(b) else "b"
        pair_md, a, b, shown, progress, plot, summary = client.predict(shown, "informative", False,
                                                                       api_name=f"/label_{choice}")
    after = estimate(plot)
    assert "10 / 10" in progress and "10 labelled pairs" in summary
    assert np.abs(after - TRUE_W).sum() < np.abs(prior - TRUE_W).sum() - 0.2, (prior, after)
    assert after.argmax() == 0

    # a double click: the same (now stale) pair id again changes nothing
    stale = client.predict(shown - 1 if shown > 0 else shown + 1, "informative", False, api_name="/label_a")
    assert "10 / 10" in stale[4]

    job = client.submit("How do I make a cup of tea?", False, 40, 0.7, 50, 1.15, True, 1.0, api_name="/generate")
    updates = list(job)
    steered, base, in_ctx, steered_md, base_md, _ = job.outputs()[-1]
    assert len(updates) > 3 and steered and base and in_ctx == ""  # streamed, both columns, no in-context
    assert "reward under your latent" in steered_md and "concise" in base_md
    assert "fluency" in steered_md and "relevance" in base_md  # quality under every output

    for bad in ["", "   "]:
        with pytest.raises(Exception, match="prompt is empty"):
            client.predict(bad, False, 40, 0.7, 50, 1.15, True, 1.0, api_name="/generate")
    with pytest.raises(Exception, match="greater than maximum"):  # the slider bound, before the engine
        client.predict("hi", False, 40, 9.0, 50, 1.15, False, api_name="/generate")
    assert "9 / 10" in client.predict(False, api_name="/undo")[4]  # the 10 labels survived the errors

    profile = client.predict(api_name="/export")
    data = json.loads(open(profile).read())
    assert len(data["labels"]) == 9 and data["format"] == "npdemo-profile/1"  # after the undo above
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(data | {"checkpoint": "0" * 64}))
    from gradio_client import handle_file

    with pytest.raises(Exception, match="another model checkpoint"):
        client.predict(handle_file(str(foreign)), False, api_name="/import_profile")
    restored = client.predict(handle_file(profile), False, api_name="/import_profile")
    assert "9 / 10" in restored[4]
