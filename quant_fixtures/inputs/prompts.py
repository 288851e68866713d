"""Loading and validation of the JSONL prompt suite used to measure quantization harm."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

# The shipped suite's twelve categories (8 prompts each). A user's prompt file brings its own.
CATEGORIES: tuple[str, ...] = (
    "code_generation",
    "mathematical_reasoning",
    "text_summarization",
    "question_answering",
    "creative_writing",
    "logical_reasoning",
    "scientific_knowledge",
    "historical_knowledge",
    "programming_tasks",
    "problem_solving",
    "language_understanding",
    "instruction_following",
)

DEFAULT_SUITE: Path = Path(__file__).resolve().parent / "prompt_suite.jsonl"  # shipped in the package

MAX_NEW_TOKENS_CAP = 4096
_REQUIRED_KEYS = frozenset({"id", "category", "prompt"})
_ALLOWED_KEYS = _REQUIRED_KEYS | {"max_new_tokens", "answer"}
_WS = re.compile(r"\s+")
MAX_CATEGORY_CHARS = 64


def _normalise(text: str) -> str:
    """Collapse runs of whitespace to single spaces, strip, and casefold."""
    return _WS.sub(" ", text).strip().casefold()


class PromptSuiteError(ValueError):
    """A prompt suite file is missing, empty, or holds an invalid record."""


@dataclass(frozen=True)
class Prompt:
    """One evaluation prompt, optionally with a checkable expected answer."""

    id: str
    category: str
    prompt: str
    max_new_tokens: int = 128
    answer: str | None = None
    answer_is_regex: bool = False

    def new_tokens(self, cap: int | None) -> int:
        """The most tokens generated for this prompt: its own max_new_tokens, cut to the run's
        ``cap`` (--max-new-tokens, or the CPU default) when there is one."""
        return min(self.max_new_tokens, cap) if cap else self.max_new_tokens

    def is_correct(self, response: str) -> bool | None:
        """Whether ``response`` contains the expected answer; None if there is none.

        Literal answers match as a case-insensitive substring after whitespace is
        collapsed on both sides; regex answers use ``re.search`` with IGNORECASE.
        """
        if self.answer is None:
            return None
        if self.answer_is_regex:
            return re.search(self.answer, response, re.IGNORECASE) is not None
        return _normalise(self.answer) in _normalise(response)


def _parse_answer(value: object, fail: Callable[[str], NoReturn]) -> tuple[str, bool]:
    """Return ``(answer, is_regex)`` for a raw ``answer`` value or call ``fail``."""
    if isinstance(value, str):
        if not value.strip():
            fail("'answer' must not be empty")
        return value, False
    if isinstance(value, dict):
        if set(value) != {"regex"}:
            fail(f"'answer' object must have exactly one key 'regex', got {sorted(value)}")
        pattern = value["regex"]
        if not isinstance(pattern, str) or not pattern:
            fail("'answer.regex' must be a non-empty string")
        try:
            re.compile(pattern, re.IGNORECASE)
        except re.error as exc:
            fail(f"invalid regex {pattern!r}: {exc}")
        return pattern, True
    fail(f"'answer' must be a non-empty string or {{\"regex\": str}}, got {type(value).__name__}")


def _parse_record(raw: str, where: str) -> Prompt:
    """Parse and validate one non-blank JSONL line; ``where`` is ``file:line``."""

    def fail(msg: str) -> NoReturn:
        raise PromptSuiteError(f"{where}: {msg}")

    try:
        record = json.loads(raw)
    except json.JSONDecodeError as exc:
        fail(f"invalid JSON: {exc.msg} (column {exc.colno})")
    if not isinstance(record, dict):
        fail(f"record must be a JSON object, got {type(record).__name__}")

    unknown = sorted(set(record) - _ALLOWED_KEYS)
    if unknown:
        fail(f"unknown key(s) {unknown}; allowed: {sorted(_ALLOWED_KEYS)}")

    pid = record.get("id")
    if not isinstance(pid, str) or not pid.strip():
        fail("missing or empty 'id'")

    category = record.get("category")
    if "category" not in record:
        fail(f"prompt {pid!r}: missing 'category'")
    if (
        not isinstance(category, str)
        or not category.strip()
        or category != category.strip()
        or len(category) > MAX_CATEGORY_CHARS
        or any(not c.isprintable() for c in category)
    ):
        fail(
            f"prompt {pid!r}: 'category' must be a non-empty name of at most {MAX_CATEGORY_CHARS} printable "
            f"characters without surrounding spaces, got {category!r}"
        )

    text = record.get("prompt")
    if not isinstance(text, str) or not text.strip():
        fail(f"prompt {pid!r}: missing or empty 'prompt'")

    max_new = record.get("max_new_tokens", 128)
    if isinstance(max_new, bool) or not isinstance(max_new, int) or not 0 < max_new <= MAX_NEW_TOKENS_CAP:
        fail(f"prompt {pid!r}: 'max_new_tokens' must be an integer in 1..{MAX_NEW_TOKENS_CAP}, got {max_new!r}")

    answer: str | None = None
    is_regex = False
    if "answer" in record:

        def fail_answer(msg: str) -> NoReturn:
            fail(f"prompt {pid!r}: {msg}")

        answer, is_regex = _parse_answer(record["answer"], fail_answer)

    return Prompt(pid, category, text, max_new, answer, is_regex)


def load_prompt_suite(path: str | Path, categories: Sequence[str] | None = None) -> list[Prompt]:
    """Load and validate a JSONL prompt suite, optionally keeping only ``categories``.

    Blank lines are skipped. Every problem raises :class:`PromptSuiteError` naming
    the file and the 1-based line number. Prompts are returned in file order.
    """
    path = Path(path)
    if isinstance(categories, str):
        categories = [categories]
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptSuiteError(f"{path}: prompt suite file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptSuiteError(f"{path}: cannot read prompt suite: {exc}") from None

    prompts: list[Prompt] = []
    first_seen: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        where = f"{path}:{lineno}"
        prompt = _parse_record(raw, where)
        if prompt.id in first_seen:
            raise PromptSuiteError(f"{where}: duplicate id {prompt.id!r} (first seen on line {first_seen[prompt.id]})")
        first_seen[prompt.id] = lineno
        prompts.append(prompt)

    if not prompts:
        raise PromptSuiteError(f"{path}: prompt suite is empty")
    if categories is not None:
        present = list(dict.fromkeys(p.category for p in prompts))
        unknown = [c for c in categories if c not in present]
        if unknown:
            raise PromptSuiteError(
                f"{path}: unknown category filter {unknown}: not a category of this file; "
                f"its categories: {', '.join(present)}"
            )
        wanted = set(categories)
        prompts = [p for p in prompts if p.category in wanted]
        if not prompts:
            raise PromptSuiteError(f"{path}: category filter {list(categories)} matches no prompts")
    return prompts


def suite_sha256(path: str | Path) -> str:
    """Return the SHA-256 hex digest of the suite file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
