"""Cleaning of Reddit texts and pseudonymisation of usernames.

Kept fast on purpose: ingest of a multi-GB dump calls ``clean_text`` once per
record, so every rewrite is guarded by a cheap substring test first.
"""

from __future__ import annotations

import functools
import hashlib
import html
import re
from dataclasses import dataclass, field

REMOVED_MARKERS = frozenset({"[deleted]", "[removed]", "[deleted by user]", "[removed by reddit]"})

# Accounts that post on behalf of moderators or tools, not community members.
KNOWN_BOTS = frozenset(
    name.lower()
    for name in (
        "AutoModerator", "RemindMeBot", "WikiTextBot", "sneakpeekbot", "RepostSleuthBot",
        "SaveVideo", "savevideobot", "TweetPoster", "tweettranscriberbot", "of_patrol_bot",
        "B0tRank", "GoodBot_BadBot", "TrendingBot", "image_linker_bot", "converter-bot",
        "timezone_bot", "Metric_System_Bot", "LinkifyBot", "HelperBot_", "imguralbumbot",
        "gifv-bot", "VredditDownloader", "alphabet_order_bot", "ectbot", "stabbot",
        "MAGIC_EYE_BOT", "RedditSilverRobot", "ClickableLinkBot", "nice-scores",
        "exponant", "WhyNotCollegeBoard", "haikusbot", "SmallSubBot", "DietTrackerBot",
    )
)
# CamelCase "...Bot", "..._bot", "...-bot", "...BOT", optionally followed by digits.
_BOT_NAME = re.compile(r"(?:[a-z0-9]Bot|[_-][Bb]ot|BOT)\d*$")

_URL = re.compile(r"(?:https?://|www\.)[^\s)\]>]+", re.IGNORECASE)
_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
# The lookbehind makes a match start only at the beginning of a word (fast on long texts).
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_MENTION = re.compile(r"(?<![\w/])/?u/([A-Za-z0-9_-]{3,20})")
# Block markers at the start of a line: quotes, headers, list bullets, rules, table pipes.
_MD_LINE = re.compile(r"(?:>+|#{1,6}|[-+](?= )|\d+\.(?= )|-{3,}$|_{3,}$|\|) ?")
_LINE_MARKER_START = frozenset(">#-+_|0123456789")
_TABLE_RULE = re.compile(r"^\|?(?: ?:?-+:? ?\|)+ ?(?::?-+:?)?$")
_TABLE_PIPES = re.compile(r" ?\| ?")
_NEWLINES = re.compile(r"\n\s*")  # a line break with blank lines and indentation after it


@dataclass
class CleanOptions:
    min_words: int = 4
    max_words: int = 256  # the paper cut comments to 256 words; 0 keeps everything
    extra_bots: frozenset[str] = field(default_factory=frozenset)
    pii: bool = True  # replace personal data by placeholders (pii.py); False: --keep-pii
    pii_names: bool = False  # also person names after a cue (--scrub-names)


def is_bot(author: str | None, extra: frozenset[str] = frozenset()) -> bool:
    if not author:
        return False
    low = author.lower()
    return low in KNOWN_BOTS or low in extra or _BOT_NAME.search(author) is not None


def clean_text(text: str) -> str:
    """Strip URLs, e-mail addresses, markdown and HTML entities; normalise whitespace.

    Paragraphs become single line breaks; blank lines and markdown rules go.  Each
    rewrite is guarded by a cheap substring test: most texts need few of them."""
    if "&" in text:
        text = html.unescape(text)
    if "](" in text:
        text = _MD_LINK.sub(r"\1", text)
    if "http" in text or "www." in text or "HTTP" in text:
        text = _URL.sub("", text)
    if "@" in text:
        text = _EMAIL.sub("", text)
    if "*" in text:
        text = text.replace("*", "")
    if "`" in text:
        text = text.replace("`", "")
    if "__" in text:
        text = text.replace("__", "")
    if "~~" in text:
        text = text.replace("~~", "")
    if "\u200b" in text or "\ufeff" in text:
        text = text.replace("\u200b", "").replace("\ufeff", "")
    if "/r/" in text:
        text = text.replace("/r/", "r/")
    if "\t" in text or "\u00a0" in text or "\r" in text:
        text = text.replace("\t", " ").replace("\u00a0", " ").replace("\r", "")
    while "  " in text:  # str.replace beats a regex here by far
        text = text.replace("    ", " ").replace("  ", " ")
    text = text.strip()
    if "\n" in text:
        text = _NEWLINES.sub("\n", text.replace(" \n", "\n"))
    elif text[:1] not in _LINE_MARKER_START and "|" not in text:
        return text
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line[:1] in _LINE_MARKER_START:
            if line[0] == "|" and _TABLE_RULE.match(line):
                lines[i] = ""
                continue
            match = _MD_LINE.match(line)
            if match:
                line = line[match.end():]
        if "|" in line:
            line = _TABLE_PIPES.sub(" ", line).strip()
        lines[i] = line
    return "\n".join(line for line in lines if line)


@functools.lru_cache(maxsize=8)
def _first_words(n: int) -> re.Pattern:
    return re.compile(r"\s*(?:\S+\s+){" + str(n - 1) + r"}\S+")


def truncate_words(text: str, max_words: int) -> str:
    """Cut ``text`` after ``max_words`` words, keeping its line breaks."""
    if max_words <= 0 or len(text) < 2 * max_words - 1:  # too short to hold that many
        return text
    if text.count(" ") + text.count("\n") < max_words:  # fewer separators than words asked
        return text
    match = _first_words(max_words).match(text)
    return text[: match.end()] if match else text


class Pseudonymiser:
    """Keyed hash of usernames: stable within a store, unlinkable without its key."""

    def __init__(self, key: bytes):
        self._key = key
        self._cache: dict[str, str] = {}

    def __call__(self, username: str) -> str:
        low = username.lower()
        pseudonym = self._cache.get(low)
        if pseudonym is None:
            # Keyed BLAKE2b is a MAC: without the store's key, no one can tell
            # which username a pseudonym stands for, nor test a guess.
            digest = hashlib.blake2b(low.encode("utf-8"), key=self._key, digest_size=8)
            pseudonym = "u_" + digest.hexdigest()
            if len(self._cache) < 500_000:
                self._cache[low] = pseudonym
        return pseudonym

    def scrub(self, text: str, author: str | None) -> str:
        """Replace u/mentions and the author's own name inside the text by pseudonyms."""
        if "u/" in text:
            text = _MENTION.sub(lambda m: self(m.group(1)), text)
        if author and len(author) >= 3 and author.lower() in text.lower():
            text = re.sub(
                r"(?<![\w-])" + re.escape(author) + r"(?![\w-])", self(author), text,
                flags=re.IGNORECASE,
            )
        return text
