"""Decoding an LLM.int8 model on the static path (models/int8_static.py), run here on the CPU as it
runs on CUDA: the same tokens as the exact per-sequence path; a batch whose outlier columns overflow
the static width is decoded again at a width that holds them, and after the last try on the exact
path, saying so."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from integration_support import load_variant

from quant_fixtures.compute import decoding
from quant_fixtures.compute.decoding import static_greedy
from quant_fixtures.compute.generation import _left_pad, eos_token_ids, pad_token_id
from quant_fixtures.models import int8_per_sequence, int8_static

pytest.importorskip("bitsandbytes")

STEPS = 12
# Below the default 6.0 so that the tiny random model has outlier columns in most layers.
THRESHOLD = 2.5


@pytest.fixture(scope="module")
def int8_model(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    import bitsandbytes as bnb

    loaded = load_variant(tiny_models["llama"], "int8", tmp_path_factory.mktemp("digests"))
    for module in loaded.model.modules():
        if isinstance(module, bnb.nn.Linear8bitLt):
            module.state.threshold = THRESHOLD
    return loaded


def _batch(loaded: Any) -> tuple[torch.Tensor, torch.Tensor, set[int]]:
    prompts = [
        "The capital of France is",
        "Quantization maps weights to fewer bits, and",
        "1 2 3 4 5",
    ]
    rows = [loaded.tokenizer(p)["input_ids"] for p in prompts]
    ids, mask = _left_pad(rows, pad_token_id(loaded.model, loaded.tokenizer), torch.device("cpu"))
    return ids, mask, eos_token_ids(loaded.model, loaded.tokenizer)


@pytest.fixture
def static_on_cpu(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Turns the static path on for the CPU and counts the layer calls that take it."""
    monkeypatch.setattr(int8_static, "STATIC_DEVICE_TYPES", frozenset({"cuda", "cpu"}))
    calls = [0]
    original = int8_per_sequence.static_per_sequence_int8_matmul

    def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(int8_per_sequence, "static_per_sequence_int8_matmul", counted)
    return calls


def test_static_decoding_gives_the_tokens_of_the_exact_path(int8_model: Any, static_on_cpu: list[int]) -> None:
    ids, mask, eos = _batch(int8_model)
    exact, exact_how = _exact(int8_model.model, ids, mask, eos)
    ours, how = static_greedy(int8_model.model, ids, mask, STEPS, eos, use_graph=False)
    assert static_on_cpu[0] > 0  # the layers took the static path
    assert how == exact_how == "eager"
    assert torch.equal(ours, exact)


def test_an_overflowing_batch_is_decoded_again_at_a_width_that_holds_it(
    int8_model: Any, static_on_cpu: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, mask, eos, exact = _overflowing_batch(int8_model, monkeypatch)
    ours, how = static_greedy(int8_model.model, ids, mask, STEPS, eos, use_graph=False)
    assert static_on_cpu[0] > 0
    assert "width 1 overflowed" in how and "exact path" not in how
    width = int(how.split("static path at ")[1].split()[0])
    assert width > 1
    assert torch.equal(ours, exact)


def test_a_batch_that_overflows_every_try_is_decoded_exactly(
    int8_model: Any, static_on_cpu: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, mask, eos, exact = _overflowing_batch(int8_model, monkeypatch)
    monkeypatch.setattr(decoding, "wider_columns", lambda guard: guard.columns + 1)  # never wide enough
    ours, how = static_greedy(int8_model.model, ids, mask, STEPS, eos, use_graph=False)
    assert how.endswith("(LLM.int8 outlier columns past the static path's width 1, 2, 3: exact path)")
    assert torch.equal(ours, exact)


def test_an_overflowing_try_stops_at_the_first_check(
    int8_model: Any, static_on_cpu: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its tokens are thrown away, so it stops after the prefill, or at the first EOS check when the
    prefill held (the exact path that follows does not count: it takes no static call)."""
    ids, mask, _ = _batch(int8_model)
    static_greedy(int8_model.model, ids, mask, 1, set(), use_graph=False)  # the prefill alone
    per_forward, static_on_cpu[0] = static_on_cpu[0], 0
    assert per_forward > 0
    monkeypatch.setattr(int8_static, "STATIC_OUTLIER_COLUMNS", 1)
    monkeypatch.setattr(int8_static, "MAX_STATIC_COLUMNS", 1)
    steps = decoding.EOS_CHECK_EVERY + 4  # no EOS set: only the guard can stop the try early
    _, how = static_greedy(int8_model.model, ids, mask, steps, set(), use_graph=False)
    assert "exact path" in how
    assert static_on_cpu[0] == per_forward  # the prefill, no step

    # A guard that reads clear after the prefill: the try stops at the first EOS check instead.
    static_on_cpu[0] = 0
    reads: list[bool] = []
    overflowed = int8_static.OverflowGuard.overflowed

    def clear_once(guard: int8_static.OverflowGuard) -> bool:
        reads.append(overflowed(guard))
        return reads[-1] and len(reads) > 1

    monkeypatch.setattr(int8_static.OverflowGuard, "overflowed", clear_once)
    static_greedy(int8_model.model, ids, mask, steps, set(), use_graph=False)
    assert static_on_cpu[0] == per_forward * decoding.EOS_CHECK_EVERY  # the prefill and 15 steps


def _overflowing_batch(
    loaded: Any, monkeypatch: pytest.MonkeyPatch
) -> tuple[torch.Tensor, torch.Tensor, set[int], torch.Tensor]:
    """The batch, its tokens on the exact path, and a static width (1) narrower than any layer's union."""
    ids, mask, eos = _batch(loaded)
    exact, _ = _exact(loaded.model, ids, mask, eos)
    monkeypatch.setattr(int8_static, "STATIC_OUTLIER_COLUMNS", 1)
    return ids, mask, eos, exact


def _exact(model: Any, ids: torch.Tensor, mask: torch.Tensor, eos: set[int]) -> tuple[torch.Tensor, str]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(int8_static, "STATIC_DEVICE_TYPES", frozenset())
        return static_greedy(model, ids, mask, STEPS, eos, use_graph=False)


def test_a_union_past_the_static_limit_goes_to_the_exact_path_at_once(
    int8_model: Any, static_on_cpu: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, mask, eos, exact = _overflowing_batch(int8_model, monkeypatch)
    monkeypatch.setattr(int8_static, "MAX_STATIC_COLUMNS", 1)  # no wider try is worth it
    ours, how = static_greedy(int8_model.model, ids, mask, STEPS, eos, use_graph=False)
    assert how.endswith("(LLM.int8 outlier columns past the static path's width 1: exact path)")
    assert torch.equal(ours, exact)


def test_a_wider_try_that_runs_out_of_memory_goes_to_the_exact_path(
    int8_model: Any, static_on_cpu: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, mask, eos, exact = _overflowing_batch(int8_model, monkeypatch)
    greedy = decoding._greedy

    def short_of_memory(*args: Any) -> Any:
        guard = args[-1]
        if guard is not None and guard.columns > 1:  # the wider try
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return greedy(*args)

    monkeypatch.setattr(decoding, "_greedy", short_of_memory)
    ours, how = static_greedy(int8_model.model, ids, mask, STEPS, eos, use_graph=False)
    assert re.search(r"\(LLM\.int8 width ([2-9]|\d\d+) ran out of memory: exact path\)$", how), how
    assert torch.equal(ours, exact)


def test_the_first_try_running_out_of_memory_is_the_batch_sizers_to_handle(
    int8_model: Any, static_on_cpu: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    ids, mask, eos = _batch(int8_model)

    def short_of_memory(*args: Any) -> Any:
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(decoding, "_greedy", short_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        static_greedy(int8_model.model, ids, mask, STEPS, eos, use_graph=False)
