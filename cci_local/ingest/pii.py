"""Personal data in texts: found and replaced by typed placeholders before storage.

``PiiScrubber`` finds phone numbers (Google's libphonenumber, through the
``phonenumbers`` package), card-like numbers (13 to 19 digits that pass the Luhn
check), IP addresses (IPv4 and IPv6, checked by ``ipaddress``), street addresses
and P.O. boxes, other platforms' handles (``ig: @name``, ``my insta is name``,
``discord name#1234``) and stated ages (``I'm 19``, ``19 years old``, ``(25M)``),
and with ``names=True`` person names after a cue (``my name is``, ``my husband``).
Each span becomes its placeholder (``PLACEHOLDERS``); for ages only the number
goes, so ``(25M)`` becomes ``([age]M)``.  The regular expressions below are the
documentation of what is found: docs/method.md#pii-on-ingest has the measured
precision and recall; pii_eval.py measures them on a labelled file.

Fast on purpose, like clean.py: ingest scrubs every record of multi-GB dumps, so
each recognizer runs only where a cheap test says it could match (digits, an
``@``, a platform's name), and libphonenumber only on runs of 7+ digits.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import phonenumbers

PLACEHOLDERS = {
    "phone": "[phone]", "address": "[address]", "card": "[card]", "ip": "[ip]",
    "handle": "[handle]", "age": "[age]", "name": "[name]",
}
ENTITIES = tuple(PLACEHOLDERS)
# Which span wins where two overlap (after the longer one): earlier in this list.
_PRIORITY = {entity: i for i, entity in enumerate(ENTITIES)}

# --- numbers: phones, cards, IPv4 ---------------------------------------------------
# A run of digits with the separators phone and card numbers and IPv4 addresses are
# written with, 7 characters or more: one pass over the text finds every candidate.
_NUMBER_RUN = re.compile(r"\d[\d ().\-]{5,}\d")
_NOT_DIGITS = re.compile(r"\D")
# A local 7-digit number (555-1234) is not a valid US number without its area code:
# found only after a cue such as "call me at" or "my number is".
_LOCAL_PHONE = re.compile(r"(?<![\d-])\d{3}[-. ]\d{4}(?![\d-])")
_PHONE_CUE = re.compile(r"(?i)\b(?:call|text|phone|cell|mobile|number|num|whatsapp|reach me|"
                        r"ring)\b[^\n\d]{0,20}$")
_RANGE = re.compile(r"\d{3,4}\s?[-–]\s?\d{3,4}\b(?!-)")  # "1800-2000 ...", "1200-1500 ..."
_UNIT_AFTER = re.compile(r"\s?(?:lbs?|pounds|kgs?|kilos|g|grams|mg|cal|kcal|calories|steps|"
                         r"k|%)\b", re.IGNORECASE)
# National formats of the largest English-speaking Reddit audiences; numbers written
# with +country are found whatever the region.
_PHONE_REGIONS = ("US", "GB", "AU")
# The shapes a US number is written in (libphonenumber decides; this only spares it the
# runs that cannot be one, such as "1500 1800 2000").
_US_SHAPE = re.compile(r"(?:1[ .-]?)?\(?\d{3}\)?[ .-]?\d{3}[ .-]?\d{4}")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_VERSION_BEFORE = re.compile(r"(?i)\b(?:v|version|ver\.?|release|build|firmware|ios|android)"
                             r"\s*$")


def _any_of(words: Iterable[str]):
    """A fast test for any of ``words`` in a string: one expression of ``in`` tests,
    compiled once (a generator inside any() costs more than the tests themselves)."""
    test = " or ".join(f"{word!r} in s" for word in words)
    return eval(f"lambda s: {test}")  # built from the string literals of this module


def _luhn(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = ord(char) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _numbers(text: str, spans: list) -> None:
    for match in _NUMBER_RUN.finditer(text):
        run = match.group()
        start, end = match.span()
        if text[start - 1:start] in ("+", "("):  # the run starts at a digit: a fast scan
            start -= 1
            run = text[start:end]
        if run.count(".") >= 3 and _ipv4(text, start, end, spans):
            continue
        digits = _NOT_DIGITS.sub("", run)
        if len(digits) < 7:
            continue
        if 13 <= len(digits) <= 19 and _luhn(digits) and len(set(digits)) > 1:
            first = start + len(run) - len(run.lstrip("+( "))  # a card starts with a digit
            spans.append((first, end, "card"))
            continue
        if len(digits) > 15:
            continue
        # libphonenumber looks at a little context (a leading '+' or '(').
        lo = max(0, start - 1)
        window = text[lo:end + 1]
        found_any = False
        # +44 ...: any region reads it; 0...: a national format (GB, AU); else US.
        first = digits[0] if run.lstrip("( ")[:1] != "+" else "+"
        regions = _PHONE_REGIONS[:1] if first != "0" else _PHONE_REGIONS[1:]
        if first not in "+0" and not _US_SHAPE.search(run):
            regions = ()
        for region in regions:
            for found in phonenumbers.PhoneNumberMatcher(
                    window, region, leniency=phonenumbers.Leniency.VALID):
                if _RANGE.match(found.raw_string) or _UNIT_AFTER.match(text, lo + found.end):
                    continue  # "1800-2000 273 lbs": a range of calories, then a weight
                spans.append((lo + found.start, lo + found.end, "phone"))
                found_any = True
        if not found_any and len(digits) == 7:
            local = _LOCAL_PHONE.search(text, start, end)
            if local and _PHONE_CUE.search(text, max(0, local.start() - 40), local.start()):
                spans.append((*local.span(), "phone"))


def _ipv4(text: str, start: int, end: int, spans: list) -> bool:
    """IPv4 addresses within a run of digits and dots; True when one was found."""
    found = False
    for match in _IPV4.finditer(text, max(0, start - 1), end + 1):
        if _VERSION_BEFORE.search(text, max(0, match.start() - 12), match.start()):
            continue  # "version 1.2.3.4", "v10.0.0.1"
        try:
            ipaddress.IPv4Address(match.group())
        except ValueError:
            continue
        spans.append((*match.span(), "ip"))
        found = True
    return found


# --- IPv6 -----------------------------------------------------------------------
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")


def _ipv6(text: str, spans: list) -> None:
    if "::" in text or text.count(":") >= 7:
        for match in _IPV6.finditer(text):
            candidate = match.group()
            if len(candidate) < 3 or not any(c.isalnum() for c in candidate):
                continue
            try:
                ipaddress.IPv6Address(candidate)
            except ValueError:
                continue
            spans.append((*match.span(), "ip"))


# --- street addresses ---------------------------------------------------------------
_SUFFIXES = ("Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|"
             "Way|Terrace|Ter|Circle|Cir|Parkway|Pkwy|Highway|Hwy|Square|Sq|Trail|Trl|"
             "Crescent|Cres|Close|Loop|Row|Pike|Alley")
_UNIT = r"(?:,?\s*(?:[Aa]pt|[Aa]partment|[Ss]uite|[Ss]te|[Uu]nit|#)\.?\s*#?[0-9A-Za-z]{1,5}\b)?"
_CITY_STATE_ZIP = (r"(?:,\s*[A-Z][a-z]+(?:\s[A-Z][a-z]+){0,2})?"
                   r"(?:,?\s*[A-Z]{2}\b)?(?:,?\s*\d{5}(?:-\d{4})?\b)?")
# House number (not part of a number, price or date), optional direction, one to three
# capitalised (or ordinal) name words, a street suffix; then an optional unit, city,
# state and ZIP code.  Every pattern here starts with a character class, so the regex
# engine skips ahead to candidates fast.
_ADDRESS = re.compile(
    r"\d(?<![\w$£€.,/:]\d)\d{0,5}[A-Za-z]?\s+"
    r"(?:(?:[NSEW]|North|South|East|West)\.?\s+)?"
    r"(?:(?:\d{1,3}(?:st|nd|rd|th)|[A-Z][A-Za-z'’-]+)\s+){1,3}"
    rf"(?:{_SUFFIXES}|{_SUFFIXES.lower()})\b(?!\.?\s*Pepper)\.?"
    + _UNIT + _CITY_STATE_ZIP)
# Lower-case addresses only after a cue: "I live at 42 elm street".
_ADDRESS_CUES = ("address", "live", "living", "located", "moved", "send", "mail", "ship",
                 "deliver")
_ADDRESS_CUED = re.compile(
    r"(?i:\b(?:address(?: is)?:?|live (?:at|on)|lives (?:at|on)|living (?:at|on)|located at|"
    r"moved to|send (?:it|them) to|mail (?:it|them) to|ship (?:it|them) to|deliver(?:ed)? to))"
    r"\s+(\d{1,6}[a-z]?\s+(?:[a-z][a-z'-]+\s+){1,3}"
    r"(?:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|place|way)\b\.?"
    + _UNIT + r")")
_PO_BOX = re.compile(r"[Pp]\.?\s?[Oo]\.?\s?[Bb][Oo][Xx]\s+\d{1,6}\b")
_HAS_ADDRESS_CUE = _any_of(_ADDRESS_CUES)
_NOT_STREET_WORDS = frozenset(
    "the a an of my to and down up miles mile blocks block km minutes mins hours times days "
    "weeks months years lbs pounds kg grams cups".split())


_ABBREVIATIONS = frozenset("st ave rd blvd ln dr ct pl ter cir pkwy hwy sq trl cres".split())


def _address_end(found: str, end: int) -> int:
    """Where an address ends: a full stop after "Street" ends the sentence, not "St."."""
    if found.endswith(".") and found[:-1].rsplit(None, 1)[-1].lower() not in _ABBREVIATIONS:
        return end - 1
    return end


def _addresses(text: str, low: str, spans: list) -> None:
    for match in _ADDRESS.finditer(text):
        words = match.group().split()
        if words[1].lower() in _NOT_STREET_WORDS:
            continue
        spans.append((match.start(), _address_end(match.group(), match.end()), "address"))
    if _HAS_ADDRESS_CUE(low):
        for match in _ADDRESS_CUED.finditer(text):
            words = match.group(1).split()
            if not _NOT_STREET_WORDS.intersection(w.lower() for w in words[1:-1]):
                spans.append((match.start(1), _address_end(match.group(1), match.end(1)),
                              "address"))
    if "box" in low:
        for match in _PO_BOX.finditer(text):
            spans.append((*match.span(), "address"))


# --- other platforms' handles ---------------------------------------------------------
_PLATFORMS = (r"ig|insta(?:gram)?|twitter|tik\s?tok|snap(?:chat)?|sc|discord|telegram|kik|"
              r"twitch|threads|venmo|cash\s?app|fb|facebook|youtube|yt|bluesky|bsky|mastodon|"
              r"tumblr|pinterest|whatsapp|skype|wechat")
# In the lower-cased text (with a space in front): one of these, or no platform handle.
_PLATFORM_WORDS = ("insta", "twitter", "tiktok", "tik tok", "snap", "discord", "telegram",
                   "kik", "twitch", "threads", "venmo", "cashapp", "cash app", "facebook",
                   "youtube", "bsky", "bluesky", "mastodon", "tumblr", "pinterest", "whatsapp",
                   "skype", "wechat",
                   " ig ", " ig:", " ig'", " sc:", " sc ", " fb ", " fb:", " yt ", " yt:")
_HAS_PLATFORM = _any_of(_PLATFORM_WORDS)
_HANDLE_CHARS = r"[A-Za-z0-9_][A-Za-z0-9_.]{1,29}(?:#\d{4})?"
# "@name" anywhere (e-mail addresses are gone already: clean_text drops them).
# A handle holds a letter or "_": "@2000 calories" is "at 2000".
_AT_HANDLE = re.compile(r"@(?<![\w@/]@)(?=[\w.]*[A-Za-z_])([A-Za-z0-9_][A-Za-z0-9_.-]{1,29}"
                        r"[A-Za-z0-9_])")
# A platform's name, then "handle/username is", ":" or "add me", then the name.
_PLATFORM_HANDLE = re.compile(
    rf"(?i:\b(?:{_PLATFORMS})\b(?:\s+(?:handle|username|user ?name|user|name|id|account|"
    r"acc|tag|@|me))?\s*(?:is|:|=|@)\s*)@?"
    rf"({_HANDLE_CHARS})")
# "find me on insta name_42", "kik me name77": a platform, then a name that could not
# be a word (it holds a digit, "_" or ".").
_ON_PLATFORM = re.compile(
    rf"(?i:\b(?:{_PLATFORMS})(?:\s+me)?\s+)@?"
    r"([A-Za-z_][A-Za-z]*[_.\d][A-Za-z0-9_.]*[A-Za-z0-9_]|[A-Za-z0-9_]+#\d{4})")
# "follow keto_with_kim on insta": the name before the platform.
_BEFORE_PLATFORM = re.compile(
    r"(?i:\b(?:follow|add|find|check out)\s+)@?([A-Za-z0-9_][A-Za-z0-9_.]{1,29})"
    rf"(?i:\s+on\s+(?:{_PLATFORMS})\b)")
_DISCORD_TAG = re.compile(r"#(?<=[A-Za-z0-9_.]{2}#)\d{4}(?![\w#])")
_DISCORD_NAME = re.compile(r"[A-Za-z0-9_.]{2,32}$")
_NOT_HANDLES = frozenset(
    "the a an and or but so that this it its not no yes is are was be been being my me i "
    "you your he she they we our their his her them us on in at to of for with from by as "
    "private public down up out off over dead gone great good bad fine ok okay just only "
    "really very pretty also too still now here there then where when what who why how "
    "same different full empty mostly mainly all any some none more less much many one two "
    "like dm pm message link profile page post bio him them her me".split())


def _handles(text: str, low: str, spans: list) -> None:
    if "@" in text:
        for match in _AT_HANDLE.finditer(text):
            spans.append((*match.span(), "handle"))
    if "#" in text:
        for match in _DISCORD_TAG.finditer(text):
            name = _DISCORD_NAME.search(text, max(0, match.start() - 32), match.start())
            if name and not text[name.start() - 1:name.start()].isalnum():
                spans.append((name.start(), match.end(), "handle"))
    if _HAS_PLATFORM(low):
        for pattern in (_PLATFORM_HANDLE, _ON_PLATFORM, _BEFORE_PLATFORM):
            for match in pattern.finditer(text):
                name = match.group(1)
                if name.lower().rstrip(".") in _NOT_HANDLES or name.isdigit():
                    continue
                start = match.start(1)
                end = start + len(name.rstrip("."))
                if text[start - 1:start] == "@":
                    start -= 1
                spans.append((start, end, "handle"))


# --- stated ages ------------------------------------------------------------------
_AGE_NUMBER = r"(1[3-9]|[2-9]\d)"  # 13 to 99: younger is not a poster's own age here
_NOT_NUMBER_AFTER = r"(?![\d.,]\d|\s*%)"
# What may follow "I'm 19" for it to be an age: the end of a clause or a sex/age word;
# never a unit ("I'm 19 days in", "I'm 19 lbs down", "I'm 25% body fat").
_AGE_END = (r"(?=\s*(?:[,;:!?)\n]|\.(?!\d)|$|-?\s*(?:and\b(?!\s+a\s+half)|but|so|now|with|"
            r"yo|y/o|years?\b(?!\s+(?:in|into|of|on|ago|since))|yrs?\b|year-old|[mf]\b|male|"
            r"female|guy|girl|woman|man|lady|dude|myself|too|as well|lol|haha|here|turning|"
            r"going on|nearly|almost|soon|this|next|last|who|that|\(|/\s*[mf]\b)))")
_RELATIVES = (r"husband|wife|son|daughter|mom|mum|mother|dad|father|boyfriend|girlfriend|"
              r"partner|fianc[eé]e?|brother|sister|bf|gf|kid|child")
# At 45 I ... / at 30, my ... (digit first: fast to scan for; 13 and over checked after)
_AT_AGE = re.compile(r"([1-9]\d)(?<=\b[Aa]t \d\d),?\s+(?=(?:I|I'm|I’m|im|my)\b)")
# (substrings of the lower-cased text, one of which must be there; the pattern, whose
# group 1 is the age).  Each pattern starts with a character class (fast to scan for).
_AGE_RULE_CUES = (
    # I'm 19 / I am 19 / im 19 / I'm a 19 / I'm now 19
    ((" i'm ", " i’m ", " im ", " i am "),
     re.compile(r"[Ii](?<!\w[Ii])(?:['’]?[mM]|\s+am)\s+(?:a\s+|now\s+|only\s+|just\s+|"
                r"almost\s+|nearly\s+|turning\s+)?" + _AGE_NUMBER + r"(?![\d.,]\d)"
                + _AGE_END)),
    # I was 26 / since I was 26
    ((" i was ",), re.compile(r"[Ii](?<!\w[Ii]) was\s+" + _AGE_NUMBER + r"(?![\d.,]\d)"
                              + _AGE_END)),
    ((" at ",), _AT_AGE),
    # my wife is 44 / my son just turned 16
    (tuple(f" my {who}" for who in _RELATIVES.replace("fianc[eé]e?", "fianc").split("|")),
     re.compile(r"[Mm]y\s+(?:" + _RELATIVES + r")\s+(?:is|was|just turned|turned)"
                           r"\s+(\d{1,2})(?![\d.,]\d)" + _AGE_END)),
    # 19 years old / 19-year-old / 19 yrs old / 19 yo / 19y/o / 19 y.o.
    (("year", "yr", "yo", "y/o", "y.o"),
     re.compile(r"(\d(?<![\w$.,]\d)\d?)\s?-?\s?(?:(?:[Yy]ears?|[Yy]rs?|[Yy]r)"
                r"[\s-]+[Oo]ld\b|(?:[Yy][Oo]|[Yy]/[Oo]|[Yy]\.[Oo]\.?)(?!\w))")),
    # age 32 / aged 32 / age: 32 / my age is 32 (not "by age 40", a goal)
    (("age",), re.compile(r"[Aa](?<!\w[Aa])(?<![Bb]y [Aa])ge[ds]?\s*(?:is|of|:|=|-)?\s*"
                          + _AGE_NUMBER + r"\b" + _NOT_NUMBER_AFTER)),
    # I turned 30 / turning 40 / just turned 21
    (("turn",), re.compile(r"[Tt]urn(?:ed|ing|s)\s+" + _AGE_NUMBER + r"\b(?![.,]\d|\s*(?:%|lbs?|"
                           r"pounds|kgs?|kilos|g\b|grams|days?|weeks?|months?|mins?|minutes|"
                           r"hours?|degrees|cal|calories|bmi))")),
    # Reddit's age/sex tags in brackets: (25M), [32F], (F32), (25/f), (25 m)
    (("(", "["), re.compile(r"[(\[]\s*" + _AGE_NUMBER + r"\s*[/,]?\s*(?:[mfMF]|NB|nb|ftm|mtf)"
                            r"\s*[)\]/,]")),
    (("(", "["), re.compile(r"[(\[]\s*(?:[mfMF]|NB|nb)\s*[/,]?\s*" + _AGE_NUMBER
                            + r"\s*[)\]/,]")),
)
_AGE_RULES = tuple((_any_of(cues), pattern) for cues, pattern in _AGE_RULE_CUES)
# ... and bare: 25F, 32 m, checked in context by _bare_tag()
_BARE_TAG = re.compile(r"([1-9]\d)(?<![\w.$£€]\d\d),?\s?([MFmf]|NB)(?![\w'’])")
_TAG_AFTER = re.compile(r",?\s*(?:here|\d\s?['’]\s?\d|\d\s?ft|SW|CW|HW|GW|starting|on keto|and "
                        r"my|\|)")
_TAG_AFTER_LOWER = re.compile(r"\s*(?:here|,|\))")
_TAG_BEFORE = re.compile(r"(?:\b[Ii]|\b[Mm]e),? $")


def _bare_tag(text: str, match: re.Match) -> bool:
    """Is this "25F" an age/sex tag: at the start of a line, after "I"/"me" or before
    "here", a height or the weights a progress post gives (SW, CW, GW)?"""
    start, end = match.span()
    upper = match.group(2) != "m" and match.group(2) != "f"
    if start == 0 or text[start - 1] == "\n":
        return True
    if _TAG_BEFORE.search(text, max(0, start - 5), start):
        return upper or bool(_TAG_AFTER_LOWER.match(text, end))
    if upper:
        return bool(_TAG_AFTER.match(text, end))
    return bool(re.match(r"\s*(?:here|,\s*\d['’]\d)", text[end:end + 12]))


def _ages(text: str, low: str, spans: list) -> None:
    for has_cue, pattern in _AGE_RULES:
        if has_cue(low):
            for match in pattern.finditer(text):
                if pattern is not _AT_AGE or match.group(1) >= "13":
                    spans.append((*match.span(1), "age"))
    for match in _BARE_TAG.finditer(text):
        if match.group(1) >= "13" and _bare_tag(text, match):
            spans.append((*match.span(1), "age"))


# --- names (off by default) ---------------------------------------------------------
_NAME_CUE = re.compile(
    r"(?:\b[Mm]y name(?: is|'s|’s)|\b[Nn]ame(?:'s|’s| is)|\b[Cc]all me|\bI go by|"
    r"\b(?:[Hh]i|[Hh]ello|[Hh]ey)[,!]? (?:I'm|I’m|I am|im|Im|it's|this is)|"
    r"\b[Mm]y (?:husband|wife|son|daughter|mom|mum|mother|dad|father|boyfriend|girlfriend|"
    r"partner|fianc[eé]e?|brother|sister|friend|coworker|co-worker|roommate|bf|gf|"
    r"grandma|grandpa|aunt|uncle|cousin|niece|nephew|kid|baby|doctor's name is),?|"
    r"\b(?:[Ss]incerely|[Cc]heers|[Tt]hanks|[Rr]egards|[Ll]ove),\n?)"
    r" ?([A-Z][a-z]{1,15}(?:[ -][A-Z][a-z]{1,15})?)\b")
_NOT_NAMES = frozenset(
    "I The A An And But So It My He She They We You This That There Here Not No Yes Just "
    "Keto Paleo Vegan Vegetarian Carnivore Atkins New Still Also Very Really Is Was Has Had "
    "Who What When Where Why How Everyone Guys Folks All Thanks Thank Doctor Dr Mr Mrs Ms "
    "American British Canadian Italian Mexican Indian Asian Black White Type Diabetic "
    "Celiac Christian Jewish Muslim Catholic Monday Tuesday Wednesday Thursday Friday "
    "Saturday Sunday January February March April May June July August September October "
    "November December Reddit Google Amazon Costco Walmart Trader Joe".split())


def _names(text: str, spans: list) -> None:
    for match in _NAME_CUE.finditer(text):
        words = match.group(1).split(" ")
        if words[0] in _NOT_NAMES:
            continue
        start, end = match.span(1)
        if len(words) > 1 and words[1] in _NOT_NAMES:
            end = start + len(words[0])
        spans.append((start, end, "name"))


# --- the scrubber -----------------------------------------------------------------
_HAS_DIGIT = re.compile(r"\d")


def find_pii(text: str, names: bool = False) -> list[tuple[int, int, str]]:
    """Every span of personal data in ``text``: (start, end, entity), sorted and
    non-overlapping (of two overlapping spans the longer wins, then the entity
    earlier in ENTITIES)."""
    spans: list[tuple[int, int, str]] = []
    low = " " + text.lower()  # for the cheap tests: " i'm " holds at the start too
    if _HAS_DIGIT.search(text):
        _numbers(text, spans)
        _ipv6(text, spans)
        _addresses(text, low, spans)
        _ages(text, low, spans)
    _handles(text, low, spans)
    if names:
        _names(text, spans)
    if len(spans) < 2:
        return spans
    spans.sort(key=lambda s: (s[0] - s[1], _PRIORITY[s[2]], s[0]))  # longest first
    taken: list[tuple[int, int, str]] = []
    for span in spans:
        if all(span[1] <= t[0] or span[0] >= t[1] for t in taken):
            taken.append(span)
    taken.sort()
    return taken


@dataclass
class PiiScrubber:
    """Replace personal data by placeholders (``names``: person names too).

    ``replace()`` returns the text and the entities replaced; calling the scrubber
    returns the text and adds them up in ``counts``, which ``take()`` returns and
    resets."""

    names: bool = False
    counts: Counter = field(default_factory=Counter)

    def replace(self, text: str) -> tuple[str, tuple[str, ...]]:
        spans = find_pii(text, self.names)
        if not spans:
            return text, ()
        parts, last = [], 0
        for start, end, entity in spans:
            parts.append(text[last:start])
            parts.append(PLACEHOLDERS[entity])
            last = end
        parts.append(text[last:])
        return "".join(parts), tuple(span[2] for span in spans)

    def __call__(self, text: str) -> str:
        text, found = self.replace(text)
        if found:
            self.counts.update(found)
        return text

    def take(self) -> dict[str, int]:
        counts, self.counts = dict(self.counts), Counter()
        return counts


def describe_counts(counts: dict[str, int]) -> str:
    """'12 phone, 3 address, 40 age' in ENTITIES order; 'none' when nothing was found."""
    shown = [f"{counts[e]:,} {e}" for e in ENTITIES if counts.get(e)]
    return ", ".join(shown) or "none"
