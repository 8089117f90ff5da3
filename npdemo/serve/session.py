"""One visitor's labelled context and its JSON profile.

A session is everything user-specific the app keeps (in `gr.State`, never in globals): the labelled pairs
(the NP context), skipped pairs, the pair on screen, the trajectory of simplex estimates, and an optional
target point set with presets or sliders instead of labels. A profile is the session as JSON, stamped with
the checkpoint manifest hash so that labels made against another model are refused on import.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

PROFILE_FORMAT = "npdemo-profile/1"
ORDERS = ("informative", "random")


class ProfileError(ValueError):
    """A profile that cannot be imported; the message says why."""


@dataclass
class Session:
    labels: list[tuple[int, int]] = field(default_factory=list)  # (pair index, 1 if A is better else 0)
    skipped: list[int] = field(default_factory=list)             # pairs the visitor passed on
    current: int | None = None                                   # the pair on screen
    trail: list[list[float]] = field(default_factory=list)       # simplex estimate after each label, in order
    target: list[float] | None = None                            # a preset/slider point (used without labels)
    order: str = "informative"                                   # how the next pair is chosen
    seed: int = 0
    stop: bool = False                                           # the visitor asked to stop the running answer

    def seen(self) -> set[int]:
        """Pairs that must not be shown again."""
        return {p for p, _ in self.labels} | set(self.skipped)

    def label(self, pair: int, a_better: bool) -> None:
        """Record a choice; labelling the same pair twice (a double click) is ignored."""
        if pair in {p for p, _ in self.labels}:
            return
        self.labels.append((int(pair), int(bool(a_better))))
        self.target = None  # labels take over from a preset point

    def undo(self) -> int | None:
        """Remove the last label (and its trajectory point); returns its pair so it can be shown again."""
        if not self.labels:
            return None
        pair, _ = self.labels.pop()
        del self.trail[len(self.labels):]
        return pair

    def to_json(self, checkpoint: str, model: str, latent: list[float]) -> str:
        return json.dumps({"format": PROFILE_FORMAT, "checkpoint": checkpoint, "model": model,
                           "labels": [list(x) for x in self.labels], "skipped": self.skipped,
                           "target": self.target, "latent": latent}, indent=2)

    @classmethod
    def from_json(cls, text: str | bytes, checkpoint: str, n_pairs: int) -> "Session":
        """Parse and validate a profile; raises ProfileError with a message a person can act on."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ProfileError(f"the profile is not valid JSON ({e})") from e
        if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
            raise ProfileError(f"not an npdemo profile (expected \"format\": \"{PROFILE_FORMAT}\")")
        if data.get("checkpoint") != checkpoint:
            raise ProfileError(f"this profile was made with another model checkpoint ({data.get('model', '?')}, "
                               f"manifest {str(data.get('checkpoint'))[:12]}); its labels do not apply here")
        labels, skipped, target = data.get("labels"), data.get("skipped", []), data.get("target")
        if not isinstance(labels, list) or not all(
                isinstance(x, list) and len(x) == 2 and all(type(v) is int for v in x) and 0 <= x[0] < n_pairs
                and x[1] in (0, 1) for x in labels):
            raise ProfileError(f"\"labels\" must be a list of [pair index 0..{n_pairs - 1}, 0 or 1]")
        if len({x[0] for x in labels}) != len(labels):
            raise ProfileError("\"labels\" lists a pair twice")
        if not isinstance(skipped, list) or not all(type(p) is int and 0 <= p < n_pairs for p in skipped):
            raise ProfileError(f"\"skipped\" must be a list of pair indices 0..{n_pairs - 1}")
        if target is not None and not (isinstance(target, list) and len(target) == 3 and all(
                isinstance(v, (int, float)) and v >= 0 for v in target) and sum(target) > 0):
            raise ProfileError("\"target\" must be null or three non-negative weights")
        return cls(labels=[tuple(x) for x in labels], skipped=list(skipped), target=target)
