"""The command line of the long-context measurement: its options, and their parsing into
:class:`~quant_fixtures.settings.LongContextProtocol` (each option once; a bad value is a usage error
naming the option and the value)."""

from __future__ import annotations

import pytest

from quant_fixtures.inputs.retrieval_probe import MIN_PROBE_LENGTH
from quant_fixtures.settings import LONG_BUCKET_EDGES, DeviceDefaults, LongContextProtocol


def add_long_context_options(group: pytest.OptionGroup) -> None:
    group.addoption(
        "--long-ctx",
        type=int,
        default=None,
        help="tokens per WikiText-2 stretch of the long-context measurement, capped at each model's maximum "
        "(default: [defaults] long_ctx on CUDA, cpu_long_ctx on the CPU)",
    )
    group.addoption("--long-stretches", type=int, default=None, help="long WikiText-2 stretches scored")
    group.addoption(
        "--long-chunk",
        type=int,
        default=None,
        help="positions per forward pass of the long-context measurement (earlier ones from the KV cache)",
    )
    group.addoption(
        "--probe-lengths",
        default=None,
        help="comma-separated token lengths of the retrieval probes (default: the long length and a quarter, "
        "a 16th and a 64th of it, each at least 256)",
    )
    group.addoption(
        "--probe-depths",
        default=None,
        help="comma-separated depths (0 to 1) where a retrieval probe's key sits in its filler (default: 0.1,0.5,0.9)",
    )
    group.addoption("--probe-keys", type=int, default=None, help="retrieval probes per length and depth")
    group.addoption(
        "--long-buckets",
        default=None,
        help="comma-separated edges of the position buckets, in tokens of context (default: "
        + ",".join(str(e) for e in LONG_BUCKET_EDGES)
        + ", cut at each model's length)",
    )
    group.addoption(
        "--skip-long-context",
        action="store_true",
        help="no long-context stage (position buckets and retrieval probes)",
    )


def _positive(config: pytest.Config, name: str) -> int | None:
    value: int | None = config.getoption(name)
    if value is not None and value < 1:
        raise pytest.UsageError(f"{name}: expected a positive integer, got {value}")
    return value


def _numbers(config: pytest.Config, name: str) -> list[str] | None:
    raw: str | None = config.getoption(name)
    if raw is None:
        return None
    items = [v.strip() for v in raw.split(",") if v.strip()]
    if not items:
        raise pytest.UsageError(f"{name}: no value in {raw!r}")
    if len(set(items)) != len(items):
        raise pytest.UsageError(f"{name}: {raw!r} names a value twice")
    return items


def probe_lengths(config: pytest.Config) -> tuple[int, ...] | None:
    items = _numbers(config, "--probe-lengths")
    if items is None:
        return None
    if not all(v.isdigit() and int(v) >= MIN_PROBE_LENGTH for v in items):
        raise pytest.UsageError(
            f"--probe-lengths: expected integers of at least {MIN_PROBE_LENGTH} tokens, got {','.join(items)!r}"
        )
    return tuple(sorted(int(v) for v in items))


def probe_depths(config: pytest.Config) -> tuple[float, ...] | None:
    items = _numbers(config, "--probe-depths")
    if items is None:
        return None
    try:
        depths = [float(v) for v in items]
    except ValueError:
        raise pytest.UsageError(f"--probe-depths: expected numbers from 0 to 1, got {','.join(items)!r}") from None
    if not all(0.0 <= d <= 1.0 for d in depths):
        raise pytest.UsageError(f"--probe-depths: expected numbers from 0 to 1, got {','.join(items)!r}")
    return tuple(sorted(depths))


def bucket_edges(config: pytest.Config) -> tuple[int, ...]:
    items = _numbers(config, "--long-buckets")
    if items is None:
        return LONG_BUCKET_EDGES
    edges = [int(v) for v in items if v.isdigit()]
    if len(edges) != len(items) or len(edges) < 2 or edges != sorted(edges):
        raise pytest.UsageError(
            f"--long-buckets: expected at least two increasing non-negative integers, got {','.join(items)!r}"
        )
    return tuple(edges)


def long_context_settings(config: pytest.Config, defaults: DeviceDefaults) -> LongContextProtocol:
    """The long-context options with the device's defaults where they are not given."""
    length = _positive(config, "--long-ctx") or defaults.long_ctx
    if length < MIN_PROBE_LENGTH:
        raise pytest.UsageError(f"--long-ctx {length}: the long-context measurement needs at least {MIN_PROBE_LENGTH}")
    lengths = probe_lengths(config)
    too_long = [n for n in lengths or () if n > length]
    if too_long:
        raise pytest.UsageError(f"--probe-lengths {too_long[0]} is longer than the long-context length {length}")
    depths = probe_depths(config)
    return LongContextProtocol(
        max_length=length,
        stretches=_positive(config, "--long-stretches") or defaults.long_stretches,
        chunk_tokens=_positive(config, "--long-chunk") or defaults.long_chunk,
        probe_lengths=lengths,
        probe_depths=depths if depths is not None else LongContextProtocol.probe_depths,
        probe_keys=_positive(config, "--probe-keys") or defaults.probe_keys,
        bucket_edges=bucket_edges(config),
        skip=bool(config.getoption("--skip-long-context")),
    )
