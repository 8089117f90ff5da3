"""Checkpoints load strictly: missing/extra keys, wrong shapes, tampered files and wrong kinds are errors."""
import json

import pytest
import torch

from npdemo.model import checkpoints
from npdemo.model.context_encoder import EncoderConfig
from npdemo.model.reward import load_reward_model
from npdemo.model.reward import RewardConfig, build_reward_model


def small(kind="np", hidden=16):
    return RewardConfig(kind=kind, d=2, hidden=hidden, encoder=EncoderConfig(d=2, hidden=hidden, latent=8))


def saved(tmp_path, cfg):
    torch.manual_seed(0)
    model = build_reward_model(cfg)
    checkpoints.save(tmp_path, {"model": model}, kind="reward", config=cfg.to_dict())
    return model


def test_round_trip_is_exact(tmp_path):
    model = saved(tmp_path, small())
    loaded = load_reward_model(tmp_path)
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def test_missing_and_extra_keys_are_errors(tmp_path):
    saved(tmp_path, small())
    with pytest.raises(checkpoints.CheckpointError, match="missing keys"):
        checkpoints.load_into(tmp_path, "model", torch.nn.Sequential(build_reward_model(small()), torch.nn.Linear(1, 1)))
    with pytest.raises(checkpoints.CheckpointError, match="unexpected keys"):
        checkpoints.load_into(tmp_path, "model", build_reward_model(small(kind="btl")))


def test_shape_mismatch_is_an_error(tmp_path):
    saved(tmp_path, small(hidden=16))
    with pytest.raises(checkpoints.CheckpointError, match="shape mismatch"):
        checkpoints.load_into(tmp_path, "model", build_reward_model(small(hidden=32)))


def test_tampered_missing_and_foreign_checkpoints(tmp_path):
    saved(tmp_path, small())
    weights = tmp_path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(checkpoints.CheckpointError, match="does not match its manifest hash"):
        load_reward_model(tmp_path)
    weights.unlink()
    with pytest.raises(checkpoints.CheckpointError, match="is missing"):
        load_reward_model(tmp_path)
    with pytest.raises(checkpoints.CheckpointError, match="no checkpoint"):
        load_reward_model(tmp_path / "nowhere")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "kind": "policy"}))
    with pytest.raises(checkpoints.CheckpointError, match="expected 'reward'"):
        load_reward_model(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(checkpoints.CheckpointError, match="not valid JSON"):
        load_reward_model(tmp_path)


def test_shipped_policy_names_the_reward_checkpoint_it_was_trained_with():
    """The app pairs the policy's encoder with an NP-BTL decoder: only the one it was trained with is accepted."""
    from npdemo.config import CHECKPOINTS, POLICY_DIR, REWARD_DIR
    from npdemo.model.policy_checkpoint import paired_reward_dir

    paired = paired_reward_dir(POLICY_DIR)
    assert paired == CHECKPOINTS / "reward" / "np_btl"
    assert paired_reward_dir(POLICY_DIR, paired) == paired
    with pytest.raises(checkpoints.CheckpointError, match="was trained with the NP-BTL checkpoint reward/np_btl"):
        paired_reward_dir(POLICY_DIR, REWARD_DIR / "btl_mixed")
