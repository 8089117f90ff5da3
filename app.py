"""npdemo: label ~10 response pairs, see yourself on the preference simplex, watch the steered model stream.

`python app.py [--model ID_OR_PATH] [--quant auto|int4|nf4|bf16|fp32] [--policy DIR] [--host H] [--port N]`: builds the
engine (the default model and the shipped checkpoints), the page around it (npdemo.serve.ui), and launches it.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from npdemo.config import POLICY_DIR, parse_cli
from npdemo.data.base_model import QUANTS
from npdemo.serve.engine import Engine
from npdemo.serve.model_thread import single_threaded_requests
from npdemo.serve.ui import build_demo, serve


@dataclass
class AppConfig:
    model: str = ""                   # base model id or path (default: SmolLM2-135M-Instruct)
    quant: str = "auto"               # auto (the fastest 4-bit path here), int4, nf4, bf16 or fp32
    policy: Path = POLICY_DIR         # policy checkpoint folder
    host: str = field(default_factory=lambda: os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    port: int = field(default_factory=lambda: int(os.environ.get("GRADIO_SERVER_PORT", 7860)))


def main(argv: list[str]) -> None:
    words, cfg = parse_cli(argv, AppConfig())
    if words:
        raise SystemExit(f"app.py takes only --key settings, got {words}; see `{__doc__.splitlines()[2]}`")
    if cfg.quant not in QUANTS:
        raise SystemExit(f"--quant must be one of {', '.join(QUANTS)}, got {cfg.quant!r}")
    single_threaded_requests()  # before loading: only the model thread may run multi-threaded
    engine = Engine.load(cfg.model or None, quant=cfg.quant, policy_dir=cfg.policy)
    serve(build_demo(engine), cfg.host, cfg.port)


if __name__ == "__main__":
    main(sys.argv[1:])
