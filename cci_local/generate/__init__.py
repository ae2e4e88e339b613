"""Instruction data, the generate stage (docs/method.md#generate).

Two ways to make it, both writing ``instructions`` and ``community_answers``:

- ``cross_instruct(db, communities, teacher)``: Community-Cross-Instruct.  A
  teacher model sees each chunk row (one topic, every community's on-topic
  documents) and writes open-ended questions answered once per community
  (kind 'open', CommInst: training data) and four-option questions with each
  community's letter (kind 'choice', CommSurvey: evaluation data).
- ``template_pairs(db, communities)``: the fidelity paper's alignment data, no
  model at all: each real post answers a templated instruction (kind 'template').

Both use the same seeded holdouts (``splits``): 15% of chunk rows (or posts) at
random in ``split``, and the unseen-topic test in ``split_by_topic``.
"""

from .cross import CrossOptions, CrossReport, GenerateError, build_messages, cross_instruct
from .rows import LETTERS, Checked, check_row, row_schema
from .splits import ensure_holdout, ensure_topic_holdout
from .templates import TEMPLATES, TOPIC_TEMPLATES, TemplateOptions, template_pairs

__all__ = [
    "LETTERS", "TEMPLATES", "TOPIC_TEMPLATES", "Checked", "CrossOptions", "CrossReport",
    "GenerateError", "TemplateOptions", "build_messages", "check_row", "cross_instruct",
    "ensure_holdout", "ensure_topic_holdout", "row_schema", "template_pairs",
]
