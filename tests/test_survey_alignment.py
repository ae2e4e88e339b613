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
from cci_local.evaluate.survey import SurveyResult, administer, aligned_backend, commsurvey_items
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
