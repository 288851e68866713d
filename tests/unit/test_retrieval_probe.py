"""The synthetic retrieval probes (inputs/retrieval_probe.py), built with real fast tokenizers made
offline here, and their scoring (metrics/retrieval.py) against hand-computed summaries."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from quant_fixtures.inputs import retrieval_probe as rp
from quant_fixtures.metrics import retrieval as rm

BOS = "<s>"


def _trained_bpe() -> Tokenizer:
    """A byte-level BPE (GPT-2 style) trained on the probe texts and some numbers: keys split into
    several tokens, as they do in real vocabularies."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=700,
        special_tokens=[BOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    numbers = [" ".join(str(n * 7919 % 1000) for n in range(i, i + 30)) for i in range(0, 600, 30)]
    texts = [*rp.FILLER, rp.INTRO, rp.QUESTION, rp.NEEDLE.format(key="135790"), *numbers]
    tok.train_from_iterator(texts * 5, trainer)
    return tok


@pytest.fixture(scope="module")
def sentencepiece_like() -> PreTrainedTokenizerFast:
    """Llama-2's legacy layout: every text gets a "▁" prepended and spaces become "▁", so " Remember"
    alone encodes with a lone "▁" first that running text does not have."""
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    texts = [*rp.FILLER, rp.INTRO, rp.QUESTION, rp.NEEDLE.format(key="135790"), "0 1 2 3 4 5 6 7 8 9 ."]
    tok.train_from_iterator(texts * 5, trainers.BpeTrainer(vocab_size=500, special_tokens=[BOS], show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS)


@pytest.fixture(scope="module")
def with_bos() -> PreTrainedTokenizerFast:
    tok = _trained_bpe()
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS)


@pytest.fixture(scope="module")
def without_bos() -> PreTrainedTokenizerFast:
    """Has a BOS token but does not add it by default."""
    return PreTrainedTokenizerFast(tokenizer_object=_trained_bpe(), bos_token=BOS)


def _encode(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids


def _decode(tokenizer: PreTrainedTokenizerFast, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    """One sequence's text (decode is typed for batches as well)."""
    text = tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
    assert isinstance(text, str)
    return text


def _layout(tokenizer: PreTrainedTokenizerFast, probe: rp.Probe) -> dict[str, int]:
    """Token counts of the probe's parts, from the texts (byte-level BPE: a piece after a sentence end
    tokenizes as it does alone)."""
    bos = 1 if tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id] else 0
    intro = len(_encode(tokenizer, rp.INTRO))
    needle = len(_encode(tokenizer, rp.NEEDLE.format(key=probe.key)))
    question = len(_encode(tokenizer, rp.QUESTION))
    filler = probe.length - bos - intro - needle - question - probe.answer_tokens
    return {"bos": bos, "intro": intro, "needle": needle, "filler": filler}


# --- building --------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [100, 128, 257, 512, 1500])
@pytest.mark.parametrize("depth", [0.0, 0.3, 0.5, 1.0])
def test_probes_have_exactly_the_requested_length(
    with_bos: PreTrainedTokenizerFast, without_bos: PreTrainedTokenizerFast, length: int, depth: float
) -> None:
    for tokenizer in (with_bos, without_bos):
        probe = rp.build_probe(tokenizer, length, depth, "482913")
        assert len(probe.ids) == probe.length == length
        assert probe.answer_start + probe.answer_tokens == length
        assert probe.depth == depth


def test_bos_is_put_first_only_when_the_tokenizer_adds_it(
    with_bos: PreTrainedTokenizerFast, without_bos: PreTrainedTokenizerFast
) -> None:
    bos = with_bos.bos_token_id
    first = rp.build_probe(with_bos, 200, 0.0, "482913")
    assert first.ids[0] == bos and first.ids.count(bos) == 1
    second = rp.build_probe(without_bos, 200, 0.0, "482913")
    assert bos not in second.ids and first.needle_position == second.needle_position + 1
    # Same texts: with BOS first, the cut filler sentence (just before the question) is one token shorter.
    cut = second.answer_start - len(_encode(without_bos, rp.QUESTION)) - 1
    assert first.ids[1:] == second.ids[:cut] + second.ids[cut + 1 :]


def test_the_joins_tokenize_as_running_text(
    with_bos: PreTrainedTokenizerFast, without_bos: PreTrainedTokenizerFast, sentencepiece_like: PreTrainedTokenizerFast
) -> None:
    """A probe's ids are what the tokenizer makes of the probe's text, BOS included as it adds it."""
    lone_space = sentencepiece_like.convert_tokens_to_ids("▁")
    assert (
        _encode(sentencepiece_like, rp.NEEDLE.format(key="482913"))[0] == lone_space
    )  # why pieces are not encoded alone
    for tokenizer in (with_bos, without_bos, sentencepiece_like):
        for length, depth in ((150, 0.0), (333, 0.4), (700, 0.8), (1000, 1.0)):
            probe = rp.build_probe(tokenizer, length, depth, "482913")
            text = _decode(tokenizer, probe.ids, skip_special_tokens=True)
            assert tokenizer(text)["input_ids"] == list(probe.ids), (length, depth)
            assert text.startswith(rp.INTRO) and "  " not in text
    probe = rp.build_probe(sentencepiece_like, 300, 0.5, "482913")
    assert lone_space not in probe.ids
    assert _decode(sentencepiece_like, probe.ids[probe.answer_start :]).strip() == "482913"


def test_the_answer_span_is_the_key_after_the_question(with_bos: PreTrainedTokenizerFast) -> None:
    for key in ("482913", "100000", "999999", "305070"):
        probe = rp.build_probe(with_bos, 300, 0.5, key)
        answer = probe.ids[probe.answer_start :]
        assert len(answer) == probe.answer_tokens > 1
        assert _decode(with_bos, answer) == " " + key
        text = _decode(with_bos, probe.ids, skip_special_tokens=True)
        assert text.startswith(rp.INTRO)
        assert text.endswith(rp.QUESTION + " " + key)
        assert text.count(key) == 2  # the needle and the answer
        assert rp.NEEDLE.format(key=key) in text
        assert _decode(with_bos, probe.ids[: probe.answer_start]).endswith("The vault code is")


@pytest.mark.parametrize("length", [128, 400, 1200])
def test_depth_places_the_needle_as_documented(with_bos: PreTrainedTokenizerFast, length: int) -> None:
    longest = max(len(_encode(with_bos, s)) for s in rp.FILLER)
    positions = []
    for depth in (0.0, 0.25, 0.5, 0.75, 1.0):
        probe = rp.build_probe(with_bos, length, depth, "482913")
        parts = _layout(with_bos, probe)
        needle = _encode(with_bos, rp.NEEDLE.format(key=probe.key))
        assert list(probe.ids[probe.needle_position : probe.needle_position + len(needle)]) == needle
        before = probe.needle_position - parts["bos"] - parts["intro"]
        assert 0 <= before <= parts["filler"]
        if depth == 0.0:
            assert before == 0  # right after the intro
        elif depth == 1.0:
            assert before == parts["filler"]  # right before the question
            assert probe.needle_position + len(needle) + len(_encode(with_bos, rp.QUESTION)) == probe.answer_start
        else:
            assert abs(before - depth * parts["filler"]) <= longest / 2
            # A sentence boundary: the filler before the needle ends a sentence.
            assert _decode(with_bos, probe.ids[: probe.needle_position]).endswith(".")
        positions.append(probe.needle_position)
    assert positions == sorted(positions) and positions[0] < positions[-1]


def test_the_filler_is_varied_plain_text(with_bos: PreTrainedTokenizerFast) -> None:
    needle_words = {"remember", "vault", "code"}
    for sentence in rp.FILLER:
        assert sentence.startswith(" ") and sentence.endswith(".")
        assert not re.search(r"\d", sentence), sentence
        assert not needle_words & set(re.findall(r"[a-z]+", sentence.lower())), sentence
    assert len(set(rp.FILLER)) == len(rp.FILLER) >= 20
    for seed in range(25):  # rounds of shuffles meet about once in 24 times on the same sentence
        probe = rp.build_probe(with_bos, 1500, 1.0, "482913", filler_seed=seed)
        text = _decode(with_bos, probe.ids[: probe.needle_position], skip_special_tokens=True)
        sentences = [s.strip() + "." for s in text.removeprefix(rp.INTRO).split(".") if s.strip()]
        whole = [s for s in sentences if " " + s in rp.FILLER]
        assert len(set(whole)) == len(rp.FILLER)  # every sentence, not one repeated
        assert all(a != b for a, b in zip(sentences, sentences[1:])), seed
    # The order is seeded: the same seed gives the same probe, another seed another filler order.
    assert rp.build_probe(with_bos, 600, 0.5, "482913", filler_seed=3) == rp.build_probe(
        with_bos, 600, 0.5, "482913", filler_seed=3
    )
    assert rp.build_probe(with_bos, 600, 0.5, "482913", filler_seed=4).ids != (
        rp.build_probe(with_bos, 600, 0.5, "482913", filler_seed=3).ids
    )


def test_build_probes_order_and_keys(with_bos: PreTrainedTokenizerFast) -> None:
    probes = rp.build_probes(with_bos, [256, 128], [0.0, 0.5, 1.0], 3, seed=11)
    assert [(p.length, p.depth) for p in probes] == [(n, d) for n in (256, 128) for d in (0.0, 0.5, 1.0) for _ in "kkk"]
    keys = [p.key for p in probes]
    assert all(re.fullmatch(r"[1-9]\d{5}", k) for k in keys) and rp.KEY_DIGITS == 6
    assert len(set(keys)) == len(keys)
    assert all(_decode(with_bos, p.ids[p.answer_start :]) == " " + p.key for p in probes)
    assert keys == [rp.probe_key(11, p.length, p.depth, i % 3) for i, p in enumerate(probes)]


def test_a_probe_does_not_change_when_other_lengths_are_added(with_bos: PreTrainedTokenizerFast) -> None:
    alone = rp.build_probes(with_bos, [128], [0.0, 1.0], 2, seed=5)
    more = rp.build_probes(with_bos, [512, 128, 300], [0.0, 1.0], 2, seed=5)
    assert [p for p in more if p.length == 128] == alone
    other_seed = rp.build_probes(with_bos, [128], [0.0, 1.0], 2, seed=6)
    assert [p.key for p in other_seed] != [p.key for p in alone]


def test_keys_are_distinct_even_when_a_draw_collides() -> None:
    first = rp.probe_key(1, 128, 0.5, 0)
    assert rp.probe_key(1, 128, 0.5, 0, {first}) != first
    assert rp.probe_key(1, 128, 0.5, 0) == first  # stable


def test_too_short_lengths_and_bad_inputs_are_named(with_bos: PreTrainedTokenizerFast) -> None:
    parts = _layout(with_bos, rp.build_probe(with_bos, 200, 0.5, "482913"))
    shortest = 200 - parts["filler"] + rp.MIN_FILLER_TOKENS
    assert len(rp.build_probe(with_bos, shortest, 0.5, "482913").ids) == shortest
    with pytest.raises(ValueError, match=rf"length {shortest - 1} is too short.*length >= {shortest}"):
        rp.build_probe(with_bos, shortest - 1, 0.5, "482913")
    with pytest.raises(ValueError, match=r"length 70 is too short"):
        rp.build_probes(with_bos, [256, 70], [0.5], 1, seed=0)
    with pytest.raises(ValueError, match=r"lengths\[1\] must be an integer >= 64"):
        rp.build_probes(with_bos, [256, 32], [0.5], 1, seed=0)
    with pytest.raises(ValueError, match=r"lengths has duplicates \[256\]"):
        rp.build_probes(with_bos, [256, 128, 256], [0.5], 1, seed=0)
    with pytest.raises(ValueError, match=r"lengths is empty"):
        rp.build_probes(with_bos, [], [0.5], 1, seed=0)
    with pytest.raises(ValueError, match=r"depths\[0\] must be a number in \[0, 1\]"):
        rp.build_probes(with_bos, [256], [1.5], 1, seed=0)
    with pytest.raises(ValueError, match=r"depths has duplicates \[0.5\]"):
        rp.build_probes(with_bos, [256], [0.5, 0.5], 1, seed=0)
    with pytest.raises(ValueError, match=r"keys_per_cell must be an integer >= 1, got 0"):
        rp.build_probes(with_bos, [256], [0.5], 0, seed=0)
    for depth in (-0.1, float("nan"), True):
        with pytest.raises(ValueError, match=r"depth must be a number in \[0, 1\]"):
            rp.build_probe(with_bos, 256, depth, "482913")
    bad_keys: tuple[Any, ...] = ("012345", "48291", "4829130", 482913, "48291x")  # an int on purpose
    for key in bad_keys:
        with pytest.raises(ValueError, match=r"key must be a string of 6 digits"):
            rp.build_probe(with_bos, 256, 0.5, key)


def test_an_answer_merged_into_the_question_is_refused() -> None:
    """A BPE without pre-tokenizer that merges "s " makes the question's last token ("s") change
    once the key follows it: the answer's ids cannot be cut off the question's."""
    chars = sorted(set("".join([*rp.FILLER, rp.INTRO, rp.QUESTION, rp.NEEDLE, "0123456789", BOS])))
    vocab = {BOS: 0, **{c: i + 1 for i, c in enumerate(chars)}}
    vocab["s "] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("s", " ")]))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, name_or_path="merging-test")
    with pytest.raises(ValueError, match=r"tokenizer 'merging-test'.*not a prefix"):
        rp.build_probe(tokenizer, 600, 0.5, "482913")


def test_the_protocol_is_described() -> None:
    text = rp.describe()
    assert text.startswith(rp.PROTOCOL_TEXT) and f"version {rp.PROBE_VERSION}" in text
    assert rp.INTRO in text and rp.QUESTION.strip() in text and "Mohtashami & Jaggi" in text


# --- scoring ---------------------------------------------------------------------------------------

T, F = True, False
LENGTHS = [128, 128, 256, 256]
DEPTHS = [0.0, 1.0, 0.0, 1.0]
FP16 = [np.array([T, T]), np.array([T, T, T]), np.array([T, F]), np.array([T])]  # verdicts: T T F T
VARIANT = [np.array([T, T]), np.array([T, F, T]), np.array([T, T]), np.array([T])]  # verdicts: T F T T


def test_a_hand_computed_summary() -> None:
    summary = rm.retrieval_summary(LENGTHS, DEPTHS, FP16, VARIANT, answer_kl=[0.1, 0.5, float("inf"), 0.3])
    assert summary == {
        "probes": 4,
        "fp16_retrieved": 3,
        "retrieved": 3,
        "flips": 2,  # probe 1 lost, probe 2 gained
        "lost": 1,
        "gained": 1,
        "flip_rate": 0.5,
        "answer_kl_mean": pytest.approx(0.3),  # the infinite value left out
        "by_length": [
            {"length": 128, "probes": 2, "fp16_retrieved": 2, "retrieved": 1, "flips": 1},
            {"length": 256, "probes": 2, "fp16_retrieved": 1, "retrieved": 2, "flips": 1},
        ],
        "by_depth": [
            {"depth": 0.0, "probes": 2, "fp16_retrieved": 1, "retrieved": 2, "flips": 1},
            {"depth": 1.0, "probes": 2, "fp16_retrieved": 2, "retrieved": 1, "flips": 1},
        ],
        "cells": [
            {"length": 128, "depth": 0.0, "probes": 1, "fp16_retrieved": 1, "retrieved": 1, "flips": 0},
            {"length": 128, "depth": 1.0, "probes": 1, "fp16_retrieved": 1, "retrieved": 0, "flips": 1},
            {"length": 256, "depth": 0.0, "probes": 1, "fp16_retrieved": 0, "retrieved": 1, "flips": 1},
            {"length": 256, "depth": 1.0, "probes": 1, "fp16_retrieved": 1, "retrieved": 1, "flips": 0},
        ],
        "per_probe": [
            {"length": 128, "depth": 0.0, "fp16": True, "variant": True},
            {"length": 128, "depth": 1.0, "fp16": True, "variant": False},
            {"length": 256, "depth": 0.0, "fp16": False, "variant": True},
            {"length": 256, "depth": 1.0, "fp16": True, "variant": True},
        ],
    }
    assert rm.retrieval_summary(LENGTHS, DEPTHS, FP16, VARIANT)["answer_kl_mean"] is None
    same = rm.retrieval_summary(LENGTHS, DEPTHS, FP16, FP16)
    assert (same["flips"], same["lost"], same["gained"], same["flip_rate"]) == (0, 0, 0, 0.0)


def test_groups_keep_the_order_of_first_appearance() -> None:
    summary = rm.retrieval_summary([512, 128, 512], [0.5, 0.5, 0.0], [[T]] * 3, [[F], [T], [T]])
    assert [r["length"] for r in summary["by_length"]] == [512, 128]
    assert [r["depth"] for r in summary["by_depth"]] == [0.5, 0.0]
    assert [(c["length"], c["depth"], c["probes"]) for c in summary["cells"]] == [
        (512, 0.5, 1),
        (128, 0.5, 1),
        (512, 0.0, 1),
    ]
    assert (summary["lost"], summary["gained"]) == (1, 0) and summary["flip_rate"] == pytest.approx(1 / 3)


def test_the_fp16_summary_counts() -> None:
    assert rm.fp16_retrieval_summary(LENGTHS, DEPTHS, FP16) == {
        "probes": 4,
        "fp16_retrieved": 3,
        "by_length": [
            {"length": 128, "probes": 2, "fp16_retrieved": 2},
            {"length": 256, "probes": 2, "fp16_retrieved": 1},
        ],
        "by_depth": [
            {"depth": 0.0, "probes": 2, "fp16_retrieved": 1},
            {"depth": 1.0, "probes": 2, "fp16_retrieved": 2},
        ],
        "cells": [
            {"length": 128, "depth": 0.0, "probes": 1, "fp16_retrieved": 1},
            {"length": 128, "depth": 1.0, "probes": 1, "fp16_retrieved": 1},
            {"length": 256, "depth": 0.0, "probes": 1, "fp16_retrieved": 0},
            {"length": 256, "depth": 1.0, "probes": 1, "fp16_retrieved": 1},
        ],
    }


def test_hits_and_the_greedy_verdict() -> None:
    hits = rm.answer_hits(np.array([5, 7, 9]), [5, 7, 8])
    assert hits.tolist() == [T, T, F] and not rm.is_retrieved(hits)
    assert rm.is_retrieved(rm.answer_hits([5, 7, 8], [5, 7, 8]))
    with pytest.raises(ValueError, match=r"predicted \(2,\) and answer \(3,\)"):
        rm.answer_hits([1, 2], [1, 2, 3])


def test_bad_summary_inputs_are_named() -> None:
    with pytest.raises(ValueError, match=r"one entry per probe.*'variant_hits': 3"):
        rm.retrieval_summary(LENGTHS, DEPTHS, FP16, VARIANT[:3])
    with pytest.raises(ValueError, match=r"one entry per probe.*'answer_kl': 2"):
        rm.retrieval_summary(LENGTHS, DEPTHS, FP16, VARIANT, answer_kl=[0.1, 0.2])
    with pytest.raises(ValueError, match=r"one entry per probe.*'depths': 3"):
        rm.fp16_retrieval_summary(LENGTHS, DEPTHS[:3], FP16)
    with pytest.raises(ValueError, match=r"probe 1: fp16_hits has 3 answer positions, variant_hits 2"):
        rm.retrieval_summary(LENGTHS, DEPTHS, FP16, [VARIANT[0], np.array([T, T]), *VARIANT[2:]])
    with pytest.raises(ValueError, match=r"variant_hits\[3\] must be a non-empty 1-D array"):
        rm.retrieval_summary(LENGTHS, DEPTHS, FP16, [*VARIANT[:3], np.array([], dtype=bool)])
    with pytest.raises(ValueError, match=r"fp16_hits\[0\] must be booleans.*int64"):
        rm.retrieval_summary(LENGTHS, DEPTHS, [np.array([1, 1]), *FP16[1:]], VARIANT)
    with pytest.raises(ValueError, match=r"fp16_hits\[0\] must be a non-empty 1-D array.*\(1, 2\)"):
        rm.fp16_retrieval_summary(LENGTHS, DEPTHS, [np.array([[T, T]]), *FP16[1:]])
    with pytest.raises(ValueError, match=r"no probes"):
        rm.retrieval_summary([], [], [], [])
