"""Request and response bodies of the HTTP API, in OpenAI's shapes (pydantic v2, strict types).

Fields that OpenAI defines but candorlm does not implement (logprobs, penalties, tools, ...)
are accepted only at their neutral value; anything else is refused with a 400 that names the
field, never silently ignored. `top_k` and `repetition_penalty` are candorlm extensions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator


def _utf8(text: str) -> str:
    # JSON may spell lone surrogates ("\ud800"); they are not text and cannot be tokenized.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (it contains a lone surrogate)") from None
    return text


def _whole(value: Any) -> Any:
    # JSON Schema counts 3.0 as an integer; strings and fractions stay errors.
    return int(value) if isinstance(value, float) and value.is_integer() else value


@dataclass
class ServeLimits:
    """Caps on what one request may ask for (each refusal is a 400 or 413 naming the limit)."""

    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int | None = None  # None: the model's context less one
    max_tokens: int = 1024
    max_n: int = 4
    max_prompts: int = 16
    max_stop: int = 4
    max_explain_tokens: int = 256


Text = Annotated[str, AfterValidator(_utf8)]
Int = Annotated[int, BeforeValidator(_whole)]
PositiveInt = Annotated[int, Field(ge=1), BeforeValidator(_whole)]
# The largest integer a float (and a JavaScript client) holds exactly: a client or a fuzzer that compares in
# floating point agrees with this check on both sides of it (with 2**62, 2**62 + 1 "is" 2**62 as a float).
Seed = Annotated[int, Field(ge=0, le=2**53 - 1), BeforeValidator(_whole)]
TokenKey = Annotated[str, Field(pattern=r"^[0-9]{1,9}$")]
Bias = Annotated[float, Field(ge=-100, le=100)]
# Pydantic states the key pattern as patternProperties only; closing the object makes the schema
# say what validation enforces (a key that is not a token id is refused).
LogitBias = Annotated[dict[TokenKey, Bias], Field(max_length=300, json_schema_extra={"additionalProperties": False})]


@dataclass(frozen=True)
class Neutral:
    """The values an OpenAI field candorlm does not implement is accepted at (besides null)."""

    values: tuple[Any, ...]

    def admits(self, value: Any) -> bool:
        """As JSON Schema's enum compares: true is not 1 and 0 is not false (in Python True == 1)."""
        return value is None or any(value == v and isinstance(value, bool) == isinstance(v, bool)
                                    for v in self.values)


_JSON_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array"),
               (dict, "object"))


def _neutral(*values: Any) -> Any:
    """An OpenAI field candorlm does not implement: the schema admits only its neutral values, each
    with its JSON type (an enum alone lets tools written in Python take true for 1 and 0 for false),
    and `_Sampling.unsupported` checks the same values."""
    schemas = [{"type": next(t for kind, t in _JSON_TYPES if isinstance(v, kind)), "enum": [v]} for v in values]
    return Annotated[Any, WithJsonSchema({"anyOf": [{"type": "null"}, *schemas],
                                          "description": "Not implemented by candorlm: only the neutral value."}),
                     Neutral(values)]


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: Text
    temperature: float | None = Field(None, ge=0, le=2, description="0 is greedy; default 1.")
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: PositiveInt | None = Field(None, description="candorlm extension: sample among the k most likely tokens.")
    repetition_penalty: float | None = Field(None, ge=0.01, le=100,
                                             description="candorlm extension: above 1 discourages repeats.")
    n: Int = Field(1, ge=1, description="Choices to generate per prompt.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Text | list[Text] | None = Field(None, description="Up to 4 strings that end generation.")
    seed: Seed | None = None
    user: str | None = None
    # OpenAI fields candorlm does not implement: accepted at their neutral value only.
    logprobs: _neutral(False, 0) = None
    presence_penalty: _neutral(0.0) = None
    frequency_penalty: _neutral(0.0) = None
    logit_bias: LogitBias | None = Field(
        None, description="Token id -> a bias added to its logit before sampling; -100 bans the "
                                          "token in practice, as in OpenAI. Ids must be below the vocabulary size.")

    def unsupported(self) -> str | None:
        """The first field set to something candorlm cannot do, if any."""
        for name, info in type(self).model_fields.items():
            neutral = next((m for m in info.metadata if isinstance(m, Neutral)), None)
            if neutral is not None and not neutral.admits(getattr(self, name)):
                return name
        return None

    @property
    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(_Sampling):
    prompt: Text | list[Text] = Field(description="A prompt, or a list of prompts (one choice each per n).")
    max_tokens: PositiveInt | None = Field(None, description="Most new tokens per choice; default 16.")
    echo: _neutral(False) = None
    best_of: _neutral(1) = None
    suffix: _neutral("") = None


class TextPart(_Body):
    type: Literal["text"]
    text: Text


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart]
    name: str | None = None

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: PositiveInt | None = Field(None, description="Most new tokens; default: the rest of the context.")
    max_completion_tokens: PositiveInt | None = None
    top_logprobs: _neutral(0) = None
    tools: _neutral([]) = None
    tool_choice: _neutral("none") = None
    response_format: _neutral({"type": "text"}) = None


class ExplainRequest(_Body):
    # Exactly one of prompt and messages; absent means None, and an explicit null is refused.
    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["prompt"]}, {"required": ["messages"]}]})

    model: Text
    prompt: Text = Field(None, description="Plain prompt (give this or messages).")  # type: ignore[assignment]
    messages: list[ChatMessage] = Field(None, min_length=1,  # type: ignore[assignment]
                                        description="Chat prompt, as for chat completions.")
    target: Text = Field(min_length=1, description="The text that follows the prompt (e.g. the model's answer).")
    target_index: Int = Field(0, ge=0, description="Which token of the target to explain (0 = first).")
    layer: Int = Field(0, ge=0)
    head: Int = Field(0, ge=0)

    @model_validator(mode="after")
    def _one_prompt(self) -> "ExplainRequest":
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt and messages")
        return self


# ---------------------------------------------------------------------------- responses


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


FinishReason = Literal["stop", "length"]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: FinishReason


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: FinishReason


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    context_length: int
    n_layers: int
    n_heads: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ExplainToken(BaseModel):
    id: int
    text: str
    source: Literal["prompt", "target"]


class ExplainedToken(BaseModel):
    id: int
    text: str
    logit: float
    probability: float
    rank: int = Field(description="1 when this was the model's most likely next token.")


class Attribution(BaseModel):
    method: Literal["gradient_x_input"] = "gradient_x_input"
    of: Literal["logit"] = "logit"
    scores: list[float] = Field(description="One score per token before the explained one.")


class Attention(BaseModel):
    layer: int
    head: int
    n_layers: int
    n_heads: int
    query: int = Field(description="Row of the pattern that predicted the explained token.")
    pattern: list[list[float]] = Field(description="softmax(QK^T/sqrt(d)) over the tokens up to the explained "
                                                   "one (row = query, column = key).")


class ExplainResponse(BaseModel):
    object: Literal["explanation"] = "explanation"
    model: str
    tokens: list[ExplainToken]
    position: int
    target_index: int
    target_tokens: int
    token: ExplainedToken
    attribution: Attribution
    attention: Attention


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    model: str
    auth: bool
    engine: dict[str, int]




class KeyUsage(BaseModel):
    requests: int
    prompt_tokens: int
    completion_tokens: int


class AdminKey(BaseModel):
    name: str
    scopes: list[str]
    created: str
    requests_per_minute: int | None
    tokens_per_hour: int | None
    usage: KeyUsage


class AdminKeys(BaseModel):
    object: Literal["list"] = "list"
    data: list[AdminKey]


class AuditTail(BaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]


class CompletionChunkChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: FinishReason | None


class CompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChunkChoice]
    usage: Usage | None = None


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: None = None
    finish_reason: FinishReason | None


class ChatChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
