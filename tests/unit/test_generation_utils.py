"""Unit tests (no model) of the generation helpers and of the FP16 prompt-reference cache.

Covers quant_fixtures.generation (truncate_response, length_batches, eos/pad selection),
quant_fixtures.prompt_eval.first_divergence, and the safetensors round trip of
quant_fixtures.reference with small hand-made tensors: stale keys, unreadable files and edited
content must all be refused with a reason, never returned.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import pytest
import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

from quant_fixtures.compute.generation import eos_token_ids, length_batches, pad_token_id, truncate_response
from quant_fixtures.compute.prompt_scoring import first_divergence
from quant_fixtures.metrics.reference_head import ReferenceHead
from quant_fixtures.store.digests import tensors_digest
from quant_fixtures.store.prompt_reference import (
    REFERENCE_FORMAT,
    PromptReference,
    ReferenceKey,
    load_reference,
    reference_path,
    store_reference,
)

# --- truncate_response ---------------------------------------------------------------------------


def test_truncate_caps_the_length_without_eos() -> None:
    assert truncate_response([5, 6, 7, 8, 9], 3, {2}) == [5, 6, 7]
    assert truncate_response([5, 6], 10, {2}) == [5, 6]
    assert truncate_response([], 4, {2}) == []


def test_truncate_keeps_the_first_eos_and_drops_the_rest() -> None:
    assert truncate_response([5, 6, 2, 7, 2, 8], 10, {2}) == [5, 6, 2]
    assert truncate_response([2, 5, 6], 10, {2}) == [2]
    # Padding after EOS (pad == eos, as for SmolLM2) is cut too.
    assert truncate_response([5, 2, 2, 2, 2], 10, {2}) == [5, 2]


def test_truncate_cap_before_eos_wins() -> None:
    assert truncate_response([5, 6, 7, 2], 3, {2}) == [5, 6, 7]
    assert truncate_response([5, 6, 2, 7], 3, {2}) == [5, 6, 2]  # EOS exactly at the cap is kept


def test_truncate_stops_at_whichever_eos_id_comes_first() -> None:
    eos = {2, 49, 100}
    assert truncate_response([5, 100, 6, 2], 10, eos) == [5, 100]
    assert truncate_response([5, 6, 49, 2, 100], 10, eos) == [5, 6, 49]
    assert truncate_response([5, 6, 7], 10, eos) == [5, 6, 7]


def test_truncate_accepts_tensors_and_returns_python_ints() -> None:
    out = truncate_response(torch.tensor([5, 6, 2, 7]), 10, {2})  # EOS found in a tensor row too
    assert out == [5, 6, 2] and all(type(t) is int for t in out)
    out = truncate_response(torch.tensor([5, 6, 2, 7]).tolist(), 10, {2})
    assert out == [5, 6, 2] and all(type(t) is int for t in out)
    out = truncate_response(range(4, 20), 3, {2})
    assert out == [4, 5, 6] and all(type(t) is int for t in out)


# --- first_divergence ----------------------------------------------------------------------------


def test_first_divergence_identical_is_none() -> None:
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([], []) is None


def test_first_divergence_index_of_the_first_difference() -> None:
    assert first_divergence([1, 2, 3, 4], [1, 2, 9, 4]) == 2
    assert first_divergence([7, 2, 3], [1, 2, 3]) == 0
    assert first_divergence([1, 2, 3, 4], [1, 2, 3, 5]) == 3
    assert first_divergence([1, 2, 3, 4], [1, 9, 3]) == 1  # a difference before the shorter one ends


def test_first_divergence_prefix_gives_the_shorter_length() -> None:
    assert first_divergence([1, 2], [1, 2, 3, 4]) == 2
    assert first_divergence([1, 2, 3, 4], [1, 2]) == 2
    assert first_divergence([], [5]) == 0
    assert first_divergence([5], []) == 0


# --- length_batches ------------------------------------------------------------------------------


def test_length_batches_sorted_by_length_with_index_tiebreak() -> None:
    lengths = [5, 1, 3, 5, 2, 1, 4]
    batches = length_batches(lengths, 3)
    assert batches == [[1, 5, 4], [2, 6, 0], [3]]
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))  # every index exactly once
    assert [lengths[i] for i in flat] == sorted(lengths)


@pytest.mark.parametrize(
    "n,batch_size,sizes", [(7, 3, [3, 3, 1]), (6, 3, [3, 3]), (6, 1, [1] * 6), (4, 10, [4]), (1, 1, [1]), (0, 4, [])]
)
def test_length_batches_sizes(n: int, batch_size: int, sizes: list[int]) -> None:
    lengths = [(i * 7) % 5 for i in range(n)]
    batches = length_batches(lengths, batch_size)
    assert [len(b) for b in batches] == sizes
    assert sorted(i for b in batches for i in b) == list(range(n))


# --- eos / pad selection -------------------------------------------------------------------------


def _fake(
    eos_model: int | list[int | None] | None,
    eos_tok: int | None,
    pad_tok: int | None = None,
    pad_model: int | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A model and a tokenizer with just the token ids the functions read."""
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=eos_model, pad_token_id=pad_model))
    tok = SimpleNamespace(eos_token_id=eos_tok, pad_token_id=pad_tok)
    return cast("PreTrainedModel", model), cast("PreTrainedTokenizerBase", tok)


def test_eos_ids_from_generation_config_list_or_tokenizer() -> None:
    assert eos_token_ids(*_fake([2, 7], 9)) == {2, 7}
    assert eos_token_ids(*_fake(2, 9)) == {2}
    assert eos_token_ids(*_fake(None, 9)) == {9}
    assert eos_token_ids(*_fake([2, None], 9)) == {2}
    assert eos_token_ids(*_fake(None, None)) == set()


def test_pad_id_preference_order() -> None:
    assert pad_token_id(*_fake(2, 3, pad_tok=5, pad_model=6)) == 5
    assert pad_token_id(*_fake(2, 3, pad_tok=None, pad_model=6)) == 6
    assert pad_token_id(*_fake(2, 3, pad_tok=None, pad_model=None)) == 3
    assert pad_token_id(*_fake(2, None)) == 0
    assert pad_token_id(*_fake(2, 3, pad_tok=0, pad_model=6)) == 0  # id 0 is a valid pad id


# --- reference store / load ----------------------------------------------------------------------

K = 4


def make_key(**changes: Any) -> ReferenceKey:
    key = ReferenceKey(
        model="tiny",
        weights_identity="sha256:abc",
        tokenizer_sha256="tok123",
        prompts_sha256="prompts456",
        categories=("question_answering", "creative_writing"),
        use_chat_template=True,
        max_new_tokens_cap=12,
        top_k=K,
        weight_dtype="float16",
        compute_dtype="float32",
        device_type="cpu",
        metrics_version=1,
        environment={"device_type": "cpu", "torch": "2.13.0"},
    )
    return dataclasses.replace(key, **changes)


def make_reference(key: ReferenceKey) -> PromptReference:
    gen = torch.Generator().manual_seed(0)
    prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    responses = [[10, 11, 2], [12], [13, 14, 15, 16, 2]]
    hidden = [torch.randn(len(r), 6, generator=gen).half() for r in responses]
    head = ReferenceHead(torch.randn(10, 6, generator=gen).half(), softcap=30.0)
    return PromptReference(key=key, prompt_ids=prompts, response_ids=responses, hidden=hidden, head=head)


def assert_same_reference(got: PromptReference, want: PromptReference) -> None:
    assert got.key == want.key
    assert got.prompt_ids == want.prompt_ids
    assert got.response_ids == want.response_ids
    assert len(got.hidden) == len(want.hidden)
    for a, b in zip(got.hidden, want.hidden):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert torch.equal(got.head.weight, want.head.weight) and got.head.softcap == want.head.softcap
    for i in range(len(want.hidden)):  # the rebuilt logits too
        assert torch.equal(got.logits(i, "cpu"), want.logits(i, "cpu"))


def test_round_trip(tmp_path: Path) -> None:
    key = make_key()
    ref = make_reference(key)
    path = store_reference(tmp_path, ref)
    assert path == reference_path(tmp_path, key) and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left behind
    loaded, reason = load_reference(tmp_path, key)
    assert reason == "ok" and loaded is not None
    assert_same_reference(loaded, ref)


def test_round_trip_with_an_empty_response_and_no_categories(tmp_path: Path) -> None:
    key = make_key(categories=None, max_new_tokens_cap=None)
    ref = make_reference(key)
    ref.response_ids[1] = []
    ref.hidden[1] = torch.zeros(0, 6, dtype=torch.float16)
    store_reference(tmp_path, ref)
    loaded, reason = load_reference(tmp_path, key)
    assert reason == "ok" and loaded is not None
    assert_same_reference(loaded, ref)
    assert loaded.hidden[1].shape == (0, 6)


def test_missing_file(tmp_path: Path) -> None:
    loaded, reason = load_reference(tmp_path, make_key())
    assert loaded is None and "no cached FP16 prompt reference" in reason


CHANGED = {
    "model": "other",
    "weights_identity": "sha256:def",
    "tokenizer_sha256": "tok999",
    "prompts_sha256": "prompts000",
    "categories": ("question_answering",),
    "use_chat_template": False,
    "max_new_tokens_cap": 64,
    "top_k": K + 1,
    "weight_dtype": "bfloat16",
    "compute_dtype": "float16",
    "device_type": "cuda",
    "metrics_version": 2,
    "environment": {"device_type": "cpu", "torch": "2.14.0"},
}


def test_every_key_field_is_covered() -> None:
    assert set(CHANGED) == {f.name for f in dataclasses.fields(ReferenceKey)}


@pytest.mark.parametrize("field", sorted(CHANGED))
def test_changed_key_field_is_not_served(tmp_path: Path, field: str) -> None:
    store_reference(tmp_path, make_reference(make_key()))
    new_key = make_key(**{field: CHANGED[field]})
    assert new_key.digest() != make_key().digest()
    loaded, reason = load_reference(tmp_path, new_key)
    assert loaded is None and reason  # a different key looks up a different file ...
    # ... and a file planted under the new key's name is refused as stale by its metadata.
    reference_path(tmp_path, new_key).write_bytes(reference_path(tmp_path, make_key()).read_bytes())
    loaded, reason = load_reference(tmp_path, new_key)
    assert loaded is None and "stale" in reason


@pytest.mark.parametrize("keep", [0, 7, 100, -1])
def test_truncated_file_is_refused(tmp_path: Path, keep: int) -> None:
    key = make_key()
    path = store_reference(tmp_path, make_reference(key))
    data = path.read_bytes()
    path.write_bytes(data[:keep] if keep >= 0 else data[:-1])
    loaded, reason = load_reference(tmp_path, key)
    assert loaded is None
    assert "unreadable" in reason or "mismatch" in reason


def test_garbage_file_is_refused(tmp_path: Path) -> None:
    key = make_key()
    path = reference_path(tmp_path, key)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a safetensors file at all" * 10)
    loaded, reason = load_reference(tmp_path, key)
    assert loaded is None and "unreadable" in reason


def test_flipped_byte_in_tensor_data_is_a_digest_mismatch(tmp_path: Path) -> None:
    key = make_key()
    path = store_reference(tmp_path, make_reference(key))
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the last tensor's bytes; the header stays valid
    path.write_bytes(bytes(data))
    loaded, reason = load_reference(tmp_path, key)
    assert loaded is None and "digest mismatch" in reason


def _resave(path: Path, tensors: dict, meta: dict) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=meta)


def _read(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return {n: fh.get_tensor(n) for n in fh.keys()}, fh.metadata()


def test_edited_tensor_with_the_same_metadata_is_a_digest_mismatch(tmp_path: Path) -> None:
    key = make_key()
    path = store_reference(tmp_path, make_reference(key))
    tensors, meta = _read(path)
    tensors["hidden"] = tensors["hidden"].clone()
    tensors["hidden"][0, 0] += 0.5
    _resave(path, tensors, meta)
    loaded, reason = load_reference(tmp_path, key)
    assert loaded is None and "digest mismatch" in reason


def test_edited_response_ids_with_the_same_metadata_is_a_digest_mismatch(tmp_path: Path) -> None:
    key = make_key()
    path = store_reference(tmp_path, make_reference(key))
    tensors, meta = _read(path)
    tensors["response_ids"] = tensors["response_ids"].flip(0)
    _resave(path, tensors, meta)
    loaded, reason = load_reference(tmp_path, key)
    assert loaded is None and "digest mismatch" in reason


def test_unchanged_resave_still_loads(tmp_path: Path) -> None:
    """The control for the edit tests: re-saving the same tensors and metadata is accepted."""
    key = make_key()
    ref = make_reference(key)
    path = store_reference(tmp_path, ref)
    tensors, meta = _read(path)
    assert meta["tensors_sha256"] == tensors_digest(tensors)
    assert json.loads(meta["key"])["top_k"] == K
    _resave(path, tensors, meta)
    loaded, reason = load_reference(tmp_path, key)
    assert reason == "ok" and loaded is not None
    assert_same_reference(loaded, ref)


def test_other_format_is_refused(tmp_path: Path) -> None:
    key = make_key()
    path = store_reference(tmp_path, make_reference(key))
    tensors, meta = _read(path)
    _resave(path, tensors, dict(meta, format=str(REFERENCE_FORMAT + 1)))
    loaded, reason = load_reference(tmp_path, key)
    assert loaded is None and "format" in reason


def test_store_overwrites_the_previous_file(tmp_path: Path) -> None:
    key = make_key()
    first = make_reference(key)
    store_reference(tmp_path, first)
    second = make_reference(key)
    second.response_ids[0] = [10, 11, 3]
    store_reference(tmp_path, second)
    loaded, reason = load_reference(tmp_path, key)
    assert reason == "ok" and loaded is not None and loaded.response_ids[0] == [10, 11, 3]


def test_hidden_states_that_do_not_cover_the_responses_are_refused(tmp_path: Path) -> None:
    key = make_key()
    ref = make_reference(key)
    ref.hidden[2] = ref.hidden[2][:-1]  # one response position without its hidden state
    store_reference(tmp_path, ref)
    loaded, reason = load_reference(tmp_path, key)
    assert loaded is None and "hidden states for" in reason


def test_length_batches_with_a_shift_change_every_batch() -> None:
    lengths = list(range(10))
    plain = length_batches(lengths, 4)
    shifted = length_batches(lengths, 4, shift=2)
    assert plain == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert shifted == [[0, 1], [2, 3, 4, 5], [6, 7, 8, 9]]
    assert sorted(i for b in shifted for i in b) == lengths
    together = {frozenset(b) for b in plain}
    assert not any(frozenset(b) in together for b in shifted if len(b) > 1)
    assert length_batches(lengths, 4, shift=0) == plain and length_batches(lengths, 4, shift=10) == plain
