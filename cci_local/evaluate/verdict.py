"""The survey's result in words (docs/method.md#the-verdict).

For each answer key (community), over the questions every compared respondent
answered, with paired bootstrap intervals (the same questions resampled together):

- does any respondent beat always answering the key's most common letter, or do
  worse than it?
- is any respondent below random (a letter habit: most answers on one letter)?
- does the aligned model beat the persona-prompted base, and the persona the base?
- does a persona prompt change any answer of the base model at all?

A sentence never claims a difference whose 95% interval includes 0; it says the
two are not distinguishable instead, with the interval.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .metrics import Estimate, difference_ci
from .power import ASSUMED_DISCORDANCE, discordance, min_detectable_difference, questions_needed

TARGET = 0.10  # the difference the power line prices in questions


def _hits(result, respondent: str, keys: list[str], key: dict[str, str]) -> np.ndarray:
    answers = result.answers[respondent]
    return np.array([float(answers[k].chosen == key[k]) for k in keys])


def _interval(e: Estimate) -> str:
    return f"{e.value:+.2f} [{e.low:+.2f}, {e.high:+.2f}]"


def compare(a_name: str, b_name: str, diff: Estimate) -> str:
    """One sentence on a paired difference a - b; only a claim when its interval
    excludes 0."""
    if diff.low > 0:
        return f"{a_name} beats {b_name} by {diff.value:.2f} [{diff.low:.2f}, {diff.high:.2f}]"
    if diff.high < 0:
        return (f"{b_name} beats {a_name} by {-diff.value:.2f} [{-diff.high:.2f}, "
                f"{-diff.low:.2f}]")
    return (f"{a_name} and {b_name} are not distinguishable: the difference "
            f"{_interval(diff)} includes 0")


def community_verdict(result, community: str) -> dict:
    """The verdict for one answer key: sentences and the numbers behind them."""
    from ..respondents import labels

    key = result.key(community)
    present = [r for r in labels(community) if r in result.answers]
    shared = sorted(k for k in key if all(k in result.answers[r] for r in present))
    out: dict = {"community": community, "questions": len(shared), "lines": [],
                 "comparisons": {}, "power": []}
    if not shared or not present:
        out["lines"].append(f"r/{community}: no question answered by every respondent")
        return out
    counts = Counter(key[k] for k in shared)
    top = max(sorted(counts), key=lambda letter: counts[letter])
    majority = np.array([float(key[k] == top) for k in shared])
    beating, worse, unclear = [], [], []
    for r in present:
        hits = _hits(result, r, shared, key)
        diff = difference_ci(hits, majority)
        out["comparisons"][f"{r} - majority letter"] = diff.as_dict()
        out["power"].append(power_row(f"{r} - majority letter", hits, majority))
        if diff.low > 0:
            beating.append(f"{r} by {diff.value:.2f} [{diff.low:.2f}, {diff.high:.2f}]")
        elif diff.high < 0:
            worse.append(f"{r} by {-diff.value:.2f} [{-diff.high:.2f}, {-diff.low:.2f}]")
        else:
            unclear.append(f"{r} {_interval(diff)}")
    where = f"r/{community} ({len(shared)} questions)"
    if beating:
        out["lines"].append(f"{where}: beats always answering the most common letter "
                            f"({top}, {majority.mean():.2f}): " + "; ".join(beating))
    if worse:
        out["lines"].append(f"{where}: worse than always answering the most common letter "
                            f"({top}, {majority.mean():.2f}): " + "; ".join(worse))
    if not beating and not worse:
        out["lines"].append(f"{where}: no respondent is distinguishable from always "
                            f"answering the most common letter ({top}, accuracy "
                            f"{majority.mean():.2f})")
    elif unclear:
        out["lines"].append(f"{where}: not distinguishable from always answering the most "
                            f"common letter (the interval includes 0): " + "; ".join(unclear))
    out["lines"] += _below_random(result, present, shared, key, where, out["comparisons"])
    pairs = [(f"aligned:{community}", f"persona:{community}"),
             (f"persona:{community}", "base")]
    for a, b in pairs:
        if a in present and b in present:
            a_hits, b_hits = _hits(result, a, shared, key), _hits(result, b, shared, key)
            diff = difference_ci(a_hits, b_hits)
            out["comparisons"][f"{a} - {b}"] = diff.as_dict()
            out["power"].insert(0, power_row(f"{a} - {b}", a_hits, b_hits))
            out["lines"].append(f"{where}: {compare(a.split(':')[0], b.split(':')[0], diff)}")
    persona = f"persona:{community}"
    if persona in present and "base" in present:
        same = all(result.answers[persona][k].chosen == result.answers["base"][k].chosen
                   for k in shared)
        out["persona_changes_nothing"] = same
        if same:
            out["lines"].append(f"{where}: the persona prompt changed no answer of the base "
                                "model")
    return out


def power_row(comparison: str, a_hits, b_hits) -> dict:
    """The smallest difference this comparison's questions show at 80% power and 95%
    confidence, for its observed discordant share (docs/method.md#power), and the
    questions a difference of TARGET needs at that share."""
    n, share = len(a_hits), round(discordance(a_hits, b_hits), 3)
    # Under TARGET the two nearly always agree: a difference of TARGET cannot arise at
    # that share, so the figures are for the share assumed before any answer.
    used = share if share >= TARGET else ASSUMED_DISCORDANCE
    return {"comparison": comparison, "questions": n, "discordance": share,
            "discordance_used": used,
            "min_detectable": round(min_detectable_difference(n, used), 3),
            # at the discordant share itself: not even the largest possible difference
            "none_detectable": min_detectable_difference(n, used) >= used - 1e-9,
            "needed_for": TARGET, "questions_needed": questions_needed(TARGET, used)}


def _below_random(result, present, shared, key, where, comparisons) -> list[str]:
    """A sentence for each respondent whose accuracy is below picking an option at
    random (1 / options, per question), with the likely cause: how many of its answers
    fall on its favourite letter."""
    options = {item.key: len(item.options) for item in result.items}
    chance = np.array([1.0 / options.get(k, 4) for k in shared])
    lines = []
    for r in present:
        hits = _hits(result, r, shared, key)
        diff = difference_ci(hits, chance)
        comparisons[f"{r} - random"] = diff.as_dict()
        if diff.high < 0:
            letter, count = Counter(result.answers[r][k].chosen for k in shared).most_common(1)[0]
            lines.append(
                f"{where}: {r} is below random ({hits.mean():.2f} against chance "
                f"{chance.mean():.2f}, {_interval(diff)}): {count / len(shared):.0%} of its "
                f"answers are {letter}, a letter habit rather than opinions; try --scoring "
                "text or a bigger base")
    return lines


def verdict(result, communities: list[str]) -> list[dict]:
    """``community_verdict`` for each community that has an answer key."""
    return [community_verdict(result, c) for c in communities if result.key(c)]
