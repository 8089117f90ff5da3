"""Does the junk verdict agree with a person? `python -m npdemo.evaluate quality` scores the hand-labelled
answers in assets/junk_labels.jsonl (corpus responses and the old policy's answers, labelled by reading them)
with the fp32 base model, and reports agreement, the confusion counts and every disagreement; beside it, the
share of the corpus the stored verdict flags."""
from __future__ import annotations

import json

import numpy as np

from ..config import ASSETS
from ..data import base_model
from ..data.corpus import read_jsonl
from ..data.quality_scores import load_quality_scores
from ..model import quality

LABELS = ASSETS / "junk_labels.jsonl"


def evaluate_quality() -> dict:
    records = read_jsonl(LABELS)
    lm = base_model.load(quant="fp32")
    found = quality.assess(lm.model, lm.tokenizer, [r["prompt"] for r in records], [r["response"] for r in records])
    human = np.array([r["junk"] for r in records])
    verdict = np.array([q.junk for q in found])
    sources = sorted({r["source"] for r in records})
    by_source = {s: float((human == verdict)[[r["source"] == s for r in records]].mean()) for s in sources}
    counts = {"junk, flagged": int((human & verdict).sum()), "junk, missed": int((human & ~verdict).sum()),
              "fine, flagged": int((~human & verdict).sum()), "fine, passed": int((~human & ~verdict).sum())}
    corpus = load_quality_scores()
    out = {"task": "quality", "labelled": len(records), "agreement": float((human == verdict).mean()),
           "by_source": by_source, "counts": counts,
           "labelled_junk": {s: int(human[[r["source"] == s for r in records]].sum()) for s in sources},
           "disagreements": [{"source": r["source"], "human": bool(h), "verdict": q.reason or "fine",
                              "fluency": round(q.fluency, 2), "response": r["response"][:300]}
                             for r, h, v, q in zip(records, human, verdict, found) if h != v],
           "corpus_flagged": {"count": int(corpus.junk.sum()), "of": len(corpus.junk),
                              "share": float(corpus.junk.mean())}}
    print(f"\nJunk verdict vs hand labels: {len(records)} answers, agreement {100 * out['agreement']:.1f} %")
    print("| source | answers | labelled junk | agreement |\n|---|---|---|---|")
    for s in sources:
        n = sum(r["source"] == s for r in records)
        print(f"| {s} | {n} | {out['labelled_junk'][s]} | {100 * by_source[s]:.1f} % |")
    print("Counts: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    for d in out["disagreements"]:
        print(f"  disagree [{d['source']}, person says {'junk' if d['human'] else 'fine'}, verdict "
              f"{d['verdict']!r}, NLL {d['fluency']}]: " + " ".join(d["response"].split())[:200])
    c = out["corpus_flagged"]
    print(f"Corpus: {c['count']} of {c['of']} responses flagged junk ({100 * c['share']:.2f} %)")
    return out
