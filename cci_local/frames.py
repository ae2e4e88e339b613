"""A study's store as pandas DataFrames: ``cci_local.open(path).frames`` (docs/python.md).

Tables come from the store as they are (documents, topics, instructions, survey
answers, adapters); results from the latest evaluation of each scope kept in
``stage_results`` (survey, verdicts, power, psychometrics) or their own tables
(fidelity metrics, audits).  Every estimate has ``value``, ``low`` and ``high``
columns (its 95% interval) and ``n``.  Authors appear as their pseudonyms only,
as stored.  pandas is the ``analysis`` extra: pip install 'cci-local[analysis]'.
"""

from __future__ import annotations

import json

import sqlite_utils

from .errors import CciError
from .store import load_results, normalise_community


def _pandas():
    try:
        import pandas
    except ImportError:
        raise CciError("DataFrames need pandas: pip install 'cci-local[analysis]'") from None
    return pandas


def _estimate(prefix: str, e: dict | None) -> dict:
    e = e or {}
    return {prefix: e.get("value"), f"{prefix}_low": e.get("low"),
            f"{prefix}_high": e.get("high")}


class Frames:
    """Read-only DataFrames over one store."""

    def __init__(self, db: sqlite_utils.Database):
        self.db = db

    def _sql(self, query: str, params=()):
        return _pandas().read_sql_query(query, self.db.conn, params=list(params))

    def _where(self, community, column: str = "community") -> tuple[str, list]:
        if community is None:
            return "", []
        return f" WHERE {column} = ?", [normalise_community(community)]

    # ---------------------------------------------------------------- tables

    def documents(self, community: str | None = None):
        """One row per stored post or comment (authors pseudonymised on ingest)."""
        where, params = self._where(community)
        return self._sql("SELECT id, community, kind, author, created_utc, score, link_id,"
                         f" parent_id, text FROM documents{where} ORDER BY community, id", params)

    def topics(self, run: int | None = None):
        """The topics of the latest topic run (or ``run``): keywords, size, chunk rows."""
        run = run or self.db.execute("SELECT max(id) FROM topic_runs").fetchone()[0]
        frame = self._sql(
            "SELECT t.run_id AS run, t.number AS topic, t.keywords, t.size,"
            " (SELECT count(*) FROM chunk_rows r WHERE r.topic_id = t.id) AS chunk_rows"
            " FROM topics t WHERE t.run_id = ? ORDER BY t.number", [run])
        frame["keywords"] = frame["keywords"].map(lambda k: ", ".join(json.loads(k)))
        return frame

    def instructions(self, kind: str | None = None, community: str | None = None):
        """One row per instruction and community answer: kind (open = CommInst,
        choice = CommSurvey, template), split, the question, options and answer."""
        clauses, params = [], []
        if kind:
            clauses.append("i.kind = ?")
            params.append(kind)
        if community:
            clauses.append("a.community = ?")
            params.append(normalise_community(community))
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        return self._sql(
            "SELECT i.id, i.kind, i.split, i.split_by_topic, t.number AS topic, a.community,"
            " i.question, i.options, a.answer, i.discriminating FROM instructions i"
            " JOIN community_answers a ON a.instruction_id = i.id"
            f" LEFT JOIN topics t ON t.id = i.topic_id{where} ORDER BY i.id, a.community",
            params)

    def survey_answers(self, respondent: str | None = None):
        """Every stored survey answer: respondent, item, chosen letter, the
        distribution over the letters (JSON), how it was read."""
        where, params = self._where(respondent, "respondent")
        return self._sql("SELECT respondent, model, item, instruction_id, chosen, distribution,"
                         f" method, scoring FROM survey_answers{where} ORDER BY id", params)

    def adapters(self):
        """Each community's adapters: base, trainer, examples, steps, final loss, the
        GGUF path, and the latest privacy audit's verdict."""
        frame = self._sql(
            "SELECT a.id, a.community, a.base, a.trainer, a.status, a.examples, a.steps,"
            " a.final_loss, a.gguf, a.created_at,"
            " (SELECT extractable FROM audits u WHERE u.adapter_id = a.id"
            "  ORDER BY u.id DESC LIMIT 1) AS audit_extractable"
            " FROM adapters a ORDER BY a.community, a.id")
        return frame

    # ---------------------------------------------------------------- results

    def _latest(self, stage: str) -> list[dict]:
        latest: dict[str, dict] = {}
        for entry in load_results(self.db, stage):  # oldest first: the last one stays
            latest[entry["scope"]] = entry
        return list(latest.values())

    def survey(self):
        """Accuracy per answer key and respondent, with the majority letter and random
        as rows of their own: the survey table as the CLI prints it."""
        rows = []
        for entry in self._latest("survey"):
            result = entry["result"]
            for key, block in result["communities"].items():
                for respondent, r in block["respondents"].items():
                    rows.append({"scope": entry["scope"], "source": result["source"],
                                 "answer_key": key, "respondent": respondent,
                                 "questions": (r["accuracy"] or {}).get("n"),
                                 **_estimate("accuracy", r["accuracy"]),
                                 **_estimate("discriminating", r["discriminating"])})
                rows.append({"scope": entry["scope"], "source": result["source"],
                             "answer_key": key, "respondent": "majority letter",
                             "questions": block["questions"],
                             **_estimate("accuracy", block["majority_letter"])})
                rows.append({"scope": entry["scope"], "source": result["source"],
                             "answer_key": key, "respondent": "random",
                             "questions": block["questions"], "accuracy": block["random"]})
        return _pandas().DataFrame(rows)

    def matrix(self, kind: str = "aligned"):
        """The cross-community matrix: rows the models (``kind``: aligned or persona),
        columns the answer keys, cells the accuracy."""
        rows = {}
        for entry in self._latest("survey"):
            for model, cells in entry["result"].get("matrix", {}).get(kind, {}).items():
                rows[model] = {key: (e or {}).get("value") for key, e in cells.items()}
        return _pandas().DataFrame.from_dict(rows, orient="index")

    def verdicts(self):
        """Each paired comparison the verdict makes (a - b over the same questions)
        with its interval, and the verdict's sentences per answer key."""
        rows = []
        for entry in self._latest("survey"):
            for v in entry["result"].get("verdict", []):
                for comparison, e in v["comparisons"].items():
                    low, high = e["low"], e["high"]
                    rows.append({"answer_key": v["community"], "comparison": comparison,
                                 "questions": v["questions"], **_estimate("difference", e),
                                 "shown": "higher" if low > 0 else "lower" if high < 0
                                 else "not distinguishable",
                                 "sentences": " | ".join(v["lines"])})
        return _pandas().DataFrame(rows)

    def power(self):
        """Per paired comparison: questions, discordant share, the smallest difference
        they show at 80% power (95%), and the questions 0.10 needs."""
        rows = [{"answer_key": v["community"], **row}
                for entry in self._latest("survey")
                for v in entry["result"].get("verdict", []) for row in v.get("power", [])]
        return _pandas().DataFrame(rows)

    def fidelity(self):
        """The latest fidelity run per community: one row per texts (model) and metric."""
        return self._sql(
            "SELECT r.community, m.model, m.metric, m.value, m.low, m.high, m.n"
            " FROM fidelity_metrics m JOIN fidelity_runs r ON r.id = m.run_id"
            " WHERE r.id IN (SELECT max(id) FROM fidelity_runs WHERE finished_at IS NOT NULL"
            " GROUP BY community) ORDER BY r.community, m.model, m.metric")

    def psychometrics(self):
        """Scores per instrument, respondent and measure (subscale, global), with CIs."""
        rows = []
        for entry in self._latest("psychometrics"):
            result = entry["result"]
            for respondent, r in result["respondents"].items():
                for measure, e in r["scores"].items():
                    rows.append({"instrument": result["instrument"], "respondent": respondent,
                                 "measure": measure, **_estimate("score", e), "n": e.get("n")})
        return _pandas().DataFrame(rows)

    def audits(self):
        """The latest privacy audit per adapter: extraction rates (aligned, base),
        membership AUC and TPR at 1% FPR, the longest span its free answers share."""
        rows = []
        for adapter_id, community, result, extractable in self.db.execute(
                "SELECT adapter_id, community, result, extractable FROM audits WHERE id IN"
                " (SELECT max(id) FROM audits GROUP BY adapter_id) ORDER BY community"):
            r = json.loads(result)
            m = r.get("membership", {})
            rows.append({"community": community, "adapter_id": adapter_id,
                         "extractable": extractable,
                         **_estimate("extracted_aligned", r["extraction"].get("aligned")),
                         **_estimate("extracted_base", r["extraction"].get("base")),
                         **_estimate("membership_auc", m.get("auc")),
                         "tpr_at_1pct_fpr": m.get("tpr_at_1pct_fpr"),
                         "longest_span": r["leakage"].get("aligned", {}).get("longest")})
        return _pandas().DataFrame(rows)
