"""The small committed companion of the cached FP16 prompt reference (in the baselines directory):
the FP16 responses and the noise floor, keyed and checksummed like a baseline."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from quant_fixtures.json_types import JsonObject
from quant_fixtures.names import file_in
from quant_fixtures.store.prompt_reference import ReferenceKey
from quant_fixtures.store.records import read_record, write_record

PROMPT_SUMMARY_SCHEMA = 2  # 2: validated like a baseline (key, checksum); the environment recorded
FIELDS = ("noise_floor", "responses")


def prompt_summary_path(baselines_dir: Path, key: ReferenceKey) -> Path:
    return file_in(Path(baselines_dir), f"{key.model}-prompts-{key.digest()[:12]}.json")


def store_prompt_summary(
    baselines_dir: Path,
    key: ReferenceKey,
    responses: dict[str, str],
    noise_floor: Mapping[str, object],
    environment: Mapping[str, object],
) -> None:
    write_record(
        prompt_summary_path(baselines_dir, key),
        PROMPT_SUMMARY_SCHEMA,
        key.as_dict(),
        key.digest(),
        {"noise_floor": noise_floor, "responses": responses},
        environment=environment,
    )


def load_prompt_summary(baselines_dir: Path, key: ReferenceKey) -> tuple[JsonObject | None, str]:
    """{"noise_floor", "responses"} of the stored summary, or None and why it cannot be used."""
    return read_record(
        prompt_summary_path(baselines_dir, key), PROMPT_SUMMARY_SCHEMA, key.as_dict(), FIELDS, "FP16 prompt summary"
    )
