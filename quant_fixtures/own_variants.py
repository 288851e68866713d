"""A model's own variants (``[models.M.variants.K]``): a checkpoint quantized elsewhere, a GGUF, or
a registered bitsandbytes method with modules kept in 16 bits; parsed and turned into variants."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from quant_fixtures.config_checks import GGUF_TYPES, ConfigError, check_case, check_key
from quant_fixtures.names import toml_key
from quant_fixtures.variants import VARIANTS, CheckpointSpec, FromPretrainedKwargs, Variant, baseline_kwargs

if TYPE_CHECKING:
    from quant_fixtures.settings import LoadSettings


def keeps_modules(variant: Variant) -> bool:
    """Whether a registered method can keep named modules in 16 bits (``keep_16bit``): the
    bitsandbytes ones, through BitsAndBytesConfig(llm_int8_skip_modules=...)."""
    return variant.method.startswith("bitsandbytes") and variant.source is None and not variant.is_baseline


def _keeping(
    base: Callable[[LoadSettings], FromPretrainedKwargs], keep: tuple[str, ...]
) -> Callable[[LoadSettings], FromPretrainedKwargs]:
    def kwargs(options: LoadSettings) -> FromPretrainedKwargs:
        made = base(options)
        # The list replaces bitsandbytes' default (the output head), so it names the head itself
        # where the head is to stay in 16 bits; transformers matches each entry as a full module name.
        made["quantization_config"].llm_int8_skip_modules = list(keep)
        return made

    return kwargs


def derived_variant(spec: CheckpointSpec) -> Variant:
    """A model's own variant that is a registered bitsandbytes method with ``spec.keep_16bit`` kept in
    16 bits: loaded from the entry's 16-bit weights as the method is, gated as the method is
    (config.SuiteConfig.gates_for) unless the entry sets its own limits."""
    if spec.quantize is None:
        raise ValueError(f"variant {spec.key!r} of {spec.model!r} does not name a method to quantize with")
    base = VARIANTS[spec.quantize]
    description = spec.description or (
        f"{base.description}; {len(spec.keep_16bit)} modules kept in 16 bits: {', '.join(spec.keep_16bit)}"
    )
    return replace(
        base,
        key=spec.key,
        description=description,
        load_kwargs=_keeping(base.load_kwargs, spec.keep_16bit),
        default=spec.default,
    )


def checkpoint_variant(spec: CheckpointSpec) -> Variant:
    """The variant of a model's own checkpoint: loaded as it is stored, its
    quantization config read from the checkpoint; a GGUF file is dequantized by transformers. A
    registered method with modules kept in 16 bits (``quantize``): :func:`derived_variant`."""
    if spec.quantize is not None:
        return derived_variant(spec)
    return Variant(
        spec.key,
        spec.method,
        spec.description,
        baseline_kwargs,
        default=spec.default,
        batch_invariant=spec.batch_invariant,
        extra=None,
        packages=tuple(spec.packages),
        source=spec,
    )


_VARIANT_TYPES: dict[str, type] = {
    "hub_id": str,
    "revision": str,
    "path": str,
    "gguf_file": str,
    "gguf_type": str,
    "description": str,
    "default": bool,
    "batch_invariant": bool,
    "packages": list,
    "trust_remote_code": bool,
    "allow_pickle": bool,
    "quantize": str,
    "keep_16bit": list,
}
_VARIANT_SOURCES = ("hub_id", "path", "gguf_file", "gguf_type", "quantize")


def parse_variants(
    where: str, model: str, table: object, model_table: Mapping[str, object]
) -> dict[str, CheckpointSpec]:
    """A model's own variants, each checked: a key that is not a registered method's, one source,
    known keys of the right types, a GGUF type the suite can write from a GGUF base."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}.variants: expected a table of variants, got {table!r}")
    parsed: dict[str, CheckpointSpec] = {}
    for key, entry in table.items():
        here = f"{where}.variants.{key}"
        check_key(f"{where}.variants.{toml_key(key)}", "variant", key, f"[models.{toml_key(model)}.variants.{{}}]")
        if key in VARIANTS:
            raise ConfigError(f"{here}: {key!r} is a registered method's key; name the checkpoint otherwise")
        if not isinstance(entry, dict):
            raise ConfigError(f"{here}: expected a table")
        unknown = set(entry) - set(_VARIANT_TYPES)
        if unknown:
            raise ConfigError(f"{here}: unknown keys {sorted(unknown)}; valid: {sorted(_VARIANT_TYPES)}")
        for name, value in entry.items():
            expected = _VARIANT_TYPES[name]
            if not isinstance(value, expected) or (
                isinstance(value, list) and not all(isinstance(p, str) for p in value)
            ):
                kind = {bool: "boolean", list: "list of module names", str: "string"}[expected]
                raise ConfigError(f"{here}: {name} must be a {kind}, got {value!r}")
        sources = [s for s in _VARIANT_SOURCES if entry.get(s)]
        if len(sources) != 1:
            raise ConfigError(f"{here}: give exactly one of {', '.join(_VARIANT_SOURCES)} (got {sources or 'none'})")
        gguf_type = entry.get("gguf_type")
        if gguf_type is not None:
            if gguf_type not in GGUF_TYPES:
                raise ConfigError(
                    f"{here}: gguf_type {gguf_type!r} is not one the gguf package can write; "
                    f"valid: {', '.join(GGUF_TYPES)}"
                )
            if not model_table.get("gguf_package"):
                raise ConfigError(
                    f"{here}: gguf_type re-quantizes the model's own GGUF, and {model!r} is not "
                    "a GGUF entry (gguf_package); point gguf_file at a GGUF file instead"
                )
        if entry.get("revision") and not entry.get("hub_id"):
            raise ConfigError(f"{here}: revision needs hub_id")
        _check_kept_modules(here, entry)
        parsed[key] = CheckpointSpec(
            key=key,
            model=model,
            **{
                **entry,
                "packages": tuple(entry.get("packages", ())),
                "keep_16bit": tuple(entry.get("keep_16bit", ())),
            },
        )
    check_case(f"{where}.variants", [*VARIANTS, *parsed])  # a registered method's report file too
    return parsed


def _check_kept_modules(here: str, entry: Mapping[str, object]) -> None:
    """``quantize`` names a registered bitsandbytes method and comes with a non-empty ``keep_16bit``
    (module names), and ``keep_16bit`` comes only with it."""
    method, keep = entry.get("quantize"), entry.get("keep_16bit")
    if method is None:
        if keep is not None:
            raise ConfigError(f"{here}: keep_16bit needs quantize (the registered method whose modules it keeps)")
        return
    keeping = [k for k, v in VARIANTS.items() if keeps_modules(v)]
    if method not in keeping:
        raise ConfigError(
            f"{here}: quantize {method!r} is not a registered method that can keep modules in 16 bits; "
            f"valid: {', '.join(keeping)}"
        )
    if not keep or not isinstance(keep, list) or not all(isinstance(m, str) and m.strip() for m in keep):
        raise ConfigError(
            f"{here}: keep_16bit must be a non-empty list of module names (as python -m quant_fixtures.attribute "
            f"prints them), got {keep!r}"
        )
