"""Data floor: what the models read. Attributes and users (the simulated preferences), prompts, the corpus and
the pair bank, episodes, the synthetic task, the base model and its tokens."""
