"""Prompts checked before any model loads: each selected prompt plus its new tokens must fit each
model's positions (session/prompt_fit.py), and a flip-rate gate needs prompts with an answer.

The end-to-end cases run the plugin in-process on model directories that hold only a config.json, a
tokenizer built here and an empty weights file (the up-front checks list weight files, they do not
read them): a run that got past the checks would fail to load instead of ending in the usage error
(exit 4) these tests expect. torch and transformers are imported here,
before any inner run (see tests/unit/test_plugin.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch  # noqa: F401  (before any in-process run: see the module docstring)
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, PreTrainedTokenizerFast

from quant_fixtures.inputs.prompts import Prompt
from quant_fixtures.session.prompt_fit import TooLong, tokens_at_least, too_long, too_long_message

pytest_plugins = ["pytester"]

RELEASE_GATES = Path(__file__).resolve().parents[2] / "tests" / "harm" / "test_release_gates.py"
WORDS = ["[UNK]", "<u>", "<a>", "word", "answer"]
# One token before the user's text and one after it: a prompt of n words is n + 2 tokens with it.
CHAT_TEMPLATE = "{% for m in messages %}<u> {{ m['content'] }}{% endfor %} <a>"
GATES = """
[gates.nf4]
ungated = ["max_delta_ppl_pct", "min_memory_reduction_pct", "max_kl_mean"]
max_flip_rate = 0.25
"""


def tiny_model_dir(directory: Path, positions: int) -> Path:
    """A model directory without real weights: a Llama config of ``positions`` positions, a word-level
    tokenizer (one token per word) with the chat template above, and an empty model.safetensors."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="<a>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    config = LlamaConfig(
        vocab_size=len(WORDS),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=positions,
    )
    config.save_pretrained(directory)
    (directory / "model.safetensors").write_bytes(b"")
    return directory


def suite_toml(model_dirs: dict[str, Path]) -> str:
    entries = [f"[models.{key}]\npath = {json.dumps(str(path))}\n" for key, path in model_dirs.items()]
    return GATES + "\n" + "\n".join(entries)


def prompt_file(path: Path, *records: dict[str, object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """Two weightless models of 512 and 64 positions, the release-gate tests and a suite config."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pytester.makeini("[pytest]\n")
    pytester.makepyfile(test_gates_under_test=RELEASE_GATES.read_text(encoding="utf-8"))
    dirs = {
        "a_roomy": tiny_model_dir(pytester.path / "roomy", 512),
        "b_narrow": tiny_model_dir(pytester.path / "narrow", 64),
    }
    (pytester.path / "suite.toml").write_text(suite_toml(dirs))
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_inprocess(
        "-p",
        "no:cacheprovider",
        f"--suite-config={pytester.path / 'suite.toml'}",
        f"--results-dir={pytester.path / 'R'}",
        f"--cache-dir={pytester.path / 'C'}",
        "--max-new-tokens=4",
        "--top-k=2",  # below the tiny vocabulary
        "--skip-long-context",
        *args,
    )


def words(n: int) -> str:
    return " ".join(["word"] * n)


# -- the check itself -------------------------------------------------------------------------------


def _prompt(pid: str, text: str, max_new_tokens: int = 128) -> Prompt:
    return Prompt(pid, "c", text, max_new_tokens)


def test_a_prompt_fits_up_to_the_last_position_and_not_one_beyond() -> None:
    counts = {"fits": 60, "one over": 61}
    found = too_long(
        [_prompt("fits", "x"), _prompt("one over", "y")],
        64,
        4,
        lambda t: counts["fits" if t == "x" else "one over"],
        lambda: 1,
    )
    assert found == [TooLong("one over", 61, False, 4)]


def test_the_prompts_own_max_new_tokens_counts_when_below_the_cap() -> None:
    found = too_long([_prompt("own", "x", max_new_tokens=2)], 64, 24, lambda t: 62, lambda: 1)
    assert found == []  # 62 + its own 2, not the cap's 24
    assert too_long([_prompt("own", "x", max_new_tokens=3)], 64, 24, lambda t: 62, lambda: 1) == [
        TooLong("own", 62, False, 3)
    ]


def test_a_huge_prompt_is_refused_from_its_characters_without_tokenizing() -> None:
    tokenized: list[int] = []
    huge = _prompt("huge", "abcdefgh " * 120_000)  # ~1 MB

    def count(text: str) -> int:
        tokenized.append(len(text))
        return len(text.split())

    found = too_long([huge, _prompt("small", "a b c")], 2048, 24, count, lambda: 8)
    assert found == [TooLong("huge", 120_000, True, 24)]  # 960,000 visible characters, at most 8 a token
    assert tokenized == [5]  # only the small prompt was tokenized


def test_the_character_bound_does_not_count_whitespace() -> None:
    assert tokens_at_least("ab   cd\n\n\tef", 2) == 3
    assert tokens_at_least("abcde", 2) == 3
    assert tokens_at_least(" " * 1000, 1) == 0


def test_the_message_names_the_prompt_its_length_the_new_tokens_and_the_limit() -> None:
    line = too_long_message(
        [TooLong("p7", 3012, False, 24), TooLong("p9", 5000, False, 24)], "m", 2048, "s.jsonl", True
    )
    assert line.startswith(
        "prompt 'p7' of s.jsonl does not fit model 'm': 3012 tokens with the chat template + max_new_tokens 24 "
        "> its 2048 positions (max_position_embeddings); shorten the prompt, lower its max_new_tokens or "
        "--max-new-tokens, or leave it out"
    )
    assert line.endswith("; 1 more prompts do not fit either") and "\n" not in line


# -- end to end: a usage error before any model loads -----------------------------------------------


def test_an_over_long_prompt_is_a_usage_error_naming_it(project: pytest.Pytester) -> None:
    prompts = prompt_file(
        project.path / "p.jsonl",
        {"id": "short", "category": "c", "prompt": words(10)},
        {"id": "long", "category": "c", "prompt": words(70)},
    )
    result = run(project, "--models", "a_roomy,b_narrow", "--variants", "fp16", f"--prompts={prompts}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    # a_roomy's 512 positions hold it; b_narrow's 64 do not: each model is held to its own limit.
    result.stderr.fnmatch_lines(
        [
            f"ERROR: prompt 'long' of {prompts} does not fit model 'b_narrow': 72 tokens with the chat "
            "template + max_new_tokens 4 > its 64 positions (max_position_embeddings); shorten the prompt*"
        ]
    )
    assert not (project.path / "R").exists()


def test_without_the_chat_template_the_prompt_is_counted_as_plain_text(project: pytest.Pytester) -> None:
    prompts = prompt_file(project.path / "p.jsonl", {"id": "long", "category": "c", "prompt": words(70)})
    result = run(project, "--models", "b_narrow", "--variants", "fp16", f"--prompts={prompts}", "--no-chat-template")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: prompt 'long' * 'b_narrow': 70 tokens + max_new_tokens 4 > its 64 positions*"])


def test_a_one_megabyte_prompt_is_a_usage_error_not_an_allocation(project: pytest.Pytester) -> None:
    prompts = prompt_file(project.path / "p.jsonl", {"id": "huge", "category": "c", "prompt": words(200_000)})
    result = run(project, "--models", "a_roomy", "--variants", "fp16", f"--prompts={prompts}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: prompt 'huge' * 'a_roomy': at least * tokens (its characters alone; not tokenized) "
            "+ max_new_tokens 4*"
        ]
    )


def test_a_flip_gate_without_checkable_answers_is_a_usage_error(project: pytest.Pytester) -> None:
    prompts = prompt_file(
        project.path / "p.jsonl",
        {"id": "free", "category": "writing", "prompt": words(3)},
        {"id": "checked", "category": "qa", "prompt": words(3), "answer": "answer"},
    )
    common = ("--collect-only", "--models", "a_roomy", "--variants", "nf4", f"--prompts={prompts}")
    result = run(project, *common, "--categories", "writing")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: max_flip_rate (a_roomy nf4) cannot be decided: no prompt of {prompts} in categories writing "
            "has an 'answer', so no answer can flip; select categories that have answers (--categories)*"
        ]
    )
    assert run(project, *common, "--categories", "writing,qa").ret == pytest.ExitCode.OK
    assert run(project, *common, "--categories", "writing", "--skip-prompts").ret == pytest.ExitCode.OK
