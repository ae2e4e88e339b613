"""Held-out survey size: the power line said before any teacher call, and
`--survey-questions M` reaching M held-out CommSurvey questions per community.

The teacher is the scripted one of test_generate_cross.py (replies of an exact shape
on cue: distinct questions, or the same ones again); the store, splits, checks,
near-duplicate filter, prompt cache and the power formula are the real code."""

from __future__ import annotations

import pytest
from conftest import CORPUS_2022
from test_generate_cross import good_reply

from cci_local.evaluate.power import min_detectable_difference, questions_needed
from cci_local.generate import CrossOptions, cross_instruct
from cci_local.generate.cross import _topic_run
from cci_local.generate.survey_size import forecast, held_out_counts, reach
from cci_local.ingest import ingest
from cci_local.llm.cache import identity
from cci_local.topics import TopicParams, fit_topics

NAMES = ["keto", "nutrition"]


@pytest.fixture
def topics_db(db):
    ingest(db, [str(CORPUS_2022)])
    fit_topics(db, params=TopicParams(embedder="tfidf", reducer="pca", n_topics=12))
    return db


def teacher(scripted, same=False):
    def script(n, messages, schema):
        props = schema["properties"]
        communities = props["open_ended"]["items"]["properties"]["answers"]["required"]
        return good_reply(communities, "same" if same else f"call{n}",
                          n_open=props["open_ended"]["minItems"],
                          n_choice=props["multiple_choice"]["minItems"])
    return scripted(script)


def _open_questions(db) -> int:
    return db.execute("SELECT count(*) FROM instructions WHERE kind = 'open'").fetchone()[0]


def test_the_forecast_comes_before_any_call_and_is_what_generation_stores(topics_db, scripted):
    backend = teacher(scripted)
    options = CrossOptions(max_rows=12)
    settings = options.settings(identity(topics_db, backend), NAMES)
    expected = forecast(topics_db, NAMES, options, settings)
    assert not backend.requests  # nothing asked yet
    assert expected.held_out_rows >= 1 and expected.fewest >= 2  # rows: as the fit cuts them
    line = expected.line()
    assert f"about {expected.fewest} held-out survey questions" in line
    mdd = min_detectable_difference(expected.fewest)
    assert (f"under {mdd:.2f} cannot be shown" if mdd < 0.5 else
            "even a difference in accuracy of 0.50 cannot be shown") in line
    assert f"needs about {questions_needed(0.10)}" in line and "--survey-questions" in line
    cross_instruct(topics_db, NAMES, backend, options)
    run_id = _topic_run(topics_db, NAMES)
    assert held_out_counts(topics_db, run_id, NAMES) == expected.questions
    after = forecast(topics_db, NAMES, options, settings)  # done: stored counts only
    assert after.questions == expected.questions


def test_survey_questions_reach_the_target_without_touching_training_data(topics_db,
                                                                          scripted):
    backend = teacher(scripted)
    options = CrossOptions(max_rows=12)
    cross_instruct(topics_db, NAMES, backend, options)
    run_id = _topic_run(topics_db, NAMES)
    before, open_before = held_out_counts(topics_db, run_id, NAMES), _open_questions(topics_db)
    target = min(before.values()) + 25
    reached = reach(topics_db, NAMES, backend, options, target)
    assert reached.reached and reached.before == before and reached.notes == []
    assert all(n >= target for n in held_out_counts(topics_db, run_id, NAMES).values())
    assert _open_questions(topics_db) == open_before  # survey-only passes
    assert reached.calls > 0 and 2 <= reached.per_row <= 6
    held = reached.after
    # every added question belongs to a held-out row of this run, none to a training row
    assert topics_db.execute(
        "SELECT count(*) FROM instructions i JOIN holdouts h ON h.unit = 'chunk_row'"
        " AND h.unit_id = i.chunk_row_id WHERE i.kind = 'choice' AND i.split = 'test'"
        ).fetchone()[0] >= target
    asked = len(backend.requests)
    again = reach(topics_db, NAMES, backend, options, target)  # a re-run asks nothing
    assert len(backend.requests) == asked and again.calls == 0 and again.after == held


def test_a_teacher_that_repeats_itself_stops_with_a_note(topics_db, scripted):
    backend = teacher(scripted, same=True)
    options = CrossOptions(max_rows=12)
    cross_instruct(topics_db, NAMES, backend, options)
    reached = reach(topics_db, NAMES, backend, options, 500)
    # pass 1 keeps only questions the first ask did not have (a longer list from the same
    # seed); pass 2 brings nothing new: stop there, not at MAX_PASSES
    assert not reached.reached and reached.passes <= 2
    assert f"of 500 held-out survey questions after {reached.passes} pass" in reached.notes[0]
    assert "held-out chunk rows" in reached.notes[0]
