"""Survey throughput: option log-probability scoring vs generating the answer.

The same questions (items of the shared eating-disorder questionnaires with a
four-point frequency scale) are put to the embedded model three ways, each on a
fresh store so nothing comes from the prompt cache:

- letter scoring (the stage's default): one forward pass over the prompt, the
  log-probability of each letter kept as the whole A-D distribution;
- text scoring: the log-probability of each option's whole text as the reply;
- generating the answer, the paper's way: a greedy reply of up to ``--max-tokens``
  tokens through the same backend, the first standalone letter A-D parsed from it.

Questions per second of wall time, the model loaded and warmed before each clock.
Target (issue 7): letter scoring >= 3x generating.
"""

from __future__ import annotations

import argparse
import csv
import re
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ITEMS = ROOT.parent / "shared" / "instruments" / "eating_disorder_items.csv"
SCALE = {"A": "Never", "B": "Sometimes", "C": "Often", "D": "Always"}
LETTER = re.compile(r"\b([ABCD])\b")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=48)
    ap.add_argument("--max-tokens", type=int, default=32,
                    help="longest generated answer (the paper's way)")
    args = ap.parse_args()

    from cci_local.evaluate.survey import Item, administer, question_messages
    from cci_local.llm import Sampling, chat, get_backend
    from cci_local.store import open_store

    with open(ITEMS, newline="", encoding="utf-8") as fh:
        questions = [row["Question"] for row in csv.DictReader(fh)][:args.questions]
    items = [Item(f"bench:{i}", q, SCALE, {"x": "A"}) for i, q in enumerate(questions)]
    backend = get_backend("embedded")
    warm = [{"role": "user", "content": "Name the capital city of France."}]
    rates, chosen = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for scoring in ("letter", "text"):
            db = open_store(Path(tmp) / f"{scoring}.db")
            chat(db, backend, warm, sampling=Sampling(max_tokens=8))
            start = time.perf_counter()
            answers = administer(db, "base", backend, items, scoring=scoring)
            rates[scoring] = len(items) / (time.perf_counter() - start)
            chosen[scoring] = [answers[it.key].chosen for it in items]
        db = open_store(Path(tmp) / "generate.db")
        chat(db, backend, warm, sampling=Sampling(max_tokens=8))
        parsed = []
        start = time.perf_counter()
        for it in items:
            reply = chat(db, backend, question_messages(it.question, it.options),
                         sampling=Sampling(max_tokens=args.max_tokens, temperature=0.0))
            match = LETTER.search(reply.text)
            parsed.append(match.group(1) if match else None)
        rates["generate"] = len(items) / (time.perf_counter() - start)
        tokens = db.execute("SELECT sum(completion_tokens) FROM llm_calls WHERE request NOT"
                            " LIKE '%capital city of France%'").fetchone()[0] or 0
    backend.close()

    n = len(items)
    agree = sum(p == c for p, c in zip(parsed, chosen["letter"], strict=True))
    print(f"survey benchmark: embedded model (SmolLM2-135M-Instruct Q4_1), {n} questionnaire "
          f"items x 4 options, fresh stores")
    print(f"  generating the answer (<= {args.max_tokens} tokens, greedy)  "
          f"{rates['generate']:6.2f} questions/s  ({tokens / n:.1f} tokens per answer; "
          f"{sum(p is None for p in parsed)} of {n} replies name no letter)")
    print(f"  option-text scoring                          {rates['text']:6.2f} questions/s")
    print(f"  letter scoring (log-probabilities)           {rates['letter']:6.2f} questions/s")
    print(f"  generated letter = letter scoring's choice on {agree} of {n}")
    ratio = rates["letter"] / rates["generate"]
    print(f"  letter scoring / generating: {ratio:.1f}x (target >= 3x): "
          f"{'ok' if ratio >= 3 else 'MISSED'}")


if __name__ == "__main__":
    main()
