"""Aggregate per-prompt harm into the report's `kl_divergence` and `flips` sections.

The sections are the report's own types (dataclasses, re-exported by report/schema.py), built here
where their numbers are made; the records inside them are TypedDicts, the JSON objects the evaluation
document holds, key for key, in the order they are built.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np

from quant_fixtures.json_types import OMIT_IF_NONE
from quant_fixtures.metrics.stats import bootstrap_ci, counts_differ_p_value, summarize

WORST_PROMPTS = 5
RESPONSE_CHARS = 200


class PromptRecord(TypedDict):
    """One prompt's harm (compute/prompt_scoring.per_prompt_records); None where nothing was scored."""

    id: str
    category: str
    positions: int  # response positions scored
    kl_mean: float | None  # exact, full vocabulary
    kl_max: float | None
    kl_reverse_mean: float | None
    kl_topk_mean: float | None
    top1_agreement: float | None
    nll_fp16_tokens: float
    tail_mass_mean: float | None
    first_divergence: int | None  # index of the first token that differs from FP16's response
    exact_match: bool
    fp16_correct: bool | None  # None: the prompt has no checkable answer
    correct: bool | None
    flip: bool | None
    fp16_response: str
    response: str


@dataclass
class BatchSensitivity:
    """The ``flips.batch_sensitivity`` section (batch-dependent variants, session/prompt_stage.py)."""

    batch_size: int
    shift: int
    prompts: int
    responses_changed: int
    verdicts_changed: int
    flips: int
    flips_other_batch: int
    method: str


@dataclass
class Flips:
    """The report's ``flips`` section: answers FP16 and the variant got right or wrong."""

    checkable_prompts: int
    fp16_correct: int
    variant_correct: int
    flips: int
    correct_to_wrong: int
    wrong_to_correct: int
    # McNemar's exact test of correct_to_wrong vs wrong_to_correct (metrics/stats.counts_differ_p_value):
    # small when the variant's answers changed one way more than the other, beyond chance
    mcnemar_p: float
    flipped_ids: list[str]
    exact_match_rate: float | None
    batch_sensitivity: BatchSensitivity | None = field(default=None, metadata=OMIT_IF_NONE)


class CategoryStats(TypedDict):
    prompts: int
    kl_mean: float | None  # None: no prompt of the category has a scored position
    kl_ci95: list[float] | None
    top1_agreement: float | None
    flips: int
    exact_match: int


class TopKBound(TypedDict):
    mean: float
    ci95: list[float]
    k: int
    rel_gap_vs_exact: float | None  # (exact - top-k) / exact


class WorstPrompt(TypedDict):
    id: str
    category: str
    kl_mean: float | None
    first_divergence: int | None
    fp16_response: str
    response: str


@dataclass
class PromptKL:
    """The report's ``kl_divergence`` section: per-prompt KL(P_fp16 || Q_variant) statistics over the
    prompt suite."""

    mean: float
    median: float
    min: float
    max: float
    p90: float
    p99: float
    prompts: int
    ci95: list[float]
    p99_ci95: list[float]
    top1_agreement: float
    top1_agreement_ci95: list[float]
    tail_mass: float
    basis: str
    topk: TopKBound
    per_prompt: list[PromptRecord]
    per_category: dict[str, CategoryStats]
    macro_kl_mean: float
    macro_kl_ci95: list[float]
    worst_prompts: list[WorstPrompt]
    method: str
    method_settings: str


def _mean_or_none(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _ci_or_none(values: list[float], seed: int) -> list[float] | None:
    return list(bootstrap_ci(values, seed=seed)) if values else None


def macro_average(groups: dict[str, np.ndarray], seed: int = 0, n_resamples: int = 2000) -> tuple[float, list[float]]:
    """The mean of the groups' means, and its 95 % percentile-bootstrap CI resampling the items of
    each group within the group (stratified: every resample keeps every group and its size)."""
    if not groups:
        raise ValueError("macro_average needs at least one non-empty group")
    rng = np.random.default_rng(seed)
    means = np.zeros(n_resamples)
    for values in groups.values():
        picks = rng.integers(0, values.size, size=(n_resamples, values.size))
        means += values[picks].mean(axis=1)
    means /= len(groups)
    point = float(np.mean([v.mean() for v in groups.values()]))
    return point, [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def _p99(values: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.asarray(np.percentile(values, 99.0, axis=axis))


def _truncate(text: str) -> str:
    return text if len(text) <= RESPONSE_CHARS else text[:RESPONSE_CHARS] + "..."


def flip_summary(records: Sequence[PromptRecord]) -> Flips:
    checkable = [r for r in records if r["flip"] is not None]
    worse = sum(bool(r["fp16_correct"] and not r["correct"]) for r in checkable)
    better = sum(bool(r["correct"] and not r["fp16_correct"]) for r in checkable)
    return Flips(
        checkable_prompts=len(checkable),
        fp16_correct=sum(bool(r["fp16_correct"]) for r in checkable),
        variant_correct=sum(bool(r["correct"]) for r in checkable),
        flips=sum(bool(r["flip"]) for r in checkable),
        correct_to_wrong=worse,
        wrong_to_correct=better,
        mcnemar_p=counts_differ_p_value(worse, better),
        flipped_ids=[r["id"] for r in checkable if r["flip"]],
        exact_match_rate=float(np.mean([r["exact_match"] for r in records])) if records else None,
    )


def batch_sensitivity(
    records: Sequence[PromptRecord],
    again: Sequence[PromptRecord],
    batch: int,
    shift: int,
    which: str = "every prompt",
) -> BatchSensitivity:
    """How much a batch-dependent variant's generation moves when every prompt gets other
    neighbours: the prompts of ``records`` (``which`` says which they are) generated again, alone
    together, with the batch boundaries moved by ``shift``."""
    checkable = [(a, b) for a, b in zip(records, again) if a["flip"] is not None]
    return BatchSensitivity(
        batch_size=batch,
        shift=shift,
        prompts=len(records),
        responses_changed=sum(a["response"] != b["response"] for a, b in zip(records, again)),
        verdicts_changed=sum(a["correct"] != b["correct"] for a, b in checkable),
        flips=sum(bool(a["flip"]) for a, _ in checkable),
        flips_other_batch=sum(bool(b["flip"]) for _, b in checkable),
        method=(
            f"the variant's greedy responses to {which} generated a second time, without the other prompts, "
            f"in batches of up to {batch} with every batch boundary moved by {shift} (other neighbours and "
            "padding for every prompt); counts of prompts whose response or answer verdict changed"
        ),
    )


def kl_section(
    records: Sequence[PromptRecord], top_k: int, method: str, method_settings: str = "", seed: int = 0
) -> PromptKL:
    """Per-prompt KL statistics with 95 % bootstrap CIs resampling prompts (seeded)."""
    scored = [r for r in records if r["kl_mean"] is not None]
    if not scored:
        raise ValueError("no prompt has a scored response position")
    kl = np.array([r["kl_mean"] for r in scored])
    top1 = np.array([r["top1_agreement"] for r in scored])
    by_category: dict[str, list[PromptRecord]] = defaultdict(list)
    for r in records:
        by_category[r["category"]].append(r)
    # a category none of whose prompts has a scored position reports null (not NaN: JSON)
    per_category: dict[str, CategoryStats] = {
        cat: {
            "prompts": len(rs),
            "kl_mean": _mean_or_none([r["kl_mean"] for r in rs if r["kl_mean"] is not None]),
            "kl_ci95": _ci_or_none([r["kl_mean"] for r in rs if r["kl_mean"] is not None], seed),
            "top1_agreement": _mean_or_none([r["top1_agreement"] for r in rs if r["top1_agreement"] is not None]),
            "flips": sum(bool(r["flip"]) for r in rs),
            "exact_match": sum(r["exact_match"] for r in rs),
        }
        for cat, rs in by_category.items()
    }
    groups = {c: np.array([r["kl_mean"] for r in rs if r["kl_mean"] is not None]) for c, rs in by_category.items()}
    macro_mean, macro_ci = macro_average({c: v for c, v in groups.items() if v.size}, seed)
    worst = sorted(scored, key=lambda r: r["kl_mean"] or 0.0, reverse=True)[:WORST_PROMPTS]  # scored: never None
    stats = summarize(kl)
    basis = "exact"  # the FP16 logits are rebuilt from stored hidden states: full vocabulary everywhere
    topk_values = np.array([r["kl_topk_mean"] for r in scored])
    topk: TopKBound = {
        "mean": float(topk_values.mean()),
        "ci95": list(bootstrap_ci(topk_values, seed=seed)),
        "k": top_k,
        # (exact - top-k) / exact: how much the top-k + tail bucket lower bound leaves out
        "rel_gap_vs_exact": float((kl.mean() - topk_values.mean()) / kl.mean()) if kl.mean() > 0 else None,
    }
    return PromptKL(
        mean=stats["mean"],
        median=stats["median"],
        min=stats["min"],
        max=stats["max"],
        p90=stats["p90"],
        p99=stats["p99"],
        prompts=len(scored),
        ci95=list(bootstrap_ci(kl, seed=seed)),
        p99_ci95=list(bootstrap_ci(kl, statistic=_p99, seed=seed)),
        top1_agreement=float(top1.mean()),
        top1_agreement_ci95=list(bootstrap_ci(top1, seed=seed)),
        tail_mass=float(np.mean([r["tail_mass_mean"] for r in scored])),
        basis=basis,
        topk=topk,
        per_prompt=list(records),
        per_category=per_category,
        # every category weighted equally, whatever its number of prompts; CI: stratified bootstrap
        macro_kl_mean=macro_mean,
        macro_kl_ci95=macro_ci,
        worst_prompts=[
            {
                "id": r["id"],
                "category": r["category"],
                "kl_mean": r["kl_mean"],
                "first_divergence": r["first_divergence"],
                "fp16_response": _truncate(r["fp16_response"]),
                "response": _truncate(r["response"]),
            }
            for r in worst
        ],
        method=method,
        method_settings=method_settings,
    )


def kl_method_text(top_k: int, use_chat_template: bool, cap: int | None) -> str:
    return (
        f"KL(P_fp16 || Q_variant) in nats at every position whose next token is an FP16 greedy response "
        f"token (last prompt token through second-to-last response token; EOS included when generated), "
        f"teacher-forced on prompt + FP16 response, over the full vocabulary: the FP16 logits are rebuilt "
        f"from the stored FP16 final hidden states and output head, log-softmax of both in float64 "
        f"(the FP16 top-{top_k} + tail-bucket lower bound is reported beside it under 'topk'). "
        f"A prompt's KL is the mean over its "
        f"positions; summary statistics are over prompts, each weighted equally; CIs are 95 % percentile "
        "bootstrap (2000 resamples of prompts, seed 0). "
        f"Prompts {'through the chat template' if use_chat_template else 'as plain text'}; "
        f"max_new_tokens {'per prompt' if cap is None else f'per prompt, capped at {cap}'}."
    )


def kl_settings_text(prompts: int, top_k: int, use_chat_template: bool, cap: int | None) -> str:
    """One short line for the summary: how much of the prompt suite ran and how."""
    tokens = "own max_new_tokens" if cap is None else f"max_new_tokens <= {cap}"
    return f"{prompts} prompts, {tokens}, top-{top_k}, {'chat template' if use_chat_template else 'plain text'}"
