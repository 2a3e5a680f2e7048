"""Chat messages to prompt tokens, with the tokenizer's reserved role tokens.

    <|bos|> <|system|> You are ... <|end|> <|user|> Hello <|end|> <|assistant|>

and the model answers until it emits <|end|> (or <|eos|>). This is the one place that
knows the format, so the tokenizer's chat template can replace it when it lands.
"""

from __future__ import annotations

from typing import Iterable

from candorlm.tokenizer import Tokenizer

ROLE_TOKENS = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def chat_prompt_ids(tokenizer: Tokenizer, messages: Iterable[tuple[str, str]]) -> list[int]:
    """Token ids of (role, text) messages followed by the opening of the assistant's turn."""
    tokenizer.require("system", "user", "assistant", "end", why="chat")
    ids = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    for role, text in messages:
        ids.append(tokenizer.ids[ROLE_TOKENS[role]])  # type: ignore[arg-type]
        ids.extend(tokenizer.encode(text))
        ids.append(tokenizer.ids["end"])  # type: ignore[arg-type]
    ids.append(tokenizer.ids["assistant"])  # type: ignore[arg-type]
    return ids


def chat_stop_ids(tokenizer: Tokenizer) -> frozenset[int]:
    """Tokens that end the assistant's turn."""
    return frozenset(i for i in (tokenizer.ids.get("end"), tokenizer.eos_id) if i is not None)
