"""Evaluation stages: survey administration, fidelity and psychometrics (DESIGN 2.1 step 6,
2.2).  ``metrics`` holds the statistics they share."""
