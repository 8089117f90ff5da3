"""npdemo: few-shot steerable alignment (NP-BTL reward models, NP-DPO policies) as an interactive demo.

Kobalczyk et al., "Few-shot Steerable Alignment: Adapting Rewards and LLM Policies with Neural Processes"
(arXiv 2412.13998). A user is a hidden reward function; a neural process infers it from a handful of
labelled pairs (the context) and predicts the user's choices on new pairs (the targets).

Glossary (used in names throughout):
    ctx / tgt   context pairs (labelled by the user, fed to the encoder) / target pairs (to predict)
    chosen, rejected  the two options of a labelled pair, in that order
    a, b        the two options of a target pair; y = 1 if the user prefers a, else 0
    d           option feature size (1 in the synthetic task, the LLM hidden size on text)
    H           hidden width of the networks
    z           the user latent inferred from the context
    r           a reward r(option; z); the BTL logit of a pair is r(a; z) - r(b; z)
    qC / qT     the latent distribution conditioned on the context / on the targets ("C" = conditioned on)
    k           the number of context pairs
"""
