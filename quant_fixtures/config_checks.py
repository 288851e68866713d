"""What the suite config's parsers share: the error they raise and the checks of keys."""

from __future__ import annotations

import json

from quant_fixtures.names import case_clash, derive_key, hub_id_parts, key_problem, toml_key


class ConfigError(ValueError):
    """The suite configuration file is missing or invalid."""


GGUF_TYPES = ("Q8_0", "Q5_1", "Q5_0", "Q4_1", "Q4_0")  # what the gguf package can quantize (models/gguf_quantize.py)


def check_key(where: str, kind: str, key: str, table_pattern: str) -> None:
    """A model or variant key follows the key rule (names.py). ``table_pattern``: the table header
    with ``{}`` for the key, to say what to write instead of a key copied from a Hub id."""
    problem = key_problem(kind, key)
    if problem is None:
        return
    hub_id = hub_id_parts(key)
    hint = ""
    if hub_id is not None:
        table = table_pattern.format(toml_key(derive_key(hub_id[1])))
        hint = f"; a key is not a Hub id: write {table} with hub_id = {json.dumps(key)}"
    raise ConfigError(f"{where}: {problem}{hint}")


def check_case(where: str, keys: list[str]) -> None:
    """Keys that differ only in case would write one file on a case-insensitive file system."""
    clash = case_clash(keys)
    if clash is not None:
        raise ConfigError(
            f"{where}: {clash[0]!r} and {clash[1]!r} differ only in case, so on a case-insensitive file system "
            "(macOS, Windows) their report files would be one; rename one"
        )
