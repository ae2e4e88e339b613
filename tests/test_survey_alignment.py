"""The survey can see alignment: adapters trained (for real, PEFT on the embedded
model) on open-ended pairs that state two communities' answers to a fixed survey
move each aligned model toward its own community's answer key.

As the method would, the training data are open-ended: each survey question,
worded three ways, answered in a sentence that states the community's option; the
multiple-choice form (options, letters) is never trained on.  The two communities'
keys are drawn at random, so a model that only favours a letter or an option
cannot win.  SmolLM2-135M cannot map an option's text to its letter, so letter
scoring (the paper's way) is printed for the record and option-text scoring
carries the assertions; the README says so.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SHARED, cci

from cci_local.evaluate.metrics import difference_ci
from cci_local.evaluate.survey import SurveyResult, administer, commsurvey_items
from cci_local.respondents import aligned_backend
from cci_local.store import ensure_community, open_store
from cci_local.train import train
from cci_local.train.peft_trainer import TrainConfig

SURVEY = [
    ("What do you usually eat for breakfast?",
     ["Oatmeal with fruit", "Bacon and eggs", "Cereal with milk", "Toast with jam"]),
    ("Which drink do you have most often?", ["Orange juice", "Soda", "Black coffee", "Sweet tea"]),
    ("What is your favourite snack?",
     ["Potato chips", "Candy bars", "Granola bars", "Cheese and nuts"]),
    ("Which cooking fat do you use most?", ["Butter", "Margarine", "Canola oil", "No fat at all"]),
    ("How do you feel about bread?",
     ["I eat it daily", "I avoid it completely", "Only whole wheat", "Only on weekends"]),
    ("What do you track most closely?", ["Calories", "Net carbs", "Steps", "Nothing"]),
    ("What do you eat at a party?",
     ["Cake", "Pizza", "Meat and cheese platter", "Chips and dip"]),
    ("What sweetener do you use?", ["White sugar", "Honey", "Erythritol", "Maple syrup"]),
    ("What is your view on fruit?",
     ["Eat plenty of it", "Only berries, in small amounts", "Only juice", "Dried fruit is best"]),
    ("How often do you eat pasta?",
     ["Every day", "A few times a week", "Once a month", "Never, I use zucchini noodles"]),
    ("What helps you most with hunger?",
     ["Eating every two hours", "Eating more fat", "Drinking soda", "Chewing gum"]),
    ("What do you measure in the morning?",
     ["Blood pressure", "Ketones", "Heart rate", "Nothing at all"]),
    ("What dinner do you make most?",
     ["Spaghetti", "Rice and beans", "Steak with broccoli", "Sandwiches"]),
    ("Which flour do you bake with?",
     ["White flour", "Whole wheat flour", "Almond flour", "Rice flour"]),
    ("What do you think of potatoes?",
     ["A healthy staple", "Too many carbs", "Only sweet potatoes", "Fine if fried"]),
    ("What do you add to your coffee?",
     ["Sugar", "Heavy cream", "Skim milk", "Flavoured syrup"]),
    ("How do you handle cravings?", ["Give in", "Eat a fat bomb", "Go for a run", "Sleep"]),
    ("What do you drink to fix electrolytes?",
     ["Sports drinks", "Salted bone broth", "Plain water", "Fruit juice"]),
    ("Which dessert do you choose?",
     ["Ice cream", "Apple pie", "Cheesecake without sugar", "Brownies"]),
    ("How do you see dietary fat?",
     ["The enemy", "Your main fuel", "Only from fish", "Not important"]),
    ("What is your lunch most days?",
     ["A burger with fries", "A salad with chicken and avocado", "A bowl of noodles", "A bagel"]),
    ("What side dish do you pick?",
     ["Mashed potatoes", "Rice", "Cauliflower mash", "French fries"]),
    ("How do you start a weight loss plan?",
     ["Cut calories by half", "Cut carbs under 20 grams", "Join a gym", "Buy diet pills"]),
    ("What do you think about breakfast cereal?",
     ["Part of a good breakfast", "Sugar in a box", "Good with fruit", "Fine for kids"]),
]
WORDINGS = ["{q}", "Tell me: {lower}", "Quick question for you. {q}"]
REASONS = ["That is what works for me.", "It keeps me on track.", "I have done it for years."]
COMMUNITIES = ("keto", "nutrition")
CONFIG = TrainConfig(steps=16, lr=3e-3, batch_size=8, micro_batch=8, max_len=48, rank=8,
                     alpha=16, checkpoint_every=16)


def plant_survey(db, keys: dict[str, list[str]]) -> None:
    """The fixed survey as held-out CommSurvey items, and the open-ended pairs stating
    each community's answers as its training split."""
    for c in COMMUNITIES:
        ensure_community(db, c)
    for i, (question, texts) in enumerate(SURVEY):
        options = dict(zip("ABCD", texts, strict=True))
        cur = db.execute("INSERT INTO instructions (kind, question, options, source, split,"
                         " split_by_topic, created_at) VALUES ('choice', ?, ?, ?, 'test',"
                         " 'test', 0)", [question, json.dumps(options), f"fixed:{i}"])
        for c in COMMUNITIES:
            db.execute("INSERT INTO community_answers VALUES (?, ?, ?, '[]')",
                       [cur.lastrowid, c, keys[c][i]])
        for w, wording in enumerate(WORDINGS):
            text = wording.format(q=question, lower=question[0].lower() + question[1:])
            cur = db.execute("INSERT INTO instructions (kind, question, source, split,"
                             " split_by_topic, created_at) VALUES ('open', ?, ?, 'train',"
                             " 'train', 0)", [text, f"fixed-open:{i}:{w}"])
            for c in COMMUNITIES:
                db.execute("INSERT INTO community_answers VALUES (?, ?, ?, '[]')",
                           [cur.lastrowid, c, f"{options[keys[c][i]]}. {REASONS[w]}"])
    db.conn.commit()


@pytest.fixture(scope="module")
def aligned_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("aligned") / "a.db"
    db = open_store(path)
    rng = np.random.default_rng(5)
    keys = {c: list(rng.choice(list("ABCD"), len(SURVEY))) for c in COMMUNITIES}
    plant_survey(db, keys)
    for c in COMMUNITIES:
        row = train(db, c, config=CONFIG)
        assert row["status"] == "done" and row["examples"] == len(SURVEY) * len(WORDINGS)
    return path


@pytest.mark.slow
def test_aligned_models_beat_the_base_on_their_own_key(aligned_store):
    from cci_local.llm import get_backend

    db = open_store(aligned_store)
    items = commsurvey_items(db, list(COMMUNITIES))
    assert len(items) == len(SURVEY) and sum(it.discriminating for it in items) >= 12
    base = get_backend("embedded")
    results = {}
    for scoring in ("letter", "text"):
        answers = {"base": administer(db, "base", base, items, scoring=scoring)}
        for c in COMMUNITIES:
            model = aligned_backend(db, c, "embedded")
            answers[f"aligned:{c}"] = administer(db, f"aligned:{c}", model, items,
                                                 scoring=scoring)
            model.close()
        results[scoring] = SurveyResult("fixed survey", items, answers, [], scoring)
    base.close()
    for scoring, result in results.items():
        for c in COMMUNITIES:
            print(f"{scoring} scoring, key r/{c}: base {result.scores('base', c)}, "
                  f"aligned {result.scores(f'aligned:{c}', c)}")
    text = results["text"]
    for c in COMMUNITIES:
        base_est, aligned_est = text.scores("base", c), text.scores(f"aligned:{c}", c)
        hits = {r: [float(text.answers[r][it.key].chosen == it.answers[c]) for it in items]
                for r in ("base", f"aligned:{c}")}
        gain = difference_ci(hits[f"aligned:{c}"], hits["base"])
        print(f"r/{c}: aligned - base = {gain}")
        assert aligned_est.value > base_est.value and gain.low > 0
        assert aligned_est.low > base_est.high  # the intervals do not even overlap
    matrix = text.matrix(list(COMMUNITIES), "aligned")
    for c in COMMUNITIES:  # a faithful model wins its own column
        other = next(o for o in COMMUNITIES if o != c)
        assert matrix[f"aligned:{c}"][c].value > matrix[f"aligned:{other}"][c].value


@pytest.mark.slow
def test_survey_command_shows_the_matrix_on_the_stored_run(aligned_store):
    first = cci("survey", "--scoring", "text", "--no-persona", db=aligned_store)
    out = first.stdout
    print(out)
    assert "survey accuracy: held-out CommSurvey (random split), text scoring" in out
    assert "cross-community matrix (aligned)" in out
    for row in ("aligned:keto", "aligned:nutrition", "majority letter", "random"):
        assert row in out
    calls = open_store(aligned_store).execute("SELECT count(*) FROM llm_calls").fetchone()[0]
    again = cci("survey", "--scoring", "text", "--no-persona", "--json", db=aligned_store)
    data = json.loads(again.stdout)
    assert open_store(aligned_store).execute("SELECT count(*) FROM llm_calls"
                                             ).fetchone()[0] == calls  # nothing asked twice
    keto = data["communities"]["keto"]["respondents"]
    assert keto["aligned:keto"]["accuracy"]["value"] > keto["base"]["accuracy"]["value"]
    cell = data["matrix"]["aligned"]["aligned:keto"]
    assert cell["keto"]["value"] > cell["nutrition"]["value"]


@pytest.mark.slow
def test_psychometrics_on_two_aligned_communities(aligned_store):
    """The EDE-Q (texts from the shared item bank) administered to both aligned models
    and scored like human respondents: four subscales and the global score with CIs,
    and the difference between the communities."""
    bank = SHARED / "instruments" / "eating_disorder_items.csv"
    args = ("psychometrics", "keto", "nutrition", "--instrument", "edeq", "--items", str(bank),
            "--no-base", "--no-persona", "--prefixes", "3")
    out = cci(*args, db=aligned_store).stdout
    print(out)
    assert "EDE-Q 6.0: scored like a human respondent, 3 persona prefixes" in out
    for name in ("Restraint", "Eating Concern", "Shape Concern", "Weight Concern", "global",
                 "aligned:keto", "aligned:nutrition", "clinical range"):
        assert name in out
    assert "differences between communities (aligned models)" in out
    data = json.loads(cci(*args, "--json", db=aligned_store).stdout)
    for respondent in ("aligned:keto", "aligned:nutrition"):
        scores = data["respondents"][respondent]["scores"]
        for est in scores.values():
            assert 0 <= est["low"] <= est["value"] <= est["high"] <= 6
        subs = [scores[s]["value"] for s in ("Restraint", "Eating Concern", "Shape Concern",
                                             "Weight Concern")]
        assert scores["global"]["value"] == pytest.approx(sum(subs) / 4)
    assert len(data["differences"]) == 5 and all(0 <= d["p"] <= 1 for d in data["differences"])


@pytest.mark.slow
def test_ask_puts_a_question_to_each_aligned_model(aligned_store):
    """`cci-local ask` on the adapters trained above: the aligned answer differs from
    the base's and has moved toward the community's training answer (its
    log-likelihood is higher under the adapter); asking again makes no model call."""
    from cci_local.llm import get_backend

    question, texts = SURVEY[0]
    args = ("ask", question, "r/keto", "r/nutrition", "--with-base", "--temperature", "0",
            "--max-tokens", "24")
    first = json.loads(cci(*args, "--json", db=aligned_store).stdout)
    answers = {label: texts[0] for label, texts in first["answers"].items()}
    print(answers)
    assert set(answers) == {"aligned:keto", "aligned:nutrition", "base"}
    assert first["model_calls"] == 3
    db = open_store(aligned_store)
    keys = {c: db.execute("SELECT answer FROM community_answers a JOIN instructions i ON"
                          " i.id = a.instruction_id WHERE i.question = ? AND a.community = ?"
                          " AND i.kind = 'choice'", [question, c]).fetchone()[0]
            for c in COMMUNITIES}
    messages = [{"role": "user", "content": question}]
    base = get_backend("embedded")
    for c in COMMUNITIES:
        assert answers[f"aligned:{c}"] != answers["base"]
        trained = f"{dict(zip('ABCD', texts, strict=True))[keys[c]]}. {REASONS[0]}"
        model = aligned_backend(db, c, "embedded")
        adapted, _ = model.answer_logprob(messages, trained)
        plain, _ = base.answer_logprob(messages, trained)
        model.close()
        print(f"r/{c}: log-likelihood of {trained!r}: aligned {adapted:.1f}, base {plain:.1f}")
        assert adapted > plain + 5
    base.close()
    rows = db.execute("SELECT count(*) FROM asked WHERE kind = 'open'").fetchone()[0]
    calls = db.execute("SELECT count(*) FROM llm_calls").fetchone()[0]
    again = cci(*args, db=aligned_store)
    assert "0 model calls" in again.stderr
    for label in answers:
        assert label in again.stdout
    assert db.execute("SELECT count(*) FROM llm_calls").fetchone()[0] == calls
    assert db.execute("SELECT count(*) FROM asked WHERE kind = 'open'").fetchone()[0] == rows == 3
    stored = db.execute("SELECT respondent, model, adapter, sampling, text FROM asked"
                        " WHERE respondent = 'aligned:keto'").fetchone()
    assert stored[1] == "embedded+adapter:keto" and stored[2].endswith(".gguf")
    assert json.loads(stored[3])["temperature"] == 0 and stored[4] == answers["aligned:keto"]


@pytest.mark.slow
def test_ask_multiple_choice_equals_the_survey_stage(aligned_store):
    """--options: each model's distribution sums to 1 and is what the survey stage
    computes for the same question and model; the communities' distance is shown."""
    from cci_local.evaluate.survey import ask, question_messages

    question, texts = SURVEY[2]
    args = ("ask", question, "r/keto", "r/nutrition", "--options", ";".join(texts))
    data = json.loads(cci(*args, "--json", db=aligned_store).stdout)
    db = open_store(aligned_store)
    options = dict(zip("ABCD", texts, strict=True))
    for c in COMMUNITIES:
        dist = data["distributions"][f"aligned:{c}"]
        assert sum(dist.values()) == pytest.approx(1.0)
        model = aligned_backend(db, c, "embedded")
        survey = ask(db, model, question_messages(question, options), options, scoring="text")
        model.close()
        assert dist == pytest.approx(survey.distribution, abs=1e-12)
    (pair,) = data["agreement"]
    assert 0 <= pair["representativeness"] <= 1
    shown = cci(*args, db=aligned_store)
    print(shown.stdout)
    assert "aligned:keto (logprobs)" in shown.stdout and "Cheese and nuts" in shown.stdout
    assert "aligned:keto vs aligned:nutrition: representativeness" in shown.stdout
    assert "0 model calls" in shown.stderr


@pytest.mark.slow
def test_chat_in_a_terminal_then_through_a_pipe(aligned_store):
    """`cci-local chat` in a real pseudo-terminal: two turns, /switch, /base, /quit;
    then the same conversation piped in: replies identical, read from the cache."""
    import os
    import sys

    import pexpect

    args = ["-m", "cci_local", "--db", str(aligned_store), "chat", "r/keto", "--max-tokens",
            "24", "--temperature", "0"]
    turns = ["What do you usually eat for breakfast?", "And what do you drink?",
             "/switch r/nutrition", "What dinner do you make most?"]
    child = pexpect.spawn(sys.executable, args, encoding="utf-8", timeout=180,
                          env={**os.environ, "COLUMNS": "120"})
    child.expect("talking to r/keto's model")
    replies = []
    child.expect_exact("you> ")
    for line, speaker in zip(turns, ["r/keto> ", "r/keto> ", None, "r/nutrition> "],
                             strict=True):
        child.sendline(line)
        if speaker is None:
            child.expect("now talking to r/nutrition's model")
        else:
            child.expect_exact(speaker)
        child.expect_exact("you> ")
        if speaker:
            replies.append(child.before.replace("\r\n", "\n").strip())
    child.sendline("/base")
    child.expect_exact("base> ")
    child.expect_exact("you> ")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    print(replies)
    assert all(replies)
    db = open_store(aligned_store)
    rows = db.execute("SELECT session, turn, respondent, question, text FROM asked"
                      " WHERE kind = 'chat' ORDER BY session, turn").fetchall()
    assert [r[2] for r in rows] == ["aligned:keto", "aligned:keto", "aligned:nutrition", "base"]
    assert {r[0] for r in rows} == {1} and [r[1] for r in rows] == [1, 2, 3, 4]
    assert [r[4].strip() for r in rows[:3]] == replies
    assert rows[3][3] == turns[3]  # /base answered the last message

    calls = db.execute("SELECT count(*) FROM llm_calls").fetchone()[0]
    piped = cci(*args[4:], db=aligned_store, input="\n".join(turns) + "\n")
    for reply in replies:
        assert reply in piped.stdout
    assert "r/nutrition> " in piped.stdout and "3 turns kept" in piped.stderr
    assert db.execute("SELECT count(*) FROM llm_calls").fetchone()[0] == calls
    assert db.execute("SELECT count(*) FROM asked WHERE session = 2").fetchone()[0] == 3


@pytest.mark.slow
def test_browse_finds_the_questions_where_aligned_and_base_disagree(aligned_store):
    import cci_local
    from cci_local.browse import QUERIES

    cci("survey", "--scoring", "text", "--no-persona", db=aligned_store)  # read back if done
    study = cci_local.open(aligned_store)
    rows = study.db.execute(QUERIES["aligned_and_base_disagree"]["sql"]).fetchall()
    answers = study.frames.survey_answers()
    base = answers[answers.respondent == "base"]
    aligned = answers[answers.respondent.str.startswith("aligned:")]
    both = aligned.merge(base, on="item", suffixes=("", "_base"))
    both = both[(both.chosen != both.chosen_base)
                & (both.scoring == both.scoring_base)]  # same wording: same scoring here
    expected = sorted(zip(both.respondent, both.item, both.chosen_base, both.chosen,
                          strict=True))
    assert sorted((r[0], r[1], r[3], r[4]) for r in rows) == expected and expected
    assert all(r[5] for r in rows)  # each with the community's own answer
    study.close()
