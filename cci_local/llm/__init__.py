"""Models behind one small interface, and every call through the prompt cache.

    from cci_local.llm import get_backend, chat, option_logprobs
    backend = get_backend("embedded")      # gguf:PATH, ollama:NAME, openai:NAME, ...
    reply = chat(db, backend, [{"role": "user", "content": "..."}], schema=SCHEMA)
    reply.text, reply.data, reply.cached
    option_logprobs(db, backend, messages, ["A", "B", "C", "D"])

Backends: ``llama_cpp`` (embedded, gguf:PATH; in-process), ``ollama``
(ollama:NAME), ``openai`` (openai:NAME, openai-compatible:URL#NAME).
"""

from .base import USAGE, Backend, BackendError, Completion, NoLogprobs, Sampling
from .cache import (
    InvalidOutput,
    Reply,
    Request,
    chat,
    chat_many,
    chat_stream,
    option_logprobs,
    option_logprobs_many,
)
from .registry import UnknownModel, default_model, get_backend, load_registry

__all__ = [
    "USAGE", "Backend", "BackendError", "Completion", "InvalidOutput", "NoLogprobs", "Reply",
    "Request", "Sampling", "UnknownModel", "chat", "chat_many", "chat_stream", "default_model",
    "get_backend",
    "load_registry", "option_logprobs", "option_logprobs_many",
]
