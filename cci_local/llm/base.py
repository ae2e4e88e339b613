"""The one small interface every model sits behind."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import WorkFailed

Messages = list[dict]


# Process-wide: real model calls made ('calls', prompt-cache hits not counted) and models
# loaded into memory ('loads'), whatever backend; `cci-local run` reports both per stage.
USAGE = {"calls": 0, "loads": 0}


def count_call(backend: Backend) -> None:
    backend.calls += 1
    USAGE["calls"] += 1


class BackendError(WorkFailed):
    """A model could not be called (server down, model missing, context too small).
    The message says what to do about it."""


class NoLogprobs(BackendError):
    """The backend cannot give option log-probabilities; callers fall back to
    constrained one-token generation."""


@dataclass(frozen=True)
class Sampling:
    """Everything that changes what a model says; part of the prompt-cache key."""

    max_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0
    top_p: float = 1.0

    def as_dict(self) -> dict:
        return {"max_tokens": self.max_tokens, "temperature": self.temperature,
                "seed": self.seed, "top_p": self.top_p}


@dataclass
class Completion:
    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class Backend:
    """A model, local or remote.

    ``chat`` returns the assistant's text, constrained to ``schema`` (a JSON schema)
    when one is given; ``option_logprobs`` returns the log-probability of each
    answer option (e.g. "A".."D") as the first thing the assistant says.
    Subclasses set ``spec`` (the MODEL name as the user gave it), ``remote``
    (whether calls leave this machine) and ``concurrent`` (whether calls may
    overlap: servers yes, in-process models no)."""

    spec: str = ""
    remote: bool = False
    concurrent: bool = False

    def __init__(self) -> None:
        self.calls = 0  # real model calls made (cache hits do not count)

    def identity(self, file_hash: Callable[[Path], str]) -> str:
        """What makes this model this model: file hash, server digest, ...
        ``file_hash`` hashes a file (memoised in the store)."""
        raise NotImplementedError

    def chat(self, messages: Messages, *, schema: dict | None = None,
             sampling: Sampling = Sampling()) -> Completion:
        raise NotImplementedError

    def stream(self, messages: Messages, *, sampling: Sampling = Sampling()) -> Iterator[str]:
        """The reply piece by piece; the default gives it in one piece."""
        yield self.chat(messages, sampling=sampling).text

    # The context window in tokens, when the backend knows it (None: unknown).
    context_length: int | None = None

    def count_tokens(self, messages: Messages) -> int:
        """Tokens the messages take as a prompt.  Backends with a tokenizer count
        exactly; the default estimate (3.5 characters a token, plus the chat
        template's few tokens per message) errs on the long side for English."""
        chars = sum(len(str(m.get("content", ""))) for m in messages)
        return int(chars / 3.5) + 8 * len(messages) + 8

    def option_logprobs(self, messages: Messages, options: list[str]) -> dict[str, float]:
        raise NoLogprobs(f"{self.spec} cannot give option log-probabilities")

    def describe(self) -> str:
        return self.spec

    def close(self) -> None:
        pass


def is_loopback(url: str) -> bool:
    """Whether a server URL is on this machine (so calls to it stay here)."""
    host = urlsplit(url if "://" in url else "http://" + url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def logsumexp(values: list[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(v - top) for v in values))


def options_from_top_logprobs(top: list[tuple[str, float]], options: list[str]) -> dict[str, float]:
    """Map a server's top-k first-token log-probabilities onto answer options.

    A token counts for an option when, stripped of spaces, it is the option or
    the option's start ("A" for "A", " A" or "A)").  Options outside the top k get
    -inf: their probability is below the smallest one the server returned."""
    out = {}
    for option in options:
        key = option.strip()
        matches = [lp for token, lp in top
                   if token.strip() and (token.strip() == key
                                         or (len(key) > 1 and key.startswith(token.strip())))]
        out[option] = logsumexp(matches) if matches else -math.inf
    return out
