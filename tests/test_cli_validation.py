"""Arguments and validation, in-process with click's CliRunner (no model loads): every
bad option is one `error: ...` line and the exit code of its CciError, from the one
place the click group turns errors into messages, and nothing is stored."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cci_local.cli import cli
from cci_local.errors import CciError, WorkFailed
from cci_local.store import open_store


def invoke(tmp_path, *args):
    return CliRunner().invoke(cli, ["--db", str(tmp_path / "s.db"), *args])


def error_line(result) -> str:
    return " ".join(result.output.split())


@pytest.mark.parametrize("args, code, message", [
    (["survey", "--question-template", "{question} only"], 2,
     "--question-template must contain {options}"),
    (["survey", "--persona-text", "member of {subreddit}"], 2,
     "--persona-text: only {question}, {options} and {community} can be replaced"),
    (["generate", "--open", "0", "--choice", "0"], 2, "--open and --choice are both 0"),
    (["generate", "--teacher", "no-such-model", "--max-rows", "1"], 2,
     "unknown model 'no-such-model'"),
    (["ask", "what?", "r/keto", "--options", "a"], 2,
     "a multiple-choice question needs at least two options"),
    (["psychometrics", "r/keto", "--instrument", "edeq"], 2,
     "have no text: give the item bank CSV (--items FILE)"),
    (["run", "r/keto", "--instrument", "edeq", "--offline"], 1,
     "nothing was run; fix first: --instrument:"),
    (["report", "r/keto"], 2, "no store at"),
    (["topics", "--clusterer", "hdbscan", "--topics", "5"], 2,
     "--topics K sets KMeans's topic count and HDBSCAN finds its own"),
    (["topics", "--clusterer", "kmeans"], 2, "--clusterer kmeans needs a topic count"),
])
def test_bad_options_are_one_error_line_with_its_exit_code(tmp_path, args, code, message):
    result = invoke(tmp_path, *args)
    assert result.exit_code == code, result.output
    assert message in error_line(result), result.output
    assert "Traceback" not in result.output


def test_ingest_mapping_file_errors(tmp_path):
    bad = tmp_path / "map.toml"
    bad.write_text('txt = "msg"\n')
    data = tmp_path / "x.jsonl"
    data.write_text('{"msg": "four words are here"}\n')
    result = invoke(tmp_path, "ingest", str(data), "--fields", str(bad))
    assert result.exit_code == 2 and "unknown keys ['txt']" in error_line(result)
    missing = tmp_path / "export.csv"
    missing.write_text("headline,body\nHello there everyone,four words are here\n")
    result = invoke(tmp_path, "ingest", str(missing), "--text", "postText", "--community", "x")
    assert result.exit_code == 2 and "no column 'postText' among" in error_line(result)
    store = open_store(tmp_path / "s.db")
    assert store.execute("SELECT count(*) FROM documents").fetchone()[0] == 0


def test_every_stage_error_is_a_cci_error_with_the_right_exit_code():
    from cci_local.ask import AskError
    from cci_local.cluster import ClusterError
    from cci_local.collect import CollectError
    from cci_local.data import NoData
    from cci_local.embed import EmbedderError
    from cci_local.evaluate.instruments import InstrumentError
    from cci_local.evaluate.survey import SurveyError
    from cci_local.evaluate.survey_file import SurveyFileError
    from cci_local.generate import GenerateError
    from cci_local.ingest import BadInput
    from cci_local.ingest.shapes import MappingError
    from cci_local.llm import BackendError, InvalidOutput, UnknownModel
    from cci_local.pipeline import PipelineError
    from cci_local.report import ReportError
    from cci_local.respondents import NoAdapter
    from cci_local.store import StoreError, UnknownCommunity
    from cci_local.topics import TopicsError
    from cci_local.train import TrainError

    usage = [AskError, ClusterError, EmbedderError, InstrumentError, SurveyError, SurveyFileError,
             GenerateError, BadInput, MappingError, UnknownModel, ReportError, NoAdapter,
             StoreError, UnknownCommunity, TopicsError, TrainError]
    failed = [CollectError, NoData, BackendError, InvalidOutput, PipelineError]
    for error in usage:
        assert issubclass(error, CciError) and error.exit_code == 2, error
    for error in failed:
        assert issubclass(error, WorkFailed) and error.exit_code == 1, error
