"""The tokenized corpus cache: the ids of the tokenizer itself, reused only for the same tokenizer
and text, and tokenized again when the file is damaged."""

from __future__ import annotations

import torch

from quant_fixtures.inputs.wikitext import tokenize_text
from quant_fixtures.store.corpus_tokens import corpus_tokens_path, load_corpus_tokens, save_corpus_tokens


def test_cached_ids_are_the_tokenizers_and_checked(tmp_path, smollm2_tokenizer, wikitext):
    text = wikitext.text[:20000]
    ids = tokenize_text(smollm2_tokenizer, text)
    assert load_corpus_tokens(tmp_path, "t" * 64, "x" * 64)[0] is None  # nothing cached yet
    save_corpus_tokens(tmp_path, "t" * 64, "x" * 64, ids)
    cached, status = load_corpus_tokens(tmp_path, "t" * 64, "x" * 64)
    assert status == "ok" and torch.equal(cached, ids)
    assert load_corpus_tokens(tmp_path, "u" * 64, "x" * 64)[0] is None  # another tokenizer
    assert load_corpus_tokens(tmp_path, "t" * 64, "y" * 64)[0] is None  # another text
    path = corpus_tokens_path(tmp_path, "t" * 64, "x" * 64)
    data = bytearray(path.read_bytes())
    data[-8:] = b"\x00" * 8  # damage the last ids
    path.write_bytes(bytes(data))
    damaged, why = load_corpus_tokens(tmp_path, "t" * 64, "x" * 64)
    assert damaged is None and why != "ok"
