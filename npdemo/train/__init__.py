"""Training floor: `python -m npdemo.train [stage] [--key=value]` rebuilds every shipped checkpoint (stages.py):
the corpus (corpus_build), the pair bank (bank_build), reward models (fit), NP-DPO policies (dpo, distributed)."""
