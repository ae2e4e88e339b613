"""cci-local: local-first Community-Cross-Instruct.

The Python API (docs/python.md)::

    import cci_local
    study = cci_local.open("study.db")     # a Study: the stages as methods
    study.run(["r/keto", "r/nutrition"], corpus=["data/"], quick=True)
    study.frames.survey()                  # results as pandas DataFrames
"""

__version__ = "0.1.0"

from .study import Study, open  # noqa: E402, A004

__all__ = ["Study", "open", "__version__"]
