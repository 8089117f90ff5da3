"""Data-parallel NP-DPO: two processes under torchrun (gloo, CPU) train exactly like one process.

Run as a script by the test: `python -m torch.distributed.run --nproc_per_node 2 tests/e2e/test_distributed.py OUT`.
"""
import os
import subprocess
import sys
from pathlib import Path

import torch

from conftest import make_tiny_lm, text_bank
from npdemo import config
from npdemo.model.context_encoder import ContextEncoder, EncoderConfig
from npdemo.model.policy import ConditionalPolicy, PolicyConfig
from npdemo.train import distributed, dpo

ROOT = Path(__file__).resolve().parents[2]


def train(cache: Path, ranks: distributed.Ranks) -> list[torch.Tensor]:
    """Two DPO steps of 4 users on the tiny model; returns the logged losses, then the LoRA and FiLM tensors."""
    config.CACHE = cache
    torch.manual_seed(0)
    policy = ConditionalPolicy(make_tiny_lm(), PolicyConfig(latent=8, lora_r=4, lora_dropout=0.0))
    encoder = ContextEncoder(EncoderConfig(d=8, hidden=16, latent=8)).eval()
    log = dpo.train_dpo(policy, encoder, text_bank(), dpo.DPOConfig(steps=2, users=4, k_max=2, lr=1e-2),
                        ref_key="ddp", ranks=ranks, log_every=1)
    return [torch.tensor([e["loss"] for e in log])] + [p.detach().clone() for p in policy.model.parameters() if p.requires_grad] + \
        [p.detach().clone() for p in policy.film.parameters()]


def test_two_processes_train_like_one_with_all_users(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "CACHE", config.CACHE)  # train() sets it; restore it afterwards
    one = train(tmp_path / "one", distributed.Ranks())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                    "--master_port", "29517", __file__, str(tmp_path / "two")], check=True, env=env, timeout=300)
    for rank in (0, 1):
        two = torch.load(tmp_path / "two" / f"rank{rank}.pt")
        assert len(two) == len(one)
        for a, b in zip(one, two):  # the losses over all users (Adam alone would hide a 2x gradient), weights
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert any(p.abs().sum() > 0 for p in one[-2:])  # FiLM moved: the comparison is not between two inits


def test_users_must_split_evenly_over_ranks():
    assert list(distributed.Ranks(1, 2).users(4)) == [2, 3]
    try:
        distributed.Ranks(0, 3).users(4)
    except ValueError as e:
        assert "multiple" in str(e)
    else:
        raise AssertionError("4 users over 3 ranks must be refused")


if __name__ == "__main__":
    out = Path(sys.argv[1])
    ranks = distributed.init()
    trained = train(out, ranks)
    torch.save(trained, out / f"rank{ranks.rank}.pt")
