"""One teacher reply for a chunk row: the JSON schema it must match and the checks
that decide which of its questions are kept (docs/method.md#question-checks)."""

from __future__ import annotations

import re
from dataclasses import dataclass

LETTERS = ("A", "B", "C", "D")
_REFERS_TO_SOURCE = re.compile(
    r"\b(comments?|posts?|the (text|passage|excerpts?|documents?|thread)|according to|"
    r"mentioned (above|here)|the (author|user|redditor)s?)\b", re.IGNORECASE)
_BARE_LETTER = re.compile(r"^\(?[A-D][.):]?$")


def row_schema(communities: list[str], n_open: int = 3, n_choice: int = 2,
               max_answer_chars: int = 300) -> dict:
    """The JSON schema a teacher reply for a row of these communities must match:
    ``n_open`` open-ended questions answered once per community and ``n_choice``
    four-option questions with each community's letter.  Strict-mode compatible
    (every object closed, every property required)."""
    def per_community(value: dict) -> dict:
        return {"type": "object", "properties": {c: value for c in communities},
                "required": list(communities), "additionalProperties": False}

    question = {"type": "string", "minLength": 10, "maxLength": 300}
    answer = {"type": "string", "minLength": 1, "maxLength": max_answer_chars}
    option = {"type": "string", "minLength": 1, "maxLength": 200}
    open_item = {"type": "object",
                 "properties": {"question": question, "answers": per_community(answer)},
                 "required": ["question", "answers"], "additionalProperties": False}
    choice_item = {"type": "object",
                   "properties": {"question": question,
                                  "options": {"type": "object",
                                              "properties": {k: option for k in LETTERS},
                                              "required": list(LETTERS),
                                              "additionalProperties": False},
                                  "answers": per_community({"type": "string",
                                                            "enum": list(LETTERS)})},
                   "required": ["question", "options", "answers"],
                   "additionalProperties": False}
    return {"type": "object",
            "properties": {
                "open_ended": {"type": "array", "items": open_item,
                               "minItems": n_open, "maxItems": n_open},
                "multiple_choice": {"type": "array", "items": choice_item,
                                    "minItems": n_choice, "maxItems": n_choice}},
            "required": ["open_ended", "multiple_choice"], "additionalProperties": False}


@dataclass
class Checked:
    kind: str  # 'open' | 'choice'
    question: str
    answers: dict[str, str]
    options: dict[str, str] | None = None
    discriminating: bool | None = None


def check_row(data: dict, communities: list[str], kept_questions: list[str], *,
              max_answer_words: int = 40, near_duplicate: float = 0.7
              ) -> tuple[list[Checked], list[str]]:
    """Check a schema-valid teacher reply: (items kept, reasons for those dropped).

    Dropped: a question that refers to the source texts ("comments", "according
    to ..."), an unanswered community, an open-ended answer that is only a letter
    (the teacher mixed up the two kinds) or over ``max_answer_words``,
    options that repeat, a question with ROUGE-L >= ``near_duplicate`` against
    one already kept (``kept_questions`` grows as items are kept).  A choice
    question where every community picks the same letter is kept, flagged
    non-discriminating."""
    from ..rouge import max_rouge_l

    kept, dropped = [], []
    items = [("open", q) for q in data.get("open_ended", [])] + \
        [("choice", q) for q in data.get("multiple_choice", [])]
    for kind, item in items:
        question = " ".join(item["question"].split())
        answers = {c: " ".join(str(item["answers"].get(c, "")).split()) for c in communities}
        if _REFERS_TO_SOURCE.search(question):
            dropped.append("question refers to the source texts")
        elif any(not a for a in answers.values()):
            dropped.append("a community is not answered")
        elif kind == "open" and any(_BARE_LETTER.match(a) for a in answers.values()):
            dropped.append("open-ended answer is a bare letter")
        elif kind == "open" and any(len(a.split()) > max_answer_words for a in answers.values()):
            dropped.append(f"answer longer than {max_answer_words} words")
        elif kind == "choice" and len({o.strip().lower() for o in item["options"].values()}) < 4:
            dropped.append("options repeat")
        elif kind == "choice" and any(a not in LETTERS for a in answers.values()):
            dropped.append("answer is not a letter A-D")
        elif max_rouge_l(question, kept_questions) >= near_duplicate:
            dropped.append("near-duplicate question")
        else:
            kept_questions.append(question)
            kept.append(Checked(
                kind, question, answers,
                {k: item["options"][k].strip() for k in LETTERS} if kind == "choice" else None,
                len(set(answers.values())) > 1 if kind == "choice" else None))
    return kept, dropped
