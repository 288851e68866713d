"""The suite configuration (models, defaults, gates), parsed from TOML into dataclasses."""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from quant_fixtures.config_checks import GGUF_TYPES as GGUF_TYPES  # importable from here too
from quant_fixtures.config_checks import ConfigError as ConfigError
from quant_fixtures.config_checks import check_case, check_key
from quant_fixtures.metrics.registry import (
    GATEABLE,
    METRICS,
    REQUIRED_LIMITS,
    SNAPSHOT_METRICS,
    TOLERANCE_ALIASES,
    limit_spec,
)
from quant_fixtures.names import toml_key
from quant_fixtures.own_variants import checkpoint_variant, parse_variants
from quant_fixtures.settings import Defaults  # the [defaults] table (importable from here too)
from quant_fixtures.variants import VARIANTS, Variant
from quant_fixtures.variants import CheckpointSpec as CheckpointSpec  # as Defaults

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent / "inputs" / "quant_suite.toml"  # shipped in the package

UNGATED_KEY = "ungated"  # a gate table's explicit opt-out: ungated = ["max_kl_mean"]
UNDECIDED_KEY = "undecided"  # [gates] undecided = "fail" | "warn" | "pass"
UNDECIDED_POLICIES = ("fail", "warn", "pass")
DEFAULT_UNDECIDED = "fail"  # release gating: a variant not shown within its limits does not ship (README)
DEFAULT_SNAPSHOT_TOLERANCES: dict[str, dict[str, float]] = {
    name: dict(METRICS[name].tolerance or {}) for name in SNAPSHOT_METRICS
}


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
    trust_remote_code: bool = False  # opt-in: run the model repository's own Python code
    allow_pickle: bool = False  # opt-in: load pickle (.bin) weights, which can run code when loaded
    note: str | None = None  # printed with every report of this model (e.g. "random weights")
    gates: dict[str, dict[str, float]] = field(default_factory=dict)
    ungated: dict[str, frozenset[str]] = field(default_factory=dict)  # variant -> limits opted out
    variants: dict[str, CheckpointSpec] = field(default_factory=dict)  # the entry's own checkpoints

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
class SuiteConfig:
    path: Path
    defaults: Defaults
    gates: dict[str, dict[str, float]]
    models: dict[str, ModelSpec]
    ungated: dict[str, frozenset[str]] = field(default_factory=dict)
    snapshot_tolerances: dict[str, dict[str, float]] = field(default_factory=lambda: dict(DEFAULT_SNAPSHOT_TOLERANCES))
    undecided: str = DEFAULT_UNDECIDED  # [gates] undecided: what an UNDECIDED gate does to the exit code

    def variant(self, model: str, key: str) -> Variant:
        """The variant ``key`` of ``model``: a registered method or the model's own checkpoint."""
        own = self.models[model].variants.get(key)
        return checkpoint_variant(own) if own is not None else VARIANTS[key]

    def variant_keys(self, model: str | None = None) -> list[str]:
        """Registered methods, then the models' own variants in file order (one model's, or all)."""
        specs = [self.models[model]] if model else list(self.models.values())
        return list(dict.fromkeys([*VARIANTS, *(k for spec in specs for k in spec.variants)]))

    def default_variant_keys(self, model: str) -> list[str]:
        """What runs for ``model`` when --variants is not given."""
        return [k for k in self.variant_keys(model) if self.variant(model, k).default]

    def _base_method(self, model: str, variant_key: str) -> str | None:
        """The registered method a model's own variant quantizes with, keeping modules in 16 bits."""
        own = self.models[model].variants.get(variant_key)
        return own.quantize if own is not None else None

    def gates_for(self, model: str, variant_key: str) -> dict[str, float]:
        """The limits for one (model, variant): the global ones, then the model's overrides; a
        limit the model opts out of (``ungated``) is left out. A variant that keeps modules of a
        registered method in 16 bits starts from that method's limits (it is the same release,
        made less harmful), then its own."""
        base = self._base_method(model, variant_key)
        limits = self.gates_for(model, base) if base is not None else {}
        limits.update(
            (k, v)
            for k, v in self.gates.get(variant_key, {}).items()
            if k not in self.models[model].ungated.get(variant_key, ())
        )
        limits.update(self.models[model].gates.get(variant_key, {}))
        return limits

    def ungated_for(self, model: str, variant_key: str) -> set[str]:
        """Limit names this (model, variant) explicitly opts out of (model table or global table;
        for a variant keeping modules of a method in 16 bits, the method's too)."""
        global_opt_out = set(self.ungated.get(variant_key, ())) - set(self.models[model].gates.get(variant_key, {}))
        base = self._base_method(model, variant_key)
        inherited = self.ungated_for(model, base) if base is not None else set()
        return (global_opt_out | inherited | set(self.models[model].ungated.get(variant_key, ()))) - set(
            self.gates_for(model, variant_key)
        )

    def missing_limits(self, model: str, variant_key: str) -> list[str]:
        """Limits neither configured nor opted out of for a quantized (model, variant)."""
        configured = set(self.gates_for(model, variant_key)) | self.ungated_for(model, variant_key)
        return sorted(set(REQUIRED_LIMITS) - configured)

    def missing_limits_message(self, model: str, variant_key: str) -> str | None:
        missing = self.missing_limits(model, variant_key)
        if not missing:
            return None
        return (
            f"{self.path}: no limit {', '.join(missing)} for model {model!r} variant {variant_key!r}: set it under "
            f"[gates.{variant_key}] or [models.{model}.gates.{variant_key}], or opt out there with "
            f"{UNGATED_KEY} = {json.dumps(missing)}"  # a TOML list of strings
        )


_MODEL_KEYS = {f for f in ModelSpec.__dataclass_fields__ if f not in ("key", "ungated")}
_DEFAULT_KEYS = set(Defaults.__dataclass_fields__)
_TOP_LEVEL = ("defaults", "gates", "models", "snapshot_tolerances")


def _limit_name(where: str, name: object) -> str:
    """The canonical limit name (``max_mean_kl`` reads as ``max_kl_mean``); an unknown name is an error."""
    spec = limit_spec(name) if isinstance(name, str) else None
    if spec is None:
        raise ConfigError(f"{where}: unknown limit {name!r}; valid: {', '.join(GATEABLE)}, {UNGATED_KEY}")
    return spec.limit_name


def _check_gates(
    where: str, table: object, own_variants: list[str]
) -> tuple[dict[str, dict[str, float]], dict[str, frozenset[str]]]:
    """(limits per variant, opted-out limit names per variant) of one gates table; every key is
    checked against the variant registry (plus ``own_variants``, those the models list) and the
    metric registry, every value for type, finiteness and range."""
    gated = [k for k, v in VARIANTS.items() if not v.is_baseline] + own_variants
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table of variants, got {table!r}")
    parsed: dict[str, dict[str, float]] = {}
    ungated: dict[str, frozenset[str]] = {}
    for variant_key, limits in table.items():
        if variant_key not in gated:
            raise ConfigError(
                f"{where}: unknown variant {variant_key!r} (a typo removes a release gate); valid: {', '.join(gated)}"
            )
        if not isinstance(limits, dict):
            raise ConfigError(f"{where}.{variant_key}: expected a table of limits, got {limits!r}")
        values: dict[str, float] = {}
        for given, value in limits.items():
            if given == UNGATED_KEY:
                continue
            name = _limit_name(f"{where}.{variant_key}", given)
            if name in values:
                raise ConfigError(f"{where}.{variant_key}: {given} sets {name} a second time")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}.{variant_key}.{given}: expected a number, got {value!r}")
            problem = GATEABLE[name].limit_problem(float(value))
            if problem:
                raise ConfigError(f"{where}.{variant_key}.{given} = {value!r}: {problem}")
            values[name] = float(value)
        opted_out = limits.get(UNGATED_KEY, [])
        if not isinstance(opted_out, list) or not all(isinstance(n, str) for n in opted_out):
            raise ConfigError(f"{where}.{variant_key}.{UNGATED_KEY}: expected a list of limit names, got {opted_out!r}")
        names = {_limit_name(f"{where}.{variant_key}.{UNGATED_KEY}", n) for n in opted_out}
        for name in names & set(values):
            raise ConfigError(f"{where}.{variant_key}: {name} is both set and listed in {UNGATED_KEY}")
        parsed[variant_key] = values
        if names:
            ungated[variant_key] = frozenset(names)
    return parsed, ungated


_MODEL_TYPES: dict[str, type] = {
    "hub_id": str,
    "revision": str,
    "path": str,
    "gguf_package": str,
    "gguf_file": str,
    "requires_gpu": bool,
    "trust_remote_code": bool,
    "allow_pickle": bool,
    "note": str,
}


def _parse_model(path: Path, key: str, table: object) -> ModelSpec:
    check_key(f"{path}: [models.{toml_key(key)}]", "model", key, "[models.{}]")
    where = f"{path}: [models.{key}]"
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    unknown = set(table) - _MODEL_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; valid: {sorted(_MODEL_KEYS)}")
    sources = [s for s in ("hub_id", "path", "gguf_package") if table.get(s)]
    if len(sources) != 1:
        raise ConfigError(f"{where}: give exactly one of hub_id, path, gguf_package (got {sources or 'none'})")
    for name, value in table.items():
        expected = _MODEL_TYPES.get(name)
        if expected is not None and not isinstance(value, expected):
            raise ConfigError(f"{where}: {name} must be a {'boolean' if expected is bool else 'string'}, got {value!r}")
    if table.get("gguf_package") and not table.get("gguf_file"):
        raise ConfigError(f"{where}: gguf_package needs gguf_file")
    variants = parse_variants(where, key, table.get("variants", {}), table)
    gates, ungated = _check_gates(f"{where}.gates", table.get("gates", {}), list(variants))
    return ModelSpec(key=key, **{**table, "gates": gates, "ungated": ungated, "variants": variants})


def load_config(path: str | Path = DEFAULT_CONFIG_PATH, require_models: bool = True) -> SuiteConfig:
    """Parse and validate the suite's TOML file; errors name the file and the offending key.
    ``require_models=False``: the models may all come from the command line (--model)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:  # a directory, no permission
        raise ConfigError(f"{path}: config file cannot be read ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return config_from_table(raw, path, require_models)


def config_from_table(raw: Mapping[str, object], path: Path, require_models: bool = True) -> SuiteConfig:
    """Validate a parsed suite TOML (``path`` names it in errors; ``require_models``: as load_config)."""
    unknown = set(raw) - set(_TOP_LEVEL)
    if unknown:
        raise ConfigError(f"{path}: unknown top-level tables {sorted(unknown)}")
    tables: dict[str, dict[str, object]] = {}
    for name in _TOP_LEVEL:
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{name}] must be a table, got {table!r}")
        tables[name] = table
    bad = set(tables["defaults"]) - _DEFAULT_KEYS
    if bad:
        raise ConfigError(f"{path}: [defaults] unknown keys {sorted(bad)}; valid: {sorted(_DEFAULT_KEYS)}")
    defaults: dict[str, int] = {}
    for name, value in tables["defaults"].items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{path}: [defaults] {name} must be a positive integer, got {value!r}")
        defaults[name] = value
    models = {key: _parse_model(path, key, table) for key, table in tables["models"].items()}
    check_case(f"{path}: [models]", list(models))
    if not models and require_models:
        raise ConfigError(f"{path}: no [models.*] tables (add one, or give the model with --model org/name)")
    own = [k for spec in models.values() for k in spec.variants]
    gate_tables = dict(tables["gates"])
    undecided = gate_tables.pop(UNDECIDED_KEY, DEFAULT_UNDECIDED)
    if undecided not in UNDECIDED_POLICIES:
        expected = ", ".join(map(repr, UNDECIDED_POLICIES))
        raise ConfigError(f"{path}: [gates] {UNDECIDED_KEY} = {undecided!r}: expected one of {expected}")
    gates, ungated = _check_gates(f"{path}: [gates]", gate_tables, own)
    return SuiteConfig(
        path=path,
        defaults=Defaults(**defaults),
        gates=gates,
        ungated=ungated,
        models=models,
        snapshot_tolerances=_parse_tolerances(path, tables["snapshot_tolerances"]),
        undecided=undecided,
    )


def _parse_tolerances(path: Path, table: Mapping[str, object]) -> dict[str, dict[str, float]]:
    """The registry's defaults, overridden metric by metric by [snapshot_tolerances]."""
    merged = dict(DEFAULT_SNAPSHOT_TOLERANCES)
    for given, tol in table.items():
        metric = TOLERANCE_ALIASES.get(given, given)
        where = f"{path}: [snapshot_tolerances] {given}"
        if metric not in SNAPSHOT_METRICS:
            raise ConfigError(f"{where}: unknown metric; valid: {', '.join(SNAPSHOT_METRICS)}")
        if not isinstance(tol, dict) or not tol or set(tol) - {"abs", "rel"}:
            raise ConfigError(f"{where}: expected a table with abs and/or rel, got {tol!r}")
        for kind, value in tol.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ConfigError(f"{where}.{kind}: expected a non-negative number, got {value!r}")
        merged[metric] = {k: float(v) for k, v in tol.items()}
    return merged
