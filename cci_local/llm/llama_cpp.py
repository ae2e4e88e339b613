"""``embedded`` and ``gguf:PATH``: a GGUF model run in this process by llama-cpp-python.

The chat template is the one in the GGUF's metadata.  Option log-probabilities
come from the model's logits after one forward pass over the prompt: llama-cpp-
python's own ``logprobs`` would need ``logits_all=True``, which keeps n_ctx x
vocabulary floats (4 GB for Llama 3 at 8k context).

One base, many adapters: every backend made with ``with_adapter`` shares its base's
model and context (``LoadedModel``).  Each GGUF LoRA adapter is loaded once onto the
model and the active one is switched per call with llama.cpp's adapter API
(``llama_set_adapters_lora``), so five communities on an 8B base hold one copy of
the base, not five.  The prefix cache (keys/values of the prompt evaluated last) is
only reused under the adapter that computed it."""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from .base import USAGE, Backend, BackendError, Completion, Messages, Sampling
from .embedded import EMBEDDED_FILE, EMBEDDED_PACKAGE, embedded_model_path  # noqa: F401


def _log_softmax(logits):
    """Log-softmax over the last axis (one vocabulary row, or one row per position)."""
    import numpy as np

    top = logits.max(axis=-1, keepdims=True)
    return logits - (top + np.log(np.exp(logits - top).sum(axis=-1, keepdims=True)))


class LoadedModel:
    """One llama.cpp model and context, shared by the base and every adapter on it.

    ``use(adapter)`` (under ``lock``) makes ``adapter`` (a GGUF LoRA path, or None for
    the bare base) the active one and returns the ``Llama``.  An adapter is read from
    its file the first time it is used and stays loaded until ``close``.  When the
    active adapter changes, the cached prefix is dropped: keys/values computed under
    adapter A must never be reused under B."""

    def __init__(self, path: Path, *, n_ctx: int, n_threads: int | None, n_gpu_layers: int,
                 n_batch: int, logits_all: bool = False):
        self.path = path
        # Logits kept at every position: what llama_cpp.server needs to return
        # log-probabilities (serve); in-process calls read the last position only.
        self.logits_all = logits_all
        self.n_ctx, self.n_threads, self.n_gpu_layers, self.n_batch = \
            n_ctx, n_threads, n_gpu_layers, n_batch
        self.lock = threading.RLock()
        self._llm = None
        self._adapters: dict[Path, object] = {}  # path -> llama_adapter_lora pointer
        self._active: Path | None = None  # the adapter set on the context
        self.switches = 0  # times the active adapter changed

    @property
    def llm(self):
        if self._llm is None:
            try:
                import llama_cpp
            except ImportError as e:
                raise BackendError("GGUF models run with llama-cpp-python: "
                                   "pip install llama-cpp-python") from e
            from .cpucheck import ensure

            ensure()  # once per llama.cpp build and CPU: a refused instruction is a message
            gpu = llama_cpp.llama_supports_gpu_offload()
            try:
                # No lora_path here: llama-cpp-python turns mmap off when it is given, so
                # every aligned model would hold a private copy of the base.  Adapters
                # are applied per call instead (use()), with mmap on.
                llm = llama_cpp.Llama(
                    model_path=str(self.path), n_ctx=self.n_ctx, n_batch=self.n_batch,
                    n_threads=self.n_threads, n_gpu_layers=self.n_gpu_layers if gpu else 0,
                    logits_all=self.logits_all, verbose=False)
            except ValueError as e:
                raise BackendError(f"llama.cpp could not load {self.path}: {e}") from e
            if "tokenizer.chat_template" in llm.metadata:
                llm.chat_format = "chat_template.default"  # the GGUF's own template
            self._llm = llm
            USAGE["loads"] += 1
        return self._llm

    def load_adapter(self, adapter: Path):
        """The adapter's llama.cpp handle, read from its file once."""
        if adapter not in self._adapters:
            import llama_cpp

            handle = llama_cpp.llama_adapter_lora_init(self.llm.model, str(adapter).encode())
            if not handle:
                raise BackendError(f"llama.cpp could not load the LoRA adapter {adapter} onto "
                                   f"{self.path.name}: is it a GGUF LoRA trained on this base?")
            self._adapters[adapter] = handle
        return self._adapters[adapter]

    def use(self, adapter: Path | None):
        """Make ``adapter`` active (None: the bare base) and return the Llama.  Call
        under ``lock``."""
        import llama_cpp

        llm = self.llm
        if adapter != self._active:
            if adapter is None:
                status = llama_cpp.llama_set_adapters_lora(llm.ctx, None, 0, None)
            else:
                handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self.load_adapter(adapter))
                scales = (ctypes.c_float * 1)(1.0)
                status = llama_cpp.llama_set_adapters_lora(llm.ctx, handles, 1, scales)
            if status != 0:
                raise BackendError(f"llama.cpp could not switch to the adapter {adapter}")
            llm.n_tokens = 0  # the cached prefix was computed under the other adapter
            self._active = adapter
            self.switches += 1
        return llm

    @property
    def loaded_adapters(self) -> list[Path]:
        return list(self._adapters)

    def close(self) -> None:
        if self._llm is not None:
            import llama_cpp

            with contextlib.suppress(Exception):
                llama_cpp.llama_set_adapters_lora(self._llm.ctx, None, 0, None)
            for handle in self._adapters.values():
                with contextlib.suppress(Exception):
                    llama_cpp.llama_adapter_lora_free(handle)
            with contextlib.suppress(Exception):
                self._llm.close()
            self._llm = None
        self._adapters, self._active = {}, None


class LlamaCppBackend(Backend):
    """A GGUF model in this process, bare or with one LoRA adapter.  Backends made
    with ``with_adapter`` share this one's model and context (see LoadedModel)."""

    remote = False
    concurrent = False  # one model in this process: calls take turns

    def __init__(self, path: str | os.PathLike, *, spec: str | None = None, n_ctx: int = 4096,
                 n_threads: int | None = None, n_gpu_layers: int = -1, n_batch: int = 512,
                 lora_path: str | os.PathLike | None = None, model: LoadedModel | None = None,
                 logits_all: bool = False):
        super().__init__()
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise BackendError(f"no GGUF file at {self.path}")
        self.lora_path = Path(lora_path).expanduser().resolve() if lora_path else None
        if self.lora_path and not self.lora_path.is_file():
            raise BackendError(f"no GGUF LoRA adapter at {self.lora_path}")
        self.spec = spec or f"gguf:{self.path}" + (f"+{self.lora_path}" if lora_path else "")
        self.n_ctx, self.n_threads, self.n_gpu_layers = n_ctx, n_threads, n_gpu_layers
        self.n_batch = n_batch
        self._owner = model is None  # closes the model it made
        self.model = model or LoadedModel(self.path, n_ctx=n_ctx, n_threads=n_threads,
                                          n_gpu_layers=n_gpu_layers, n_batch=n_batch,
                                          logits_all=logits_all)
        self._lock = self.model.lock

    def with_adapter(self, lora_path: str | os.PathLike, *, spec: str | None = None
                     ) -> LlamaCppBackend:
        """This model with a LoRA adapter, sharing its weights and context: the adapter
        is switched in for each of the new backend's calls."""
        return LlamaCppBackend(self.path, spec=spec, n_ctx=self.n_ctx, n_threads=self.n_threads,
                               n_gpu_layers=self.n_gpu_layers, n_batch=self.n_batch,
                               lora_path=lora_path, model=self.model)

    # -- loading ----------------------------------------------------------------------

    @property
    def llm(self):
        """The Llama with this backend's adapter active (None: the bare base).  Calls
        that evaluate hold ``_lock`` from here to their last read of the context."""
        with self._lock:
            return self.model.use(self.lora_path)

    def identity(self, file_hash: Callable[[Path], str]) -> str:
        adapter = f"+lora:sha256:{file_hash(self.lora_path)}" if self.lora_path else ""
        return f"gguf:sha256:{file_hash(self.path)}{adapter}"

    # -- prompts ------------------------------------------------------------------------

    def prompt_tokens(self, messages: Messages) -> list[int]:
        """The messages formatted with the GGUF's chat template, ready for the assistant."""
        from llama_cpp import llama_chat_format

        llm = self.model.llm  # tokenizing needs no adapter: leave the active one as it is
        template = llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise BackendError(f"{self.path} has no chat template in its metadata")
        eos_id, bos_id = llm.token_eos(), llm.token_bos()
        formatter = llama_chat_format.Jinja2ChatFormatter(
            template=template,
            eos_token=llm._model.token_get_text(eos_id) if eos_id != -1 else "",
            bos_token=llm._model.token_get_text(bos_id) if bos_id != -1 else "",
            stop_token_ids=[eos_id])
        result = formatter(messages=messages)
        return llm.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special,
                            special=True)

    @property
    def context_length(self) -> int:
        return self.n_ctx

    def count_tokens(self, messages: Messages) -> int:
        return len(self.prompt_tokens(messages))

    def _check_fits(self, n_prompt: int, max_tokens: int) -> None:
        if n_prompt + max_tokens > self.n_ctx:
            raise BackendError(
                f"the prompt ({n_prompt} tokens) and {max_tokens} new tokens do not fit the "
                f"context of {self.n_ctx} tokens: raise n_ctx or shorten the prompt")

    # -- interface --------------------------------------------------------------------

    def _request(self, messages, schema, sampling: Sampling) -> dict:
        self._check_fits(len(self.prompt_tokens(messages)), sampling.max_tokens)
        request = dict(messages=messages, max_tokens=sampling.max_tokens,
                       temperature=sampling.temperature, top_p=sampling.top_p,
                       seed=sampling.seed)
        if schema is not None:  # a grammar built from the schema constrains the output
            request["response_format"] = {"type": "json_object", "schema": schema}
        return request

    def chat(self, messages: Messages, *, schema: dict | None = None,
             sampling: Sampling = Sampling()) -> Completion:
        with self._lock:
            request = self._request(messages, schema, sampling)
            try:
                response = self.llm.create_chat_completion(**request)
            except (ValueError, RuntimeError) as e:
                raise BackendError(f"llama.cpp failed on {self.path.name}: {e}") from e
        usage = response.get("usage") or {}
        return Completion(response["choices"][0]["message"]["content"] or "",
                          usage.get("prompt_tokens"), usage.get("completion_tokens"))

    def stream(self, messages: Messages, *, sampling: Sampling = Sampling()) -> Iterator[str]:
        with self._lock:
            request = self._request(messages, None, sampling)
            for chunk in self.llm.create_chat_completion(**request, stream=True):
                piece = chunk["choices"][0]["delta"].get("content")
                if piece:
                    yield piece

    def _logits_last(self):
        """The logits at the last evaluated position (float64 copy, vocabulary-sized)."""
        import llama_cpp
        import numpy as np

        pointer = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)),
                                     shape=(self.llm.n_vocab(),)).astype(np.float64)

    def _log_softmax_last(self):
        return _log_softmax(self._logits_last())

    def _option_token_ids(self, option: str) -> list[list[int]]:
        """Ways the reply can start with ``option``: as is, and after a space."""
        variants = []
        for text in (option, " " + option):
            ids = self.model.llm.tokenize(text.encode("utf-8"), add_bos=False,
                                          special=False)
            if ids and ids not in variants:
                variants.append(ids)
        return variants

    def _eval_prompt(self, tokens: list[int]) -> None:
        """Evaluate ``tokens`` from the start of the context, reusing the key/value cache
        of the longest prefix they share with what was evaluated last (the chat
        template's system turn, a persona, a question asked before): only the rest is
        computed.  At least the last two tokens are evaluated: llama.cpp computes a
        one-token batch with other kernels (logits differ by up to ~0.5), while any
        longer batch gives the same logits as evaluating the whole prompt at once."""
        import numpy as np

        llm = self.llm
        limit = max(0, min(llm.n_tokens, len(tokens) - 2))
        # input_ids[:n_tokens]: the tokens whose keys/values are in the cache
        differ = np.flatnonzero(llm.input_ids[:limit] != np.asarray(tokens[:limit]))
        keep = int(differ[0]) if len(differ) else limit
        llm.n_tokens = keep  # eval() drops the cache past this point
        llm.eval(tokens[keep:])

    def option_logprobs(self, messages: Messages, options: list[str]) -> dict[str, float]:
        """log P(reply starts with option), summed over its spellings (with and
        without a leading space).  One forward pass over the prompt (less the prefix
        cached from the last call); options longer than one token cost one more pass
        per extra token, reusing the prompt."""
        with self._lock:
            llm = self.llm
            tokens = self.prompt_tokens(messages)
            self._check_fits(len(tokens), 8)
            self._eval_prompt(tokens)
            first = self._log_softmax_last()
            n_prompt = llm.n_tokens
            out = {}
            for option in options:
                scores = []
                for ids in self._option_token_ids(option):
                    score = float(first[ids[0]])
                    llm.n_tokens = n_prompt  # back to just after the prompt
                    for k in range(1, len(ids)):
                        llm.eval([ids[k - 1]])  # drops what was cached past this point
                        score += float(self._log_softmax_last()[ids[k]])
                    scores.append(score)
                top = max(scores)
                out[option] = top + math.log(sum(math.exp(s - top) for s in scores))
            llm.n_tokens = n_prompt  # the cache holds the prompt, for the next call
        return out

    def answer_logprob(self, messages: Messages, answer: str) -> tuple[float, int]:
        """log P(answer | messages) as the assistant's reply, and its token count: the
        prompt in one pass (less the cached prefix), then the answer in batches that
        return logits at every position (llama.cpp's per-token output flags), so no
        n_ctx x vocabulary buffer is kept and no token is decoded alone."""
        import numpy as np

        with self._lock:
            llm = self.llm
            prompt = self.prompt_tokens(messages)
            ids = llm.tokenize(answer.encode("utf-8"), add_bos=False, special=False)
            if not ids:
                return 0.0, 0
            self._check_fits(len(prompt), len(ids) + 1)
            self._eval_prompt(prompt)
            total = float(self._log_softmax_last()[ids[0]])
            n_vocab = llm.n_vocab()
            rest = ids[:-1]  # each position predicts the next answer token
            for start in range(0, len(rest), llm.n_batch):
                chunk = rest[start:start + llm.n_batch]
                n_past = llm.n_tokens
                llm._ctx.kv_cache_seq_rm(-1, n_past, -1)
                llm._batch.set_batch(batch=chunk, n_past=n_past, logits_all=True)
                llm._ctx.decode(llm._batch)
                llm.input_ids[n_past:n_past + len(chunk)] = chunk
                llm.n_tokens += len(chunk)
                logprobs = _log_softmax(np.ctypeslib.as_array(
                    ctypes.cast(llm._ctx.get_logits(), ctypes.POINTER(ctypes.c_float)),
                    shape=(len(chunk), n_vocab)).astype(np.float64))
                targets = ids[start + 1:start + 1 + len(chunk)]
                total += float(logprobs[np.arange(len(chunk)), targets].sum())
        return total, len(ids)

    def tokenize(self, text: str) -> list[int]:
        """``text``'s tokens as the model reads them inside a reply (no BOS)."""
        return self.model.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def greedy_continuation(self, messages: Messages, prefix: list[int], target: list[int]
                            ) -> int:
        """How many of ``target``'s tokens greedy decoding reproduces, in order, after
        the prompt and the reply's first tokens ``prefix`` (stops at the first
        mismatch): ``len(target)`` means the text was extracted word for word."""
        import numpy as np

        with self._lock:
            llm = self.llm
            tokens = self.prompt_tokens(messages) + list(prefix)
            self._check_fits(len(tokens), len(target))
            self._eval_prompt(tokens)
            matched = 0
            for want in target:
                if int(np.argmax(self._logits_last())) != want:
                    break
                matched += 1
                if matched < len(target):
                    llm.eval([want])
        return matched

    def last_logits(self, messages: Messages):
        """The next-token logits after the prompt (numpy, vocabulary-sized)."""
        with self._lock:
            self._eval_prompt(self.prompt_tokens(messages))
            return self._logits_last()

    def describe(self) -> str:
        return f"{self.spec} ({self.path.name})" if self.spec == "embedded" else self.spec

    def close(self) -> None:
        """Close the model if this backend made it; one shared with a base is closed
        by the base."""
        if self._owner:
            self.model.close()
