"""Unit tests for quant_fixtures.baseline: stored FP16 baselines and their validation on load."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import pytest

from quant_fixtures.names import UnsafeFileName
from quant_fixtures.store.baseline import (
    BASELINE_SCHEMA,
    Baseline,
    BaselineKey,
    baseline_path,
    load_baseline,
    store_baseline,
)

KEY = BaselineKey(
    model="qwen2.5-0.5b",
    weights_identity="Qwen/Qwen2.5-0.5B@0123abcd",
    tokenizer_sha256="a" * 64,
    dataset_sha256="f" * 64,
    method="nonoverlapping",
    ctx=2048,
    stride=None,
    max_tokens=16384,
    weight_dtype="float16",
    compute_dtype="float32",
    device_type="cpu",
    metrics_version=1,
    environment={"device_type": "cpu", "torch": "2.13.0", "cpu_capability": "AVX512"},
)

BASELINE = Baseline(
    key=KEY,
    ppl=13.0625,
    window_nll=[5123.25, 5240.5, 4999.125],
    window_tokens=[2047, 2047, 2047],
    footprint_bytes=988_000_000,
)

# A different value of every key field, to change one at a time.
CHANGED: dict[str, Any] = {
    "model": "mistral7b",
    "weights_identity": "Qwen/Qwen2.5-0.5B@ffffffff",
    "tokenizer_sha256": "b" * 64,
    "dataset_sha256": "0" * 64,
    "method": "strided",
    "ctx": 1024,
    "stride": 512,
    "max_tokens": None,
    "weight_dtype": "bfloat16",
    "compute_dtype": "float16",
    "device_type": "cuda",
    "metrics_version": 2,
    "environment": {"device_type": "cpu", "torch": "2.13.0", "cpu_capability": "AVX2"},
}


def test_changed_covers_every_key_field() -> None:
    assert set(CHANGED) == {f.name for f in fields(BaselineKey)}
    assert all(getattr(KEY, name) != value for name, value in CHANGED.items())


def read_doc(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def write_doc(path: Path, document: Any) -> None:
    path.write_text(json.dumps(document))


# -- round trip -------------------------------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    path = store_baseline(tmp_path, BASELINE)
    assert path == baseline_path(tmp_path, KEY)
    assert path.is_file() and path.parent == tmp_path
    loaded, reason = load_baseline(tmp_path, KEY)
    assert reason == "ok"
    assert loaded == BASELINE
    assert loaded.tokens == 3 * 2047


def test_round_trip_strided_key(tmp_path: Path) -> None:
    key = replace(KEY, method="strided", stride=512, max_tokens=None)
    baseline = replace(BASELINE, key=key)
    store_baseline(tmp_path, baseline)
    assert load_baseline(tmp_path, key) == (baseline, "ok")


def test_stored_document_layout(tmp_path: Path) -> None:
    document = read_doc(store_baseline(tmp_path, BASELINE))
    assert document["schema_version"] == BASELINE_SCHEMA
    assert document["key_sha256"] == KEY.digest()
    assert document["key"] == asdict(KEY)
    assert document["ppl"] == BASELINE.ppl
    assert len(document["checksum"]) == 64


def test_the_same_numbers_leave_the_stored_file_as_it_was(tmp_path: Path) -> None:
    """Measured again with the same key and numbers (a fresh clone's FP16 pass over the committed
    baselines), the file keeps its bytes, the environment it was first measured in included."""
    path = store_baseline(tmp_path, BASELINE, {"cpu": {"threads": 2}})
    before = path.read_bytes()
    store_baseline(tmp_path, BASELINE, {"cpu": {"threads": 1}})
    assert path.read_bytes() == before
    store_baseline(tmp_path, replace(BASELINE, ppl=BASELINE.ppl + 1e-9), {"cpu": {"threads": 1}})
    assert path.read_bytes() != before  # other numbers are written


def test_store_creates_directory_and_overwrites(tmp_path: Path) -> None:
    directory = tmp_path / "nested" / "baselines"
    store_baseline(directory, BASELINE)
    updated = replace(BASELINE, ppl=14.5)
    store_baseline(directory, updated)
    assert load_baseline(directory, KEY) == (updated, "ok")
    assert [p.name for p in directory.iterdir()] == [baseline_path(directory, KEY).name]


def test_path_is_safe_and_key_specific(tmp_path: Path) -> None:
    path = baseline_path(tmp_path, KEY)
    assert path.parent == tmp_path
    assert path.name == f"{KEY.model}-{KEY.digest()[:12]}.json"
    assert baseline_path(tmp_path, replace(KEY, ctx=1024)) != path
    with pytest.raises(UnsafeFileName):  # a model key that would leave the directory is refused, not rewritten
        baseline_path(tmp_path, replace(KEY, model="../org/model"))


def test_digest_is_stable_and_field_sensitive() -> None:
    assert KEY.digest() == replace(KEY).digest()
    digests = {replace(KEY, **{name: value}).digest() for name, value in CHANGED.items()}
    assert len(digests) == len(CHANGED) and KEY.digest() not in digests


# -- stale keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize("field_name", sorted(CHANGED))
def test_changed_key_is_not_reused(tmp_path: Path, field_name: str) -> None:
    store_baseline(tmp_path, BASELINE)
    new_key = replace(KEY, **{field_name: CHANGED[field_name]})
    loaded, reason = load_baseline(tmp_path, new_key)
    assert loaded is None
    assert reason != "ok"


@pytest.mark.parametrize("field_name", sorted(CHANGED))
def test_stale_reason_names_the_field(tmp_path: Path, field_name: str) -> None:
    # A stored file found under the new key's name (the content-level check behind the file name):
    # the reason names exactly the field that changed.
    stored = store_baseline(tmp_path, BASELINE)
    new_key = replace(KEY, **{field_name: CHANGED[field_name]})
    shutil.copyfile(stored, baseline_path(tmp_path, new_key))
    loaded, reason = load_baseline(tmp_path, new_key)
    assert loaded is None
    assert "stale" in reason
    if field_name == "environment":  # a table: the reason also says what changed in it
        assert reason.endswith("settings changed: environment (cpu_capability: AVX512 -> AVX2)")
    else:
        assert reason.endswith(f"settings changed: {field_name}")


def test_stale_reason_names_several_fields(tmp_path: Path) -> None:
    stored = store_baseline(tmp_path, BASELINE)
    new_key = replace(KEY, ctx=1024, device_type="cuda")
    shutil.copyfile(stored, baseline_path(tmp_path, new_key))
    _, reason = load_baseline(tmp_path, new_key)
    assert reason.endswith("settings changed: ctx, device_type")


def test_stale_reason_names_the_field_after_settings_change(tmp_path: Path) -> None:
    store_baseline(tmp_path, BASELINE)
    _, reason = load_baseline(tmp_path, replace(KEY, ctx=1024))
    assert "ctx" in reason


# -- corrupt, missing, foreign files ------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    loaded, reason = load_baseline(tmp_path, KEY)
    assert loaded is None
    assert str(baseline_path(tmp_path, KEY)) in reason and "no stored baseline" in reason


def test_missing_directory(tmp_path: Path) -> None:
    loaded, reason = load_baseline(tmp_path / "never-created", KEY)
    assert loaded is None and "no stored baseline" in reason


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(ppl=d["ppl"] * 0.9),
        lambda d: d["window_nll"].__setitem__(0, 1.0),
        lambda d: d["window_tokens"].__setitem__(1, 2046),
        lambda d: d.update(footprint_bytes=1),
        lambda d: d["key"].update(ctx=4096),
        lambda d: d.update(checksum="0" * 64),
    ],
    ids=["ppl", "window_nll", "window_tokens", "footprint", "key", "checksum"],
)
def test_edited_json_fails_checksum(tmp_path: Path, edit: Any) -> None:
    path = store_baseline(tmp_path, BASELINE)
    document = read_doc(path)
    edit(document)
    write_doc(path, document)
    loaded, reason = load_baseline(tmp_path, KEY)
    assert loaded is None
    assert "checksum mismatch" in reason and str(path) in reason


def test_reformatted_json_still_loads(tmp_path: Path) -> None:
    # The checksum is over the content, not the bytes.
    path = store_baseline(tmp_path, BASELINE)
    path.write_text(json.dumps(read_doc(path), indent=None, sort_keys=True))
    assert load_baseline(tmp_path, KEY) == (BASELINE, "ok")


@pytest.mark.parametrize("text", ["{not json", "", '{"ppl": 1.0'], ids=["garbage", "empty", "truncated"])
def test_unreadable_json(tmp_path: Path, text: str) -> None:
    path = baseline_path(tmp_path, KEY)
    path.write_text(text)
    loaded, reason = load_baseline(tmp_path, KEY)
    assert loaded is None
    assert "unreadable" in reason and str(path) in reason


@pytest.mark.parametrize("missing", ["key", "ppl", "window_nll", "window_tokens", "footprint_bytes"])
def test_missing_body_field_is_unreadable(tmp_path: Path, missing: str) -> None:
    path = store_baseline(tmp_path, BASELINE)
    document = read_doc(path)
    del document[missing]
    write_doc(path, document)
    loaded, reason = load_baseline(tmp_path, KEY)
    assert loaded is None and "unreadable" in reason and missing in reason


@pytest.mark.parametrize("document", [[], None, 3, "text"], ids=["list", "null", "number", "string"])
def test_json_not_an_object_is_unreadable(tmp_path: Path, document: Any) -> None:
    write_doc(baseline_path(tmp_path, KEY), document)
    loaded, reason = load_baseline(tmp_path, KEY)
    assert loaded is None and "unreadable" in reason


@pytest.mark.parametrize("schema", [BASELINE_SCHEMA + 1, 0, None, "1"])
def test_schema_mismatch(tmp_path: Path, schema: Any) -> None:
    path = store_baseline(tmp_path, BASELINE)
    document = read_doc(path)
    document["schema_version"] = schema
    write_doc(path, document)
    loaded, reason = load_baseline(tmp_path, KEY)
    assert loaded is None
    assert "schema" in reason and str(path) in reason


def test_missing_schema_version(tmp_path: Path) -> None:
    path = store_baseline(tmp_path, BASELINE)
    document = read_doc(path)
    del document["schema_version"]
    write_doc(path, document)
    loaded, reason = load_baseline(tmp_path, KEY)
    assert loaded is None and "schema" in reason


def test_window_arrays_of_different_length(tmp_path: Path) -> None:
    bad = replace(BASELINE, window_nll=[1.0, 2.0], window_tokens=[10, 10, 10])
    path = store_baseline(tmp_path, bad)
    loaded, reason = load_baseline(tmp_path, KEY)
    assert loaded is None and "differ in length" in reason and str(path) in reason


def test_nan_baseline_is_not_stored(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        store_baseline(tmp_path, replace(BASELINE, ppl=float("nan")))
    assert list(tmp_path.iterdir()) == []
