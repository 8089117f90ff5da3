"""Policy checkpoints: LoRA + FiLM + the context encoder, with a manifest naming the base model and a hash of its
weights, and the NP-BTL reward checkpoint whose encoder it was trained with; loading is strict and refuses a
checkpoint trained on other base weights, paired with another reward model, from an older recipe, or whose FiLM
outputs are not finite."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from ..config import CHECKPOINTS
from ..data.base_model import LoadedModel, fingerprint
from . import checkpoints
from .context_encoder import ContextEncoder, EncoderConfig
from .lora import load_lora_state, lora_state_dict
from .policy import ConditionalPolicy, PolicyConfig

# 1: plain DPO, unbounded FiLM (wrote junk for corner users); 2: RPO likelihood term + FiLM squashed by s tanh(x)
# (steered weakly: the squash slowed FiLM's learning s-fold); 3: RPO + FiLM soft-clamped by s tanh(x / s) (greedy
# warm answers dissolved into emoji soup); 4: the on-policy rounds' candidate (not shipped); 5: recipe 3 with no
# emoji run on the chosen side of a target pair (wrote mark soup past token 80 unless FiLM faded from token 64); 6:
# recipe 5's off-policy steps, then one round of the base model's styled samples up to 192 tokens (the app's length;
# its cut samples taught answers that do not end); 7: recipe 6 with each cut sample ending after its last sentence
RECIPE = 7
MIXED_SINCE = 7  # recipe 7's round trains DPO-mixed too, on the same pairs (as recipe 6's did)
OFFPOLICY_RECIPE = 5  # the off-policy steps are recipe 5's: a run without rounds saves this number


def save_policy(policy: ConditionalPolicy, encoder: ContextEncoder, directory: Path, conditioned: bool = True,
                recipe: int = RECIPE, **extra) -> Path:
    """Checkpoint = LoRA + FiLM + context encoder + a manifest naming the base model and its weights hash.

    An unconditioned policy (the DPO-mixed baseline) never used FiLM or the encoder: only its LoRA is saved."""
    config = policy.lm.model.config
    base = {"name": policy.lm.name, "fingerprint": fingerprint(policy.lm.model), "hidden_size": config.hidden_size,
            "layers": config.num_hidden_layers}
    modules = {"lora": lora_state_dict(policy.model)}
    if conditioned:
        modules |= {"film": policy.film, "encoder": encoder}
    return checkpoints.save(directory, modules, kind="policy", conditioned=conditioned, recipe=recipe,
                            config={"policy": asdict(policy.cfg), "encoder": asdict(encoder.cfg)}, base_model=base,
                            **extra)


def reward_pairing(reward_dir: Path) -> dict:
    """What a policy manifest records of its NP-BTL checkpoint: where it lies (under checkpoints/) and its id."""
    return {"checkpoint": Path(reward_dir).resolve().relative_to(CHECKPOINTS).as_posix(),
            "weights_id": checkpoints.weights_id(reward_dir)}


def paired_reward_dir(directory: Path, reward_dir: Path | None = None) -> Path:
    """The NP-BTL checkpoint the policy at `directory` was trained with (or `reward_dir`, if it is that one).

    The app reads one z through the policy's encoder and the reward decoder: a decoder from another NP-BTL run
    would put people at the wrong place on the simplex, so a mismatch is refused."""
    manifest = checkpoints.read_manifest(directory, "policy")
    pairing = manifest.get("reward")
    if pairing is None:
        raise checkpoints.CheckpointError(f"{directory}/{checkpoints.MANIFEST} names no reward checkpoint; "
                                          "retrain with `python -m npdemo.train policy`")
    path = Path(reward_dir) if reward_dir is not None else CHECKPOINTS / pairing["checkpoint"]
    found = checkpoints.weights_id(path) if (path / checkpoints.MANIFEST).is_file() else "missing"
    if found != pairing["weights_id"]:
        raise checkpoints.CheckpointError(
            f"the policy at {directory} was trained with the NP-BTL checkpoint {pairing['checkpoint']} (weights "
            f"{pairing['weights_id'][:12]}), but {path} holds {found[:12]}: serve the pair it was trained with, or "
            "retrain the policy with `python -m npdemo.train policy`")
    return path


def is_current_recipe(manifest: dict) -> bool:
    """Does this code serve the checkpoint's recipe? (DPO-mixed has no FiLM: any recipe since MIXED_SINCE.)"""
    recipe = manifest.get("recipe", 1)
    return recipe == RECIPE or (not manifest.get("conditioned", True) and MIXED_SINCE <= recipe <= RECIPE)


def check_recipe(manifest: dict, directory: Path, old_recipe: bool = False) -> None:
    """Refuse a checkpoint of an older recipe (recipe 1 streams junk to corner users) unless `old_recipe` is asked
    for explicitly (evaluation's before/after rows)."""
    recipe = manifest.get("recipe", 1)
    if manifest.get("ablation") and not old_recipe:
        raise checkpoints.CheckpointError(
            f"{directory} is an ablation of recipe {recipe}, not the recipe itself: its training settings "
            f"{manifest['ablation']} differ from the recipe's. Retrain with `python -m npdemo.train policy` "
            "(evaluate loads it with --old-recipe)")
    if not is_current_recipe(manifest) and not old_recipe:
        raise checkpoints.CheckpointError(
            f"{directory} is a recipe-{recipe} policy (this code serves recipe {RECIPE}: RPO + soft-clamped FiLM, "
            "chosen targets without emoji runs, then a round of styled samples at the app's length that end); "
            "recipe 1 writes junk for corner users, recipe 2 barely steers, recipe 3 writes emoji soup for warm "
            "users, recipe 5 mark soup past token 80, recipe 6 rarely ends a structured answer. Retrain with "
            "`python -m npdemo.train policy` (evaluate loads it with --old-recipe)")


def check_film(policy: ConditionalPolicy, directory: Path) -> None:
    """FiLM must give finite (gamma, beta) for the no-label latent's scale and beyond: NaN or inf would stream junk."""
    z = torch.randn(8, policy.cfg.latent, generator=torch.Generator().manual_seed(0)) * torch.tensor([0.0, 1, 3, 10]
                                                                                                    ).repeat(2)[:, None]
    with torch.no_grad():
        gamma, beta = policy.film(z.to(policy.lm.device))
    if not (torch.isfinite(gamma).all() and torch.isfinite(beta).all()):
        raise checkpoints.CheckpointError(f"{directory}/film.safetensors gives NaN or inf FiLM outputs: the "
                                          "checkpoint is damaged; retrain with `python -m npdemo.train policy`")


def check_base(manifest: dict, lm: LoadedModel, directory: Path) -> None:
    """The checkpoint must have been trained on the loaded base weights."""
    base, fp = manifest["base_model"], fingerprint(lm.model)
    if fp != base["fingerprint"]:
        raise checkpoints.CheckpointError(
            f"{directory} was trained on {base['name']!r} (weights {base['fingerprint']}), but the loaded model "
            f"{lm.name!r} has weights {fp}: load the same base model or retrain with `python -m npdemo.train policy`")


def load_weights(policy: ConditionalPolicy, directory: Path, manifest: dict) -> None:
    """Strictly load a checkpoint's LoRA (and FiLM, when conditioned) into `policy`, in place."""
    lora = checkpoints.load_state(directory, "lora", lora_state_dict(policy.model), "the LoRA adapters")
    load_lora_state(policy.model, lora)
    if manifest.get("conditioned", True):
        checkpoints.load_into(directory, "film", policy.film)


def load_policy(directory: Path, lm: LoadedModel, old_recipe: bool = False
                ) -> tuple[ConditionalPolicy, ContextEncoder | None]:
    """Strictly load a policy checkpoint onto `lm`; a checkpoint trained on other base weights, of an older recipe
    (unless `old_recipe`) or with non-finite FiLM outputs is refused.

    Returns the policy and its context encoder (None for an unconditioned policy, whose FiLM stays identity)."""
    manifest = checkpoints.read_manifest(directory, "policy")
    check_recipe(manifest, directory, old_recipe)
    check_base(manifest, lm, directory)
    policy = ConditionalPolicy(lm, PolicyConfig(**{"film_bound": None, "film_squash": "scaled",
                                                   **manifest["config"]["policy"]}))
    load_weights(policy, directory, manifest)
    if not manifest.get("conditioned", True):
        return policy, None
    encoder = ContextEncoder(EncoderConfig(**manifest["config"]["encoder"]))
    checkpoints.load_into(directory, "encoder", encoder)
    check_film(policy, directory)
    return policy, encoder.eval()
