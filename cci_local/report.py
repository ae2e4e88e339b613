"""`cci-local report`: what the store knows, as one document to send to a colleague.

The report reads the store only: corpus counts, the topic run, example pairs,
training, and the figures each evaluation kept (``stage_results``); it never calls
a model.  One list of blocks (headings, paragraphs, tables, figures) is rendered
three ways: HTML with its plots embedded (the self-contained one), Markdown with
its plots in a ``<name>_files/`` folder beside it, and JSON with the data only.
Plots are drawn with matplotlib's Agg backend (no display needed), by
cci_local/report_plots.py.
"""

from __future__ import annotations

import base64
import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import sqlite_utils

from . import __version__
from .errors import CciError
from .report_plots import plot_curves, plot_emotions, plot_heatmap, plot_scores, plot_survey
from .store import community_status, load_results

FORMATS = ("md", "html", "json")
FIDELITY_COLUMNS = [("identifiability_f1", "identifiability F1 (higher)"),
                    ("frechet", "Frechet distance (lower)"),
                    ("auc", "real-vs-generated AUC (0.5 best)"),
                    ("emotion_jsd", "emotion JSD (lower)"),
                    ("sentiment_jsd", "sentiment JSD (lower)"),
                    ("toxicity", "toxicity (lower)"), ("harm", "harm (lower)")]


class ReportError(CciError):
    """Nothing to report, or a format we do not write."""


@dataclass
class Doc:
    """The report as blocks: ('h', level, text), ('p', text), ('table', caption,
    header, rows), ('figure', name, png bytes, caption)."""
    title: str
    blocks: list[tuple] = field(default_factory=list)
    data: dict = field(default_factory=dict)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, caption: str, header: list[str], rows: list[list]) -> None:
        if rows:
            self.blocks.append(("table", caption, header, [[_cell(c) for c in r] for r in rows]))

    def figure(self, name: str, png: bytes | None, caption: str) -> None:
        if png:
            self.blocks.append(("figure", name, png, caption))


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _ci(est: dict | None) -> str:
    if not est or not est.get("n"):
        return "-"
    return f"{est['value']:.3f} [{est['low']:.2f}, {est['high']:.2f}]"


# --------------------------------------------------------------------------- reading


def _scope_matches(scope: str, names: list[str] | None) -> bool:
    return names is None or bool(set(scope.split(",")) & set(names))


def _section(doc: Doc, db, stage: str, names: list[str], title: str,
             missing: str) -> list[dict]:
    """A section on ``stage``'s kept results: its heading, its data for the JSON, and
    ``missing`` when there are none.  Returns the results to render."""
    results = _latest(db, stage, names)
    doc.data[stage] = [r["result"] for r in results]
    doc.h(2, title)
    if not results:
        doc.p(missing)
    return results


def _latest(db, stage: str, names: list[str] | None) -> list[dict]:
    """The newest result per scope of ``stage`` touching ``names``, newest last."""
    rows = {r["scope"]: r for r in load_results(db, stage) if _scope_matches(r["scope"], names)}
    return sorted(rows.values(), key=lambda r: r["created_at"])


def build_report(db: sqlite_utils.Database, communities: list[str] | None = None,
                 plots: bool = True) -> Doc:
    """Gather everything the store holds about ``communities`` (default: all)."""
    status = [r for r in community_status(db)
              if communities is None or r["community"] in communities]
    if not status:
        raise ReportError("the store has no documents" + (
            f" of {', '.join('r/' + c for c in communities)}" if communities else "")
            + ": run `cci-local run r/NAME` (or `cci-local ingest PATH`) first")
    names = [r["community"] for r in status]
    doc = Doc("cci-local report: " + ", ".join(f"r/{n}" for n in names))
    doc.data = {"generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                "cci_local": __version__, "communities": names}
    doc.p(f"Written by cci-local {__version__} on {doc.data['generated']} from the store; "
          "every figure below comes from what the store holds (no model was called to "
          "write this report). Intervals are 95% bootstrap intervals.")
    _corpus(doc, status)
    _topics(doc, db, names)
    _examples(doc, db, names)
    _training(doc, db, names, plots)
    _privacy(doc, db, names)
    _survey(doc, db, names, plots)
    _fidelity(doc, db, names, plots)
    _psychometrics(doc, db, names, plots)
    return doc


def _corpus(doc: Doc, status: list[dict]) -> None:
    from datetime import datetime, timezone

    def day(utc):
        return datetime.fromtimestamp(utc, timezone.utc).strftime("%Y-%m-%d") if utc else "-"

    doc.h(2, "Corpus")
    doc.table("Documents per community (authors are pseudonymised in the store)",
              ["community", "documents", "posts", "comments", "authors", "from", "to"],
              [[f"r/{r['community']}", r["documents"], r["submissions"], r["comments"],
                r["authors"], day(r["first_utc"]), day(r["last_utc"])] for r in status])
    doc.data["corpus"] = status


def _topics(doc: Doc, db, names: list[str]) -> None:
    from .topics import load_summary

    run = db.execute("SELECT max(id) FROM topic_runs").fetchone()[0]
    doc.h(2, "Topics")
    doc.data["topics"] = None
    if run is None:
        doc.p("No topics fitted yet (`cci-local topics`).")
        return
    s = load_summary(db, run)
    shown = [n for n in names if s.topics and n in s.topics[0]["communities"]]
    rows = []
    for t in s.topics:
        total = sum(t["communities"].values()) or 1
        rows.append([t["topic"], ", ".join(t["keywords"][:8]), t["size"],
                     *[f"{100 * t['communities'][n] / total:.0f}%" for n in shown],
                     t["chunk_rows"]])
    sil = (f"; silhouette {s.silhouette:.2f} (shuffled topics {s.silhouette_shuffled:.2f})"
           if s.silhouette is not None else "")
    doc.p(f"Topic run {run}: {len(s.topics)} topics over {s.n_documents:,} documents, "
          f"{s.n_outliers:,} outliers{sil}.")
    doc.table("Topics, their keywords and each community's share of their documents",
              ["topic", "keywords", "size", *[f"r/{n}" for n in shown], "chunk rows"], rows)
    doc.data["topics"] = {"run": run, "n_documents": s.n_documents, "outliers": s.n_outliers,
                          "silhouette": s.silhouette, "topics": s.topics}


def _examples(doc: Doc, db, names: list[str]) -> None:
    doc.h(2, "Example instruction pairs")
    doc.p("Open-ended questions (CommInst: the teacher's question, each community's answer) "
          "and multiple-choice survey questions (CommSurvey) from the store; template pairs "
          "where the teacher made none.")
    data = {}

    def pairs_of(name: str, kind: str, limit: int) -> list[tuple]:
        return db.execute(
            "SELECT i.kind, i.question, i.options, a.answer FROM instructions i JOIN"
            " community_answers a ON a.instruction_id = i.id WHERE a.community = ?"
            " AND i.kind = ? ORDER BY i.id LIMIT ?", [name, kind, limit]).fetchall()

    for name in names:
        rows = pairs_of(name, "open", 3) or pairs_of(name, "template", 2)
        choice = pairs_of(name, "choice", 2)
        pairs = []
        for kind, question, options, answer in rows + choice:
            if options:
                opts = json.loads(options)
                question += " " + " ".join(f"{k}) {v}" for k, v in opts.items())
            pairs.append({"kind": kind, "question": question, "answer": _clip(answer, 60)})
        data[name] = pairs
        doc.table(f"r/{name}", ["kind", "question", f"r/{name}'s answer"],
                  [[p["kind"], _clip(p["question"], 60), p["answer"]] for p in pairs])
    doc.data["examples"] = data


def _clip(text: str, words: int) -> str:
    parts = " ".join(str(text).split()).split(" ")
    return " ".join(parts[:words]) + (" ..." if len(parts) > words else "")


def _training(doc: Doc, db, names: list[str], plots: bool) -> None:
    marks = ",".join("?" * len(names))
    rows = db.execute(
        "SELECT id, community, base, trainer, examples, steps, total_steps, final_loss, gguf,"
        f" status FROM adapters WHERE community IN ({marks}) ORDER BY community, id",
        names).fetchall()
    doc.h(2, "Training")
    doc.data["training"] = []
    _training_data(doc, db, names)
    if not rows:
        doc.p("No adapter trained yet (`cci-local train r/NAME`).")
        return
    doc.table("LoRA adapters (GGUF, loadable by llama.cpp and Ollama)",
              ["community", "base", "trainer", "examples", "steps", "final loss", "status",
               "adapter"],
              [[f"r/{c}", b, t, e, f"{s or 0}/{ts or '?'}", loss, st, g or "-"]
               for _, c, b, t, e, s, ts, loss, g, st in rows])
    curves = {f"r/{c} #{i}": db.execute("SELECT step, loss FROM training_curve WHERE"
                                         " adapter_id = ? ORDER BY step", [i]).fetchall()
              for i, c, *_ in rows}
    if plots:
        doc.figure("training-loss", plot_curves(curves), "Training loss per optimizer step")
    fields = ("id", "community", "base", "trainer", "examples", "steps", "total_steps",
              "final_loss", "gguf", "status")
    doc.data["training"] = [dict(zip(fields, r, strict=True)) for r in rows]


def _privacy(doc: Doc, db, names: list[str]) -> None:
    """Each community's newest adapter and its newest privacy audit (cci-local audit)."""
    from .gate import newest_audits

    doc.h(2, "Privacy audit")
    doc.data["privacy"] = newest_audits(db, names)
    rows = []
    for entry in doc.data["privacy"]:
        name, audit = entry["community"], entry["audit"]
        if audit is None:
            rows.append([f"r/{name}", entry["adapter_id"], "-", "-", "-", "-", "-",
                         "not audited"])
            continue
        ext, mem, lk = audit["extraction"], audit["membership"], audit.get("leakage") or {}
        rows.append([
            f"r/{name}", entry["adapter_id"], _ci(ext.get("aligned")), _ci(ext.get("base")),
            _ci(mem.get("auc")),
            f"{lk['aligned']['longest']} ({lk['base']['longest']})" if lk else "-",
            _ci(lk["aligned"]["share"]) if lk else "-",
            f"{len(entry['leaked'])} texts reproduced: refused by serve and export"
            if entry["leaked"] else "none extracted"])
    if not rows:
        doc.p("No adapter trained yet.")
        return
    doc.p("What each community's adapter gives away of its training texts, measured by "
          "`cci-local audit`: extraction (a prefix of a training answer; does greedy decoding "
          "reproduce what follows?) for the adapter and the base as control; membership "
          "inference (AUC of the base-calibrated loss; 0.5: nothing can be told); and the "
          "longest span its free answers share with any stored post (characters). Intervals "
          "are Wilson or bootstrap 95%.")
    doc.table("Privacy audit of each community's newest adapter",
              ["community", "adapter", "extracted", "base extracted", "membership AUC",
               "longest shared span (base)", "answers over the span limit", "verdict"], rows)


def _training_data(doc: Doc, db, names: list[str]) -> None:
    """Where each community's training pairs (train split) came from."""
    marks = ",".join("?" * len(names))
    counts = db.execute(
        "SELECT a.community, CASE WHEN i.source LIKE 'import:%' THEN 'imported'"
        " WHEN i.kind = 'template' THEN 'template pairs (real posts)'"
        " ELSE 'CommInst from the teacher' END, count(*) FROM instructions i"
        " JOIN community_answers a ON a.instruction_id = i.id"
        f" WHERE a.community IN ({marks}) AND i.split = 'train'"
        " AND i.kind IN ('open', 'template') GROUP BY 1, 2 ORDER BY 1, 2", names).fetchall()
    files = db.execute(
        "SELECT m.path, m.format, count(DISTINCT r.instruction_id) FROM import_rows r"
        f" JOIN imports m ON m.id = r.import_id WHERE r.community IN ({marks})"
        " GROUP BY m.id ORDER BY m.path", names).fetchall()
    doc.data["training_data"] = {"pairs": [{"community": c, "origin": o, "pairs": n}
                                           for c, o, n in counts],
                                 "imported_files": [{"path": p, "format": f, "questions": n}
                                                    for p, f, n in files]}
    if counts:
        doc.table("Training pairs in the train split, by where they came from",
                  ["community", "origin", "pairs"],
                  [[f"r/{c}", o, f"{n:,}"] for c, o, n in counts])
    if files:
        doc.table("Imported files (`cci-local import`)", ["file", "format", "questions"],
                  [[p, f, f"{n:,}"] for p, f, n in files])


def _survey(doc: Doc, db, names: list[str], plots: bool) -> None:
    for r in _section(doc, db, "survey", names, "Survey",
                      "No survey administered yet (`cci-local survey`)."):
        res = r["result"]
        doc.p(f"{res['source']}, {res['scoring']} scoring, {res['items']} questions"
              f" (base model {r['settings'].get('base')}).")
        for note in res.get("notes", []):
            doc.p(f"Note: {note}")
        # A survey of more communities than the report covers: only the report's keys.
        keys = {c: v for c, v in res["communities"].items() if c in names}
        res = {**res, "communities": keys,
               "verdict": [e for e in res.get("verdict", []) if e.get("community") in keys]}
        rows = []
        for c, v in keys.items():
            for respondent, cells in v["respondents"].items():
                rows.append([f"r/{c}", respondent, _ci(cells["accuracy"]),
                             _ci(cells["discriminating"]), _ci(cells["representativeness"]),
                             _ci(cells.get("tv_score"))])
            rows.append([f"r/{c}", "majority letter", _ci(v["majority_letter"]), "", "", ""])
            rows.append([f"r/{c}", "random", f"{v['random']:.3f}", "", "", ""])
        doc.table("Accuracy against each community's answer key",
                  ["answer key", "respondent", "accuracy", "discriminating only",
                   "representativeness", "TV score (SimBench, 0-100)"], rows)
        lines = [line for entry in res.get("verdict", []) for line in entry["lines"]]
        if lines:
            doc.table("Verdict (paired bootstrap over the same questions, 95% intervals; a "
                      "difference is only claimed when its interval excludes 0)",
                      ["verdict"], [[line] for line in lines])
        if plots:
            doc.figure("survey-accuracy", plot_survey(res),
                       "Survey accuracy with 95% CI; dashed: majority-letter baseline, dotted: "
                       "random")
        for kind, matrix in res.get("matrix", {}).items():
            keys = sorted({c for row in matrix.values() for c in row})
            doc.table(f"Cross-community matrix ({kind}): rows answer, columns are answer keys",
                      ["model", *[f"key r/{c}" for c in keys]],
                      [[m, *[_ci(row.get(c)) for c in keys]] for m, row in matrix.items()])
            if plots:
                doc.figure(f"survey-matrix-{kind}", plot_heatmap(matrix, keys),
                           f"Cross-community accuracy ({kind} models)")


def _fidelity(doc: Doc, db, names: list[str], plots: bool) -> None:
    for r in _section(doc, db, "fidelity", names, "Fidelity",
                      "No fidelity evaluation yet (`cci-local fidelity r/NAME`)."):
        res = r["result"]
        c = res["community"]
        doc.h(3, f"r/{c}")
        for note in res.get("notes", []):
            doc.p(f"Note: {note}")
        shown = [(k, t) for k, t in FIDELITY_COLUMNS
                 if any(k in m for m in res["metrics"].values())]
        doc.table(f"Fidelity to r/{c}'s real documents "
                  f"({r['settings'].get('samples')} answers per model)",
                  ["texts", *[t for _, t in shown]],
                  [[m, *[_ci(v.get(k)) for k, _ in shown]] for m, v in res["metrics"].items()])
        for criterion, scorer in res.get("scorers", {}).items():
            doc.p(f"{criterion} scored by {scorer}.")
        if plots:
            emotions = _emotions(db, res, r["settings"])
            doc.figure(f"emotions-{c}", plot_emotions(emotions),
                       f"Emotion profile (NRC lexicon) of r/{c}'s real documents and of each "
                       "model's kept texts")


def _emotions(db, res: dict, settings: dict) -> dict[str, list[float]]:
    import random

    from .evaluate.emotion import emotion_distribution

    out = {}
    real = [t for (t,) in db.execute("SELECT text FROM documents WHERE community = ?",
                                      [res["community"]])]
    random.Random(settings.get("seed", 0)).shuffle(real)
    out[f"r/{res['community']} (real)"] = emotion_distribution(
        real[:settings.get("real", 200)]).tolist()
    for model in res.get("models", []):
        texts = [t for (t,) in db.execute(
            "SELECT text FROM fidelity_texts WHERE run_id = ? AND model = ? AND kept = 1",
            [res["run"], model])]
        if texts:
            out[model] = emotion_distribution(texts).tolist()
    return out


def _psychometrics(doc: Doc, db, names: list[str], plots: bool) -> None:
    results = _section(doc, db, "psychometrics", names, "Psychometrics",
                       "No instrument administered yet (`cci-local psychometrics ... "
                       "--instrument`).")
    for number, r in enumerate(results, 1):
        res = r["result"]
        respondents = res["respondents"]
        measures = list(next(iter(respondents.values()))["scores"]) if respondents else []
        doc.h(3, res["instrument"])
        for note in res.get("notes", []):
            doc.p(f"Note: {note}")
        doc.table(f"Scored like a human respondent ({res.get('prefixes')} persona prefixes)",
                  ["respondent", *measures, *res.get("rules", [])],
                  [[who, *[_ci(v["scores"][m]) for m in measures],
                    *[f"{'yes' if v['rules'][x] else 'no'} ({v['rule_share'][x]:.2f})"
                      for x in res.get("rules", [])]] for who, v in respondents.items()])
        doc.table("Differences between communities (a - b)",
                  ["a", "b", "score", "difference", "p"],
                  [[d["a"], d["b"], d["score"], _ci(d), f"{d['p']:.3f}"]
                   for d in res.get("differences", [])])
        if plots:
            doc.figure(f"psychometrics-{number}", plot_scores(respondents, measures),
                       f"{res['instrument']}: scores with 95% CI")


# --------------------------------------------------------------------------- rendering


def render_markdown(doc: Doc, figures_dir: Path) -> str:
    """The report as Markdown; its plots are written as PNG files into ``figures_dir``."""
    lines = [f"# {doc.title}", ""]
    for block in doc.blocks:
        kind = block[0]
        if kind == "h":
            lines += ["#" * block[1] + " " + block[2], ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "table":
            _, caption, header, rows = block
            lines += [f"*{caption}*", "", "| " + " | ".join(_md(h) for h in header) + " |",
                      "|" + "|".join("---" for _ in header) + "|"]
            lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
            lines.append("")
        elif kind == "figure":
            _, name, png, caption = block
            figures_dir.mkdir(parents=True, exist_ok=True)
            (figures_dir / f"{name}.png").write_bytes(png)
            lines += [f"![{caption}]({figures_dir.name}/{name}.png)", "", f"*{caption}*", ""]
    return "\n".join(lines)


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.4em 0 1.4em;font-size:.9em}
th,td{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4}caption{caption-side:top;text-align:left;font-style:italic;
padding:.3em 0}figure{margin:1em 0}figcaption{font-style:italic;font-size:.9em}
img{max-width:100%}h2{border-bottom:2px solid #4c72b0;padding-bottom:.2em;margin-top:1.8em}"""


def render_html(doc: Doc) -> str:
    """The report as one self-contained HTML page, its plots embedded as PNG data."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{esc(doc.title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{esc(doc.title)}</h1>"]
    for block in doc.blocks:
        kind = block[0]
        if kind == "h":
            level = min(6, block[1])
            parts.append(f"<h{level}>{esc(block[2])}</h{level}>")
        elif kind == "p":
            parts.append(f"<p>{esc(block[1])}</p>")
        elif kind == "table":
            _, caption, header, rows = block
            parts.append(f"<table><caption>{esc(caption)}</caption><thead><tr>"
                         + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead><tbody>")
            parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
                      for row in rows]
            parts.append("</tbody></table>")
        elif kind == "figure":
            _, name, png, caption = block
            data = base64.b64encode(png).decode()
            parts.append(f'<figure id="{esc(name)}"><img alt="{esc(caption)}" '
                         f'src="data:image/png;base64,{data}"><figcaption>{esc(caption)}'
                         "</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(db: sqlite_utils.Database, path: str | Path, fmt: str | None = None, *,
                 communities: list[str] | None = None) -> Path:
    """Write the report of ``communities`` (default: all) to ``path`` as md, html or
    json (default: from the file's suffix).  Returns the path."""
    path = Path(path)
    fmt = fmt or path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise ReportError(f"{path}: cannot tell the format; use --format {'|'.join(FORMATS)}")
    doc = build_report(db, communities, plots=fmt != "json")
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        text = json.dumps({"title": doc.title, **doc.data}, indent=2, default=str)
    elif fmt == "html":
        text = render_html(doc)
    else:
        text = render_markdown(doc, path.with_name(f"{path.stem}_files"))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
