"""The shape of JSON as the suite reads and writes it: records whose keys are documented where they
are built travel as :data:`JsonObject`; readers narrow a value (isinstance) before using it."""

from __future__ import annotations

from typing import TypeAlias

# Dataclass field metadata: the field is left out of the JSON when None (report/schema.to_json_object).
OMIT_IF_NONE = {"omit_if_none": True}

JsonValue: TypeAlias = "None | bool | int | float | str | list[JsonValue] | dict[str, JsonValue]"
JsonObject: TypeAlias = "dict[str, JsonValue]"
