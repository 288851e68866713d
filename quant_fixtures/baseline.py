"""The FP16 reference of a model: computed once, stored as a small JSON, validated on every load.

A stored baseline is reused only when its key (model, weights identity, dataset hash, protocol,
dtypes, device type, metrics version) equals the key of the current run and its checksum over
the content verifies; otherwise it is recomputed (or, with ``frozen``, the run stops).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .hashing import settings_digest
from .report import write_json_atomic

BASELINE_SCHEMA = 1


class StaleBaselineError(RuntimeError):
    """A stored baseline is missing or stale while baselines are frozen."""


@dataclass(frozen=True)
class BaselineKey:
    model: str
    weights_identity: str
    dataset_sha256: str
    method: str
    ctx: int
    stride: int | None
    max_tokens: int | None
    weight_dtype: str
    compute_dtype: str
    device_type: str
    metrics_version: int

    def digest(self) -> str:
        return settings_digest(self)


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


def _content_checksum(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def baseline_path(directory: Path, key: BaselineKey) -> Path:
    safe_model = re.sub(r"[^A-Za-z0-9._-]", "_", key.model)
    return Path(directory) / f"{safe_model}-{key.digest()[:12]}.json"


def store_baseline(directory: Path, baseline: Baseline) -> Path:
    body = {
        "key": asdict(baseline.key),
        "ppl": baseline.ppl,
        "window_nll": baseline.window_nll,
        "window_tokens": baseline.window_tokens,
        "footprint_bytes": baseline.footprint_bytes,
    }
    document = {"schema_version": BASELINE_SCHEMA, "key_sha256": baseline.key.digest(), **body,
                "checksum": _content_checksum(body)}
    path = baseline_path(directory, baseline.key)
    write_json_atomic(path, document)
    return path


def load_baseline(directory: Path, key: BaselineKey) -> tuple[Baseline | None, str]:
    """The stored baseline for ``key``, or None with the reason it cannot be used."""
    path = baseline_path(directory, key)
    if not path.is_file():
        return None, f"{path}: no stored baseline for these settings{_nearest_difference(directory, key)}"
    try:
        document = json.loads(path.read_text())
        body = {k: document[k] for k in ("key", "ppl", "window_nll", "window_tokens", "footprint_bytes")}
    except (ValueError, KeyError, OSError, TypeError) as exc:  # TypeError: valid JSON that is not an object
        return None, f"{path}: unreadable baseline ({type(exc).__name__}: {exc})"
    if document.get("schema_version") != BASELINE_SCHEMA:
        return None, f"{path}: schema {document.get('schema_version')} != {BASELINE_SCHEMA}"
    if document.get("checksum") != _content_checksum(body):
        return None, f"{path}: checksum mismatch (edited or corrupt)"
    if body["key"] != asdict(key):
        changed = sorted(k for k in asdict(key) if body["key"].get(k) != asdict(key)[k])
        return None, f"{path}: stale, settings changed: {', '.join(changed)}"
    if len(body["window_nll"]) != len(body["window_tokens"]):
        return None, f"{path}: window arrays differ in length"
    return Baseline(key=key, ppl=body["ppl"], window_nll=body["window_nll"],
                    window_tokens=body["window_tokens"], footprint_bytes=body["footprint_bytes"]), "ok"


def _nearest_difference(directory: Path, key: BaselineKey) -> str:
    """'; closest stored one differs in: ...' for the same model's other baselines, if any."""
    wanted = asdict(key)
    best: list[str] | None = None
    safe_model = re.sub(r"[^A-Za-z0-9._-]", "_", key.model)
    for other in Path(directory).glob(f"{safe_model}-*.json"):
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
