"""Whether each selected prompt fits the model it runs on, checked before any model loads.

A prompt as the model reads it (through the chat template when the run uses it) plus the tokens
generated for it must fit the model's positions (``max_position_embeddings``). A prompt past them is
scored at positions the model never learnt (numbers that mean nothing), and a huge one asks for a
cache of its length. A huge prompt is refused from its characters alone, without tokenizing it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from quant_fixtures.inputs.prompts import Prompt

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class TooLong:
    """A prompt that does not fit: ``tokens`` counted, or at least ``tokens`` (``lower_bound``)."""

    prompt_id: str
    tokens: int
    lower_bound: bool
    new_tokens: int


def longest_token_chars(tokenizer: PreTrainedTokenizerBase) -> int:
    """The most characters of text one token can stand for: no vocabulary entry is longer than the
    text it decodes to (byte-level entries spell one character per byte, SentencePiece's "▁" stands
    for one space)."""
    return max((len(entry) for entry in tokenizer.get_vocab()), default=1) or 1


def tokens_at_least(text: str, longest_token: int) -> int:
    """A lower bound on the tokens of ``text`` that needs no tokenizer run: each token covers at most
    ``longest_token`` characters. Whitespace is not counted: a normalizer may collapse it."""
    visible = len(text) - sum(text.count(c) for c in set(text) if c.isspace())
    return -(-visible // longest_token)


def too_long(
    prompts: Sequence[Prompt],
    limit: int,
    cap: int | None,
    count_tokens: Callable[[str], int],
    longest_token: Callable[[], int],
) -> list[TooLong]:
    """The prompts whose tokens (``count_tokens``, as the model reads them) plus their new tokens
    (``cap``: Prompt.new_tokens) exceed ``limit`` positions, in suite order. A prompt whose
    characters alone prove it too long is not tokenized; ``longest_token`` is asked once, when a
    prompt is long enough for the bound to matter."""
    found: list[TooLong] = []
    longest: int | None = None
    for prompt in prompts:
        room = limit - prompt.new_tokens(cap)
        if len(prompt.prompt) > room:  # cheap: only a prompt of more characters than room can be refused unread
            longest = longest or longest_token()
            bound = tokens_at_least(prompt.prompt, longest)
            if bound > room:
                found.append(TooLong(prompt.id, bound, True, prompt.new_tokens(cap)))
                continue
        tokens = count_tokens(prompt.prompt)
        if tokens > room:
            found.append(TooLong(prompt.id, tokens, False, prompt.new_tokens(cap)))
    return found


def too_long_message(found: Sequence[TooLong], model: str, limit: int, suite: str, chat_template: bool) -> str:
    """One line naming the first prompt that does not fit, its length, its new tokens, the model's
    limit and what to do; how many more do not fit."""
    first = found[0]
    length = (
        f"at least {first.tokens} tokens (its characters alone; not tokenized)"
        if first.lower_bound
        else f"{first.tokens} tokens" + (" with the chat template" if chat_template else "")
    )
    more = f"; {len(found) - 1} more prompts do not fit either" if len(found) > 1 else ""
    return (
        f"prompt {first.prompt_id!r} of {suite} does not fit model {model!r}: {length} + max_new_tokens "
        f"{first.new_tokens} > its {limit} positions (max_position_embeddings); shorten the prompt, lower its "
        f"max_new_tokens or --max-new-tokens, or leave it out with --categories or --prompts{more}"
    )
