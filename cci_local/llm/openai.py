"""``openai:NAME`` and ``openai-compatible:URL#NAME`` (vLLM, llama-server, LM Studio,
llama_cpp.server) through the official ``openai`` SDK.

The key comes from the environment only ($OPENAI_API_KEY; $CCI_LOCAL_API_KEY
first for a compatible server) and is never part of a spec, a cache key, a
stored request or an error message.  Structured output is asked for the
strictest way the server accepts: OpenAI's ``json_schema``, else ``json_object``
with a ``schema`` (llama_cpp.server), else plain ``json_object`` with the schema
in the prompt; what a server accepts is remembered for the rest of the run."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

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

SCHEMA_MODES = ("json_schema", "json_object_schema", "json_object")
_schema_mode: dict[str, int] = {}  # base URL -> index into SCHEMA_MODES that works there
_KEYLIKE = re.compile(r"\b(sk|key)-[A-Za-z0-9_\-*]{6,}")


def _strip_credentials(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


class OpenAIBackend(Backend):
    concurrent = True

    def __init__(self, model: str, *, base_url: str | None = None, timeout: float = 600.0,
                 max_retries: int = 6, context_length: int | None = None,
                 extra_body: dict | None = None):
        super().__init__()
        # Fields the server takes beyond OpenAI's (llama-server's per-request "lora").
        self.extra_body = extra_body or {}
        # The API does not say how long a context the model has: the registry entry can.
        self.context_length = context_length
        import openai

        self._openai = openai
        self.model = model
        if base_url is None:
            self.base_url = "https://api.openai.com/v1"
            self.spec = f"openai:{model}"
            key = os.environ.get("OPENAI_API_KEY")
            if not key:
                raise BackendError("openai:* needs an API key in $OPENAI_API_KEY (it is read "
                                   "from the environment only, never stored)")
            self.remote = True
        else:
            self.base_url = _strip_credentials(base_url)
            self.spec = f"openai-compatible:{self.base_url}#{model}"
            key = (os.environ.get("CCI_LOCAL_API_KEY") or os.environ.get("OPENAI_API_KEY")
                   or "no-key-needed")
            self.remote = not is_loopback(self.base_url)
        self._key = key
        # The SDK retries rate limits (429) and server errors with exponential backoff.
        self._client = openai.OpenAI(api_key=key, base_url=base_url or None, timeout=timeout,
                                     max_retries=max_retries)

    # -- errors ---------------------------------------------------------------------

    def _clean(self, text: str) -> str:
        text = text.replace(self._key, "[key]") if self._key else text
        return _KEYLIKE.sub("[key]", text)

    def _error(self, e: Exception) -> BackendError:
        o = self._openai
        where = self.base_url
        if isinstance(e, o.APIConnectionError):
            return BackendError(f"cannot reach {where}: is the server running? ({e})")
        if isinstance(e, o.AuthenticationError):
            return BackendError(f"{where} refused the API key: set $OPENAI_API_KEY "
                                "(or $CCI_LOCAL_API_KEY for a compatible server)")
        if isinstance(e, o.NotFoundError):
            return BackendError(f"{where} has no model {self.model!r}: see {where}/models")
        if isinstance(e, o.RateLimitError):
            return BackendError(f"{where} is still rate-limiting after retries; try again "
                                "later or lower --parallel")
        if isinstance(e, o.APIStatusError):
            return BackendError(f"{where} answered {e.status_code}: {self._clean(str(e))}")
        return BackendError(f"{where}: {type(e).__name__}: {self._clean(str(e))}")

    # -- interface ------------------------------------------------------------------

    def identity(self, file_hash: Callable[[Path], str]) -> str:
        extra = json.dumps(self.extra_body, sort_keys=True) if self.extra_body else ""
        return f"openai:{self.base_url}#{self.model}{extra}"

    def _params(self, sampling: Sampling) -> dict:
        tokens = "max_completion_tokens" if self.spec.startswith("openai:") else "max_tokens"
        params = {tokens: sampling.max_tokens, "temperature": sampling.temperature,
                  "seed": sampling.seed, "top_p": sampling.top_p}
        if self.extra_body:
            params["extra_body"] = self.extra_body
        return params

    def _formats(self, messages: Messages, schema: dict):
        for index in range(_schema_mode.get(self.base_url, 0), len(SCHEMA_MODES)):
            mode = SCHEMA_MODES[index]
            if mode == "json_schema":
                fmt = {"type": "json_schema",
                       "json_schema": {"name": "reply", "schema": schema, "strict": True}}
                yield index, fmt, messages
            elif mode == "json_object_schema":
                yield index, {"type": "json_object", "schema": schema}, messages
            else:
                note = {"role": "system", "content": "Reply with one JSON object matching this "
                        "JSON schema, and nothing else:\n" + json.dumps(schema)}
                yield index, {"type": "json_object"}, [note, *messages]

    def chat(self, messages: Messages, *, schema: dict | None = None,
             sampling: Sampling = Sampling()) -> Completion:
        params = self._params(sampling)
        if schema is None:
            attempts = [(None, None, messages)]
        else:
            attempts = self._formats(messages, schema)
        last = None
        for index, fmt, msgs in attempts:
            extra = {"response_format": fmt} if fmt is not None else {}
            try:
                response = self._client.chat.completions.create(
                    model=self.model, messages=msgs, **params, **extra)
            except self._openai.APIStatusError as e:
                # A server that does not take this response_format says so with a 400,
                # a 422, or (llama_cpp.server) a 500 naming the field: try the next.
                if fmt is None or e.status_code not in (400, 422, 500) \
                        or "response_format" not in str(e):
                    raise self._error(e) from e
                last = e
                continue
            except self._openai.OpenAIError as e:
                raise self._error(e) from e
            if index is not None:
                _schema_mode[self.base_url] = index
            usage = response.usage
            return Completion(response.choices[0].message.content or "",
                              usage.prompt_tokens if usage else None,
                              usage.completion_tokens if usage else None)
        raise self._error(last)

    def stream(self, messages: Messages, *, sampling: Sampling = Sampling()) -> Iterator[str]:
        try:
            for chunk in self._client.chat.completions.create(
                    model=self.model, messages=messages, stream=True, **self._params(sampling)):
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
        except self._openai.OpenAIError as e:
            raise self._error(e) from e

    def option_logprobs(self, messages: Messages, options: list[str]) -> dict[str, float]:
        try:
            response = self._client.chat.completions.create(
                model=self.model, messages=messages, logprobs=True, top_logprobs=20,
                **self._params(Sampling(max_tokens=1)))
        except self._openai.OpenAIError as e:
            raise self._error(e) from e
        content = response.choices[0].logprobs.content if response.choices[0].logprobs else None
        if not content:
            raise NoLogprobs(f"{self.base_url} returned no log-probabilities")
        top = [(t.token, t.logprob) for t in content[0].top_logprobs or []]
        return options_from_top_logprobs(top or [(content[0].token, content[0].logprob)], options)

    def describe(self) -> str:
        return self.spec + ("" if self.remote else " (this machine)")

    def close(self) -> None:
        self._client.close()


def llama_server_lora(url: str, community: str, timeout: float = 30.0) -> int:
    """The number llama.cpp's llama-server gives ``community``'s adapter: the entry of
    its ``GET /lora-adapters`` whose file is the community's (``adapters/NAME-HASH/
    adapter.gguf`` as training writes it, or ``NAME.gguf``).  Asked per request with
    ``"lora": [{"id": N, "scale": 1}]``; the adapters not named get scale 0."""
    import urllib.error
    import urllib.request

    root = _strip_credentials(url).removesuffix("/v1")
    request = urllib.request.Request(root + "/lora-adapters")
    key = os.environ.get("CCI_LOCAL_API_KEY")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            listed = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise BackendError(f"cannot list the LoRA adapters of {root} (GET /lora-adapters, "
                           f"llama-server's): {e}") from e

    def owner(path: str) -> str:
        p = Path(path)
        return p.parent.name.rpartition("-")[0] if p.name == "adapter.gguf" else p.stem

    found = [a["id"] for a in listed if owner(a.get("path", "")) == community]
    if len(found) != 1:
        paths = ", ".join(a.get("path", "?") for a in listed) or "none"
        raise BackendError(f"{root} serves {'no' if not found else 'more than one'} adapter "
                           f"for r/{community} (its adapters: {paths}); start llama-server "
                           "with --lora PATH for each community's adapter.gguf")
    return int(found[0])
