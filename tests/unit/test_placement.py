"""Where a (model, variant) is loaded: its GPU when the weights fit, else (serial runs only) every
GPU of the host with a memory limit each; never spread on the CPU or by an xdist worker. And how
much a process may hold on a GPU: the card, or the cap where smaller (one rule for placement and
for the memory budget of the batched stages)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from quant_fixtures.compute.memory import MemoryBudget
from quant_fixtures.models.placement import gpu_limits, placement
from quant_fixtures.variants import VARIANTS

GiB = 2**30
MISTRAL_FP16 = int(14.48e9)


def test_a_model_that_fits_stays_on_its_gpu() -> None:
    where = placement("cuda:0", MISTRAL_FP16, 1.0, [80 * GiB, 80 * GiB], may_spread=True)
    assert where.device_map == {"": "cuda:0"} and where.max_memory is None and where.note is None


def test_a_model_too_big_for_its_gpu_spreads_over_the_hosts_gpus() -> None:
    # under a 15 GiB cap Mistral's fp16 weights still fit one GPU (measured on an H200: peak 14.83 GiB)
    assert placement("cuda:0", MISTRAL_FP16, 1.0, [15 * GiB, 15 * GiB], may_spread=True).device_map == {"": "cuda:0"}
    where = placement("cuda:0", MISTRAL_FP16, 1.0, [12 * GiB, 12 * GiB], may_spread=True)
    assert where.device_map == "auto"
    assert where.max_memory == {0: int(12 * GiB * 0.9), 1: int(12 * GiB * 0.9)}
    assert where.note is not None and where.note.startswith(
        "load: 13.5 GiB of weights do not fit cuda:0 (12.0 GiB); spread over 2 GPUs"
    )


def test_the_variants_share_decides() -> None:
    # Mistral's int8 weights (0.64 x 13.5 GiB) fit a 12 GiB card; its fp16 weights do not
    limits = [12 * GiB, 12 * GiB]
    assert placement("cuda:1", MISTRAL_FP16, VARIANTS["int8"].weight_share, limits, True).device_map == {"": "cuda:1"}
    assert placement("cuda:1", MISTRAL_FP16, VARIANTS["fp16"].weight_share, limits, True).device_map == "auto"


def test_never_spread_by_a_worker_on_one_gpu_on_the_cpu_or_beyond_the_host() -> None:
    assert placement("cuda:1", MISTRAL_FP16, 1.0, [12 * GiB, 12 * GiB], may_spread=False).device_map == {"": "cuda:1"}
    assert placement("cuda:0", MISTRAL_FP16, 1.0, [12 * GiB], may_spread=True).device_map == {"": "cuda:0"}
    assert placement("cpu", MISTRAL_FP16, 1.0, [], may_spread=True).device_map == {"": "cpu"}
    # more than all GPUs together hold: stays, and fails there with its out-of-memory line
    assert placement("cuda:0", 40 * GiB, 1.0, [15 * GiB, 15 * GiB], may_spread=True).device_map == {"": "cuda:0"}


@pytest.fixture
def two_cards(monkeypatch: pytest.MonkeyPatch) -> None:
    """An 80 GiB cuda:0 and a 40 GiB cuda:1, as torch.cuda reports them."""
    cards = [80 * GiB, 40 * GiB]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(cards))
    monkeypatch.setattr(
        torch.cuda,
        "get_device_properties",
        lambda device: SimpleNamespace(total_memory=cards[int(str(device).rsplit(":", 1)[-1])]),
    )


def test_a_gpu_holds_its_card_or_the_cap_where_smaller(two_cards: None) -> None:
    assert gpu_limits(None) == [80 * GiB, 40 * GiB]
    assert gpu_limits(60 * GiB) == [60 * GiB, 40 * GiB]
    # the memory budget every batched stage plans with reads the same rule
    assert MemoryBudget("cuda:0", 60 * GiB).limit() == 60 * GiB
    assert MemoryBudget("cuda:1", 60 * GiB).limit() == 40 * GiB
    assert MemoryBudget("cuda:0").limit() == 80 * GiB
