"""Model floor: the paper's networks and maths. Context encoder, reward models, losses, FiLM, the conditional
policy and its generation and log-probs, the simplex locator, pair acquisition, checkpoints."""
