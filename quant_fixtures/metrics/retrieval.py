"""Scoring of the synthetic retrieval probes (inputs/retrieval_probe.py): did FP16 and the variant
retrieve the hidden key, and on how many probes do they disagree.

A probe is *retrieved* when greedy decoding of as many tokens as the answer has produces the key. It
is read as a user's model answers (compute/long_context.py): the prompt in one prefill, then the
answer one token per forward pass with the KV cache, fed the key's tokens; ``hits[i] = argmax(logits
predicting answer token i) == answer token i`` and ``retrieved = all(hits)``. That is greedy decoding's
verdict exactly: while every step's argmax is the key's token, greedy decoding feeds the same tokens in
the same steps; at the first step whose argmax is not the key's token it leaves the key, and the result
differs from the key whatever comes after (tested against ``model.generate``).

Per probe: ``fp16 = all(fp16_hits)``, ``variant = all(variant_hits)``. Over probes:
``flips = #{fp16 != variant}``, ``lost = #{fp16 and not variant}``, ``gained = #{variant and not
fp16}`` (``flips = lost + gained``), ``flip_rate = flips / probes``, ``answer_kl_mean`` = the mean over
probes of each probe's mean KL(FP16 || variant) over its answer positions (non-finite values left
out). Groups (by length, by depth, by (length, depth) cell) are listed in order of first appearance.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypedDict, TypeGuard, TypeVar

import numpy as np
import numpy.typing as npt

K = TypeVar("K", bound=Hashable)


class LengthCounts(TypedDict):
    length: int
    probes: int
    fp16_retrieved: int
    retrieved: int
    flips: int


class DepthCounts(TypedDict):
    depth: float
    probes: int
    fp16_retrieved: int
    retrieved: int
    flips: int


class CellCounts(TypedDict):
    length: int
    depth: float
    probes: int
    fp16_retrieved: int
    retrieved: int
    flips: int


class ProbeVerdicts(TypedDict):
    """One probe: where its key sat, and whether FP16 and the variant retrieved it."""

    length: int
    depth: float
    fp16: bool
    variant: bool


class RetrievalSummary(TypedDict):
    """FP16 against one variant over all probes."""

    probes: int
    fp16_retrieved: int
    retrieved: int  # by the variant
    flips: int  # probes whose verdict differs from FP16's
    lost: int  # FP16 retrieved, the variant did not
    gained: int  # the variant retrieved, FP16 did not
    flip_rate: float  # flips / probes
    answer_kl_mean: float | None  # None: no KL given, or none finite
    by_length: list[LengthCounts]
    by_depth: list[DepthCounts]
    cells: list[CellCounts]
    per_probe: list[ProbeVerdicts]  # the units of the flip rate's exact binomial gate


class Fp16LengthCounts(TypedDict):
    length: int
    probes: int
    fp16_retrieved: int


class Fp16DepthCounts(TypedDict):
    depth: float
    probes: int
    fp16_retrieved: int


class Fp16CellCounts(TypedDict):
    length: int
    depth: float
    probes: int
    fp16_retrieved: int


class Fp16RetrievalSummary(TypedDict):
    """FP16 alone over all probes (counts only)."""

    probes: int
    fp16_retrieved: int
    by_length: list[Fp16LengthCounts]
    by_depth: list[Fp16DepthCounts]
    cells: list[Fp16CellCounts]


RETRIEVAL_METHOD = (
    "A probe is retrieved when greedy decoding of the answer's length produces the key: the prompt read in one "
    "prefill, then the answer fed one token per forward pass with the KV cache, and the argmax at every step is "
    "the key's token. flips: probes whose verdict differs between FP16 and the variant (lost: FP16 only; gained: "
    "variant only); flip_rate = flips / probes; answer_kl_mean: mean over probes of the mean KL(FP16 || variant) "
    "in nats over the probe's answer positions."
)


def answer_hits(predicted: npt.ArrayLike, answer: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """``predicted[i] == answer[i]`` per answer position: ``predicted`` the argmax ids at the positions
    that predict the answer tokens, ``answer`` the answer's ids."""
    p, a = np.asarray(predicted), np.asarray(answer)
    if p.ndim != 1 or p.shape != a.shape or p.size == 0:
        raise ValueError(f"answer hits: predicted {p.shape} and answer {a.shape} must be equal, non-empty 1-D")
    return np.asarray(p == a, dtype=np.bool_)


def is_retrieved(hits: npt.ArrayLike) -> bool:
    """Whether every answer position's argmax is the key's token (a non-empty 1-D bool array)."""
    return bool(_hit_array(hits, "hits").all())


def _hit_array(hits: npt.ArrayLike, name: str) -> npt.NDArray[np.bool_]:
    array = np.asarray(hits)
    if array.dtype != np.bool_:
        raise ValueError(f"{name} must be booleans (argmax == key token per answer position), got dtype {array.dtype}")
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array (one entry per answer token), got shape {array.shape}")
    return array


def _check_probes(
    lengths: Sequence[int], depths: Sequence[float], **per_probe: Sequence[object] | None
) -> tuple[list[int], list[float]]:
    counts = {"lengths": len(lengths), "depths": len(depths)}
    counts.update({name: len(values) for name, values in per_probe.items() if values is not None})
    if len(set(counts.values())) != 1:
        raise ValueError(f"retrieval summary: one entry per probe is needed in each of {counts}")
    if not lengths:
        raise ValueError("retrieval summary: no probes")
    return [int(n) for n in lengths], [float(d) for d in depths]


def _verdicts(hits: Sequence[npt.ArrayLike], name: str) -> tuple[list[npt.NDArray[np.bool_]], npt.NDArray[np.bool_]]:
    arrays = [_hit_array(h, f"{name}[{i}]") for i, h in enumerate(hits)]
    return arrays, np.array([bool(a.all()) for a in arrays], dtype=np.bool_)


def _groups(keys: Sequence[K]) -> list[tuple[K, npt.NDArray[np.intp]]]:
    """(key, indices of the probes with that key), keys in order of first appearance."""
    order: dict[K, list[int]] = {}
    for index, key in enumerate(keys):
        order.setdefault(key, []).append(index)
    return [(key, np.array(indices, dtype=np.intp)) for key, indices in order.items()]


def fp16_retrieval_summary(
    lengths: Sequence[int], depths: Sequence[float], fp16_hits: Sequence[npt.ArrayLike]
) -> Fp16RetrievalSummary:
    """FP16's retrieval counts, overall, per length, per depth and per (length, depth) cell
    (``fp16_hits``: per probe, argmax == key token at each answer position)."""
    lens, deps = _check_probes(lengths, depths, fp16_hits=fp16_hits)
    _, fp16 = _verdicts(fp16_hits, "fp16_hits")
    return {
        "probes": len(lens),
        "fp16_retrieved": int(fp16.sum()),
        "by_length": [
            {"length": n, "probes": int(i.size), "fp16_retrieved": int(fp16[i].sum())} for n, i in _groups(lens)
        ],
        "by_depth": [
            {"depth": d, "probes": int(i.size), "fp16_retrieved": int(fp16[i].sum())} for d, i in _groups(deps)
        ],
        "cells": [
            {"length": n, "depth": d, "probes": int(i.size), "fp16_retrieved": int(fp16[i].sum())}
            for (n, d), i in _groups(list(zip(lens, deps)))
        ],
    }


def retrieval_summary(
    lengths: Sequence[int],
    depths: Sequence[float],
    fp16_hits: Sequence[npt.ArrayLike],
    variant_hits: Sequence[npt.ArrayLike],
    answer_kl: Sequence[float] | None = None,
) -> RetrievalSummary:
    """FP16 against the variant over the probes (one entry per probe in every argument; ``*_hits``: per
    answer position, argmax == key token; ``answer_kl``: the probe's mean KL(FP16 || variant) over its
    answer positions). Each probe's two hit arrays must have the same, non-zero length."""
    lens, deps = _check_probes(lengths, depths, fp16_hits=fp16_hits, variant_hits=variant_hits, answer_kl=answer_kl)
    fp16_arrays, fp16 = _verdicts(fp16_hits, "fp16_hits")
    variant_arrays, variant = _verdicts(variant_hits, "variant_hits")
    for index, (a, b) in enumerate(zip(fp16_arrays, variant_arrays)):
        if a.size != b.size:
            raise ValueError(
                f"probe {index}: fp16_hits has {a.size} answer positions, variant_hits {b.size}; "
                "both score the same answer tokens"
            )
    flipped = fp16 != variant
    kl_mean: float | None = None
    if answer_kl is not None:
        kl = np.asarray(answer_kl, dtype=np.float64)
        finite = kl[np.isfinite(kl)]
        kl_mean = float(finite.mean()) if finite.size else None

    def counts(i: npt.NDArray[np.intp]) -> tuple[int, int, int, int]:
        return int(i.size), int(fp16[i].sum()), int(variant[i].sum()), int(flipped[i].sum())

    by_length: list[LengthCounts] = []
    for n, i in _groups(lens):
        probes, base, hit, flips = counts(i)
        by_length.append({"length": n, "probes": probes, "fp16_retrieved": base, "retrieved": hit, "flips": flips})
    by_depth: list[DepthCounts] = []
    for d, i in _groups(deps):
        probes, base, hit, flips = counts(i)
        by_depth.append({"depth": d, "probes": probes, "fp16_retrieved": base, "retrieved": hit, "flips": flips})
    cells: list[CellCounts] = []
    for (n, d), i in _groups(list(zip(lens, deps))):
        probes, base, hit, flips = counts(i)
        cells.append(
            {"length": n, "depth": d, "probes": probes, "fp16_retrieved": base, "retrieved": hit, "flips": flips}
        )
    return {
        "probes": len(lens),
        "fp16_retrieved": int(fp16.sum()),
        "retrieved": int(variant.sum()),
        "flips": int(flipped.sum()),
        "lost": int((fp16 & ~variant).sum()),
        "gained": int((variant & ~fp16).sum()),
        "flip_rate": float(flipped.sum()) / len(lens),
        "answer_kl_mean": kl_mean,
        "by_length": by_length,
        "by_depth": by_depth,
        "cells": cells,
        "per_probe": [
            {"length": n, "depth": d, "fp16": bool(f), "variant": bool(v)}
            for n, d, f, v in zip(lens, deps, fp16, variant)
        ],
    }


def is_variant_summary(summary: RetrievalSummary | Fp16RetrievalSummary) -> TypeGuard[RetrievalSummary]:
    """Whether a retrieval summary is a variant's (it counts flips) rather than FP16's."""
    return "flips" in summary
