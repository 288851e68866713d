"""Unit tests for quant_fixtures.kl_report: the report's `kl_divergence` and `flips` sections.

All records are hand-made; the expected numbers are worked out in the test from the same records.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from quant_fixtures.metrics.prompt_summary import (
    RESPONSE_CHARS,
    WORST_PROMPTS,
    PromptRecord,
    flip_summary,
    kl_method_text,
    kl_section,
)
from quant_fixtures.report.schema import to_json_object
from quant_fixtures.store.atomic import write_json_atomic


def record(
    pid: str,
    category: str,
    kl: float | None,
    top1: float | None = 1.0,
    *,
    fp16_correct: bool | None = None,
    correct: bool | None = None,
    exact: bool = True,
    tail: float | None = 0.01,
    first_div: int | None = None,
    fp16_text: str = "fp16 says",
    text: str = "variant says",
) -> PromptRecord:
    """One per-prompt record shaped like prompt_eval.per_prompt_records' output."""
    scored = kl is not None
    return {
        "id": pid,
        "category": category,
        "positions": 4 if scored else 0,
        "kl_mean": kl,
        "kl_max": (2 * kl) if kl is not None else None,
        "kl_reverse_mean": (1.2 * kl) if kl is not None else None,
        "kl_topk_mean": (0.95 * kl) if kl is not None else None,
        "top1_agreement": top1 if scored else None,
        "nll_fp16_tokens": 1.5,
        "tail_mass_mean": tail if scored else None,
        "first_divergence": first_div,
        "exact_match": exact,
        "fp16_correct": fp16_correct,
        "correct": correct,
        "flip": None if fp16_correct is None else fp16_correct != correct,
        "fp16_response": fp16_text,
        "response": text,
    }


LONG = "x" * (RESPONSE_CHARS + 50)


@pytest.fixture
def records() -> list[PromptRecord]:
    return [
        record("m1", "mathematical_reasoning", 0.10, 0.75, fp16_correct=True, correct=True, tail=0.02),
        record(
            "m2",
            "mathematical_reasoning",
            0.40,
            0.50,
            fp16_correct=True,
            correct=False,
            exact=False,
            first_div=3,
            fp16_text=LONG,
            text="short",
        ),
        record(
            "m3",
            "mathematical_reasoning",
            0.05,
            1.00,
            fp16_correct=False,
            correct=True,
            exact=False,
            first_div=0,
            tail=0.03,
        ),
        record("q1", "question_answering", 0.20, 0.80, fp16_correct=False, correct=False, tail=0.04),
        record("q2", "question_answering", 0.30, 0.60, exact=False, first_div=7, text=LONG),
        record("q3", "question_answering", 0.01, 1.00, fp16_correct=True, correct=True, tail=0.00),
        record("s1", "scientific_knowledge", 0.25, 0.90, tail=0.05),
        # No scored position (e.g. an empty FP16 response): counted per category, never in the KL stats.
        record("s2", "scientific_knowledge", None, None, fp16_correct=True, correct=False, exact=False, first_div=0),
    ]


SCORED_KL = {"m1": 0.10, "m2": 0.40, "m3": 0.05, "q1": 0.20, "q2": 0.30, "q3": 0.01, "s1": 0.25}
SCORED_TOP1 = {"m1": 0.75, "m2": 0.50, "m3": 1.00, "q1": 0.80, "q2": 0.60, "q3": 1.00, "s1": 0.90}
SCORED_TAIL = {"m1": 0.02, "m2": 0.01, "m3": 0.03, "q1": 0.04, "q2": 0.01, "q3": 0.00, "s1": 0.05}


# --- kl_section ----------------------------------------------------------------------------------


def test_summary_statistics_cover_scored_prompts_only(records: list[PromptRecord]) -> None:
    section = kl_section(records, top_k=256, method="the method")
    kl = np.array(list(SCORED_KL.values()))
    assert section.prompts == 7
    assert section.mean == pytest.approx(kl.mean(), rel=1e-12)
    assert section.median == pytest.approx(0.20, rel=1e-12)
    assert section.min == pytest.approx(0.01, rel=1e-12)
    assert section.max == pytest.approx(0.40, rel=1e-12)
    assert section.p90 == pytest.approx(np.percentile(kl, 90), rel=1e-12)
    assert section.p99 == pytest.approx(np.percentile(kl, 99), rel=1e-12)
    assert section.top1_agreement == pytest.approx(np.mean(list(SCORED_TOP1.values())), rel=1e-12)
    assert section.tail_mass == pytest.approx(np.mean(list(SCORED_TAIL.values())), rel=1e-12)
    assert section.method == "the method"
    assert section.per_prompt == records  # every record, unscored ones included, in order


def test_ci95_contains_the_mean_and_is_seeded(records: list[PromptRecord]) -> None:
    section = kl_section(records, top_k=256, method="m")
    low, high = section.ci95
    assert low <= section.mean <= high
    assert low >= min(SCORED_KL.values()) and high <= max(SCORED_KL.values())
    t_low, t_high = section.top1_agreement_ci95
    assert t_low <= section.top1_agreement <= t_high
    assert kl_section(records, top_k=256, method="m").ci95 == section.ci95  # same seed, same CI
    assert kl_section(records, top_k=256, method="m", seed=0).ci95 == section.ci95


def test_per_category_means_flips_and_exact_matches(records: list[PromptRecord]) -> None:
    cats = kl_section(records, top_k=256, method="m").per_category
    assert set(cats) == {"mathematical_reasoning", "question_answering", "scientific_knowledge"}

    math_ = cats["mathematical_reasoning"]
    assert math_["prompts"] == 3
    assert math_["kl_mean"] == pytest.approx((0.10 + 0.40 + 0.05) / 3, rel=1e-12)
    assert math_["top1_agreement"] == pytest.approx((0.75 + 0.50 + 1.00) / 3, rel=1e-12)
    assert math_["flips"] == 2  # m2 correct->wrong, m3 wrong->correct
    assert math_["exact_match"] == 1

    qa = cats["question_answering"]
    assert qa["prompts"] == 3
    assert qa["kl_mean"] == pytest.approx((0.20 + 0.30 + 0.01) / 3, rel=1e-12)
    assert qa["flips"] == 0  # q2 has no answer (flip None), q1/q3 unchanged
    assert qa["exact_match"] == 2

    sci = cats["scientific_knowledge"]
    assert sci["prompts"] == 2  # the unscored prompt is counted here ...
    assert sci["kl_mean"] == pytest.approx(0.25, rel=1e-12)  # ... but not averaged
    assert sci["top1_agreement"] == pytest.approx(0.90, rel=1e-12)
    assert sci["flips"] == 1
    assert sci["exact_match"] == 1


def test_category_without_any_scored_prompt_reports_null_means(records: list[PromptRecord], tmp_path: Path) -> None:
    records.append(record("h1", "historical_knowledge", None, None))
    section = kl_section(records, top_k=256, method="m")
    cats = section.per_category
    assert cats["historical_knowledge"]["kl_mean"] is None
    assert cats["historical_knowledge"]["top1_agreement"] is None
    assert cats["historical_knowledge"]["prompts"] == 1
    write_json_atomic(
        tmp_path / "r.json", to_json_object(section)
    )  # JSON has no NaN: the report must still be writable


def test_worst_prompts_sorted_descending_and_truncated(records: list[PromptRecord]) -> None:
    worst = kl_section(records, top_k=256, method="m").worst_prompts
    assert WORST_PROMPTS == 5
    assert [w["id"] for w in worst] == ["m2", "q2", "s1", "q1", "m1"]
    assert [w["kl_mean"] for w in worst] == [0.40, 0.30, 0.25, 0.20, 0.10]
    by_id = {w["id"]: w for w in worst}
    assert by_id["m2"]["category"] == "mathematical_reasoning"
    assert by_id["m2"]["first_divergence"] == 3
    assert by_id["m2"]["fp16_response"] == "x" * RESPONSE_CHARS + "..."
    assert by_id["m2"]["response"] == "short"
    assert by_id["q2"]["response"] == "x" * RESPONSE_CHARS + "..."
    assert by_id["s1"]["fp16_response"] == "fp16 says"
    assert "s2" not in by_id  # never ranked without a KL


def test_fewer_prompts_than_the_worst_list_keeps_them_all() -> None:
    recs = [
        record("a", "question_answering", 0.2),
        record("b", "question_answering", 0.5),
        record("c", "question_answering", None),
    ]
    section = kl_section(recs, top_k=8, method="m")
    assert [w["id"] for w in section.worst_prompts] == ["b", "a"]
    assert section.prompts == 2
    assert section.mean == pytest.approx(0.35, rel=1e-12)


def test_response_of_exactly_the_limit_is_not_truncated() -> None:
    text = "y" * RESPONSE_CHARS
    section = kl_section([record("a", "question_answering", 0.2, fp16_text=text)], top_k=8, method="m")
    assert section.worst_prompts[0]["fp16_response"] == text


def test_single_prompt_ci_is_degenerate() -> None:
    section = kl_section([record("a", "question_answering", 0.125)], top_k=8, method="m")
    assert section.ci95 == [0.125, 0.125]
    assert section.mean == 0.125


def test_no_scored_prompt_raises() -> None:
    with pytest.raises(ValueError, match="no prompt has a scored response position"):
        kl_section([record("a", "question_answering", None)], top_k=8, method="m")


# --- flip_summary --------------------------------------------------------------------------------


def test_flip_summary_counts(records: list[PromptRecord]) -> None:
    summary = flip_summary(records)
    # Checkable: every record with an answer (m1, m2, m3, q1, q3, s2).
    assert summary.checkable_prompts == 6
    assert summary.fp16_correct == 4  # m1, m2, q3, s2
    assert summary.variant_correct == 3  # m1, m3, q3
    assert summary.flips == 3
    assert summary.correct_to_wrong == 2  # m2, s2
    assert summary.wrong_to_correct == 1  # m3
    assert summary.flips == summary.correct_to_wrong + summary.wrong_to_correct
    # McNemar exact: 3 discordant pairs, 2 vs 1; p = 2 * P(X <= 1), X ~ Bin(3, 1/2) = 2 * 4/8, capped at 1
    assert summary.mcnemar_p == 1.0
    assert summary.flipped_ids == ["m2", "m3", "s2"]
    assert summary.exact_match_rate == pytest.approx(4 / 8, rel=1e-12)  # m1, q1, q3, s1 of all 8


def test_flip_summary_without_checkable_prompts() -> None:
    recs = [record("a", "creative_writing", 0.1, exact=False), record("b", "creative_writing", 0.2)]
    summary = flip_summary(recs)
    assert summary.checkable_prompts == 0
    assert summary.flips == 0 and summary.flipped_ids == []
    assert summary.fp16_correct == summary.variant_correct == 0
    assert summary.exact_match_rate == pytest.approx(0.5)


def test_mcnemar_p_of_one_sided_flips() -> None:
    recs = [record(f"r{i}", "mathematical_reasoning", 0.1, fp16_correct=True, correct=False) for i in range(6)]
    summary = flip_summary(recs)
    # 6 right-to-wrong, 0 wrong-to-right: p = 2 * (1/2)^6 = 1/32
    assert summary.correct_to_wrong == 6 and summary.mcnemar_p == pytest.approx(2 / 64)


def test_flip_summary_of_no_records() -> None:
    summary = flip_summary([])
    assert summary.checkable_prompts == 0
    assert summary.exact_match_rate is None


def test_method_text_names_settings() -> None:
    text = kl_method_text(256, True, 12)
    assert "top-256" in text and "chat template" in text and "capped at 12" in text and "lower bound" in text
    plain = kl_method_text(32, False, None)
    assert "top-32" in plain and "as plain text" in plain and "capped" not in plain
    assert "over the full vocabulary" in plain and "hidden states" in plain


def test_exact_basis_reports_topk_gap() -> None:
    recs: list[PromptRecord] = [
        {**record("a", "question_answering", 0.10), "kl_topk_mean": 0.095},
        {**record("b", "question_answering", 0.30), "kl_topk_mean": 0.285},
    ]
    section = kl_section(recs, top_k=256, method="m")
    assert section.basis == "exact" and section.mean == pytest.approx(0.2)
    assert section.topk["mean"] == pytest.approx(0.19) and section.topk["k"] == 256
    assert section.topk["rel_gap_vs_exact"] == pytest.approx(0.05)


def test_macro_average_weights_categories_equally() -> None:
    from quant_fixtures.metrics.prompt_summary import macro_average

    groups = {"a": np.array([1.0, 1.0, 1.0, 1.0]), "b": np.array([3.0])}
    mean, ci = macro_average(groups)
    assert mean == 2.0  # (1 + 3) / 2, not the prompt mean 1.4
    assert ci == [2.0, 2.0]  # no spread inside either group
    spread = {"a": np.array([0.0, 2.0]), "b": np.array([3.0])}
    mean, ci = macro_average(spread)
    assert mean == 2.0 and ci[0] == pytest.approx(1.5) and ci[1] == pytest.approx(2.5)  # a's mean is 0, 1 or 2
