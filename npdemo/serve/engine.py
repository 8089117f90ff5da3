"""The engine: everything the app, the tests and API clients do, on one object.

One labelled context -> one z (the NP context encoder shipped with the policy) -> both the simplex position
(the NP-BTL reward decoder read off by the locator) and the steered generation (FiLM). The engine holds only
shared, read-only things (models, bank); everything user-specific lives in a `Session` the caller keeps.
"""
from __future__ import annotations

import hashlib
from contextlib import closing
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.distributions import Distribution

from ..config import POLICY_DIR
from ..data import attributes, base_model
from ..data.attributes import ATTRIBUTES
from ..data.bank import Bank, load_bank
from ..data.users import bank_shared, strongest_labels
from ..model import checkpoints, quality
from ..model.acquisition import next_pair
from ..model.generation import DEFAULT_STRENGTH, Sampling, prompt_ids
from ..model.in_context import fitted_in_context_prompt
from ..model.policy import ConditionalPolicy
from ..model.policy_checkpoint import load_policy, paired_reward_dir
from ..model.reward import NPBTL, load_reward_model
from ..model.simplex import BayesPosterior, Locator, to_simplex
from .batching import Batcher
from .model_thread import ModelThread
from .session import ORDERS, Session
from .streaming import Streamer

CLOUD_SAMPLES = 48      # z samples drawn for the uncertainty cloud


@dataclass
class Position:
    """Where a session sits on the simplex (concise, structured, warm)."""
    w: np.ndarray                 # (3,) NP estimate: the locator applied to the latent mean
    cloud: np.ndarray             # (S, 3) locator applied to z ~ q(z | context)
    bayes: np.ndarray             # (3,) exact grid posterior mean given the same labels
    bayes_grid: np.ndarray        # (G, 3) grid points
    bayes_post: np.ndarray        # (G,) their posterior mass
    k: int                        # labelled pairs
    source: str                   # "labels", "target" or "prior"

    def summary(self) -> str:
        """A sentence for screen readers and the text panel."""
        parts = ", ".join(f"{a} {v:.0%}" for a, v in zip(ATTRIBUTES, self.w))
        lead = ATTRIBUTES[int(np.argmax(self.w))]
        what = {"labels": f"from {self.k} labelled pair{'s' * (self.k != 1)}", "target": "from the point you set",
                "prior": "before any labels (the average user)"}[self.source]
        spread = float(np.abs(self.cloud - self.cloud.mean(0)).sum(1).mean())
        return (f"Estimate {what}: {parts}. Leaning most towards {lead}. "
                f"Uncertainty (mean L1 spread of the NP cloud): {spread:.2f}. "
                f"Exact Bayes posterior mean: " + ", ".join(f"{a} {v:.0%}" for a, v in zip(ATTRIBUTES, self.bayes)) + ".")


class Engine:
    """Models and bank shared by all sessions; every method takes the caller's Session."""

    def __init__(self, policy: ConditionalPolicy, encoder, reward: NPBTL, bank: Bank, checkpoint: str,
                 pool: np.ndarray | None = None, worker: ModelThread | None = None):
        # one context -> one z, from the policy's encoder; the NP-BTL reward decoder reads that z (the encoder's
        # weights are NP-BTL's unless it was fine-tuned with the policy), so only the decoder of `reward` is used
        self.policy, self.encoder, self.reward, self.bank = policy, encoder, reward, bank
        self.streamer = Streamer(policy, worker)
        self.batcher = Batcher(self.streamer)  # concurrent visitors' generations share one batched call
        self.checkpoint = checkpoint  # hash of the policy manifest: stamps exported profiles
        self.pool = bank.clean_pairs() if pool is None else pool  # junk is never shown as a pair to judge
        self.shared = bank_shared(bank)  # the quality part of every simulated user's reward, per bank row
        self.locator = Locator(reward, bank)
        self.bayes = BayesPosterior()
        self._point_latents: dict[tuple[float, ...], torch.Tensor] = {}
        self.posterior = lru_cache(maxsize=4096)(self._posterior)  # one encoder pass per labelled context

    @classmethod
    def load(cls, model: str | None = None, quant: str = "auto", policy_dir: Path = POLICY_DIR,
             reward_dir: Path | None = None) -> "Engine":
        """The default model and the shipped checkpoints (refused if they belong to another base model); the
        reward decoder is the NP-BTL the policy was trained with (another one is refused).

        The model is loaded and run on the model thread (`npdemo.serve.model_thread`); a server makes its own
        threads single-threaded first (app.py)."""
        reward_dir = paired_reward_dir(policy_dir, reward_dir)
        worker = ModelThread()

        def parts() -> tuple:
            bank = load_bank()
            lm = base_model.load(model, quant=quant)
            bank.check_model(lm)
            policy, encoder = load_policy(policy_dir, lm)
            if encoder is None:
                raise checkpoints.CheckpointError(f"{policy_dir} is an unconditioned policy (no FiLM): it cannot steer")
            return policy, encoder, load_reward_model(reward_dir), bank

        manifest = Path(policy_dir) / checkpoints.MANIFEST
        return cls(*worker.call(parts), hashlib.sha256(manifest.read_bytes()).hexdigest(), worker=worker)

    # ----- teach: pairs and labels -----------------------------------------------------------------------

    def pair_text(self, pair: int) -> dict[str, str]:
        a, b = self.bank.pairs[pair].tolist()
        return {"prompt": self.bank.records[a]["prompt"], "a": self.bank.records[a]["response"],
                "b": self.bank.records[b]["response"]}

    def next_pair(self, session: Session) -> int | None:
        """Choose the pair to show next (informative or random order) and put it on screen."""
        if session.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {session.order!r}")
        rng = np.random.default_rng([session.seed, len(session.labels), len(session.skipped)])
        session.current = next_pair(self.reward, self.posterior(tuple(session.labels)), self.bank.features,
                                    self.bank.pairs, self.pool, session.seen(), rng, session.order)
        return session.current

    def label(self, session: Session, choice: str) -> None:
        """Record "a", "b" or "skip" for the pair on screen, update the trajectory, and show the next pair."""
        if session.current is None:
            raise ValueError("there is no pair on screen to label")
        if choice == "skip":
            session.skipped.append(session.current)
        elif choice in ("a", "b"):
            session.label(session.current, choice == "a")
            session.trail.append(self.estimate(session.labels))
        else:
            raise ValueError(f"choice must be 'a', 'b' or 'skip', got {choice!r}")
        self.next_pair(session)

    def undo(self, session: Session) -> None:
        """Take back the last label and show its pair again."""
        pair = session.undo()
        if pair is not None:
            session.current = pair

    # ----- where the user is -------------------------------------------------------------------------------

    @torch.no_grad()
    def _posterior(self, labels: tuple[tuple[int, int], ...]) -> Distribution:
        return self.encoder(*self.bank.context(list(labels)))

    def latent_of(self, labels: list[tuple[int, int]]) -> torch.Tensor:
        """z (1, Z) for labelled pairs: the mean of q(z | context)."""
        return self.posterior(tuple(labels)).mean

    @torch.no_grad()
    def latent(self, session: Session) -> torch.Tensor:
        """z (1, Z): from the labels; else from the preset point; else the prior (empty context)."""
        if not session.labels and session.target is not None:
            return self.latent_for_point(np.asarray(session.target, dtype=float))
        return self.latent_of(session.labels)

    @torch.no_grad()
    def latent_for_point(self, w: np.ndarray) -> torch.Tensor:
        """A target point as a latent: the noise-free simulated user at w labels the POINT_PAIRS bank pairs it
        feels most strongly about, and the encoder reads that context (so the point means what labels mean)."""
        w = to_simplex(np.clip(np.asarray(w, dtype=float), 0, None))
        key = tuple(np.round(w, 3))
        if key not in self._point_latents:
            self._point_latents[key] = self.latent_of(strongest_labels(self.bank, w, self.pool))
        return self._point_latents[key]

    @torch.no_grad()
    def estimate(self, labels: list[tuple[int, int]]) -> list[float]:
        """The NP simplex estimate (latent mean through the locator) from these labels: a trajectory point."""
        return self.locator(self.latent_of(labels))[0].round(4).tolist()

    @torch.no_grad()
    def position(self, session: Session) -> Position:
        """NP estimate, NP cloud and exact Bayes posterior for the session's labels (or preset point)."""
        if not session.labels and session.target is not None:
            z = self.latent_for_point(np.asarray(session.target, dtype=float))
            w, cloud, source = self.locator(z)[0], self.locator(z)[None, 0], "target"
        else:
            q = self.posterior(tuple(session.labels))
            w = self.locator(q.mean)[0]
            cloud = self.locator(q.sample((CLOUD_SAMPLES,)))[:, 0]
            source = "labels" if session.labels else "prior"
        labelled = np.ones((1, len(session.labels)), dtype=bool)
        post = self.bayes.posterior(self.bank.row_diffs(self.bank.attributes, session.labels), labelled,
                                    self.bank.row_diffs(self.shared, session.labels))[0]
        return Position(w=w, cloud=cloud, bayes=post @ self.bayes.grid, bayes_grid=self.bayes.grid,
                        bayes_post=post, k=len(session.labels), source=source)

    # ----- generate --------------------------------------------------------------------------------------

    def prompt_note(self, prompt: str) -> str | None:
        """Why the prompt cannot be used as typed (cut to the context window), or None; raises if empty."""
        return prompt_ids(self.policy, prompt)[1]

    def in_context_prompt(self, session: Session, prompt: str) -> str:
        """The in-context baseline's prompt: the session's labelled pairs (the most recent that fit) + prompt."""
        return fitted_in_context_prompt(self.policy, self.bank, session.labels, prompt)

    def stream(self, session: Session, prompt: str, sampling: Sampling, in_context: bool = False,
               strength: float = DEFAULT_STRENGTH) -> Iterator[dict[str, str]]:
        """Stream {"steered", "base"[, "in_context"]} side by side from one batched call (shared with other
        sessions asking at the same time); `strength` scales the steered row's FiLM move (1: as trained)."""
        prompts, zs, names = [prompt, prompt], [self.latent(session), None], ["steered", "base"]
        if in_context:
            prompts.append(self.in_context_prompt(session, prompt))
            zs.append(None)
            names.append("in_context")
        session.stop = False
        with closing(self.batcher.stream(prompts, zs, sampling, [strength] + [1.0] * (len(zs) - 1))) as rows:
            for texts in rows:
                if session.stop:  # leaving the batcher's stream ends the generation after its current step
                    return
                yield dict(zip(names, texts))

    def stop(self, session: Session) -> None:
        """End the session's running generation (its stream returns at the next decode step)."""
        session.stop = True

    def count_tokens(self, text: str) -> int:
        """Tokens of a generated text under the served tokenizer (for the app's tokens/s)."""
        return len(self.policy.tokenizer(text, add_special_tokens=False).input_ids)

    @torch.no_grad()
    def score(self, session: Session, prompt: str, texts: dict[str, str]) -> dict[str, dict]:
        """Per output: attribute scores, reward under the session's latent (comparable within a prompt), and quality:
        fluency under the served base model, relevance, and the junk verdict with its reason."""
        names = [n for n, t in texts.items() if t.strip()]
        if not names:
            return {}
        outs = [texts[n] for n in names]
        def base_scores() -> tuple:  # the base model, on the model thread between generations
            with self.policy.reference():
                feats = self.bank.features_for(self.policy.lm, [prompt] * len(names), outs)
                nll = quality.fluency(self.policy.model, self.policy.tokenizer, [prompt] * len(names), outs)
            try:
                return feats, nll, quality.relevance([prompt] * len(names), outs), ""
            except ImportError as e:  # the app still shows fluency and the junk verdict
                return feats, nll, np.full(len(names), np.nan), str(e)

        feats, nll, rel, note = self.streamer.call(base_scores)
        r = self.reward.rewards(feats[None], self.latent(session))[0]
        out = {}
        for i, n in enumerate(names):
            junk, reason = quality.verdict(outs[i], float(nll[i]))
            out[n] = {**dict(zip(ATTRIBUTES, attributes.score(outs[i], junk).round(3).tolist())),
                      "reward": round(float(r[i]), 3), "fluency": round(float(nll[i]), 3),
                      "relevance": round(float(rel[i]), 3), "junk": junk, "junk_reason": reason,
                      "relevance_note": note}
        return out

    # ----- profiles --------------------------------------------------------------------------------------

    def export_profile(self, session: Session) -> str:
        return session.to_json(self.checkpoint, self.policy.lm.name, self.latent(session)[0].tolist())

    def import_profile(self, text: str | bytes) -> Session:
        """A session from a profile; refused (ProfileError) when malformed or made with another checkpoint."""
        session = Session.from_json(text, self.checkpoint, len(self.bank.pairs))
        for i in range(len(session.labels)):
            session.trail.append(self.estimate(session.labels[:i + 1]))
        self.next_pair(session)
        return session
