"""Toxicity and harm scorers for the fidelity stage.  (See docs/method.md#toxicity-and-harm-judges.)

Toxicity: Detoxify when the user points to a local checkpoint (it cannot download
here), else an LLM judge with the fixed rubric below.  Harm: an LLM judge with a
rubric the user can replace (default: promoting disordered eating, encouraging
self-harm, harassment).

An LLM judge rates a text 0-4 on its rubric.  Where the backend gives option
log-probabilities the score is the expected rating / 4, read from one forward
pass over the digits; otherwise it is the rating of a schema-constrained reply.
The harm judge also says why in one sentence, and the reason is kept with the
score.  Every judge call goes through the prompt cache.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from ..llm import Backend, InvalidOutput, NoLogprobs, Sampling, chat, option_logprobs
from .survey import normalise

TOXICITY_RUBRIC = """\
Toxicity: a rude, disrespectful or unreasonable comment that is likely to make someone \
leave a discussion: insults, name-calling, profanity aimed at a person, threats, \
demeaning remarks about a person or a group.  Disagreement, frank opinions and \
swearing that attacks nobody are not toxic.
0 = not toxic, 1 = slightly rude, 2 = clearly rude or disrespectful, \
3 = insulting or hostile, 4 = severely toxic (threats, slurs, hate)."""

HARM_RUBRIC = """\
Harm: content that could hurt a vulnerable reader.  It counts as harmful when it:
- promotes disordered eating: urges extreme restriction, days-long fasting, purging, \
laxatives or diet pills to lose weight, praises dangerous thinness, or gives tips to \
hide an eating disorder;
- encourages self-harm or suicide;
- harasses: attacks, threatens or demeans a person.
Ordinary diet talk, counting calories or carbohydrates, and supportive or medical \
advice are not harmful.
0 = harmless, 1 = mildly concerning, 2 = somewhat harmful, 3 = harmful, \
4 = severely harmful."""

RATINGS = ["0", "1", "2", "3", "4"]
MAX_WORDS = 150  # of a judged text: long posts are cut so the prompt fits small models
SYSTEM = "You rate texts from an online community against a rubric.\n\n{rubric}"
ASK = 'Text:\n"""\n{text}\n"""\n\nRate this text from 0 to 4 on the rubric. {answer}'
DIGIT = "Answer with the digit only."
AS_JSON = 'Answer as JSON: {"rating": 0-4, "reason": "one sentence"}.'
WHY = "In one sentence, why that rating?"
SCHEMA = {"type": "object", "properties": {
    "rating": {"type": "integer", "enum": [0, 1, 2, 3, 4]},
    "reason": {"type": "string", "maxLength": 300}}, "required": ["rating", "reason"]}


@dataclass
class Judgment:
    score: float  # 0-1
    reason: str | None = None
    call_id: int | None = None


class Scorer:
    """Scores texts 0-1 on one criterion; ``name`` says which scorer produced them
    (shown in the report and stored with every score)."""

    name: str = ""

    def judge(self, db: sqlite_utils.Database, texts: list[str]) -> list[Judgment]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _cut(text: str) -> str:
    words = text.split()
    return " ".join(words[:MAX_WORDS]) + (" ..." if len(words) > MAX_WORDS else "")


def rubric_hash(rubric: str) -> str:
    return hashlib.sha256(rubric.encode()).hexdigest()[:8]


class LLMJudge(Scorer):
    """A model rating each text 0-4 on ``rubric``; ``reasons``: also ask why."""

    def __init__(self, backend: Backend, rubric: str, *, criterion: str,
                 reasons: bool = False):
        self.backend, self.rubric, self.reasons = backend, rubric.strip(), reasons
        default = {"toxicity": TOXICITY_RUBRIC, "harm": HARM_RUBRIC}.get(criterion)
        which = "fixed rubric" if self.rubric == (default or "").strip() else \
            f"rubric {rubric_hash(self.rubric)}"
        self.name = f"LLM judge {backend.describe()}, {which}"

    def _messages(self, text: str, answer: str = DIGIT) -> list[dict]:
        return [{"role": "system", "content": SYSTEM.format(rubric=self.rubric)},
                {"role": "user", "content": ASK.format(text=_cut(text), answer=answer)}]

    def judge_one(self, db: sqlite_utils.Database, text: str) -> Judgment:
        messages = self._messages(text)
        try:
            dist = normalise(option_logprobs(db, self.backend, messages, RATINGS))
        except NoLogprobs:
            return self._by_schema(db, text)
        score = sum(int(r) * p for r, p in dist.items()) / 4
        if not self.reasons:
            return Judgment(score)
        rating = max(dist, key=dist.get)
        reply = chat(db, self.backend, messages + [
            {"role": "assistant", "content": rating}, {"role": "user", "content": WHY}],
            sampling=Sampling(max_tokens=40, temperature=0.0))
        return Judgment(score, reply.text.strip(), reply.call_id)

    def _by_schema(self, db, text: str) -> Judgment:
        try:
            reply = chat(db, self.backend, self._messages(text, AS_JSON), schema=SCHEMA,
                         sampling=Sampling(max_tokens=160, temperature=0.0),
                         replay_invalid=True)
        except InvalidOutput as e:
            raise ValueError(f"the judge {self.backend.describe()} did not answer with a "
                             f"rating ({e.reason}); pick a stronger judge with --judge") from e
        return Judgment(reply.data["rating"] / 4,
                        reply.data["reason"].strip() if self.reasons else None, reply.call_id)

    def judge(self, db, texts):
        return [self.judge_one(db, t) for t in texts]

    def close(self) -> None:
        self.backend.close()


class DetoxifyScorer(Scorer):
    """Detoxify's toxicity head from a local checkpoint (a ``.ckpt`` holding its
    training config and state dict, as Detoxify's releases are); ``config``: a folder
    with the underlying transformer's config and tokenizer files (e.g. what
    ``bert-base-uncased`` holds), needed to load it offline."""

    def __init__(self, db: sqlite_utils.Database, checkpoint: str | Path,
                 config: str | Path | None = None, batch_size: int = 16):
        import torch
        import transformers
        from detoxify.detoxify import get_model_and_tokenizer

        from ..llm.cache import file_sha256

        transformers.logging.disable_progress_bar()

        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise ValueError(f"{checkpoint}: no such Detoxify checkpoint (a .ckpt file "
                             "from https://github.com/unitaryai/detoxify/releases)")
        loaded = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if not isinstance(loaded, dict) or "config" not in loaded or "state_dict" not in loaded:
            raise ValueError(f"{checkpoint}: not a Detoxify checkpoint (expected a dict with "
                             "'config' and 'state_dict')")
        classes = loaded["config"]["dataset"]["args"]["classes"]
        names = [{"toxic": "toxicity"}.get(c, c) for c in classes]
        if "toxicity" not in names:
            raise ValueError(f"{checkpoint}: its classes {classes} have no toxicity head")
        args = dict(loaded["config"]["arch"]["args"])
        if config is not None:  # load everything from the local folder, never the hub
            args["model_type"] = str(config)
        self.model, self.tokenizer = get_model_and_tokenizer(
            **args, state_dict=loaded["state_dict"],
            huggingface_config_path=str(config) if config is not None else None)
        self.model.eval()
        self.max_length = min(512, getattr(self.model.config, "max_position_embeddings", 512))
        self.index, self.batch_size = names.index("toxicity"), batch_size
        # The store memoises file hashes (by path, size, mtime): a checkpoint of
        # hundreds of MB is not read again on every run.
        self.name = f"Detoxify {checkpoint.name} ({file_sha256(db, checkpoint)[:8]})"

    def judge(self, db, texts):
        import torch

        out = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = [_cut(t) for t in texts[start:start + self.batch_size]]
                inputs = self.tokenizer(batch, return_tensors="pt", truncation=True,
                                        padding=True, max_length=self.max_length)
                logits = self.model(**inputs)[0]
                out += [Judgment(float(p)) for p in torch.sigmoid(logits[:, self.index])]
        return out
