"""Evaluation floor: `python -m npdemo.evaluate TASK` (__main__). Shared metrics (metrics), reward-model tasks
(reward_tasks), policy tasks: implicit reward, steering, in-context baseline, z-swap (policy_tasks), figures."""
