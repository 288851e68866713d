"""The FP16 reference of a model: computed once, stored as a small JSON, validated on every load.

A stored baseline is reused only when its key (model, weights and tokenizer identity, dataset hash,
protocol, dtypes, device type, metrics version, the numerics-relevant environment) equals the key
of the current run and its checksum over the content verifies; otherwise it is recomputed (or,
with ``frozen``, the run stops).
"""

from __future__ import annotations

import glob
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from quant_fixtures.names import file_in
from quant_fixtures.store.keys import ReferenceKeyBase
from quant_fixtures.store.records import integers, numbers, read_record, write_record

BASELINE_SCHEMA = 1


class StaleBaselineError(RuntimeError):
    """A stored baseline is missing or stale while baselines are frozen."""


@dataclass(frozen=True)
class BaselineKey(ReferenceKeyBase):
    """Everything that shapes the FP16 perplexity numbers (see environment.numerics_key)."""

    dataset_sha256: str
    method: str
    ctx: int
    stride: int | None
    max_tokens: int | None


@dataclass(frozen=True)
class Baseline:
    key: BaselineKey
    ppl: float
    window_nll: list[float]
    window_tokens: list[int]
    footprint_bytes: int

    @property
    def tokens(self) -> int:
        return sum(self.window_tokens)


def baseline_path(directory: Path, key: BaselineKey) -> Path:
    return file_in(Path(directory), f"{key.model}-{key.digest()[:12]}.json")


BODY_FIELDS = ("ppl", "window_nll", "window_tokens", "footprint_bytes")


def store_baseline(directory: Path, baseline: Baseline, environment: Mapping[str, object] | None = None) -> Path:
    """Write the baseline; ``environment`` (where it was measured) is recorded beside it."""
    path = baseline_path(directory, baseline.key)
    body = {
        "ppl": baseline.ppl,
        "window_nll": baseline.window_nll,
        "window_tokens": baseline.window_tokens,
        "footprint_bytes": baseline.footprint_bytes,
    }
    write_record(path, BASELINE_SCHEMA, baseline.key.as_dict(), baseline.key.digest(), body, environment)
    return path


def load_baseline(directory: Path, key: BaselineKey) -> tuple[Baseline | None, str]:
    """The stored baseline for ``key``, or None with the reason it cannot be used."""
    path = baseline_path(directory, key)
    if not path.is_file():  # say which stored baseline of this model comes closest, and how it differs
        return None, f"{path}: no stored baseline for these settings{_nearest_difference(directory, key)}"
    body, reason = read_record(path, BASELINE_SCHEMA, key.as_dict(), BODY_FIELDS, "baseline")
    if body is None:
        return None, reason
    ppl, footprint = body["ppl"], body["footprint_bytes"]
    window_nll, window_tokens = numbers(body["window_nll"]), integers(body["window_tokens"])
    if (
        not isinstance(ppl, (int, float))
        or not isinstance(footprint, int)
        or window_nll is None
        or window_tokens is None
    ):
        return None, f"{path}: a field of the wrong type (ppl, footprint_bytes: numbers; window arrays: lists of them)"
    if len(window_nll) != len(window_tokens):
        return None, f"{path}: window arrays differ in length"
    return Baseline(key, ppl, window_nll, window_tokens, footprint), "ok"


def _nearest_difference(directory: Path, key: BaselineKey) -> str:
    """'; closest stored one differs in: ...' for the same model's other baselines, if any."""
    wanted = key.as_dict()
    best: list[str] | None = None
    for other in Path(directory).glob(f"{glob.escape(key.model)}-*.json"):
        try:
            stored = json.loads(other.read_text()).get("key")
        except (OSError, ValueError, AttributeError):
            continue
        if not isinstance(stored, dict) or stored.get("model") != key.model:
            continue
        changed = sorted(k for k in wanted if stored.get(k) != wanted[k])
        if best is None or len(changed) < len(best):
            best = changed
    return f" (the closest stored baseline differs in: {', '.join(best)})" if best else ""
