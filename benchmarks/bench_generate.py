"""Generation throughput: the whole teacher stage vs raw llama-cpp-python on the same prompts.

The stage (``cross_instruct`` with the embedded teacher on a fresh store, over
chunk rows of the shared 2022 corpora) pays for everything it does: fitting each
prompt to the context, the prompt cache, schema validation, the question checks
(ROUGE-L against every kept question), retries and storing rows.  Then every
request the stage sent (messages, JSON schema, sampling, retries included) is
replayed through a bare ``llama_cpp.Llama`` with the same settings, the schema
as a grammar as the stage's backend does.  Both are measured as output tokens
per second of wall time; the model is loaded and warmed before either clock.

Target (issue 5): stage / raw >= 0.90.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT.parent / "shared" / "data" / "reddit" / "keto_nutrition_2022"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=4, help="chunk rows put to the teacher")
    ap.add_argument("--corpus", default=str(CORPUS))
    args = ap.parse_args()

    import llama_cpp

    from cci_local.generate import CrossOptions, cross_instruct
    from cci_local.ingest import ingest
    from cci_local.llm import Sampling, chat, get_backend
    from cci_local.llm.llama_cpp import embedded_model_path
    from cci_local.store import open_store
    from cci_local.topics import TopicParams, fit_topics

    with tempfile.TemporaryDirectory() as tmp:
        db = open_store(Path(tmp) / "bench.db")
        ingest(db, [args.corpus])
        fit_topics(db, params=TopicParams(embedder="tfidf", reducer="pca", n_topics=12))
        teacher = get_backend("embedded")
        warm = [{"role": "user", "content": "Name the capital city of France."}]
        chat(db, teacher, warm, sampling=Sampling(max_tokens=8))
        start = time.perf_counter()
        report = cross_instruct(db, None, teacher, CrossOptions(max_rows=args.rows))
        stage_seconds = time.perf_counter() - start
        calls = db.execute("SELECT request, completion_tokens FROM llm_calls WHERE kind = 'chat'"
                           " AND request NOT LIKE '%capital city of France%' ORDER BY id"
                           ).fetchall()
        stage_tokens = sum(n or 0 for _, n in calls)
        teacher.close()

        raw = llama_cpp.Llama(model_path=str(embedded_model_path()), n_ctx=teacher.n_ctx,
                              n_batch=teacher.n_batch, verbose=False)
        raw.chat_format = "chat_template.default"
        raw.create_chat_completion(messages=warm, max_tokens=8, temperature=0.0)
        raw_tokens = 0
        start = time.perf_counter()
        for request, _ in calls:
            request = json.loads(request)
            sampling = request["sampling"]
            out = raw.create_chat_completion(
                messages=request["messages"],
                response_format={"type": "json_object", "schema": request["schema"]},
                max_tokens=sampling["max_tokens"], temperature=sampling["temperature"],
                top_p=sampling["top_p"], seed=sampling["seed"])
            raw_tokens += out["usage"]["completion_tokens"]
        raw_seconds = time.perf_counter() - start

    stage_rate, raw_rate = stage_tokens / stage_seconds, raw_tokens / raw_seconds
    print(f"generation benchmark: embedded teacher (SmolLM2-135M-Instruct Q4_1), {report.tried} "
          f"chunk rows of {Path(args.corpus).name}, {len(calls)} teacher calls "
          f"({report.retries} retries)")
    print(f"  rows accepted {report.accepted}, rejected {sum(report.rejected.values())}; "
          f"questions kept: {report.kept['open']} open-ended, {report.kept['choice']} "
          f"multiple-choice; dropped {sum(report.dropped.values())}")
    print(f"  raw llama-cpp-python, same requests  {raw_tokens:6,} tokens in "
          f"{raw_seconds:6.1f} s = {raw_rate:5.1f} tokens/s")
    print(f"  cci-local generate stage             {stage_tokens:6,} tokens in "
          f"{stage_seconds:6.1f} s = {stage_rate:5.1f} tokens/s")
    ratio = stage_rate / raw_rate
    print(f"  stage / raw: {ratio:.2f} (target >= 0.90): {'ok' if ratio >= 0.9 else 'MISSED'}")


if __name__ == "__main__":
    main()
