"""The store in Datasette (`cci-local browse`): every table and its main columns
described, and canned queries for what researchers ask of a study.

``metadata(db)`` is Datasette's metadata document for one store; ``serve()`` runs
Datasette on it, bound to 127.0.0.1 unless asked otherwise (the store holds the
community's posts).  Datasette is the ``browse`` extra: pip install 'cci-local[browse]'.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import sqlite_utils

from .errors import CciError

TABLES = {
    "sources": ("A corpus file read: path, content fingerprint, counts, and the personal "
                "data replaced in its texts", {}),
    "ingest_errors": ("A malformed record: file, line, and what was expected", {}),
    "communities": ("A community, spelled as first stored", {}),
    "documents": ("A post or comment, cleaned; author pseudonymised and personal data "
                  "replaced by placeholders on ingest", {
                      "author": "a keyed pseudonym, never the username",
                      "kind": "post or comment",
                      "source_id": "the sources row it was read from",
                      "source_line": "its line (or record) in that file"}),
    "meta": ("Store-wide values (the pseudonymisation key)", {}),
    "llm_calls": ("Every model call, request and reply: the prompt cache and the log", {
        "key": "hash of model identity and request: a repeated request is read back",
        "status": "ok, invalid (unparsable reply) or error"}),
    "file_hashes": ("A model file's hash, memoised by path, size and time", {}),
    "embeddings": ("A document's vector under one embedder", {}),
    "topic_runs": ("A topic fit: parameters, what the clustering did, notes", {}),
    "topics": ("A topic of a fit, its keywords and size", {}),
    "topic_communities": ("A topic's documents per community", {}),
    "doc_topics": ("Each document's topic in a fit", {}),
    "chunk_rows": ("A row of chunks: one topic's documents of every community, shown to "
                   "the teacher together", {}),
    "chunks": ("One community's documents in a chunk row", {}),
    "teacher_rows": ("A chunk row put to the teacher: status, attempts, the calls made", {}),
    "instructions": ("A question the teacher wrote (open: CommInst, choice: CommSurvey) or "
                     "a template pair", {
                         "split": "train or test (the held-out chunk rows, random split)",
                         "split_by_topic": "train or test (held-out topics)",
                         "discriminating": "1 when the communities' answers differ"}),
    "community_answers": ("A community's answer to an instruction, and the documents "
                          "behind it", {"answer": "the text (open) or the letter (choice)"}),
    "holdouts": ("The held-out chunk rows and topics of each split", {}),
    "adapters": ("A community's LoRA adapter: base, data hash, settings, status, GGUF", {}),
    "training_curve": ("A logged training step's loss", {}),
    "surveys": ("A survey file of the researcher's own", {}),
    "survey_items": ("A question of a survey file, with each community's answer", {}),
    "survey_answers": ("A respondent's answer to a survey question", {
        "respondent": "base, persona:COMMUNITY or aligned:COMMUNITY",
        "distribution": "probability per option letter (JSON)",
        "wording": "hash of persona, question template, scoring and option orders"}),
    "instrument_answers": ("A respondent's answer to a questionnaire item under one persona "
                           "prefix", {}),
    "fidelity_runs": ("A fidelity run of a community", {}),
    "fidelity_texts": ("A text generated for fidelity, and why it was dropped", {}),
    "fidelity_metrics": ("A fidelity figure with its 95% interval", {}),
    "fidelity_judgments": ("A toxicity or harm rating of a text", {}),
    "audit_items": ("One model's result on one training or held-out text in a privacy "
                    "audit", {"value": "1 extracted / 0 not, or the text's loss",
                          "test": "extract (greedy continuation) or loss (membership)"}),
    "audits": ("A privacy audit's figures for an adapter", {
        "extractable": "training texts reproduced word for word"}),
    "asked": ("An answer to `cci-local ask`, or a chat turn", {}),
    "pipeline_runs": ("One `cci-local run`: stages, model calls, seconds, status", {}),
    "stage_results": ("The latest figures of survey, fidelity and psychometrics per scope "
                      "(what the report reads)", {}),
    "imports": ("An imported release", {}),
    "import_rows": ("A row of an imported release", {}),
}

QUERIES = {
    "aligned_and_base_disagree": {
        "title": "Survey questions where an aligned model and the base disagree",
        "description": "With the community's own answer: where alignment changed the answer, "
                       "and whether it moved toward the community.",
        "sql": "SELECT a.respondent, a.item, i.question, b.chosen AS base_chose, "
               "a.chosen AS aligned_chose, c.answer AS community_answer "
               "FROM survey_answers a JOIN survey_answers b ON b.item = a.item "
               "AND b.respondent = 'base' AND b.wording = a.wording "
               "LEFT JOIN instructions i ON i.id = a.instruction_id "
               "LEFT JOIN community_answers c ON c.instruction_id = a.instruction_id "
               "AND 'aligned:' || c.community = a.respondent "
               "WHERE a.respondent LIKE 'aligned:%' AND a.chosen != b.chosen "
               "ORDER BY a.respondent, a.item"},
    "most_extractable_training_texts": {
        "title": "Training texts each adapter reproduces word for word",
        "description": "From the newest privacy audit of each adapter: the instruction and the "
                       "document behind it, never the author.",
        "sql": "SELECT d.community, t.adapter_id, t.instruction_id, i.kind, i.source, "
               "c.doc_ids, substr(i.question, 1, 120) AS question FROM audit_items t "
               "JOIN adapters d ON d.id = t.adapter_id "
               "LEFT JOIN instructions i ON i.id = t.instruction_id "
               "LEFT JOIN community_answers c ON c.instruction_id = t.instruction_id "
               "AND c.community = d.community "
               "WHERE t.test = 'extract' AND t.model = 'aligned' AND t.value = 1 "
               "ORDER BY d.community, t.instruction_id"},
    "survey_accuracy": {
        "title": "Survey accuracy per respondent and answer key (no intervals: see the report)",
        "sql": "SELECT c.community AS answer_key, s.respondent, count(*) AS questions, "
               "round(avg(s.chosen = c.answer), 3) AS accuracy FROM survey_answers s "
               "JOIN community_answers c ON c.instruction_id = s.instruction_id "
               "GROUP BY c.community, s.respondent ORDER BY c.community, s.respondent"},
    "held_out_survey_questions": {
        "title": "Held-out CommSurvey questions per community (what the survey can show)",
        "sql": "SELECT c.community, count(*) AS questions FROM instructions i "
               "JOIN community_answers c ON c.instruction_id = i.id "
               "WHERE i.kind = 'choice' AND i.split = 'test' GROUP BY c.community"},
}


def metadata(db: sqlite_utils.Database, name: str) -> dict:
    """Datasette's metadata for a store opened as database ``name``: a description of
    each of its tables and their main columns, and the canned queries."""
    present = set(db.table_names())
    tables = {t: {"description": text, **({"columns": columns} if columns else {})}
              for t, (text, columns) in TABLES.items() if t in present}
    return {"title": f"cci-local store {name}",
            "description": "A cci-local study: documents, topics, instruction data, adapters, "
                           "answers and figures (docs/data-model.md).",
            "databases": {name: {"tables": tables, "queries": QUERIES}}}


def command(path: Path, metadata_file: Path, *, host: str = "127.0.0.1",
            port: int = 8001, open_browser: bool = False) -> list[str]:
    """The Datasette command line for the store.  Datasette opens a file it serves
    read only (``mode=ro``); not ``--immutable``, which would ignore the store's
    write-ahead log: answers written since the last checkpoint, or by a run going on."""
    exe = shutil.which("datasette") or str(Path(sys.executable).with_name("datasette"))
    if not Path(exe).exists():
        raise CciError("browse needs Datasette: pip install 'cci-local[browse]'")
    return [exe, "serve", str(path), "--metadata", str(metadata_file),
            "--host", host, "--port", str(port)] + (["--open"] if open_browser else [])


def write_metadata(db: sqlite_utils.Database, path: Path, out: Path) -> Path:
    out.write_text(json.dumps(metadata(db, Path(path).stem), indent=2))
    return out


def serve(cmd: list[str]) -> int:
    return subprocess.call(cmd)
