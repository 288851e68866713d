"""The suite configuration (models, defaults, gates), parsed from TOML into dataclasses."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "quant_suite.toml"

# Gate metrics and the direction each limit bounds: "max" fails above, "min" fails below.
GATE_METRICS: dict[str, str] = {
    "max_delta_ppl_pct": "delta_ppl_pct",
    "min_memory_reduction_pct": "memory_reduction_pct",
    "max_mean_kl": "kl_mean",
}


# Snapshot comparison: per metric, a number matches when |new - old| <= abs or <= rel * |old|.
SNAPSHOT_METRICS = ("ppl", "delta_ppl_pct", "kl_mean", "kl_p99", "top1_agreement", "flips", "footprint_gb",
                    "reduction_pct")
DEFAULT_SNAPSHOT_TOLERANCES: dict[str, dict[str, float]] = {
    "ppl": {"rel": 1e-3},
    "delta_ppl_pct": {"abs": 0.1},
    "kl_mean": {"rel": 0.02, "abs": 5e-4},
    "kl_p99": {"rel": 0.05, "abs": 1e-3},
    "top1_agreement": {"abs": 0.01},
    "flips": {"abs": 0},
    "footprint_gb": {"rel": 1e-4},
    "reduction_pct": {"abs": 0.05},
}


class ConfigError(ValueError):
    """The suite configuration file is missing or invalid."""


@dataclass(frozen=True)
class ModelSpec:
    """Where one model's weights come from and how it is gated.

    Exactly one source: ``hub_id`` (Hub id, with optional ``revision``), ``path`` (a local
    Hugging Face directory) or ``gguf_package`` + ``gguf_file`` (a GGUF shipped inside an
    installed Python package, converted once to a float16 HF directory).
    """

    key: str
    hub_id: str | None = None
    revision: str | None = None
    path: str | None = None
    gguf_package: str | None = None
    gguf_file: str | None = None
    requires_gpu: bool = False
    default: bool = False
    trust_remote_code: bool = False
    note: str | None = None  # printed with every report of this model (e.g. "random weights")
    gates: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def source_kind(self) -> str:
        if self.hub_id:
            return "hub"
        if self.path:
            return "local"
        return "gguf"

    @property
    def source(self) -> str:
        """A human-readable name of where the weights come from."""
        if self.hub_id:
            return f"{self.hub_id}@{self.revision or 'main'}"
        if self.path:
            return self.path
        return f"{self.gguf_package}/{self.gguf_file}"


@dataclass(frozen=True)
class Defaults:
    ctx: int = 2048
    cpu_ppl_max_tokens: int = 8192
    batch_size_cuda: int = 8
    batch_size_cpu: int = 1
    cpu_max_new_tokens: int = 24
    gen_batch_size_cuda: int = 96
    gen_batch_size_cpu: int = 32
    top_k: int = 256


@dataclass(frozen=True)
class SuiteConfig:
    path: Path
    defaults: Defaults
    gates: dict[str, dict[str, float]]
    models: dict[str, ModelSpec]
    snapshot_tolerances: dict[str, dict[str, float]] = field(
        default_factory=lambda: dict(DEFAULT_SNAPSHOT_TOLERANCES))

    def gates_for(self, model: str, variant: str) -> dict[str, float]:
        """The limits for one (model, variant): the global ones, then the model's overrides."""
        limits = dict(self.gates.get(variant, {}))
        limits.update(self.models[model].gates.get(variant, {}))
        return limits

    @property
    def default_models(self) -> list[str]:
        return [k for k, m in self.models.items() if m.default]

    @property
    def gpu_models(self) -> list[str]:
        return [k for k, m in self.models.items() if m.requires_gpu]


_MODEL_KEYS = {f for f in ModelSpec.__dataclass_fields__ if f != "key"}
_DEFAULT_KEYS = set(Defaults.__dataclass_fields__)


def _check_gates(where: str, table: Any) -> dict[str, dict[str, float]]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table of variants, got {table!r}")
    parsed: dict[str, dict[str, float]] = {}
    for variant, limits in table.items():
        if not isinstance(limits, dict):
            raise ConfigError(f"{where}.{variant}: expected a table of limits, got {limits!r}")
        for name, value in limits.items():
            if name not in GATE_METRICS:
                raise ConfigError(f"{where}.{variant}: unknown limit {name!r}; valid: {sorted(GATE_METRICS)}")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}.{variant}.{name}: expected a number, got {value!r}")
        parsed[variant] = {k: float(v) for k, v in limits.items()}
    return parsed


def _parse_model(path: Path, key: str, table: Any) -> ModelSpec:
    where = f"{path}: [models.{key}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    unknown = set(table) - _MODEL_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; valid: {sorted(_MODEL_KEYS)}")
    sources = [s for s in ("hub_id", "path", "gguf_package") if table.get(s)]
    if len(sources) != 1:
        raise ConfigError(f"{where}: give exactly one of hub_id, path, gguf_package (got {sources or 'none'})")
    if "note" in table and not isinstance(table["note"], str):
        raise ConfigError(f"{where}: note must be a string")
    if table.get("gguf_package") and not table.get("gguf_file"):
        raise ConfigError(f"{where}: gguf_package needs gguf_file")
    gates = _check_gates(f"{where}.gates", table.get("gates", {}))
    return ModelSpec(key=key, **{**table, "gates": gates})


def load_config(path: str | Path = DEFAULT_CONFIG_PATH) -> SuiteConfig:
    """Parse and validate the suite's TOML file; errors name the file and the offending key."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    unknown = set(raw) - {"defaults", "gates", "models", "snapshot_tolerances"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level tables {sorted(unknown)}")
    for table in ("defaults", "gates", "models", "snapshot_tolerances"):
        if not isinstance(raw.get(table, {}), dict):
            raise ConfigError(f"{path}: [{table}] must be a table, got {raw[table]!r}")
    defaults_raw = raw.get("defaults", {})
    bad = set(defaults_raw) - _DEFAULT_KEYS
    if bad:
        raise ConfigError(f"{path}: [defaults] unknown keys {sorted(bad)}; valid: {sorted(_DEFAULT_KEYS)}")
    for name, value in defaults_raw.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{path}: [defaults] {name} must be a positive integer, got {value!r}")
    models = {key: _parse_model(path, key, table) for key, table in raw.get("models", {}).items()}
    if not models:
        raise ConfigError(f"{path}: no [models.*] tables")
    return SuiteConfig(
        path=path,
        defaults=Defaults(**defaults_raw),
        gates=_check_gates(f"{path}: [gates]", raw.get("gates", {})),
        models=models,
        snapshot_tolerances=_parse_tolerances(path, raw.get("snapshot_tolerances", {})),
    )


def _parse_tolerances(path: Path, table: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The defaults, overridden metric by metric by [snapshot_tolerances]."""
    merged = dict(DEFAULT_SNAPSHOT_TOLERANCES)
    for metric, tol in table.items():
        where = f"{path}: [snapshot_tolerances] {metric}"
        if metric not in SNAPSHOT_METRICS:
            raise ConfigError(f"{where}: unknown metric; valid: {', '.join(SNAPSHOT_METRICS)}")
        if not isinstance(tol, dict) or not tol or set(tol) - {"abs", "rel"}:
            raise ConfigError(f"{where}: expected a table with abs and/or rel, got {tol!r}")
        for kind, value in tol.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{where}.{kind}: expected a non-negative number, got {value!r}")
        merged[metric] = {k: float(v) for k, v in tol.items()}
    return merged
