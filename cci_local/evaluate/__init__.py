"""Evaluation stages: survey administration, fidelity and psychometrics
(docs/method.md#survey, docs/method.md#fidelity, docs/method.md#psychometrics).
``metrics`` holds the statistics they share."""
