"""Files in the encodings researchers really have: Excel's CSV (Windows-1252), a
UTF-16 "Unicode text" export, UTF-8 with a stray byte, legacy JSON; and the file-name
community line only where records took the name.  Every file is written here."""

from __future__ import annotations

import csv
import gzip
import io
import json

import pytest
from click.testing import CliRunner

from cci_local.cli import cli
from cci_local.ingest import ingest
from cci_local.ingest.encoding import detect

ACCENTED = "the Café on Main Street – best keto breakfast in town, honestly"
PLAIN = "plain ascii text about eating eggs and bacon every single day"


def excel_text(n: int = 100) -> str:
    """n rows, every second one with an e-acute and an en dash, as Excel writes CSV."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(["id", "subreddit", "title", "author", "created_utc"])
    for i in range(n):
        writer.writerow([f"p{i}", "keto", f"Post {i}: {ACCENTED if i % 2 else PLAIN}",
                         f"user{i}", 1600000000 + i])
    return buf.getvalue()


def _texts(db) -> list[str]:
    return [t for (t,) in db.execute("SELECT text FROM documents ORDER BY source_line")]


def _ingest_cli(tmp_path, *args):
    result = CliRunner().invoke(cli, ["--db", str(tmp_path / "c.db"), "ingest", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_an_excel_csv_in_windows_1252_keeps_every_row_and_its_accents(tmp_path, db):
    path = tmp_path / "excel.csv"
    path.write_bytes(excel_text().encode("cp1252"))
    with pytest.raises(UnicodeDecodeError):
        path.read_bytes().decode("utf-8")  # what lost half the rows before
    rep = ingest(db, [str(path)]).sources[0]
    assert (rep.records, rep.added, rep.bad, rep.undecodable) == (100, 100, 0, 0)
    assert rep.encoding.startswith("Windows-1252 (detected")
    texts = _texts(db)
    assert sum("Café" in t and "–" in t for t in texts) == 50
    out = _ingest_cli(tmp_path, str(path))
    assert "excel.csv: read as Windows-1252 (detected; --encoding NAME to choose another)" \
        in out and "added 100 documents" in out


def test_a_utf16_export_reads_the_same(tmp_path, db):
    path = tmp_path / "unicode_text.txt"  # Excel's "Unicode Text": UTF-16 with a BOM, tabs
    path.write_bytes(excel_text().replace(",", "\t").encode("utf-16"))
    rep = ingest(db, [str(path)]).sources[0]
    assert (rep.added, rep.bad) == (100, 0) and rep.encoding == "UTF-16 (byte-order mark)"
    assert sum("Café" in t and "–" in t for t in _texts(db)) == 50


def test_utf8_with_one_stray_byte_keeps_that_row_and_says_so(tmp_path, db):
    data = excel_text().encode("utf-8")
    cut = data.index(b"Post 7:")
    path = tmp_path / "stray.csv"
    path.write_bytes(data[:cut] + b"\xff" + data[cut:])
    rep = ingest(db, [str(path)]).sources[0]
    assert (rep.added, rep.bad, rep.undecodable, rep.encoding) == (100, 0, 1, "")
    texts = _texts(db)
    assert sum("Café" in t for t in texts) == 50  # the rest stays UTF-8
    assert [t for t in texts if "\ufffd" in t] == [f"\ufffdPost 7: {ACCENTED}"]
    out = _ingest_cli(tmp_path, str(path))
    assert "1 byte(s) are not valid in that encoding; each became U+FFFD and its record " \
           "was kept" in " ".join(out.split())


@pytest.mark.parametrize("name, encode", [
    ("legacy.ndjson", lambda text: text.encode("cp1252")),
    ("legacy.ndjson.gz", lambda text: gzip.compress(text.encode("cp1252"))),
])
def test_legacy_ndjson_plain_and_compressed(tmp_path, db, name, encode):
    records = [{"id": f"c{i}", "subreddit": "keto", "author": f"u{i}",
                "body": f"Comment {i}: {ACCENTED if i % 2 else PLAIN}"} for i in range(40)]
    path = tmp_path / name
    path.write_bytes(encode("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)))
    rep = ingest(db, [str(path)]).sources[0]
    assert (rep.added, rep.bad) == (40, 0) and rep.encoding.startswith("Windows-1252")
    assert sum("Café" in t for t in _texts(db)) == 20


def test_a_utf16_json_document(tmp_path, db):
    records = [{"id": f"c{i}", "subreddit": "keto", "body": f"Comment {i}: {ACCENTED}"}
               for i in range(10)]
    path = tmp_path / "scraped.json"
    path.write_bytes(json.dumps(records, ensure_ascii=False).encode("utf-16"))
    assert ingest(db, [str(path)]).sources[0].added == 10
    assert all("Café" in t for t in _texts(db))


def test_encoding_option_overrides_detection_and_is_checked(tmp_path, db):
    path = tmp_path / "excel.csv"
    path.write_bytes(excel_text(10).encode("cp1252"))
    rep = ingest(db, [str(path)], encoding="latin-1").sources[0]
    assert rep.encoding == "iso8859-1 (--encoding)" and rep.added == 10
    # latin-1 has no en dash at 0x96: a control character instead, as asked
    assert sum("Café" in t and "–" not in t for t in _texts(db)) == 5
    result = CliRunner().invoke(cli, ["--db", str(tmp_path / "x.db"), "ingest",
                                      "--encoding", "klingon", str(path)])
    assert result.exit_code == 2 and "--encoding: unknown encoding 'klingon'" in result.output


def test_detection_tells_common_encodings_apart():
    russian = "Привет, как дела? Это тест кодировки для русского текста. " * 10
    czech = "Příliš žluťoučký kůň úpěl ďábelské ódy. " * 10
    assert detect(russian.encode("cp1251")).name == "cp1251"
    assert detect(czech.encode("cp1250")).name == "cp1250"
    assert detect(czech.encode("utf-8")).name == "utf-8"
    assert detect("Größe – schön".encode("utf-16-le") * 50).name == "utf-16-le"
    assert detect(b"\xef\xbb\xbfid,text\n").name == "utf-8-sig"


def test_the_file_name_community_is_said_only_where_records_took_it(tmp_path):
    carried = tmp_path / "trunc_comments.ndjson"
    carried.write_text("".join(json.dumps({"id": f"k{i}", "subreddit": "keto",
                                           "body": f"{PLAIN} number {i}"}) + "\n"
                               for i in range(5)))
    out = _ingest_cli(tmp_path, str(carried))
    assert "from the file or folder name" not in out and "added 5 documents" in out
    bare = tmp_path / "nutrition_comments.ndjson"
    bare.write_text("".join(json.dumps({"id": f"n{i}", "body": f"{PLAIN} number {i}"}) + "\n"
                            for i in range(3)) + json.dumps(
        {"id": "n9", "subreddit": "nutrition", "body": f"{PLAIN} carried"}) + "\n")
    out = _ingest_cli(tmp_path, str(bare))
    assert "community r/nutrition from the file or folder name for 3 documents of " \
           f"{bare} that carry none" in " ".join(out.split())
