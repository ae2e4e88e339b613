"""A survey question as every survey stage sees it, whichever its source: the held-out
CommSurvey (evaluate/survey.py) or a survey file of the user's (evaluate/survey_file.py)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Item:
    key: str  # 'commsurvey:<instruction id>' or '<file hash>:<item id>'
    question: str
    options: dict[str, str]
    answers: dict[str, str]  # community -> its letter (the answer key)
    topic: str | None = None  # a label, for the per-topic breakdown
    instruction_id: int | None = None
    distributions: dict[str, dict[str, float]] = field(default_factory=dict)  # community ->
    ordinal: bool = True  # options are ordered (representativeness uses their positions)

    @property
    def discriminating(self) -> bool:
        return len(set(self.answers.values())) > 1
