"""Unit tests for the prompt suite loader and the shipped 96-prompt suite."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from quant_fixtures.inputs.prompts import (
    CATEGORIES,
    DEFAULT_SUITE,
    Prompt,
    PromptSuiteError,
    load_prompt_suite,
    suite_sha256,
)

CHECKABLE = {
    "mathematical_reasoning",
    "logical_reasoning",
    "question_answering",
    "scientific_knowledge",
    "historical_knowledge",
}


def _rec(**overrides: object) -> dict:
    base: dict = {"id": "p-01", "category": "code_generation", "prompt": "Write hello world."}
    base.update(overrides)
    return base


def _write(tmp_path: Path, lines: list[object | str]) -> Path:
    """Write records (dicts dumped as JSON, strings verbatim) one per line."""
    path = tmp_path / "suite.jsonl"
    text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def _expect_error(path: Path, line: int, fragment: str) -> PromptSuiteError:
    with pytest.raises(PromptSuiteError) as info:
        load_prompt_suite(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:{line}: "), msg
    assert fragment in msg, msg
    return info.value


# --- the shipped suite -------------------------------------------------------


def test_categories_order_and_count() -> None:
    assert len(CATEGORIES) == 12
    assert CATEGORIES[0] == "code_generation"
    assert CATEGORIES[-1] == "instruction_following"
    assert CHECKABLE <= set(CATEGORIES)


def test_default_suite_ships_in_the_package() -> None:
    import quant_fixtures

    assert DEFAULT_SUITE.parent == Path(quant_fixtures.__file__).parent / "inputs" and DEFAULT_SUITE.is_file()
    repo_copy = Path(__file__).resolve().parents[2] / "prompts" / "suite.jsonl"
    assert repo_copy.resolve() == DEFAULT_SUITE  # prompts/suite.jsonl in the checkout links to it


def test_shipped_suite_shape() -> None:
    prompts = load_prompt_suite(DEFAULT_SUITE)
    assert len(prompts) == 96
    assert Counter(p.category for p in prompts) == {c: 8 for c in CATEGORIES}
    assert len({p.id for p in prompts}) == 96
    assert len({p.prompt for p in prompts}) == 96


def test_shipped_suite_answers() -> None:
    for p in load_prompt_suite(DEFAULT_SUITE):
        assert 1 <= p.max_new_tokens <= 256, p.id
        if p.category in CHECKABLE:
            assert p.answer, f"{p.id} lacks an answer"
        if p.answer_is_regex:
            assert p.answer is not None
            re.compile(p.answer, re.IGNORECASE)


@pytest.mark.parametrize(
    ("pid", "good", "bad"),
    [
        ("math-01", "17 * 23 = 391", "17 * 23 = 381"),
        ("logic-05", "The farmer has 9 sheep left.", "17 - 9 = 8 sheep remain."),
        ("science-07", "About 300,000 km/s.", "About 150,000 km/s."),
        ("history-01", "It ended in 1945.", "It ended in 1918."),
        ("qa-01", "Canberra.", "Sydney."),
    ],
)
def test_shipped_answer_samples(pid: str, good: str, bad: str) -> None:
    prompt = {p.id: p for p in load_prompt_suite(DEFAULT_SUITE)}[pid]
    assert prompt.is_correct(good) is True
    assert prompt.is_correct(bad) is False


def test_suite_sha256_matches_file_bytes(tmp_path: Path) -> None:
    assert suite_sha256(DEFAULT_SUITE) == hashlib.sha256(DEFAULT_SUITE.read_bytes()).hexdigest()
    path = _write(tmp_path, [_rec()])
    assert suite_sha256(str(path)) == hashlib.sha256(path.read_bytes()).hexdigest()


# --- Prompt.is_correct --------------------------------------------------------


def test_is_correct_without_answer_is_none() -> None:
    assert Prompt("a", "creative_writing", "Write a poem.").is_correct("anything") is None


def test_is_correct_literal() -> None:
    p = Prompt("a", "question_answering", "Q?", answer="New  Delhi")
    assert p.is_correct("The capital is new delhi.") is True
    assert p.is_correct("It is NEW\n\tDELHI, India") is True
    assert p.is_correct("NewDelhi") is False
    assert p.is_correct("Mumbai") is False


def test_is_correct_regex() -> None:
    p = Prompt("a", "mathematical_reasoning", "Q?", answer=r"\b391\b", answer_is_regex=True)
    assert p.is_correct("The answer is 391.") is True
    assert p.is_correct("3910") is False
    word = Prompt("b", "question_answering", "Q?", answer=r"\byen\b", answer_is_regex=True)
    assert word.is_correct("The YEN") is True
    assert word.is_correct("Yenisei") is False


def test_prompt_is_frozen() -> None:
    p = Prompt("a", "code_generation", "x")
    with pytest.raises(AttributeError):
        p.id = "b"  # type: ignore[misc]


# --- loading ------------------------------------------------------------------


def test_load_parses_fields_and_keeps_order(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        [
            _rec(id="b", max_new_tokens=32, category="question_answering", answer="Paris"),
            "",
            "   ",
            _rec(id="a", category="mathematical_reasoning", answer={"regex": r"\b4\b"}),
        ],
    )
    b, a = load_prompt_suite(path)
    assert b == Prompt("b", "question_answering", "Write hello world.", 32, "Paris", False)
    assert a == Prompt("a", "mathematical_reasoning", "Write hello world.", 128, r"\b4\b", True)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(PromptSuiteError, match=re.escape(str(path))):
        load_prompt_suite(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(PromptSuiteError, match=r"empty") as info:
        load_prompt_suite(path)
    assert str(path) in str(info.value)


def test_broken_json(tmp_path: Path) -> None:
    _expect_error(_write(tmp_path, [_rec(), '{"id": "x",']), 2, "invalid JSON")


def test_non_object_record(tmp_path: Path) -> None:
    _expect_error(_write(tmp_path, ["[1, 2]"]), 1, "JSON object")


@pytest.mark.parametrize("bad_id", [None, "", "   ", 7])
def test_missing_or_empty_id(tmp_path: Path, bad_id: object) -> None:
    rec = _rec(id=bad_id)
    if bad_id is None:
        del rec["id"]
    _expect_error(_write(tmp_path, [_rec(id="ok"), rec]), 2, "'id'")


def test_duplicate_id(tmp_path: Path) -> None:
    path = _write(tmp_path, [_rec(id="math-03"), "", _rec(id="other"), _rec(id="math-03")])
    err = _expect_error(path, 4, "duplicate id 'math-03'")
    assert "first seen on line 1" in str(err)


def test_a_users_file_brings_its_own_categories(tmp_path: Path) -> None:
    path = _write(tmp_path, [_rec(id="a", category="customer_support"), _rec(id="b", category="Legal Q&A")])
    assert [p.category for p in load_prompt_suite(path)] == ["customer_support", "Legal Q&A"]
    assert [p.id for p in load_prompt_suite(path, ["Legal Q&A"])] == ["b"]


@pytest.mark.parametrize("category", ["", "  ", " padded", "tab\there", 7, None, "x" * 65])
def test_invalid_category_name_is_refused(tmp_path: Path, category: object) -> None:
    _expect_error(_write(tmp_path, [_rec(category=category)]), 1, "'category' must be a non-empty name")


def test_missing_category(tmp_path: Path) -> None:
    rec = _rec()
    del rec["category"]
    _expect_error(_write(tmp_path, [rec]), 1, "category")


@pytest.mark.parametrize("text", ["", "   \n\t", None, 3])
def test_empty_prompt(tmp_path: Path, text: object) -> None:
    _expect_error(_write(tmp_path, [_rec(prompt=text)]), 1, "'prompt'")


@pytest.mark.parametrize("value", [0, -5, 4097, 12.0, "64", True, None])
def test_bad_max_new_tokens(tmp_path: Path, value: object) -> None:
    _expect_error(_write(tmp_path, [_rec(), _rec(id="p-02", max_new_tokens=value)]), 2, "max_new_tokens")


def test_max_new_tokens_cap_inclusive(tmp_path: Path) -> None:
    (p,) = load_prompt_suite(_write(tmp_path, [_rec(max_new_tokens=4096)]))
    assert p.max_new_tokens == 4096


def test_unknown_key(tmp_path: Path) -> None:
    _expect_error(_write(tmp_path, [_rec(answr="x")]), 1, "unknown key")


@pytest.mark.parametrize(
    "answer",
    ["", "  ", 42, ["a"], None, {}, {"regex": ""}, {"regex": 5}, {"regex": "a", "flags": "i"}],
)
def test_bad_answer(tmp_path: Path, answer: object) -> None:
    _expect_error(_write(tmp_path, [_rec(answer=answer)]), 1, "answer")


def test_invalid_regex(tmp_path: Path) -> None:
    _expect_error(_write(tmp_path, [_rec(answer={"regex": "(unclosed"})]), 1, "invalid regex")


# --- category filter ----------------------------------------------------------


def test_category_filter(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        [
            _rec(id="a", category="code_generation"),
            _rec(id="b", category="creative_writing"),
            _rec(id="c", category="code_generation"),
        ],
    )
    assert [p.id for p in load_prompt_suite(path, ["code_generation"])] == ["a", "c"]
    both = load_prompt_suite(path, ("creative_writing", "code_generation"))
    assert [p.id for p in both] == ["a", "b", "c"]
    shipped = load_prompt_suite(DEFAULT_SUITE, categories=["historical_knowledge"])
    assert len(shipped) == 8


def test_category_filter_unknown_name(tmp_path: Path) -> None:
    path = _write(tmp_path, [_rec()])
    with pytest.raises(PromptSuiteError, match="unknown category filter") as info:
        load_prompt_suite(path, [_rec()["category"], "maths"])
    assert "'maths'" in str(info.value) and "its categories: " + _rec()["category"] in str(info.value)


def test_category_filter_matching_nothing(tmp_path: Path) -> None:
    path = _write(tmp_path, [_rec()])
    with pytest.raises(PromptSuiteError, match="not a category of this file"):
        load_prompt_suite(path, ["creative_writing"])
    with pytest.raises(PromptSuiteError, match="matches no prompts"):
        load_prompt_suite(path, [])
