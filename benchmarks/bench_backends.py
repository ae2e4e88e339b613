"""Tokens/s through cci-local's backend layer vs raw llama-cpp-python.

Same model (the embedded SmolLM2-135M-Instruct GGUF), same prompts, same
sampling, same process.  The layer's path includes everything a stage pays for:
chat-template formatting, the context check, the prompt-cache lookup and the
write of each call to a (fresh) store.  Rounds alternate raw / layer, each round
with prompts of its own so the cache never answers.

Target (issue 3): layer / raw >= 0.90.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

TOPICS = ["intermittent fasting", "electrolytes", "net carbs", "keto flu", "protein intake",
          "artificial sweeteners", "meal prep", "weight plateaus", "fiber", "eating out",
          "breakfast ideas", "ketone meters", "alcohol", "cholesterol", "exercise",
          "sleep", "cravings", "budget shopping", "vegetables", "snacks"]


def prompts(round_no: int, n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"In two sentences, give round-{round_no} advice "
              f"about {TOPICS[i % len(TOPICS)]} to someone starting a keto diet."}]
            for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()

    import llama_cpp

    from cci_local.llm import Sampling, chat, get_backend
    from cci_local.llm.llama_cpp import embedded_model_path
    from cci_local.store import open_store

    path = embedded_model_path()
    raw = llama_cpp.Llama(model_path=str(path), n_ctx=4096, n_batch=512, verbose=False)
    raw.chat_format = "chat_template.default"
    backend = get_backend("embedded")
    sampling = Sampling(max_tokens=args.max_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        db = open_store(Path(tmp) / "bench.db")
        # Warm both up (first-call allocations), outside the timings.
        for messages in prompts(-1, 2):
            raw.create_chat_completion(messages=messages, max_tokens=8, temperature=0.0)
            chat(db, backend, messages, sampling=Sampling(max_tokens=8))
        totals = {"raw": [0, 0.0], "layer": [0, 0.0]}
        for r in range(args.rounds):
            batch = prompts(r, args.prompts)
            start = time.perf_counter()
            for messages in batch:
                out = raw.create_chat_completion(messages=messages, max_tokens=args.max_tokens,
                                                 temperature=0.0, top_p=1.0, seed=0)
                totals["raw"][0] += out["usage"]["completion_tokens"]
            totals["raw"][1] += time.perf_counter() - start
            start = time.perf_counter()
            for messages in batch:
                reply = chat(db, backend, messages, sampling=sampling)
                assert not reply.cached
            totals["layer"][1] += time.perf_counter() - start
            totals["layer"][0] += db.execute(
                "SELECT sum(completion_tokens) FROM llm_calls WHERE request LIKE ?",
                [f"%round-{r} advice%"]).fetchone()[0]
    rate = {k: n / s for k, (n, s) in totals.items()}
    print(f"backend benchmark: {path.name}, {args.rounds} rounds x {args.prompts} prompts, "
          f"{args.max_tokens} new tokens max, temperature 0")
    for name in ("raw", "layer"):
        n, s = totals[name]
        label = "raw llama-cpp-python" if name == "raw" else "cci-local backend layer"
        print(f"  {label:26} {n:6,} tokens in {s:6.1f} s = {rate[name]:6.1f} tokens/s")
    ratio = rate["layer"] / rate["raw"]
    print(f"  layer / raw: {ratio:.2f} (target >= 0.90): {'ok' if ratio >= 0.9 else 'MISSED'}")


if __name__ == "__main__":
    main()
