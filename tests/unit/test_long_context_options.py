"""The long-context options: defaults per device, and a usage error naming the option for a bad value."""

from __future__ import annotations

import pytest

from quant_fixtures.plugin.long_context_options import long_context_settings
from quant_fixtures.session.long_plan import long_shape
from quant_fixtures.settings import (
    LONG_BUCKET_EDGES,
    PROBE_DEPTHS,
    Defaults,
    LongContextProtocol,
    default_probe_lengths,
    device_defaults,
)


class Options:
    """What long_context_settings reads of a pytest.Config: getoption, with the given values."""

    def __init__(self, **given: object) -> None:
        self.given = {f"--{k.replace('_', '-')}": v for k, v in given.items()}

    def getoption(self, name: str) -> object:
        return self.given.get(name, False if name == "--skip-long-context" else None)


def settings(device: str = "cpu", **given: object) -> LongContextProtocol:
    return long_context_settings(Options(**given), device_defaults(Defaults(), device))  # type: ignore[arg-type]


def test_device_defaults() -> None:
    cpu, cuda = settings("cpu"), settings("cuda:0")
    assert (cpu.max_length, cpu.stretches, cpu.chunk_tokens, cpu.probe_keys) == (2048, 1, 2048, 1)
    # CUDA: 4 lengths x 3 depths x 3 keys = 36 probes, so no flip in them bounds the rate below 0.1
    assert (cuda.max_length, cuda.stretches, cuda.chunk_tokens, cuda.probe_keys) == (32768, 2, 1024, 3)
    assert cpu.probe_depths == PROBE_DEPTHS and cpu.bucket_edges == LONG_BUCKET_EDGES
    assert cpu.probe_lengths is None and not cpu.skip


def test_given_values_are_parsed() -> None:
    given = settings(
        long_ctx=4096,
        long_stretches=3,
        long_chunk=512,
        probe_lengths="1024,256",
        probe_depths="0.9,0",
        probe_keys=2,
        long_buckets="0,100,1000",
        skip_long_context=True,
    )
    assert (given.max_length, given.stretches, given.chunk_tokens, given.probe_keys) == (4096, 3, 512, 2)
    assert given.probe_lengths == (256, 1024) and given.probe_depths == (0.0, 0.9)
    assert given.bucket_edges == (0, 100, 1000) and given.skip


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"long_ctx": 0}, "--long-ctx: expected a positive integer, got 0"),
        ({"long_ctx": 32}, "--long-ctx 32: the long-context measurement needs at least 64"),
        ({"long_chunk": -1}, "--long-chunk: expected a positive integer"),
        ({"probe_lengths": "256,x"}, "--probe-lengths: expected integers of at least 64 tokens"),
        ({"probe_lengths": "256,256"}, "--probe-lengths: '256,256' names a value twice"),
        (
            {"long_ctx": 1024, "probe_lengths": "2048"},
            "--probe-lengths 2048 is longer than the long-context length 1024",
        ),
        ({"probe_depths": "0.5,1.5"}, "--probe-depths: expected numbers from 0 to 1"),
        ({"probe_depths": "half"}, "--probe-depths: expected numbers from 0 to 1"),
        ({"probe_depths": ","}, "--probe-depths: no value in ','"),
        ({"long_buckets": "512,0"}, "--long-buckets: expected at least two increasing non-negative integers"),
        ({"long_buckets": "0"}, "--long-buckets: expected at least two"),
        ({"long_buckets": "0,-5"}, "--long-buckets: expected at least two"),
    ],
)
def test_a_bad_value_is_a_usage_error_naming_the_option(given: dict[str, object], message: str) -> None:
    with pytest.raises(pytest.UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        settings("cpu", **given)


@pytest.mark.parametrize(
    ("length", "expected"),
    [(32768, (512, 2048, 8192, 32768)), (2048, (512, 2048)), (1024, (256, 1024)), (300, (300,)), (100, (100,))],
)
def test_default_probe_lengths(length: int, expected: tuple[int, ...]) -> None:
    assert default_probe_lengths(length) == expected


def test_a_model_shorter_than_the_long_length_caps_it_and_its_probes() -> None:
    shape = long_shape(settings(long_ctx=4096, probe_lengths="256,1024,4096"), model_max=2048)
    assert (shape.length, shape.probe_lengths, shape.dropped_probe_lengths) == (2048, (256, 1024), (4096,))
    unlimited = long_shape(settings(long_ctx=4096), model_max=None)
    assert unlimited.length == 4096 and unlimited.probe_lengths == (256, 1024, 4096)
