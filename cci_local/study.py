"""The Python API: a study is one store, its stages are methods, its results
DataFrames (docs/python.md).

    import cci_local
    study = cci_local.open("study.db")
    study.run(["r/keto", "r/nutrition"], corpus=["data/"], quick=True)
    study.frames.survey()          # accuracy per respondent and answer key, with CIs

Every method calls the stage's own entry function, with the CLI's option names
and defaults, and the commands under cci_local/commands/ call these methods: there
is one path.  So a method is resumable as its command is, writes the same store
rows, and a second identical call asks no model anything.  Options are the
stage's option object's fields (``TopicParams``, ``CrossOptions``, ``TrainConfig``,
``RunOptions``, ...), given as keywords.  ``progress(kind, value)``: the stage's
progress calls ('total', 'advance', ...), for a bar of your own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from .store import normalise_community, open_store, resolve_path, select_communities


def _split(cls, options: dict) -> tuple[dict, dict]:
    """Keywords that are ``cls``'s fields, and the rest."""
    names = {f.name for f in fields(cls)}
    return ({k: v for k, v in options.items() if k in names},
            {k: v for k, v in options.items() if k not in names})


def _refuse(stage: str, extra: dict) -> None:
    if extra:
        raise TypeError(f"{stage}() got unknown options: {', '.join(sorted(extra))}")


@dataclass
class Generated:
    """What ``Study.generate`` did: the teacher's report, and the survey-only passes
    (``survey``) where ``survey_questions`` was asked for."""
    report: object
    forecast: object | None = None
    survey: object | None = None
    notes: list[str] = field(default_factory=list)


class Study:
    """One store (a SQLite file) and the stages that read and write it."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = resolve_path(path)
        self._db = None

    def __repr__(self) -> str:
        return f"<cci_local.Study {str(self.path)!r}>"

    @property
    def db(self):
        """The store (a ``sqlite_utils.Database``), opened and migrated on first use."""
        if self._db is None:
            self._db = open_store(self.path)
        return self._db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> Study:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def frames(self):
        """The store's contents and results as pandas DataFrames (cci_local/frames.py)."""
        from .frames import Frames

        return Frames(self.db)

    def communities(self, names=None) -> list[str]:
        """``names`` normalised and checked against the store (default: all of them)."""
        return select_communities(self.db, list(names) if names else None)

    # ------------------------------------------------------------------ the stages

    def run(self, communities, *, quick: bool = False, options=None, progress=None, log=None,
            **given):
        """Every stage in order (`cci-local run`): ``options`` a RunOptions, or its
        fields as keywords (``quick``: RunOptions.quick() with them)."""
        from .pipeline import RunOptions, run_pipeline

        given, extra = _split(RunOptions, given)
        _refuse("run", extra)
        opts = options or (RunOptions.quick(**given) if quick else RunOptions(**given))
        return run_pipeline(self.db, self.path, list(communities), opts, progress=progress,
                            log=log)

    def ingest(self, paths, **options):
        """Read corpus files or folders into the store (`cci-local ingest`)."""
        from .ingest import ingest

        return ingest(self.db, [str(p) for p in ([paths] if isinstance(paths, (str, Path))
                                                 else paths)], **options)

    def topics(self, communities=None, *, force: bool = False, progress=None, **params):
        """Fit topics jointly and cut chunk rows (`cci-local topics`); ``params``:
        TopicParams fields, or ``params=TopicParams(...)``."""
        from .topics import TopicParams, fit_topics

        given = params.pop("params", None)
        fields_, extra = _split(TopicParams, params)
        _refuse("topics", extra)
        return fit_topics(self.db, list(communities) if communities else None,
                          given or TopicParams(**fields_), force=force, progress=progress)

    def generate(self, communities=None, *, teacher=None, survey_questions: int | None = None,
                 progress=None, log=None, **options) -> Generated:
        """Community-Cross-Instruct (`cci-local generate`): every chunk row to the
        teacher once, then, with ``survey_questions``, survey-only passes over the
        held-out rows until each community has that many held-out questions.
        ``options``: CrossOptions fields; ``teacher``: a model name or a Backend;
        ``log(text)``: the notes due before any call (the power forecast, a remote
        teacher)."""
        from .generate import CrossOptions
        from .generate.survey_size import generate_sized
        from .llm import default_model, get_backend

        given, extra = _split(CrossOptions, options)
        _refuse("generate", extra)
        cross = CrossOptions(**given)
        log = log or (lambda text: None)
        backend = teacher if hasattr(teacher, "chat") else get_backend(
            default_model("teacher", teacher))  # an unknown model: said before the store
        try:
            names = self.communities(communities)
            if backend.remote:
                log(f"{backend.describe()} is a remote model: the documents shown to it "
                    "leave this machine")
            expected, report, reached = generate_sized(
                self.db, names, backend, cross, survey_questions, progress=progress, log=log)
        finally:
            if backend is not teacher:
                backend.close()
        return Generated(report, expected, reached,
                         list(report.notes) + (reached.notes if reached else []))

    def template_pairs(self, communities=None, **options):
        """The fidelity paper's template pairs (`cci-local generate --mode template`)."""
        from .generate import TemplateOptions, template_pairs

        given, extra = _split(TemplateOptions, options)
        _refuse("template_pairs", extra)
        return template_pairs(self.db, list(communities) if communities else None,
                              TemplateOptions(**given))

    def train(self, community: str, *, base: str | None = None, config=None, **options) -> dict:
        """Train (resume, or reuse) a community's adapter (`cci-local train`);
        ``options``: TrainConfig fields and train()'s own (trainer, kinds, ...)."""
        from .llm import default_model
        from .train import TrainConfig, train

        given, rest = _split(TrainConfig, options)
        return train(self.db, normalise_community(community), default_model("base", base),
                     config or TrainConfig(**given), **rest)

    def survey(self, communities=None, *, survey_file=None, base: str | None = None,
               split_by: str = "random", scoring: str = "letter", persona: bool = True,
               aligned: bool = True, persona_text: str | None = None,
               question_template: str | None = None, samples: int = 10, permute: int = 1,
               aligned_server: str | None = None, aligned_name: str = "{community}",
               parallel: int = 1, progress=None):
        """Administer the held-out CommSurvey (or ``survey_file``) to the base, the
        persona-prompted base and each aligned model (`cci-local survey`)."""
        from .evaluate.survey import PERSONA, QUESTION, SurveyError, check_wording, run_survey
        from .evaluate.survey_file import load_survey, survey_communities
        from .llm import default_model

        template, persona_text = question_template or QUESTION, persona_text or PERSONA
        check_wording(template, persona_text)  # before anything is read or stored
        survey_id = None
        if survey_file:
            survey_id = load_survey(self.db, survey_file, split_by)
            known = survey_communities(self.db, survey_id)
            names = [normalise_community(c) for c in communities or ()] or known
            unknown = [c for c in names if c not in known]
            if unknown:
                raise SurveyError(f"{survey_file} has no answers for "
                               + ", ".join(f"r/{c}" for c in unknown) + " (it has "
                               + ", ".join(f"r/{c}" for c in known) + ")")
        else:
            names = self.communities(communities)
        return run_survey(
            self.db, names, default_model("base", base), split_by=split_by,
            survey_id=survey_id, persona=persona, aligned=aligned, persona_text=persona_text,
            template=template, scoring=scoring, samples=samples, survey_file=survey_file,
            permute=permute, progress=progress, aligned_server=aligned_server,
            aligned_name=aligned_name, parallel=parallel)

    def fidelity(self, community: str, *, base: str | None = None, options=None, **kwargs):
        """Generated answers against the community's real writing (`cci-local fidelity`)."""
        from .evaluate.fidelity import FidelityOptions, run_fidelity
        from .llm import default_model

        given, rest = _split(FidelityOptions, kwargs)
        return run_fidelity(self.db, normalise_community(community), default_model("base", base),
                            options or FidelityOptions(**given), **rest)

    def psychometrics(self, communities=None, instrument="weight-concerns", *,
                      items=None, base: str | None = None, **options):
        """Administer a questionnaire to the aligned models (`cci-local psychometrics`);
        ``instrument``: a shipped name or a file (an ``Instrument`` is taken as it is)."""
        from .evaluate.instruments import Instrument, load_instrument
        from .evaluate.psychometrics import run_psychometrics
        from .llm import default_model

        inst = instrument if isinstance(instrument, Instrument) else \
            load_instrument(instrument, items)
        return run_psychometrics(self.db, self.communities(communities), inst,
                                 default_model("base", base), **options)

    def audit(self, community: str, *, base: str | None = None, options=None, progress=None,
              **given):
        """The privacy audit of a community's newest adapter (`cci-local audit`);
        ``options``: an AuditOptions, or its fields as keywords."""
        from .evaluate.audit import AuditOptions, audit
        from .llm import default_model

        given, extra = _split(AuditOptions, given)
        _refuse("audit", extra)
        return audit(self.db, normalise_community(community), default_model("base", base),
                     options or AuditOptions(**given), progress=progress)

    def report(self, communities=None):
        """The report as `cci-local report` builds it: a ``report.Doc`` (blocks and data)."""
        from .report import build_report

        return build_report(self.db, self.communities(communities) if communities else None)


def open(path: str | os.PathLike | None = None) -> Study:  # noqa: A001 - the API's name
    """The study in the store at ``path`` (default: $CCI_LOCAL_DB, else ./cci-local.db),
    created and migrated on first use."""
    return Study(path)
