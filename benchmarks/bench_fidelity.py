"""Fidelity stage time per 100 generated answers, split into generation and scoring.

A fresh store holds the shared keto/nutrition 2022 corpus and its template pairs
(held-out instructions need no teacher); the fidelity stage then runs for r/keto
on the embedded model with the base and the persona-prompted base as respondents
(no adapter is needed to time the stage: an aligned model generates at the same
speed), ``--samples`` answers each, and reports the wall time of its phases:

- generation: sampling the answers (``--max-tokens``, temperature 0.8);
- scoring: perplexities for the gibberish cap, screening (ROUGE-L against the
  real texts), embeddings, Frechet, AUC, emotion and sentiment, identifiability;
- judging: toxicity and harm by the LLM judge (the embedded model), with reasons.

A second identical run then shows what the prompt cache and the stored scores
save: it makes no model call.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "data" / "reddit" / "keto_nutrition_2022"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=50, help="answers per respondent (2 of them)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--real", type=int, default=200)
    args = ap.parse_args()

    from cci_local.evaluate.fidelity import FidelityOptions, run_fidelity
    from cci_local.generate import template_pairs
    from cci_local.ingest import ingest
    from cci_local.store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        db = open_store(Path(tmp) / "bench.db")
        ingest(db, [str(CORPUS)])
        template_pairs(db)
        options = FidelityOptions(samples=args.samples, real=args.real,
                                  max_tokens=args.max_tokens)
        start = time.perf_counter()
        result = run_fidelity(db, "keto", "embedded", options)
        total = time.perf_counter() - start
        calls = db.execute("SELECT count(*) FROM llm_calls").fetchone()[0]
        tokens = db.execute("SELECT sum(completion_tokens) FROM llm_calls WHERE id IN"
                            " (SELECT call_id FROM fidelity_texts)").fetchone()[0] or 0
        judged = db.execute("SELECT count(*) FROM fidelity_judgments").fetchone()[0]
        start = time.perf_counter()
        run_fidelity(db, "keto", "embedded", options)
        again = time.perf_counter() - start
        repeat_calls = db.execute("SELECT count(*) FROM llm_calls").fetchone()[0] - calls

    answers = args.samples * len(result.models)
    per100 = {k: 100 * v / answers for k, v in result.seconds.items()}
    print(f"fidelity benchmark: r/keto on the embedded model (SmolLM2-135M-Instruct Q4_1), "
          f"{answers} generated answers ({', '.join(result.models)}; <= {args.max_tokens} "
          f"tokens, {tokens / answers:.0f} on average), {args.real} real documents, "
          f"{judged} toxicity/harm scores")
    print(f"  generation  {result.seconds['generate']:7.1f} s   {per100['generate']:6.1f} s per 100"
          f" answers ({tokens / result.seconds['generate']:.0f} tokens/s)")
    print(f"  scoring     {result.seconds['score']:7.1f} s   {per100['score']:6.1f} s per 100 "
          "answers (perplexity, screening, embeddings, metrics)")
    print(f"  judging     {result.seconds['judge']:7.1f} s   {per100['judge']:6.1f} s per 100 "
          "answers (toxicity and harm, LLM judge with reasons; the real texts too)")
    print(f"  whole stage {total:7.1f} s   {100 * total / answers:6.1f} s per 100 answers")
    print(f"  identical re-run: {again:.1f} s, {repeat_calls} model calls")


if __name__ == "__main__":
    main()
