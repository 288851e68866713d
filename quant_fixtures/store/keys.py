"""The one key type of stored results: a frozen dataclass of every setting that shapes them.

A stored result is reused only when its key equals the current run's (field by field) and its
content verifies; ``digest`` names files, ``as_dict`` is what is stored and compared.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from quant_fixtures.json_types import JsonObject
from quant_fixtures.store.digests import settings_digest


@dataclass(frozen=True)
class StoreKey:
    def digest(self) -> str:
        """sha256 of the key's fields, order independent."""
        return settings_digest(self)

    def as_dict(self) -> JsonObject:
        return asdict(self)


@dataclass(frozen=True)
class ReferenceKeyBase(StoreKey):
    """The fields every FP16 reference's key shares: the model's weights and tokenizer, and the
    numerics it ran with. Each kind of reference adds the settings of its own measurement."""

    model: str
    weights_identity: str
    tokenizer_sha256: str
    weight_dtype: str
    compute_dtype: str
    device_type: str
    metrics_version: int
    environment: JsonObject  # library versions and the kernels' device/ISA
