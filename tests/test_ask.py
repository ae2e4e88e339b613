"""`cci-local ask` without adapters, and streaming through the prompt cache.  The
aligned-model tests are in test_survey_alignment.py, on its trained adapters."""

from __future__ import annotations

import pytest
from conftest import cci

from cci_local.ask import AskError, parse_options
from cci_local.llm import Sampling, chat, chat_stream, get_backend
from cci_local.store import ensure_community, open_store


def test_a_community_without_adapter_names_the_command_that_trains_it(tmp_path):
    db = open_store(tmp_path / "s.db")
    ensure_community(db, "vegan")
    db.conn.commit()
    result = cci("ask", "What do you eat?", "r/vegan", db=tmp_path / "s.db", check=False)
    assert result.returncode == 2
    assert "r/vegan has no adapter on embedded: train it with `cci-local train r/vegan`" in \
        " ".join(result.stderr.split())
    unknown = cci("ask", "What do you eat?", "r/nobody", db=tmp_path / "s.db", check=False)
    assert unknown.returncode == 2 and "no community 'r/nobody'" in unknown.stderr


def test_a_remote_base_says_it_cannot_load_adapters(tmp_path):
    db = open_store(tmp_path / "s.db")
    ensure_community(db, "keto")
    db.conn.commit()
    result = cci("ask", "Hello?", "r/keto", "--base", "ollama:llama3.1:8b",
                 db=tmp_path / "s.db", check=False)
    assert result.returncode == 2
    assert "cannot load a community's LoRA adapter here" in " ".join(result.stderr.split())


def test_options_are_parsed_and_checked():
    assert parse_options("Agree; Neutral ;Disagree") == {"A": "Agree", "B": "Neutral",
                                                         "C": "Disagree"}
    assert parse_options(lines=["Yes", "", "No"]) == {"A": "Yes", "B": "No"}
    for bad in ("Only one", "Same;same"):
        with pytest.raises(AskError):
            parse_options(bad)


def test_streaming_goes_through_the_cache(db):
    """Uncached: the reply arrives in pieces and is recorded under chat's own key;
    cached: one piece, no model call, and chat() reads the streamed reply back."""
    backend = get_backend("embedded")
    messages = [{"role": "user", "content": "Name three green vegetables."}]
    sampling = Sampling(max_tokens=24, temperature=0.0, seed=3)
    pieces = []
    reply = chat_stream(db, backend, messages, sampling=sampling, on_piece=pieces.append)
    assert len(pieces) > 3 and "".join(pieces) == reply.text and not reply.cached
    assert backend.calls == 1
    again = []
    cached = chat_stream(db, backend, messages, sampling=sampling, on_piece=again.append)
    assert cached.cached and again == [reply.text] and backend.calls == 1
    assert chat(db, backend, messages, sampling=sampling).text == reply.text
    assert backend.calls == 1
    backend.close()


def test_a_long_conversation_is_cut_to_the_context_window():
    """The oldest exchanges are left out first; the latest message always stays."""
    from cci_local.chat import fit_history
    from cci_local.llm.llama_cpp import LlamaCppBackend, embedded_model_path

    backend = LlamaCppBackend(embedded_model_path(), n_ctx=256)
    messages = []
    for i in range(8):
        messages += [{"role": "user", "content": f"Question {i}: what do you eat on day {i}?"},
                     {"role": "assistant", "content": f"On day {i} I eat eggs, bacon and a "
                                                      "little cheese, as I always do."}]
    messages.append({"role": "user", "content": "And today?"})
    assert backend.count_tokens(messages) + 64 > 256
    sent, dropped = fit_history(backend, messages, 64)
    assert dropped > 0 and sent == messages[2 * dropped:]
    assert backend.count_tokens(sent) + 64 <= 256 and sent[0]["role"] == "user"
    assert fit_history(backend, messages[-3:], 64) == (messages[-3:], 0)
    backend.close()
