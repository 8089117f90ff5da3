"""The training command line: a short synthetic run writes loadable checkpoints; finished stages are skipped."""
import json

import pytest

from npdemo.config import SYNTHETIC_MODELS
from npdemo.model.reward import load_reward_model
from npdemo.train import stages as train


def test_short_synthetic_run_writes_loadable_checkpoints(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "SYNTHETIC_DIR", tmp_path / "synthetic")
    train.main(["synthetic", "--steps=30", "--baseline_steps=20", "--eval_every=15", "--val_batches=1",
                "--hidden=32"])
    for name in SYNTHETIC_MODELS:
        manifest = json.loads((tmp_path / "synthetic" / name / "manifest.json").read_text())
        assert manifest["train"]["steps"] == 30 and manifest["best"]["step"] in (0, 15, 20, 30)
        load_reward_model(tmp_path / "synthetic" / name)
    assert train.has_checkpoints(tmp_path / "synthetic", SYNTHETIC_MODELS)
    assert not train.has_checkpoints(tmp_path / "synthetic", ["nope"])
    assert "wrote" in capsys.readouterr().out


def test_bad_arguments_are_clear():
    with pytest.raises(SystemExit, match="unknown stage 'sythetic'"):
        train.main(["sythetic"])
    with pytest.raises(SystemExit, match="unknown setting --stepz"):
        train.main(["synthetic", "--stepz=3"])
    with pytest.raises(SystemExit, match="--steps needs a int"):
        train.main(["synthetic", "--steps=many"])


def test_a_policy_run_off_the_recipe_is_labelled_an_ablation():
    assert train.ablated(train.PolicyTrainConfig()) == {}  # the shipped recipe
    assert train.ablated(train.PolicyTrainConfig(conditioned=False, seed=3, out="x")) == {}  # DPO-mixed, a rerun
    assert train.ablated(train.PolicyTrainConfig(rounds=1, round_source="policy", beta=0.2)) == {
        "beta": 0.2, "round_source": "policy"}
    assert train.ablated(train.PolicyTrainConfig(rounds=0, round_users=3)) == {}  # recipe 5's steps: no rounds
