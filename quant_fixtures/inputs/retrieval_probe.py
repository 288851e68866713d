"""Synthetic long-context retrieval probes: a number hidden in long, dull text, asked for at the end.

The idea is the passkey retrieval test of Mohtashami & Jaggi (2023), "Landmark Attention:
Random-Access Infinite Context Length for Transformers" (arXiv:2305.16300), and the "needle in a
haystack" tests that followed it (G. Kamradt, LLMTest_NeedleInAHaystack, 2023): one sentence with a
fact is placed at a chosen depth of filler text and the model is asked for the fact. The texts here
are this suite's own; nothing is downloaded.

A probe, in token ids, is::

    [BOS] intro | filler before | needle | filler after | question | answer

* ``[BOS]``: only when the tokenizer puts BOS first by default (``tokenizer("a")`` starts with it).
* ``intro`` (:data:`INTRO`): says a code is hidden in the text and will be asked for.
* filler: whole sentences of :data:`FILLER` (no digits, none of the needle's words) in rounds, each
  round a fresh shuffle drawn from a seeded RNG; the last sentence is cut at token level so the
  probe has exactly ``length`` tokens.
* ``needle`` (:data:`NEEDLE`): states the key, ``KEY_DIGITS`` digits without a leading zero.
* ``question`` (:data:`QUESTION`): asks for the code and ends with the stub "The vault code is".
* ``answer``: ``" " + key``; the model must continue the question with it.

Every piece after the first is tokenized as it is after a sentence end (the ids of ``"." + piece``
less those of ``"."``, or the piece's own ids where the two do not line up), without special tokens,
so the joins tokenize as in running text; the intro is tokenized as the start of a text.
"""

from __future__ import annotations

import numbers
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from quant_fixtures.inputs.corpus_protocols import adds_bos

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

PROBE_VERSION = 1  # bump when any text or rule below changes: probes of other versions do not compare
KEY_DIGITS = 6
MIN_FILLER_TOKENS = 16  # a probe with less filler is no retrieval test
MIN_PROBE_LENGTH = 64  # the shortest length build_probes accepts
_KEY = re.compile(rf"[1-9][0-9]{{{KEY_DIGITS - 1}}}")
_ANCHOR = "."  # what every piece after the intro follows: the end of a sentence

INTRO = (
    "A vault code is hidden somewhere in the text below. "
    "Read it with care, because you will be asked for the code at the end."
)
NEEDLE = " Remember this: the vault code is {key}."
QUESTION = " What vault code was hidden in the text above? The vault code is"

FILLER: tuple[str, ...] = (
    " Most mornings in the valley begin with a thin fog that lifts before lunch.",
    " The baker on the corner opens her shop early and sells out of rye bread by noon.",
    " Tomatoes in the shared garden ripen slowly when the summer nights stay cool.",
    " A narrow river runs along the edge of town, and ducks gather under the old stone bridge.",
    " Children walk to school along a path lined with chestnut trees.",
    " In autumn the wind turns colder and the hills change from green to brown.",
    " The library stays open late on Thursdays for people who work during the day.",
    " Rain tends to arrive from the west, usually in the late afternoon.",
    " A market fills the square every weekend with apples, honey and fresh cheese.",
    " The town hall has a clock tower that chimes on the hour.",
    " Gardeners here sow peas early because the young plants tolerate a light frost.",
    " Snow is rare in this region, but when it falls the streets become very quiet.",
    " The post office shares a building with a small cafe that serves strong tea.",
    " Swallows nest under the roofs of the barns each spring and leave before the cold returns.",
    " A bus runs between the town and the coast in the morning and again in the evening.",
    " Most houses on the main street are painted in pale colours and have window boxes full of herbs.",
    " On clear evenings people sit on the benches by the harbour and watch the boats come in.",
    " The school holds a fair every summer with games, music and homemade lemonade.",
    " Roses along the fence need pruning at the end of winter.",
    " Thunderstorms in July can be loud but rarely last longer than an hour.",
    " The old mill by the stream has been turned into a museum about weaving.",
    " A gentle slope behind the church is covered with wild flowers in May.",
    " Bees visit the lavender bushes from morning until dusk.",
    " Neighbours often trade vegetables over the garden wall when a harvest is too large.",
)


@dataclass(frozen=True)
class Probe:
    """One probe: ``ids[answer_start:]`` are the ``answer_tokens`` ids of ``" " + key``."""

    ids: tuple[int, ...]
    answer_start: int  # index in ids of the first answer token
    answer_tokens: int
    length: int  # len(ids), BOS and answer included
    depth: float  # as requested; the needle sits at the sentence boundary nearest to it
    needle_position: int  # index in ids of the needle's first token
    key: str


@dataclass(frozen=True)
class _Pieces:
    """A tokenizer's ids of the texts every probe shares."""

    name: str
    bos: list[int]
    intro: list[int]
    question: list[int]
    filler: list[list[int]]


def _name(tokenizer: PreTrainedTokenizerBase) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return [int(t) for t in tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]]


def _after_text(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """The ids ``text`` gets after a sentence end: those of ``"." + text`` less those of ``"."`` when
    the latter are a prefix of the former, else ``text``'s own."""
    anchor = _encode(tokenizer, _ANCHOR)
    joined = _encode(tokenizer, _ANCHOR + text)
    if len(joined) > len(anchor) and joined[: len(anchor)] == anchor:
        return joined[len(anchor) :]
    return _encode(tokenizer, text)


def _pieces(tokenizer: PreTrainedTokenizerBase) -> _Pieces:
    bos = adds_bos(tokenizer)
    return _Pieces(
        name=_name(tokenizer),
        bos=[] if bos is None else [bos],
        intro=_encode(tokenizer, INTRO),
        question=_after_text(tokenizer, QUESTION),
        filler=[_after_text(tokenizer, sentence) for sentence in FILLER],
    )


def _answer_ids(tokenizer: PreTrainedTokenizerBase, pieces: _Pieces, key: str) -> list[int]:
    """The ids of ``" " + key`` after the question: encode(question + " " + key) less encode(question)."""
    with_key = _after_text(tokenizer, QUESTION + " " + key)
    stub = pieces.question
    if with_key[: len(stub)] != stub or len(with_key) == len(stub):
        raise ValueError(
            f"tokenizer {pieces.name!r}: the question's ids {stub[-3:]} (last three) are not a prefix of the ids "
            f"of the question followed by ' {key}' ({with_key[-8:]}, last eight), so the answer has no tokens "
            "of its own"
        )
    return with_key[len(stub) :]


def _filler_order(seed: int | str) -> Iterator[int]:
    """Indices into FILLER: rounds of every sentence, each a fresh shuffle, never one sentence twice in
    a row."""
    rng = random.Random(f"retrieval-probe filler {seed}")
    last = -1
    while True:
        order = list(range(len(FILLER)))
        rng.shuffle(order)
        if order[0] == last:
            order[0], order[1] = order[1], order[0]
        yield from order
        last = order[-1]


def _filler_stream(pieces: _Pieces, tokens: int, seed: int | str) -> tuple[list[int], list[int]]:
    """``tokens`` filler ids (whole sentences, the last one cut) and the sentence boundaries in them:
    0, the end of each whole sentence, and ``tokens``."""
    stream: list[int] = []
    boundaries = [0]
    for index in _filler_order(seed):
        if len(stream) >= tokens:
            break
        stream += pieces.filler[index]
        boundaries.append(min(len(stream), tokens))
    return stream[:tokens], sorted(set(boundaries))


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise ValueError(f"key must be a string of {KEY_DIGITS} digits without a leading zero, got {key!r}")
    return key


def _check_depth(depth: object, name: str = "depth") -> float:
    if isinstance(depth, bool) or not isinstance(depth, numbers.Real) or not 0.0 <= float(depth) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1] (the share of filler before the needle), got {depth!r}")
    return float(depth)


def _check_length(length: object, minimum: int, name: str = "length") -> int:
    if isinstance(length, bool) or not isinstance(length, numbers.Integral) or length < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum} (tokens of the whole probe), got {length!r}")
    return int(length)


def _check_distinct(name: str, values: Sequence[float]) -> None:
    if not values:
        raise ValueError(f"{name} is empty: give at least one")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{name} has duplicates {repeated}: give each value once")


def _assemble(
    tokenizer: PreTrainedTokenizerBase, pieces: _Pieces, length: int, depth: float, key: str, filler_seed: int | str
) -> Probe:
    needle = _after_text(tokenizer, NEEDLE.format(key=key))
    answer = _answer_ids(tokenizer, pieces, key)
    fixed = len(pieces.bos) + len(pieces.intro) + len(needle) + len(pieces.question) + len(answer)
    filler_tokens = length - fixed
    if filler_tokens < MIN_FILLER_TOKENS:
        raise ValueError(
            f"length {length} is too short for a retrieval probe with tokenizer {pieces.name!r}: intro, needle, "
            f"question and answer take {fixed} tokens and at least {MIN_FILLER_TOKENS} filler tokens are needed "
            f"(length >= {fixed + MIN_FILLER_TOKENS})"
        )
    stream, boundaries = _filler_stream(pieces, filler_tokens, filler_seed)
    target = depth * filler_tokens
    before = min(boundaries, key=lambda b: (abs(b - target), b))  # nearest boundary, the earlier at a tie
    head = pieces.bos + pieces.intro + stream[:before]
    ids = head + needle + stream[before:] + pieces.question + answer
    if len(ids) != length:  # the arithmetic above guarantees it; a failure here is a bug in this module
        raise AssertionError(f"retrieval probe of {len(ids)} tokens for length {length}")
    return Probe(
        ids=tuple(ids),
        answer_start=length - len(answer),
        answer_tokens=len(answer),
        length=length,
        depth=depth,
        needle_position=len(head),
        key=key,
    )


def build_probe(
    tokenizer: PreTrainedTokenizerBase, length: int, depth: float, key: str, *, filler_seed: int | str = 0
) -> Probe:
    """One probe of exactly ``length`` tokens (BOS, if the tokenizer adds one by default, and the answer
    included) with the needle stating ``key`` at ``depth``.

    ``depth`` is the share of the filler tokens before the needle: the needle goes to the sentence
    boundary of the filler nearest to ``depth * filler tokens`` (the earlier one at a tie), so 0 puts
    it right after the intro and 1 right before the question. ``filler_seed`` seeds the order of the
    filler sentences. Raises ValueError for a bad key or depth, a ``length`` too short to hold the
    intro, needle, question, answer and :data:`MIN_FILLER_TOKENS` filler tokens, or a tokenizer that
    merges the answer into the question's last token."""
    return _assemble(
        tokenizer,
        _pieces(tokenizer),
        _check_length(length, 1),
        _check_depth(depth),
        _check_key(key),
        filler_seed,
    )


def probe_key(seed: int, length: int, depth: float, k: int, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """The key of probe ``k`` of cell (``length``, ``depth``): drawn from random.Random seeded by a
    string of the four, so it does not depend on the other cells; redrawn (same RNG) while in
    ``taken``."""
    rng = random.Random(f"retrieval-probe key {seed}:{length}:{float(depth)!r}:{k}")
    while True:
        key = str(rng.randrange(10 ** (KEY_DIGITS - 1), 10**KEY_DIGITS))
        if key not in taken:
            return key


def build_probes(
    tokenizer: PreTrainedTokenizerBase,
    lengths: Sequence[int],
    depths: Sequence[float],
    keys_per_cell: int,
    seed: int,
) -> list[Probe]:
    """One probe per (length, depth, k) for k < ``keys_per_cell``, in that nesting order and in the
    order ``lengths`` and ``depths`` are given. Keys come from :func:`probe_key` and are distinct
    within the call (a key already used is redrawn, so a probe's key changes when other cells are
    added only on such a collision, about one chance in a million per pair). Each probe's filler
    order is seeded by the same (seed, length, depth, k)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if isinstance(keys_per_cell, bool) or not isinstance(keys_per_cell, int) or keys_per_cell < 1:
        raise ValueError(f"keys_per_cell must be an integer >= 1, got {keys_per_cell!r}")
    checked_lengths = [_check_length(n, MIN_PROBE_LENGTH, f"lengths[{i}]") for i, n in enumerate(lengths)]
    checked_depths = [_check_depth(d, f"depths[{i}]") for i, d in enumerate(depths)]
    _check_distinct("lengths", checked_lengths)
    _check_distinct("depths", checked_depths)
    probes_wanted = len(checked_lengths) * len(checked_depths) * keys_per_cell
    if probes_wanted > 9 * 10 ** (KEY_DIGITS - 1) // 2:
        raise ValueError(f"{probes_wanted} probes asked for: too many for distinct {KEY_DIGITS}-digit keys")
    pieces = _pieces(tokenizer)
    taken: set[str] = set()
    probes: list[Probe] = []
    for length in checked_lengths:
        for depth in checked_depths:
            for k in range(keys_per_cell):
                key = probe_key(seed, length, depth, k, taken)
                taken.add(key)
                cell_seed = f"{seed}:{length}:{depth!r}:{k}"
                probes.append(_assemble(tokenizer, pieces, length, depth, key, cell_seed))
    return probes


PROTOCOL_TEXT = (
    f"Synthetic passkey retrieval (version {PROBE_VERSION}; after Mohtashami & Jaggi 2023 and the needle-in-a-"
    "haystack tests). Each probe is, in token ids: BOS (only if the tokenizer adds it by default), an intro "
    f"saying a code is hidden and will be asked for, filler, a needle sentence stating a random {KEY_DIGITS}-"
    "digit key (no leading zero), more filler, a question ending in the stub 'The vault code is', and the "
    "answer ' ' + key. The probe has exactly the requested number of tokens, answer included. Filler: "
    f"{len(FILLER)} plain sentences without digits, in rounds of fresh seeded shuffles, the last sentence cut at "
    "token level to make the length exact. Depth d puts the needle at the filler sentence boundary nearest to "
    "d x filler tokens (0: after the intro, 1: before the question). Pieces after the intro are tokenized as "
    "they are after a sentence end, without special tokens; the answer's ids are those of question + ' ' + key "
    "less those of the question. Keys: random.Random seeded by (seed, length, depth, k), distinct within a run. "
    "A probe is retrieved when, teacher-forced, the model's argmax at every answer position is the key's token "
    "(what greedy decoding of the answer would produce)."
)


def describe() -> str:
    """:data:`PROTOCOL_TEXT` followed by the literal texts of the intro, needle and question."""
    return f"{PROTOCOL_TEXT}\nIntro: {INTRO!r}\nNeedle: {NEEDLE!r}\nQuestion: {QUESTION!r}"
