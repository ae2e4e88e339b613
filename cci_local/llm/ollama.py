"""``ollama:NAME``: a model served by Ollama, through the official client.

Ollama cuts prompts that do not fit its context without a word, and its default
context is small, so every call sends ``num_ctx`` and ``num_predict``; a prompt
that would not fit is refused here with a message instead."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from .base import (
    Backend,
    BackendError,
    Completion,
    Messages,
    NoLogprobs,
    Sampling,
    is_loopback,
    options_from_top_logprobs,
)

DEFAULT_HOST = "http://127.0.0.1:11434"


class OllamaBackend(Backend):
    concurrent = True

    def __init__(self, name: str, *, host: str | None = None, num_ctx: int = 8192,
                 timeout: float = 600.0):
        super().__init__()
        import ollama

        self._ollama = ollama
        self.name = name if ":" in name else f"{name}:latest"
        self.spec = f"ollama:{name}"
        self.host = host or os.environ.get("OLLAMA_HOST") or DEFAULT_HOST
        if "://" not in self.host:  # OLLAMA_HOST may be given as host:port
            self.host = "http://" + self.host
        self.remote = not is_loopback(self.host)  # texts leave this machine
        self.num_ctx = self.context_length = num_ctx
        self._client = ollama.Client(host=self.host, timeout=timeout)

    def _error(self, e: Exception) -> BackendError:
        if isinstance(e, ConnectionError):
            return BackendError(
                f"Ollama is not reachable at {self.host}: start it with `ollama serve` "
                "(or set OLLAMA_HOST to where it runs)")
        if isinstance(e, self._ollama.ResponseError):
            if e.status_code == 404 and "not found" in str(e.error):
                return BackendError(f"Ollama at {self.host} does not have {self.name}: "
                                    f"run `ollama pull {self.name}`")
            return BackendError(f"Ollama at {self.host} answered {e.status_code}: {e.error}")
        return BackendError(f"Ollama at {self.host}: {type(e).__name__}: {e}")

    def identity(self, file_hash: Callable[[Path], str]) -> str:
        """The model's digest: a re-pulled or re-created model is another model."""
        try:
            listing = self._client.list()
        except Exception as e:  # noqa: BLE001 - turned into an actionable message
            raise self._error(e) from e
        for model in listing.models:
            if model.model == self.name:
                return f"ollama:{self.name}@{model.digest}"
        raise BackendError(f"Ollama at {self.host} does not have {self.name}: "
                           f"run `ollama pull {self.name}`")

    def _options(self, sampling: Sampling, messages: Messages) -> dict:
        # Ollama counts tokens itself; 4 characters a token is a safe over-estimate
        # for refusing prompts that could not fit.
        chars = sum(len(m.get("content") or "") for m in messages)
        if chars / 4 + sampling.max_tokens > self.num_ctx:
            raise BackendError(
                f"the prompt (~{chars // 4} tokens) and {sampling.max_tokens} new tokens may not "
                f"fit Ollama's context of {self.num_ctx}: Ollama would cut the prompt silently; "
                "raise num_ctx or shorten the prompt")
        return {"num_ctx": self.num_ctx, "num_predict": sampling.max_tokens,
                "temperature": sampling.temperature, "seed": sampling.seed,
                "top_p": sampling.top_p}

    def chat(self, messages: Messages, *, schema: dict | None = None,
             sampling: Sampling = Sampling()) -> Completion:
        options = self._options(sampling, messages)
        try:
            response = self._client.chat(model=self.name, messages=messages, stream=False,
                                         format=schema, options=options)
        except Exception as e:  # noqa: BLE001
            raise self._error(e) from e
        return Completion(response.message.content or "", response.prompt_eval_count,
                          response.eval_count)

    def stream(self, messages: Messages, *, sampling: Sampling = Sampling()) -> Iterator[str]:
        options = self._options(sampling, messages)
        try:
            for part in self._client.chat(model=self.name, messages=messages, stream=True,
                                          options=options):
                if part.message.content:
                    yield part.message.content
        except Exception as e:  # noqa: BLE001
            raise self._error(e) from e

    def option_logprobs(self, messages: Messages, options: list[str]) -> dict[str, float]:
        sampling = Sampling(max_tokens=1)
        try:
            response = self._client.chat(model=self.name, messages=messages, stream=False,
                                         options=self._options(sampling, messages),
                                         logprobs=True, top_logprobs=20)
        except Exception as e:  # noqa: BLE001
            raise self._error(e) from e
        positions = getattr(response, "logprobs", None)
        if not positions:
            raise NoLogprobs(f"Ollama at {self.host} returned no log-probabilities "
                             "(it needs Ollama 0.12.11 or newer)")
        first = positions[0]
        top = [(t.token, t.logprob) for t in (first.top_logprobs or [])]
        return options_from_top_logprobs(top or [(first.token, first.logprob)], options)

    def describe(self) -> str:
        return f"{self.spec} at {self.host}"

    def close(self) -> None:
        self._client.close()
