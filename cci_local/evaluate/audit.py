"""The privacy audit: what a community's adapter gives away of its training texts,
measured before the adapter is served or shared (docs/method.md#privacy-audit).

    result = audit(db, "keto", "embedded")
    result.extraction["aligned"]     # Estimate: share of sampled training texts extracted
    result.membership["auc"]         # Estimate: 0.5 = membership cannot be inferred
    result.extracted                 # [{"instruction_id", "document_id", "kind"}, ...]

Two tests, each on the adapter's own training texts (rebuilt from the store and
checked against the hash the adapter was trained on):

- **Extractable memorization** (Carlini et al. 2021, 2022): the first ``k`` tokens of
  a training answer, after its instruction; does greedy decoding reproduce the next
  ``m`` tokens exactly?  The rate over a seeded sample, with a Wilson 95% interval,
  for the aligned model and for the base on the same prefixes (the control: text
  any model would continue the same way, a quote or boilerplate, is not the
  adapter's leak).  CommInst answers and template pairs (real posts) both count.
- **Membership inference**: the aligned model's per-token loss on training answers
  against held-out answers of the same community and kinds.  The AUC of telling
  them apart (0.5: nothing can be inferred) with a bootstrap interval, on the raw
  loss and on the loss calibrated by the base's on the same text (the cheap form
  of LiRA's reference models, arXiv 2112.03570), and the true-positive rate at a
  1% false-positive rate of the calibrated score.

Every model call's result is stored per text (``audit_items``): a re-run asks no
model again.  Texts are named by instruction id and, for template pairs, by the
document id the pair was made from; never by author.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import sqlite_utils

from ..errors import CciError
from .metrics import Estimate


class AuditError(CciError):
    """The audit cannot run: the message says what to do."""


@dataclass
class AuditOptions:
    samples: int = 64  # training texts tested for extraction (and for membership)
    prefix: int = 32  # k: tokens of the answer given
    suffix: int = 32  # m: tokens that must follow exactly
    held_out: int = 64  # held-out texts for membership inference
    seed: int = 0
    min_chars: int = 80  # a free answer sharing this many characters with a post leaks it
    max_tokens: int = 128  # length of each free answer

    @property
    def params(self) -> str:
        return f"k={self.prefix},m={self.suffix}"


@dataclass
class AuditResult:
    community: str
    adapter_id: int
    options: AuditOptions
    extraction: dict[str, Estimate] = field(default_factory=dict)  # aligned, base
    extraction_by_kind: dict[str, dict[str, Estimate]] = field(default_factory=dict)
    membership: dict[str, Estimate | float] = field(default_factory=dict)
    extracted: list[dict] = field(default_factory=list)
    leakage: dict = field(default_factory=dict)  # near-verbatim spans in free answers
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        def value(v):
            return v.as_dict() if isinstance(v, Estimate) else v

        return {"community": self.community, "adapter_id": self.adapter_id,
                "options": asdict(self.options),
                "extraction": {k: value(v) for k, v in self.extraction.items()},
                "extraction_by_kind": {kind: {k: value(v) for k, v in row.items()}
                                       for kind, row in self.extraction_by_kind.items()},
                "membership": {k: value(v) for k, v in self.membership.items()},
                "extracted": self.extracted,
                "leakage": {k: ({m: value(x) for m, x in v.items()} if isinstance(v, dict)
                                else v) for k, v in self.leakage.items()},
                "notes": self.notes}


# ------------------------------------------------------------------------ statistics


def wilson(hits: int, n: int, z: float = 1.959964) -> Estimate:
    """A proportion with its Wilson score 95% interval (sound at 0 of n, unlike the
    normal approximation or a bootstrap, which both give [0, 0])."""
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n)


def auc(members: np.ndarray, others: np.ndarray) -> float:
    """P(a member's score > a non-member's), ties counted half (Mann-Whitney U / n1 n2)."""
    members, others = np.asarray(members, float), np.asarray(others, float)
    greater = (members[:, None] > others[None, :]).sum()
    ties = (members[:, None] == others[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(members) * len(others)))


def auc_ci(members, others, *, resamples: int = 2000, seed: int = 0) -> Estimate:
    """The AUC with a percentile bootstrap interval, each group resampled on its own."""
    members, others = np.asarray(members, float), np.asarray(others, float)
    if not len(members) or not len(others):
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    stats = [auc(members[rng.integers(0, len(members), len(members))],
                 others[rng.integers(0, len(others), len(others))]) for _ in range(resamples)]
    return Estimate(auc(members, others), float(np.quantile(stats, 0.025)),
                    float(np.quantile(stats, 0.975)), len(members) + len(others))


def tpr_at_fpr(members, others, fpr: float = 0.01) -> float:
    """The share of members scored above the threshold that only ``fpr`` of the
    non-members exceed.  With n non-members the smallest FPR measurable is 1/n: below
    that, the threshold is the largest non-member score (FPR 0 on this sample)."""
    others = np.sort(np.asarray(others, float))
    allowed = int(math.floor(fpr * len(others)))  # non-members allowed above it
    threshold = others[len(others) - 1 - allowed]
    return float((np.asarray(members, float) > threshold).mean())


# ------------------------------------------------------------------------ the texts


def training_texts(db, adapter: dict) -> list[dict]:
    """The texts ``adapter`` was trained on, rebuilt from the store as train() chose
    them; AuditError when they no longer hash to what it was trained on."""
    from ..train.data import data_hash, training_rows

    settings = json.loads(adapter["settings"])
    if "imported" in settings and not settings.get("kinds"):
        raise AuditError(
            f"r/{adapter['community']}'s adapter {adapter['id']} was added from "
            f"{settings['imported']['source']} with no record of what it trained on "
            "(cci_training.json from `cci-local train`, cci_export.json from `cci-local export "
            "--format llamafactory`): the audit cannot tell its training texts from others")
    # an adapter trained before dedup existed has no "dedup" setting: nothing was removed
    rows = training_rows(db, adapter["community"], tuple(settings.get("kinds", ["open"])),
                         "train", adapter["examples"], settings.get("seed", 0),
                         dedup=settings.get("dedup", "none"))
    if data_hash([(r["question"], r["answer"]) for r in rows]) != adapter["data_hash"]:
        raise AuditError(
            f"r/{adapter['community']}'s training texts in the store are no longer the ones "
            f"adapter {adapter['id']} was trained on (their hash differs: the data changed, "
            "or it was trained on the unseen-topic split): train it again, then audit")
    return rows


# ------------------------------------------------------------------------ the audit


def audit(db: sqlite_utils.Database, community: str, base: str = "embedded",
          options: AuditOptions | None = None,
          progress: Callable[[str, int], None] | None = None) -> AuditResult:
    """Audit ``community``'s newest adapter on ``base``: extraction and membership
    inference, stored per text and as one ``audits`` row; the result.  ``progress``
    gets ("total", model calls to make), then ("done", 1) after each."""
    from ..llm.llama_cpp import LlamaCppBackend
    from ..respondents import newest_adapter
    from ..store import find_community
    from ..train import resolve_base
    from ..train.data import seeded_sample, training_rows

    options = options or AuditOptions()
    name = find_community(db, community)
    if name is None:
        raise AuditError(f"no community {community!r} in the store")
    resolved = resolve_base(base)
    if resolved.gguf is None:
        raise AuditError(f"{base} is a Hugging Face folder: the audit runs the GGUF base with "
                         "its GGUF adapter; pass --base embedded or --base gguf:PATH")
    adapter = newest_adapter(db, name, resolved)
    if adapter is None:
        raise AuditError(f"r/{name} has no adapter on {base}: train it first "
                         f"(`cci-local train r/{name}`)")
    train_rows = training_texts(db, adapter)
    kinds = json.loads(adapter["settings"]).get("kinds", ["open"])
    held_rows = training_rows(db, name, tuple(kinds), "test", options.held_out, options.seed)
    result = AuditResult(name, adapter["id"], options)

    done = {(t, m, i): (v, d) for t, m, i, v, d in db.execute(
        "SELECT test, model, instruction_id, value, detail FROM audit_items"
        " WHERE adapter_id = ? AND params = ?", [adapter["id"], options.params])}
    base_model = LlamaCppBackend(resolved.gguf, spec=base)
    models = {"base": base_model,
              "aligned": base_model.with_adapter(adapter["gguf"], spec=f"{base}+adapter")}
    try:
        candidates = seeded_sample(train_rows, options.samples, options.seed)
        jobs = [("extract", m, r, "train") for r in candidates for m in models] + \
               [("loss", m, r, split) for rows, split in ((candidates, "train"),
                                                           (held_rows, "test"))
                for r in rows for m in models]
        todo = [j for j in jobs if (j[0], j[1], j[2]["id"]) not in done]
        if progress:
            progress("total", len(todo) + len(models) * len(candidates))
        for test, model, row, split in todo:
            backend = models[model]
            messages = [{"role": "user", "content": row["question"]}]
            if test == "extract":
                ids = backend.tokenize(row["answer"])
                if len(ids) < options.prefix + options.suffix:
                    value, detail = -1.0, 0  # too short to test: stored, left out
                else:
                    detail = backend.greedy_continuation(
                        messages, ids[:options.prefix],
                        ids[options.prefix:options.prefix + options.suffix])
                    value = float(detail == options.suffix)
            else:
                logprob, count = backend.answer_logprob(messages, row["answer"])
                value, detail = (-logprob / count if count else float("nan")), count
            with db.conn:
                db.conn.execute("INSERT OR REPLACE INTO audit_items VALUES (?,?,?,?,?,?,?,?)",
                                [adapter["id"], options.params, test, model, row["id"], split,
                                 value, detail])
            done[(test, model, row["id"])] = (value, detail)
            if progress:
                progress("done", 1)
        answers = {m: _free_answers(db, models[m], candidates, options, progress)
                   for m in ("aligned", "base")}
    finally:
        base_model.close()

    _extraction(result, candidates, done, options)
    _membership(result, candidates, held_rows, done, options)
    _leakage(result, db, name, candidates, answers, options)
    save_audit(db, result)
    return result


def _untimed(figures: dict) -> dict:
    index = figures.get("leakage", {}).get("index", {})
    return figures | {"leakage": figures.get("leakage", {}) | {"index": {
        k: v for k, v in index.items() if not k.endswith("seconds")}}}


def save_audit(db: sqlite_utils.Database, result: AuditResult) -> None:
    """One ``audits`` row: the figures the report and the privacy gate read (none
    added when the newest audit of the adapter found the same with the same settings)."""
    settings, figures = json.dumps(asdict(result.options)), json.dumps(result.as_dict())
    last = db.execute("SELECT settings, result FROM audits WHERE adapter_id = ? ORDER BY id"
                      " DESC LIMIT 1", [result.adapter_id]).fetchone()
    if last and last[0] == settings and json.dumps(_untimed(json.loads(last[1]))) == \
            json.dumps(_untimed(result.as_dict())):
        return
    with db.conn:
        db.conn.execute(
            "INSERT INTO audits (adapter_id, community, settings, result, extractable,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?)",
            [result.adapter_id, result.community, settings, figures, len(result.extracted),
             time.time()])


def _extraction(result: AuditResult, rows: list[dict], done: dict,
                options: AuditOptions) -> None:
    tested = [r for r in rows if done[("extract", "aligned", r["id"])][0] >= 0]
    if len(tested) < len(rows):
        result.notes.append(f"{len(rows) - len(tested)} of {len(rows)} sampled training texts "
                            f"are shorter than {options.prefix + options.suffix} tokens: not "
                            "tested for extraction")
    for model in ("aligned", "base"):
        hits = [r for r in tested if done[("extract", model, r["id"])][0] == 1.0]
        result.extraction[model] = wilson(len(hits), len(tested))
        for kind in sorted({r["kind"] for r in tested}):
            of_kind = [r for r in tested if r["kind"] == kind]
            result.extraction_by_kind.setdefault(kind, {})[model] = wilson(
                sum(r in hits for r in of_kind), len(of_kind))
    result.extracted = [{"instruction_id": r["id"], "document_id": r["document_id"],
                         "kind": r["kind"],
                         "base_also": done[("extract", "base", r["id"])][0] == 1.0}
                        for r in tested if done[("extract", "aligned", r["id"])][0] == 1.0]


def _membership(result: AuditResult, train_rows: list[dict], held_rows: list[dict],
                done: dict, options: AuditOptions) -> None:
    if not held_rows:
        result.notes.append(f"r/{result.community} has no held-out texts of the adapter's "
                            "kinds: membership inference needs some (the test split)")
        return

    def scores(rows, calibrated):
        out = []
        for r in rows:
            loss = done[("loss", "aligned", r["id"])][0]
            out.append(-(loss - done[("loss", "base", r["id"])][0]) if calibrated else -loss)
        return np.array([s for s in out if math.isfinite(s)])

    for name, calibrated in (("auc_loss", False), ("auc", True)):
        result.membership[name] = auc_ci(scores(train_rows, calibrated),
                                         scores(held_rows, calibrated), seed=options.seed)
    members, others = scores(train_rows, True), scores(held_rows, True)
    result.membership["tpr_at_1pct_fpr"] = tpr_at_fpr(members, others, 0.01)
    result.membership["fpr_resolution"] = 1 / len(others)


def _free_answers(db, backend, rows: list[dict], options: AuditOptions, progress) -> list[str]:
    """The model's greedy answer to each training question (through the prompt cache:
    a re-run makes no model call)."""
    from ..llm.base import Sampling
    from ..llm.cache import Request, chat_many

    requests = [Request([{"role": "user", "content": r["question"]}], None,
                        Sampling(max_tokens=options.max_tokens, temperature=0.0,
                                 seed=options.seed)) for r in rows]
    texts = [""] * len(rows)
    for i, reply in chat_many(db, backend, requests):
        if isinstance(reply, Exception):
            raise reply
        texts[i] = reply.text
        if progress:
            progress("done", 1)
    return texts


def _leakage(result: AuditResult, db, community: str, rows: list[dict],
             answers: dict[str, list[str]], options: AuditOptions) -> None:
    """The longest span each free answer shares with any of the community's documents,
    through a word n-gram index (evaluate/leakage.py), aligned and base."""
    from .leakage import SpanIndex

    started = time.perf_counter()
    ids, texts = [], []
    for doc_id, text in db.execute("SELECT id, text FROM documents WHERE community = ?"
                                   " ORDER BY id", [community]):
        ids.append(doc_id)
        texts.append(text)
    index = SpanIndex(texts)
    built = time.perf_counter() - started
    leaked: list[dict] = []
    for model in ("aligned", "base"):
        spans = [index.longest(a) for a in answers[model]]
        over = [(r, s) for r, s in zip(rows, spans, strict=True) if s.chars >= options.min_chars]
        result.leakage[model] = {
            "longest": max((s.chars for s in spans), default=0),
            "median": float(np.median([s.chars for s in spans])) if spans else 0.0,
            "share": wilson(len(over), len(spans))}
        if model == "aligned":
            leaked = [{"instruction_id": r["id"], "document_id": ids[s.document],
                       "chars": s.chars} for r, s in over]
    result.leakage.update({
        "min_chars": options.min_chars, "documents": leaked,
        "index": {"documents": len(texts), "ngrams": len(index),
                  "seconds": round(time.perf_counter() - started, 2),
                  "build_seconds": round(built, 2)}})


def latest_audit(db: sqlite_utils.Database, adapter_id: int) -> dict | None:
    """The newest audit of adapter ``adapter_id``: its figures (AuditResult.as_dict()),
    the count of extractable training texts and when it ran; None if never audited."""
    row = db.execute("SELECT result, extractable, created_at FROM audits WHERE adapter_id = ?"
                     " ORDER BY id DESC LIMIT 1", [adapter_id]).fetchone()
    if row is None:
        return None
    return json.loads(row[0]) | {"extractable": row[1], "created_at": row[2]}
