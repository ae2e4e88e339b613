"""Text cleaning, bot detection, pseudonymisation."""

from __future__ import annotations

from cci_local.ingest.clean import Pseudonymiser, clean_text, is_bot, truncate_words


def test_urls_markdown_entities_and_emails_are_stripped():
    raw = ("**Day 30** &amp; still going! See [my log](https://example.com/log?a=1) or "
           "www.example.org/x\n\n> quoted tip\n\n* bullet one\n* bullet two\n"
           "mail me at someone.name@gmail.com &gt; thanks&#x200B;")
    assert clean_text(raw) == ("Day 30 & still going! See my log or\nquoted tip\nbullet one\n"
                               "bullet two\nmail me at > thanks")


def test_tables_and_subreddit_links():
    assert clean_text("|food|carbs|\n|:-|:-|\n|egg|0.6g|\nsee /r/keto") == \
        "food carbs\negg 0.6g\nsee r/keto"


def test_bots():
    for name in ("AutoModerator", "DietTrackerBot", "converter-bot", "some_bot", "RemindMeBot"):
        assert is_bot(name), name
    for name in ("Botanicbee", "Robotic_Meese", "Classicbottle93", "NotABothanSpy", "abbot"):
        assert not is_bot(name), name
    assert is_bot("stupidrobots", frozenset({"stupidrobots"}))


def test_truncate_keeps_first_words_and_line_breaks():
    text = " ".join(f"w{i}" for i in range(300)).replace("w5 ", "w5\n")
    cut = truncate_words(text, 256)
    assert len(cut.split()) == 256 and cut.endswith("w255") and "w5\nw6" in cut
    assert truncate_words("short text", 256) == "short text"
    assert truncate_words(text, 0) == text


def test_pseudonyms_are_keyed_stable_and_case_insensitive():
    p, q = Pseudonymiser(b"k" * 32), Pseudonymiser(b"j" * 32)
    assert p("KetoFan") == p("ketofan") != q("KetoFan")
    assert p("KetoFan").startswith("u_") and len(p("KetoFan")) == 18


def test_mentions_and_own_name_are_scrubbed():
    p = Pseudonymiser(b"k" * 32)
    text = "Thanks /u/Helper_42 and u/other-one! I am ConeCandy, ConeCandy's bread is mine."
    out = p.scrub(text, "ConeCandy")
    assert "Helper_42" not in out and "other-one" not in out and "ConeCandy" not in out
    assert p("Helper_42") in out and out.count(p("ConeCandy")) == 2
