"""Start a real `python app.py` (default model, shipped checkpoints) on a free localhost port: e2e tests, load test."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..config import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(*args: str, timeout: float = 300.0, python: str = sys.executable,
                env: dict[str, str] | None = None) -> Iterator[str]:
    """Yield the URL of a live `python app.py *args` (another interpreter and extra environment variables may be
    given); if it fails to start, the error carries its log's tail."""
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", prefix=f"npdemo-app-{port}-", suffix=".log", delete=False)
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", **(env or {})}
    proc = subprocess.Popen([python, str(ROOT / "app.py"), "--port", str(port), *args], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"

    def failure(why: str) -> RuntimeError:
        log.flush()
        return RuntimeError(f"{why} (log {log.name}):\n{Path(log.name).read_text()[-3000:]}")

    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise failure(f"app.py exited with {proc.returncode} before serving")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    raise failure(f"app.py did not serve {url} within {timeout:.0f} s") from None
                time.sleep(1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
