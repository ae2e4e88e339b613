"""Template pairs (the fidelity paper's alignment data, no teacher) on the real corpora."""

from __future__ import annotations

import json
import time

import pytest
from conftest import CORPUS_2022, CORPUS_POSTS, cci

from cci_local.generate import TEMPLATES, TemplateOptions, template_pairs
from cci_local.ingest import ingest
from cci_local.topics import TopicParams, fit_topics


def test_template_pairs_on_the_full_shared_corpora(db):
    ingest(db, [str(CORPUS_2022), str(CORPUS_POSTS)])
    start = time.perf_counter()
    report = template_pairs(db)
    seconds = time.perf_counter() - start
    assert seconds < 30  # seconds, not minutes: no model involved
    docs = dict(db.execute("SELECT community, count(*) FROM documents GROUP BY 1").fetchall())
    for community in ("keto", "nutrition"):
        r = report[community]
        assert r["posts"] == docs[community]
        assert r["added"] == r["pairs"] == r["posts"] - sum(r["skipped"].values())
        assert r["pairs"] > 0.8 * r["posts"]
    # Every pair: a template naming its community, answered by one real post of it.
    rows = db.execute("SELECT i.question, i.split, i.source, a.community, a.answer, a.doc_ids"
                      " FROM instructions i JOIN community_answers a ON a.instruction_id = i.id"
                      " WHERE i.kind = 'template'").fetchall()
    for question, _split, source, community, answer, doc_ids in rows[:500]:
        assert f"r/{community}" in question
        (doc_id,) = json.loads(doc_ids)
        assert source == f"template:{doc_id}"
        text, owner = db.execute("SELECT text, community FROM documents WHERE id = ?",
                                 [doc_id]).fetchone()
        assert answer == text and owner == community
    test_share = sum(r[1] == "test" for r in rows) / len(rows)
    assert 0.12 < test_share < 0.18
    templates = {r[0] for r in rows}
    assert len(templates) >= len(TEMPLATES)  # the whole pool is used


def test_rerun_adds_nothing(db):
    ingest(db, [str(CORPUS_2022)])
    first = template_pairs(db)
    second = template_pairs(db)
    assert all(r["added"] == 0 for r in second.values())
    assert {c: r["pairs"] for c, r in second.items()} == {c: r["pairs"] for c, r in first.items()}
    assert db.execute("SELECT count(*) FROM instructions").fetchone()[0] == \
        sum(r["pairs"] for r in first.values())


def test_topic_templates_and_topic_holdout(db):
    ingest(db, [str(CORPUS_2022)])
    summary = fit_topics(db, params=TopicParams(embedder="tfidf", reducer="pca", n_topics=10))
    template_pairs(db, options=TemplateOptions(seed=1))
    held = {r[0] for r in db.execute("SELECT unit_id FROM holdouts WHERE unit = 'topic'")}
    assert len(held) == 2  # 15% of 10 topics, rounded
    rows = db.execute("SELECT question, topic_id, split_by_topic FROM instructions").fetchall()
    assert all((by_topic == "test") == (topic_id in held) for _, topic_id, by_topic in rows)
    markers = (" about ", "view on", "experience with", "discussing")
    named = [q for q, topic_id, _ in rows
             if topic_id is not None and any(m in q for m in markers)]
    assert 0.3 < len(named) / len(rows) < 0.7  # about half name the post's topic
    keywords = {t["topic"]: ", ".join(t["keywords"][:3]) for t in summary.topics}
    assert any(k in q for q in named for k in keywords.values())


def test_junk_and_short_posts_make_no_pairs(db):
    from cci_local.store import ensure_community

    ensure_community(db, "keto")
    db.conn.executemany("INSERT INTO documents (id, community, kind, text) VALUES (?,?,?,?)", [
        ("t1_a", "keto", "comment", "Three weeks in and my energy is finally back to normal."),
        ("t1_b", "keto", "comment", "lol lol lol lol lol lol lol lol lol lol"),
        ("t1_c", "keto", "comment", "Too short to say much."),
        ("t1_d", "keto", "comment", "1234 5678 9012 3456 7890 1234 5678 9012 ?? !!"),
        ("t1_e", "keto", "comment", "Three weeks in and my energy is finally back to normal.")])
    db.conn.commit()
    report = template_pairs(db)["keto"]
    assert report["pairs"] == 1
    assert report["skipped"] == {"too short": 1, "junk (few letters or one word repeated)": 2,
                                 "duplicate text": 1}


def test_generate_command(tmp_path):
    db = tmp_path / "g.db"

    def run(*args, check=True):
        return cci(*args, db=db, check=check)

    run("ingest", str(CORPUS_2022))
    out = run("generate", "r/keto", "--mode", "template")
    line = next(x for x in out.stdout.splitlines() if x.strip().startswith("keto"))
    assert line.split()[:4] == ["keto", "1,125", line.split()[2], line.split()[2]]
    status = json.loads(run("status", "--json").stdout)
    pairs = {r["community"]: r["template pairs"] for r in status["communities"]}
    assert pairs["nutrition"] == 0 and pairs["keto"] == int(line.split()[2].replace(",", ""))
    bad = run("generate", "r/loseit", check=False)
    assert bad.returncode == 2 and "no community 'r/loseit'" in bad.stderr


def test_row_schema_accepts_a_good_reply_and_rejects_a_missing_community():
    import jsonschema

    from cci_local.generate import row_schema

    schema = row_schema(["keto", "nutrition"], n_open=1, n_choice=1)
    jsonschema.Draft202012Validator.check_schema(schema)
    good = {"open_ended": [{"question": "How do you handle sugar cravings?",
                            "answers": {"keto": "Fat bombs and patience.",
                                        "nutrition": "Fruit and more protein."}}],
            "multiple_choice": [{"question": "Which breakfast is best?",
                                 "options": {"A": "Eggs and bacon", "B": "Oatmeal",
                                             "C": "Smoothie", "D": "Skip it"},
                                 "answers": {"keto": "A", "nutrition": "B"}}]}
    jsonschema.validate(good, schema)
    bad = json.loads(json.dumps(good))
    del bad["open_ended"][0]["answers"]["nutrition"]
    with pytest.raises(jsonschema.ValidationError, match="nutrition"):
        jsonschema.validate(bad, schema)


def test_check_row_drops_with_reasons_and_flags_non_discriminating():
    from cci_local.generate import check_row

    communities = ["keto", "nutrition"]
    choice = {"question": "What do you drink most mornings?",
              "options": {"A": "Coffee", "B": "Tea", "C": "Juice", "D": "Water"},
              "answers": {"keto": "A", "nutrition": "A"}}
    data = {"open_ended": [
        {"question": "How do you deal with keto flu in the first week?",
         "answers": {"keto": "Salt and broth.", "nutrition": "Eat some carbs."}},
        {"question": "How do you deal with the keto flu in your first week?",
         "answers": {"keto": "Electrolytes.", "nutrition": "Avoid the diet."}},
        {"question": "According to the comments, what helps with bloating?",
         "answers": {"keto": "Less dairy.", "nutrition": "Fiber."}},
        {"question": "What do you think about seed oils today?",
         "answers": {"keto": "word " * 50, "nutrition": "Fine in moderation."}},
        {"question": "Is fruit part of your daily routine?",
         "answers": {"keto": "", "nutrition": "Yes, two a day."}}],
        "multiple_choice": [choice, {**choice, "question": "Pick a snack for the afternoon",
                                     "options": {"A": "Nuts", "B": "nuts", "C": "Chips",
                                                 "D": "Fruit"}}]}
    kept_questions: list[str] = []
    kept, dropped = check_row(data, communities, kept_questions)
    assert [k.kind for k in kept] == ["open", "choice"]
    assert kept[1].discriminating is False and kept[1].options["A"] == "Coffee"
    assert sorted(dropped) == sorted([
        "near-duplicate question", "question refers to the source texts",
        "answer longer than 40 words", "a community is not answered", "options repeat"])
    assert len(kept_questions) == 2
    again, dropped_again = check_row({"open_ended": [data["open_ended"][0]],
                                      "multiple_choice": []}, communities, kept_questions)
    assert again == [] and dropped_again == ["near-duplicate question"]
