"""Small stored JSON records (FP16 baselines, prompt summaries): keyed, checksummed, validated.

A record is used only when its schema, its key (every setting that shapes its numbers) and a
checksum over its content all verify; otherwise the reader gets None and the reason, and the
caller recomputes it (or, with --frozen-baselines, stops).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from quant_fixtures.json_types import JsonObject, JsonValue
from quant_fixtures.store.atomic import write_json_atomic

RECORDED = "environment"  # informative: where the record was made; outside the key and the checksum
_NOT_CONTENT = {"schema_version", "key_sha256", "checksum", RECORDED}


def content_checksum(body: Mapping[str, object]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_record(
    path: Path,
    schema: int,
    key: JsonObject,
    key_sha256: str,
    body: Mapping[str, object],
    environment: Mapping[str, object] | None = None,
) -> None:
    """The checksum covers the key and every body field; the environment is recorded beside them.
    A stored record with the same schema and content is left as it is: a fresh clone's FP16 pass
    measures the committed baselines again, and the same numbers must leave ``git status`` clean
    whatever the informational environment says (threads, for one)."""
    content = {"key": key, **body}
    if _stored_content_checksum(path, schema) == content_checksum(json.loads(json.dumps(content))):
        return
    write_json_atomic(
        path,
        {
            "schema_version": schema,
            "key_sha256": key_sha256,
            **content,
            "checksum": content_checksum(content),
            **({RECORDED: environment} if environment is not None else {}),
        },
    )


def _stored_content_checksum(path: Path, schema: int) -> str | None:
    """The checksum a readable record of ``schema`` at ``path`` holds, verified (else None)."""
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
        content = {k: v for k, v in document.items() if k not in _NOT_CONTENT}
        stored = document.get("checksum")
    except (ValueError, OSError, AttributeError):  # missing, unreadable or not an object
        return None
    if document.get("schema_version") != schema or stored != content_checksum(content):
        return None
    return str(stored)


def read_record(
    path: Path, schema: int, key: JsonObject, fields: tuple[str, ...], what: str
) -> tuple[JsonObject | None, str]:
    """The record's body fields, or None and why it cannot be used (``what`` names it)."""
    path = Path(path)
    key = json.loads(json.dumps(key))  # as stored: tuples become lists
    if not path.is_file():
        return None, f"{path}: no stored {what} for these settings"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        content = {k: v for k, v in document.items() if k not in _NOT_CONTENT}
        missing = [k for k in ("key", *fields) if k not in content]
        if missing:
            raise KeyError(", ".join(missing))
    except (ValueError, KeyError, OSError, TypeError, AttributeError) as exc:  # not an object: Type/AttributeError
        return None, f"{path}: unreadable {what} ({type(exc).__name__}: {exc})"
    if document.get("schema_version") != schema:
        return None, f"{path}: schema {document.get('schema_version')} != {schema}"
    if document.get("checksum") != content_checksum(content):
        return None, f"{path}: checksum mismatch (edited or corrupt)"
    stored = content["key"]
    if stored != key:
        return None, f"{path}: stale, settings changed: {key_difference(stored, key)}"
    return {k: content[k] for k in fields}, "ok"


def key_difference(stored: object, wanted: JsonObject) -> str:
    """The fields that differ, by name; a nested table (the environment) also says how."""
    if not isinstance(stored, dict):
        return "the whole key"
    parts = []
    for name in sorted(set(wanted) | set(stored)):
        old, new = stored.get(name), wanted.get(name)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            inner = [
                f"{k}: {old.get(k)} -> {new.get(k)}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
            ]
            parts.append(f"{name} ({'; '.join(inner)})")
        else:
            parts.append(name)
    return ", ".join(parts)


def numbers(value: JsonValue) -> list[float] | None:
    """A stored list of numbers as it is, or None when it is not one."""
    if not isinstance(value, list):
        return None
    found = [v for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return found if len(found) == len(value) else None


def integers(value: JsonValue) -> list[int] | None:
    """A stored list of integers as it is, or None when it is not one."""
    if not isinstance(value, list):
        return None
    found = [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return found if len(found) == len(value) else None
