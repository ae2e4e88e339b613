"""`cci-local run`'s evaluation steps: survey, fidelity, psychometrics and the privacy
audit, each calling its stage's own entry function (the order and the other steps:
cci_local/pipeline.py)."""

from __future__ import annotations

from .errors import PipelineError


def _base(options) -> str:
    from .llm import default_model

    return default_model("base", options.base)


def _survey(db, state, outcome) -> bool | None:
    from .evaluate.survey import run_survey
    from .llm import BackendError
    from .train import TrainError

    names, options = state["names"], state["options"]
    base = _base(options)
    try:
        result = run_survey(db, names, base, scoring=options.scoring,
                            progress=state["progress"])
    except (BackendError, TrainError) as e:
        raise PipelineError(f"survey: {e}") from e
    if not result.items:
        outcome.status = "skipped"
        outcome.summary = ("no held-out survey questions (the teacher's held-out rows made no "
                           "multiple-choice question): generate more rows, or `cci-local survey "
                           "--survey FILE`")
        outcome.notes = list(result.notes)
        return False
    data = result.as_dict(names)
    parts = []
    for c, values in data["communities"].items():
        rows = values["respondents"]
        acc = {r.split(":")[0]: v["accuracy"] for r, v in rows.items() if v["accuracy"]}
        parts.append(f"r/{c} {values['questions']} questions: " + ", ".join(
            f"{r} {v['value']:.2f}" for r, v in acc.items()))
    outcome.summary = "; ".join(parts)
    outcome.notes = list(result.notes)
    return None


def _fidelity(db, state, outcome) -> bool | None:
    from .evaluate.fidelity import FidelityOptions, JudgeOptions, run_fidelity
    from .llm import BackendError
    from .train import TrainError

    names, options = state["names"], state["options"]
    base = _base(options)
    fo = FidelityOptions(samples=options.samples, real=options.real, seed=options.seed)
    parts = []
    for name in names:
        try:
            result = run_fidelity(db, name, base, fo, judges=JudgeOptions(enabled=options.judges),
                                  progress=state["progress"])
        except (BackendError, TrainError, ValueError) as e:
            raise PipelineError(f"fidelity r/{name}: {e}") from e
        aligned = result.metrics.get(f"aligned:{name}", {})
        if "identifiability_f1" in aligned and "auc" in aligned:
            parts.append(f"r/{name} aligned F1 {aligned['identifiability_f1'].value:.2f}, "
                         f"AUC {aligned['auc'].value:.2f}")
        outcome.notes += result.notes
    outcome.summary = "; ".join(parts)
    return None


def _psychometrics(db, state, outcome) -> bool | None:
    from .evaluate.instruments import InstrumentError, load_instrument
    from .evaluate.psychometrics import run_psychometrics
    from .llm import BackendError
    from .train import TrainError

    names, options = state["names"], state["options"]
    if not options.instrument:
        outcome.status, outcome.summary = "skipped", "no --instrument given"
        return False
    base = _base(options)
    try:
        inst = load_instrument(options.instrument, options.items)
        result = run_psychometrics(db, names, inst, base, scoring=options.scoring,
                                   prefixes=options.prefixes, seed=options.seed,
                                   progress=state["progress"])
    except (InstrumentError, BackendError, TrainError) as e:
        raise PipelineError(f"psychometrics: {e}") from e
    outcome.summary = f"{inst.name}: {len(result.scores)} respondents scored"
    outcome.notes = list(result.notes)
    return None


def _audit(db, state, outcome) -> bool | None:
    from .evaluate.audit import AuditError, AuditOptions, audit
    from .train import resolve_base

    names, options = state["names"], state["options"]
    base = _base(options)
    if resolve_base(base).gguf is None:
        outcome.status = "skipped"
        outcome.summary = (f"{base} is a Hugging Face folder: the audit runs a GGUF base "
                           "(`cci-local audit --base gguf:PATH`)")
        return False
    settings = AuditOptions(samples=options.audit_samples, held_out=options.audit_samples,
                            seed=options.seed)
    parts = []
    for name in names:
        def progress(kind, n, name=name):
            if kind == "total":
                state["progress"]("phase", (f"audit r/{name}", n))
            else:
                state["progress"]("advance", n)
        try:
            result = audit(db, name, base, settings, progress=progress)
        except AuditError as e:
            raise PipelineError(f"audit r/{name}: {e}") from e
        ext, lk = result.extraction["aligned"], result.leakage["aligned"]
        parts.append(f"r/{name} extracted {round(ext.value * ext.n)}/{ext.n} (base "
                     f"{round(result.extraction['base'].value * ext.n)}), longest shared span "
                     f"{lk['longest']} chars")
        outcome.notes += result.notes
        if result.extracted:
            outcome.notes.append(f"r/{name}'s adapter reproduces training texts: `serve` and "
                                 "`adapters export` refuse it without --allow-leaky")
    outcome.summary = "; ".join(parts)
    return None
