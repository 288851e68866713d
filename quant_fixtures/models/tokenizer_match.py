"""A model's own variant (another checkpoint, a GGUF file) is scored on the base's token ids and
compared with the base's distributions, so it must read the same ids as the same tokens and
predict over the same vocabulary; anything else is an error before any scoring."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SPECIAL = ("bos_token_id", "eos_token_id", "unk_token_id", "pad_token_id")


class TokenizerMismatchError(ValueError):
    """The variant's tokenizer or vocabulary differs from the base model's."""


def tokenizer_differences(base: PreTrainedTokenizerBase, other: PreTrainedTokenizerBase) -> list[str]:
    """What differs between two tokenizers' id mappings, each a short phrase (empty: they match)."""
    problems = []
    base_vocab, other_vocab = base.get_vocab(), other.get_vocab()
    if len(base_vocab) != len(other_vocab):
        problems.append(f"{len(other_vocab)} tokens against the base's {len(base_vocab)}")
    moved = sorted(t for t, i in base_vocab.items() if other_vocab.get(t) != i)
    if moved:
        token = moved[0]
        problems.append(
            f"{len(moved)} of the base's tokens have another id or none (e.g. {token!r}: "
            f"{base_vocab[token]} in the base, {other_vocab.get(token)} here)"
        )
    for name in SPECIAL:
        if getattr(base, name, None) != getattr(other, name, None):
            problems.append(f"{name} {getattr(other, name, None)} against the base's {getattr(base, name, None)}")
    return problems


def check_same_tokenizer(
    base: PreTrainedTokenizerBase,
    base_vocab_size: int | None,
    variant_dir: Path,
    what: str,
    trust_remote_code: bool = False,
) -> None:
    """Raise TokenizerMismatchError naming ``what`` unless the variant's tokenizer maps text to the
    base's ids (``base``: the base model's tokenizer, already loaded) and its output layer has the
    base's vocabulary size."""
    from transformers import AutoConfig, AutoTokenizer

    try:
        other = AutoTokenizer.from_pretrained(variant_dir, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise TokenizerMismatchError(
            f"{what}: no tokenizer could be read from {variant_dir} ({exc}); its ids "
            "cannot be checked against the base's: add the tokenizer files the "
            "checkpoint was quantized with"
        ) from None
    problems = tokenizer_differences(base, other)
    model_config = AutoConfig.from_pretrained(variant_dir, trust_remote_code=trust_remote_code).get_text_config()
    size = getattr(model_config, "vocab_size", None)
    if size != base_vocab_size:
        problems.append(f"an output layer of {size} logits against the base's {base_vocab_size}")
    if problems:
        raise TokenizerMismatchError(
            f"{what}: its tokenizer does not match the base model's ({'; '.join(problems)}); "
            "a variant must be the same model with the same vocabulary and ids"
        )
