"""`python -m npdemo.evaluate {synthetic,reward,selection,policy,quality} [--json PATH] [--html PATH] [--users N] [--seed S]
[--models np_dpo,dpo_mixed] [--parts implicit,steering,steerability,app] [--prompts N] [--new_tokens N] ...
[--quality_weight L] [--reward_dir DIR]`: print the tables, write the numbers (and a figure). Every setting: EvalConfig."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ..config import POLICY_DIR, POLICY_MIXED_DIR, REWARD_DIR, RUNS, parse_cli
from ..data import users as simulated_users
from .policy_tasks import PARTS, evaluate_policy
from .steering_tasks import GenerationConfig
from .quality_tasks import evaluate_quality
from .reward_tasks import evaluate_reward, evaluate_selection, evaluate_synthetic


@dataclass
class EvalConfig:
    json: str = ""                          # write the numbers here (default runs/<task>.json)
    html: str = ""                          # write the figure here (default runs/<task>.html)
    users: int = 2000                       # test users per context size
    seed: int = 1234
    models: str = "np_dpo,dpo_mixed"        # policy: which checkpoints to evaluate
    parts: str = ",".join(PARTS)            # policy: which measurements to run
    policy_dir: str = str(POLICY_DIR)       # policy: the NP-DPO checkpoint ...
    mixed_dir: str = str(POLICY_MIXED_DIR)  # ... and the DPO-mixed one
    old_recipe: bool = False                # policy: load recipe-1 checkpoints (README's before rows)
    app_quant: str = "auto"                 # policy: the app's precision, for its junk check
    rescore: str = ""                       # policy: re-score this earlier run's steering answers (no generation)
    prompts: int = GenerationConfig.prompts  # policy steering: test prompts per user
    contexts: int = GenerationConfig.contexts  # labelled contexts per steering user (the first also sampled)
    decodings: str = GenerationConfig.decodings
    new_tokens: int = GenerationConfig.new_tokens
    in_context: bool = GenerationConfig.in_context
    dirichlet_users: int = GenerationConfig.dirichlet_users
    strength: float = GenerationConfig.strength  # steering strength of every steered row
    fade_start: int = GenerationConfig.fade_start  # FiLM fades from this new token on (0: no fade) ...
    fade_length: int = GenerationConfig.fade_length  # ... over this many tokens ...
    fade_floor: float = GenerationConfig.fade_floor  # ... to this share of its move
    quality_weight: float = simulated_users.QUALITY_WEIGHT  # reward, selection: the simulated users' lambda
    reward_dir: str = str(REWARD_DIR)       # reward, selection: the checkpoints to score


def generation_config(c: EvalConfig) -> GenerationConfig:
    return GenerationConfig(prompts=c.prompts, contexts=c.contexts, decodings=c.decodings, new_tokens=c.new_tokens,
                            in_context=c.in_context, dirichlet_users=c.dirichlet_users, strength=c.strength,
                            fade_start=c.fade_start, fade_length=c.fade_length, fade_floor=c.fade_floor, seed=c.seed)


TASKS = {"synthetic": lambda c: evaluate_synthetic(c.users, c.seed),
         "reward": lambda c: evaluate_reward(c.users, c.seed, Path(c.reward_dir)),
         "selection": lambda c: evaluate_selection(c.users, c.seed, Path(c.reward_dir)),
         "policy": lambda c: evaluate_policy(c.users, c.seed, c.models, c.parts, generation_config(c),
                                             Path(c.policy_dir), Path(c.mixed_dir), c.old_recipe, c.app_quant,
                                             c.rescore),
         "quality": lambda c: evaluate_quality()}


def main(argv: list[str]) -> None:
    words, cfg = parse_cli(argv, EvalConfig())
    if len(words) != 1 or words[0] not in TASKS:
        raise SystemExit(f"usage: {__doc__.split(':')[0].strip('`')}; tasks: {', '.join(TASKS)}")
    task = words[0]
    simulated_users.QUALITY_WEIGHT = cfg.quality_weight
    out = TASKS[task](cfg)
    fig = out.pop("figure", None)
    json_path, html_path = Path(cfg.json or RUNS / f"{task}.json"), Path(cfg.html or RUNS / f"{task}.html")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(out, indent=2) + "\n")
    if fig is not None:
        html_path.parent.mkdir(parents=True, exist_ok=True)
        fig.write_html(html_path, include_plotlyjs="cdn")
    print(f"\nwrote {json_path}" + (f" and {html_path}" if fig is not None else ""))


if __name__ == "__main__":
    main(sys.argv[1:])
