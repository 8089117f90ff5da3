"""The model thread: every call runs on one persistent thread with its own intra-op thread count, errors come
back to the caller, and starting it leaves the caller's thread count as it was."""
import threading

import pytest
import torch

from npdemo.serve.model_thread import ModelThread


def test_calls_share_one_thread_with_its_own_thread_count():
    caller = torch.get_num_threads()
    worker = ModelThread(threads=1)
    try:
        assert torch.get_num_threads() == caller
        seen = {worker.call(lambda: threading.get_ident()) for _ in range(3)}
        assert len(seen) == 1 and threading.get_ident() not in seen
        assert worker.call(torch.get_num_threads) == 1
        with pytest.raises(ValueError, match="bad input"):
            worker.call(lambda: (_ for _ in ()).throw(ValueError("bad input")))
        assert worker.call(lambda: 2 + 2) == 4  # still serving after an error
    finally:
        worker.close()
