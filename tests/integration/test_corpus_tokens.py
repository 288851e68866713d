"""The tokenized corpus cache: the ids (and character offsets) of the tokenizer itself, reused only
for the same tokenizer, text and kind of tokenization, and tokenized again when the file is damaged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from quant_fixtures.inputs.corpus_protocols import joined_tokens
from quant_fixtures.inputs.wikitext import tokenize_text
from quant_fixtures.store.corpus_tokens import corpus_tokens_path, load_corpus_tokens, save_corpus_tokens

NAMES = ("ids", "ends")


def test_cached_ids_are_the_tokenizers_and_checked(tmp_path: Path, smollm2_tokenizer: Any, wikitext: Any) -> None:
    text = wikitext.text[:20000]
    ids, ends = joined_tokens(smollm2_tokenizer, text)
    assert torch.equal(ids, tokenize_text(smollm2_tokenizer, text))  # the offsets change nothing in the ids
    assert int(ends[-1]) == len(text.rstrip()) or int(ends[-1]) == len(text)
    t, x = "t" * 64, "x" * 64
    assert load_corpus_tokens(tmp_path, t, x, "joined-v2", NAMES)[0] is None  # nothing cached yet
    save_corpus_tokens(tmp_path, t, x, "joined-v2", {"ids": ids, "ends": ends})
    cached, status = load_corpus_tokens(tmp_path, t, x, "joined-v2", NAMES)
    assert (
        status == "ok" and cached is not None and torch.equal(cached["ids"], ids) and torch.equal(cached["ends"], ends)
    )
    assert load_corpus_tokens(tmp_path, "u" * 64, x, "joined-v2", NAMES)[0] is None  # another tokenizer
    assert load_corpus_tokens(tmp_path, t, "y" * 64, "joined-v2", NAMES)[0] is None  # another text
    assert load_corpus_tokens(tmp_path, t, x, "documents-v2", ("ids", "lengths"))[0] is None  # another kind
    path = corpus_tokens_path(tmp_path, t, x, "joined-v2")
    data = bytearray(path.read_bytes())
    data[-8:] = b"\x00" * 8  # damage the last offsets
    path.write_bytes(bytes(data))
    damaged, why = load_corpus_tokens(tmp_path, t, x, "joined-v2", NAMES)
    assert damaged is None and why != "ok"
