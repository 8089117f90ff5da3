"""The floors: the app never loads training or evaluation code, and the import contract can fail."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_app_imports_no_training_or_evaluation_module():
    code = ("import sys, app; from npdemo.serve import ui; "
            "print(sorted(m for m in sys.modules if m.startswith(('npdemo.train', 'npdemo.evaluate', 'npdemo.bench'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_upward_import_breaks_the_contract(tmp_path):
    lint = Path(sys.executable).parent / "lint-imports"
    shutil.copytree(ROOT / "npdemo", tmp_path / "npdemo", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    kept = subprocess.run([str(lint), "--no-cache"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert kept.returncode == 0, kept.stdout
    with open(tmp_path / "npdemo" / "model" / "policy.py", "a") as f:
        f.write("\nfrom ..serve import engine  # an upward import\n")
    broken = subprocess.run([str(lint), "--no-cache"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert broken.returncode != 0 and "npdemo.model.policy -> npdemo.serve.engine" in broken.stdout
