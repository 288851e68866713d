"""The prompt stages' attention kernels on CUDA (quant_fixtures/attention_kernels.py): cuDNN's SDPA off
while they run there, everything restored afterwards, the CPU untouched, the other stages left to
torch, and the choice part of the CUDA numerics key so references read with other kernels count as
stale."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from quant_fixtures.attention_kernels import ATTENTION_KERNELS, prompt_attention
from quant_fixtures.environment import differences, numerics_key
from quant_fixtures.json_types import JsonObject


def _flags() -> tuple[bool, bool, bool, bool]:
    b = torch.backends.cuda
    return b.cudnn_sdp_enabled(), b.flash_sdp_enabled(), b.mem_efficient_sdp_enabled(), b.math_sdp_enabled()


def test_cuda_prompt_stages_run_without_cudnn_attention_and_the_flags_come_back() -> None:
    before = _flags()
    with prompt_attention("cuda:0"):
        assert _flags() == (False, True, True, True)
    assert _flags() == before


def test_the_cpu_is_left_as_it_is() -> None:
    before = _flags()
    with prompt_attention("cpu"):
        assert _flags() == before


def _cuda_fingerprint(attention: str | None) -> JsonObject:
    gpu: JsonObject = {"name": "NVIDIA H100 80GB HBM3", "capability": "9.0", "cuda": "13.0", "driver": "580"}
    if attention is not None:
        gpu["attention"] = attention
    return {"device_type": "cuda", "packages": {"torch": "2.11.0", "transformers": "5.17.0"}, "gpu": gpu}


def test_the_kernels_are_part_of_the_cuda_numerics_key() -> None:
    assert numerics_key(_cuda_fingerprint(ATTENTION_KERNELS))["attention"] == ATTENTION_KERNELS
    # a reference stored before the choice was recorded is one of other numerics
    assert differences(_cuda_fingerprint(None), _cuda_fingerprint(ATTENTION_KERNELS)) == [
        f"attention: None -> {ATTENTION_KERNELS}"
    ]


def test_a_prompt_stage_runs_inside_the_choice() -> None:
    """passes._prompts, which fp16_pass and variant_pass run their prompt stages through."""
    from quant_fixtures.session import passes

    seen: list[tuple[bool, bool, bool, bool]] = []

    def stage(*args: Any) -> Any:
        seen.append(_flags())
        return args

    run: Any = SimpleNamespace(shared=SimpleNamespace(settings=SimpleNamespace(load=SimpleNamespace(device="cuda:0"))))
    before = _flags()
    result: Any = passes._prompts(run, stage, "a", 1)
    assert result == ("a", 1)
    assert seen == [(False, True, True, True)]
    assert _flags() == before
