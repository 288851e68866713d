"""Tolerance-aware JSON snapshots of a model's harm summary (syrupy).

The serializer stores exact numbers (nothing is rounded, so values near a tolerance boundary do
not flip); only the comparison is tolerant. A snapshot compares the same text, prompts and FP16
responses measured again, so a number "changed" only when it moved by more than the larger of its
configured tolerance ([snapshot_tolerances]) and MARGIN times the reproduction spread recorded in
the snapshot (how far the number moved between environments: CPU kernels, threads, batch sizes;
report/reproduction.py). The sampling uncertainty over prompts is not a tolerance: it says how
well the prompts estimate the model's harm, not whether a re-measurement differs. A count of flips
changed only when an exact binomial test says the two counts differ (p < 0.05). The environment
each snapshot was made in is stored beside it and named when a comparison fails, so drift of the
environment can be told from harm of the model. `pytest --snapshot-update` accepts a new snapshot.

Snapshots are kept per kind of hardware (:func:`hardware_kind`: the CPU's vendor, instruction
set and kernels, or the GPU): LLM.int8's numbers move with the last bits of other processors'
float kernels, so a run compares with the snapshot of its own kind. Where its kind has none, it
compares with the snapshots of the same settings made on other kinds, allowing MARGIN times the
spread measured across kinds (the reproduction record's ``across_kinds``): looser, never off.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from typing import Final, NotRequired, TypedDict

from quant_fixtures.json_types import JsonObject
from quant_fixtures.metrics.registry import METRICS, SNAPSHOT_METRICS
from quant_fixtures.metrics.stats import counts_differ_p_value
from quant_fixtures.report.schema import EvaluationDocument
from quant_fixtures.settings import RunSettings

FLIPS_ALPHA = 0.05  # two flip counts differ when the exact binomial test rejects equal rates at this level
ENVIRONMENT: Final = "environment"  # top level: where the numbers were measured, never compared
REPRODUCTION: Final = "reproduction"  # top level: the measured reproduction noise the tolerances come from
TOLERANCES: Final = "tolerances"  # top level: the move each number is allowed (for the reader), never compared
NOT_COMPARED = (ENVIRONMENT, REPRODUCTION, TOLERANCES)
# Environments not measured (another vendor's CPU, another core count) may move numbers further
# than the ones measured: a change is called real only beyond twice the largest measured move.
MARGIN = 2.0
Tolerances = dict[str, dict[str, float]]  # metric -> {"abs": ..., "rel": ...} ([snapshot_tolerances])


class SnapshotSettings(TypedDict):
    device_type: str
    ctx: int
    ppl_method: str
    ppl_tokens: int
    dataset_sha256: str
    prompts: str | None


# "across_kinds": the move allowed against a snapshot made on another kind of processor.
AllowedMove = TypedDict("AllowedMove", {"allowed": float, "from": str, "across_kinds": NotRequired[float]})


class HarmSummary(TypedDict):
    settings: SnapshotSettings
    variants: dict[str, JsonObject]  # variant key -> its gate verdicts and the registry's snapshot metrics
    reproduction: Mapping[str, object] | None  # report/reproduction.measure's record
    tolerances: NotRequired[dict[str, dict[str, AllowedMove]]]
    environment: JsonObject


def harm_summary(
    documents: dict[str, EvaluationDocument],
    floors: Tolerances | None = None,
    reproduction: Mapping[str, object] | None = None,
) -> HarmSummary:
    """What a release diff should show: settings, per variant its gate verdicts and the registry's
    snapshot metrics (no timings, paths or versions); then, never compared, the reproduction
    measurement the tolerances come from, the move each number is allowed (with ``floors``, the
    configured [snapshot_tolerances]) and the environment."""
    from quant_fixtures.environment import describe, numerics_key

    first = next(iter(documents.values()))
    p, kl, env = first.perplexity, first.kl_divergence, first.environment
    settings: SnapshotSettings = {
        "device_type": str(env["device"]).split(":")[0],
        "ctx": p.ctx,
        "ppl_method": p.method,
        "ppl_tokens": p.tokens,
        "dataset_sha256": p.dataset_sha256,
        "prompts": kl.method_settings if kl else None,
    }
    variants: dict[str, JsonObject] = {
        variant_key: {
            "gates": {g.metric: g.verdict for g in doc.gates},
            **{name: METRICS[name].value(doc) for name in SNAPSHOT_METRICS},
            "checkable_prompts": doc.flips.checkable_prompts if doc.flips else None,
        }
        for variant_key, doc in documents.items()
    }
    environment: JsonObject = {
        "described": describe(env),
        **numerics_key(env, ("torch", "transformers", "bitsandbytes")),
    }
    cpu = env.get("cpu")
    if env["device_type"] == "cpu" and isinstance(cpu, dict):  # LLM.int8 on the CPU moves with the thread count too
        environment["cpu_threads"] = cpu["threads"]  # (docs/REPRODUCIBILITY.md)
        environment["cpu_vendor"] = cpu_vendor(str(cpu.get("model", "")))
    if floors is None:
        return {"settings": settings, "variants": variants, REPRODUCTION: reproduction, ENVIRONMENT: environment}
    return {
        "settings": settings,
        "variants": variants,
        REPRODUCTION: reproduction,
        TOLERANCES: allowed_moves(variants, floors, reproduction),
        ENVIRONMENT: environment,
    }


def allowed_move(
    metric: str, old: float, floors: Tolerances, spread: float | None, across_kinds: bool = False
) -> tuple[float, str]:
    """How far ``metric`` may move from its snapshot value ``old``, and why: the configured floor
    (abs, or rel of the old value) or MARGIN x the recorded spread (the reproduction spread, or
    with ``across_kinds`` the spread measured across kinds of processor), whichever is larger."""
    tol = floors.get(metric, {})
    floor = max(tol.get("abs", 0.0), tol.get("rel", 0.0) * abs(old))
    noise = MARGIN * spread if spread is not None else 0.0
    if noise > floor:
        what = "spread measured across kinds of processor" if across_kinds else "reproduction spread"
        return noise, f"{MARGIN:g} x the {what} {spread:.3g}"
    return floor, "the configured tolerance"


def _spread(reproduction: object, variant_key: str, metric: str, across_kinds: bool = False) -> float | None:
    """The recorded spread of ``metric`` of a variant in a reproduction record (report/reproduction.py):
    on one kind of processor, or with ``across_kinds`` across kinds (None where not measured)."""
    if not isinstance(reproduction, dict):
        return None
    if across_kinds:
        reproduction = reproduction.get("across_kinds")
        if not isinstance(reproduction, dict):
            return None
    value = (reproduction.get("spread") or {}).get(variant_key, {}).get(metric)
    return value if isinstance(value, (int, float)) else None


def measured_across_kinds(snapshot: object) -> bool:
    """Whether a stored snapshot's reproduction record carries a spread across kinds of processor."""
    reproduction = snapshot.get(REPRODUCTION) if isinstance(snapshot, dict) else None
    return isinstance(reproduction, dict) and isinstance(reproduction.get("across_kinds"), dict)


def allowed_moves(
    variants: Mapping[str, Mapping[str, object]], floors: Tolerances, reproduction: object
) -> dict[str, dict[str, AllowedMove]]:
    """Per variant and tolerated metric: the move allowed from this value, and where it comes from."""
    moves: dict[str, dict[str, AllowedMove]] = {}
    for variant_key, values in variants.items():
        moves[variant_key] = {}
        for metric in SNAPSHOT_METRICS:
            value = values.get(metric)
            if METRICS[metric].is_count or not isinstance(value, (int, float)) or metric not in floors:
                continue
            allowed, source = allowed_move(metric, value, floors, _spread(reproduction, variant_key, metric))
            moves[variant_key][metric] = {"allowed": allowed, "from": source}
            across = _spread(reproduction, variant_key, metric, across_kinds=True)
            if across is not None:
                moves[variant_key][metric]["across_kinds"] = allowed_move(metric, value, floors, across, True)[0]
    return moves


def _number_difference(
    path: str, metric: str, new: float, old: float, tolerances: Tolerances, spread: float | None, across_kinds: bool
) -> str | None:
    spec = METRICS.get(metric)
    if spec is not None and spec.is_count and isinstance(new, int) and isinstance(old, int):
        allowed = tolerances.get(metric, {}).get("abs", 0.0)
        p_value = counts_differ_p_value(new, old)
        if abs(new - old) <= allowed or p_value >= FLIPS_ALPHA:
            return None
        return f"{path}: {new} vs snapshot {old} (exact binomial test p = {p_value:.3g} < {FLIPS_ALPHA})"
    if metric not in tolerances or not (math.isfinite(new) and math.isfinite(old)):
        return None if new == old else f"{path}: {new!r} vs snapshot {old!r} (must be equal)"
    allowed, source = allowed_move(metric, old, tolerances, spread, across_kinds)
    if abs(new - old) <= allowed:
        return None
    return f"{path}: {new:.6g} vs snapshot {old:.6g} (moved {new - old:+.4g}, more than {allowed:.4g}, {source})"


def snapshot_differences(new: object, old: object, tolerances: Tolerances, across_kinds: bool = False) -> list[str]:
    """Every difference beyond tolerance, one line each (empty: the snapshot matches). The spread
    comes from the snapshot's own reproduction record: the measurement its numbers were made with;
    with ``across_kinds`` (``old`` was made on another kind of processor), the spread measured
    across kinds, which the record must carry (:func:`measured_across_kinds`)."""
    if across_kinds and not measured_across_kinds(old):
        raise ValueError("a snapshot whose record measured no spread across kinds cannot be compared across kinds")
    reproduction = old.get(REPRODUCTION) if isinstance(old, dict) else None
    return _differences(new, old, tolerances, "", reproduction, None, across_kinds)


def _differences(
    new: object,
    old: object,
    tolerances: Tolerances,
    path: str,
    reproduction: object,
    variant_key: str | None,
    across_kinds: bool = False,
) -> list[str]:
    metric = path.rsplit(".", 1)[-1] if path else None
    if isinstance(new, dict) and isinstance(old, dict):
        compared = [k for k in new if not (path == "" and k in NOT_COMPARED)]
        if set(compared) != {k for k in old if not (path == "" and k in NOT_COMPARED)}:
            return [f"{path or 'summary'}: keys {sorted(new)} vs snapshot {sorted(old)}"]
        lines: list[str] = []
        for key in compared:
            inner_variant_key = key if path == "variants" else variant_key
            lines += _differences(
                new[key],
                old[key],
                tolerances,
                f"{path}.{key}" if path else key,
                reproduction,
                inner_variant_key,
                across_kinds,
            )
        return lines
    if isinstance(new, list) and isinstance(old, list):
        if len(new) != len(old):
            return [f"{path}: {len(new)} items vs snapshot {len(old)}"]
        return [
            line
            for i, (a, b) in enumerate(zip(new, old))
            for line in _differences(a, b, tolerances, f"{path}[{i}]", reproduction, variant_key, across_kinds)
        ]
    if isinstance(new, bool) or isinstance(old, bool):  # True == 1 in Python; not here
        return [] if type(new) is type(old) and new == old else [f"{path}: {new!r} vs snapshot {old!r}"]
    if isinstance(new, (int, float)) and isinstance(old, (int, float)):
        spread = _spread(reproduction, variant_key, metric, across_kinds) if variant_key and metric else None
        line = _number_difference(path, metric or "", new, old, tolerances, spread, across_kinds)
        return [line] if line else []
    return [] if new == old else [f"{path}: {new!r} vs snapshot {old!r}"]


def within_tolerance(new: object, old: object, tolerances: Tolerances, across_kinds: bool = False) -> bool:
    return not snapshot_differences(new, old, tolerances, across_kinds)


# A snapshot's numbers are comparable at the tight tolerance within one kind of hardware only. With
# the kernels pinned (cpu_kernels.py), SmolLM2 INT8 PPL was 20.5220 on an AMD EPYC (AVX512) and
# 20.5523 on an Intel Xeon (AVX512 + AMX), ΔPPL +1.42 % and +1.57 %: LLM.int8's outlier threshold
# turns the last bits of other CPUs' float kernels into other numbers.
CPU_VENDORS = {"amd": "amd", "authenticamd": "amd", "intel": "intel", "genuineintel": "intel"}


def cpu_vendor(model_name: str) -> str:
    """'amd', 'intel' or the model name's first word, lower case ('' when unknown)."""
    words = re.findall(r"[a-z0-9]+", model_name.lower())
    return next((CPU_VENDORS[w] for w in words if w in CPU_VENDORS), words[0] if words else "")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "unknown"


def hardware_kind(environment: object) -> str:
    """A file-name-safe label of the hardware kind a harm summary's environment records: the GPU and
    its compute capability, or the CPU's vendor, instruction-set features and the kernels ATen
    dispatched (a run with the CPU's own kernels is another kind than one pinned to AVX2)."""
    if not isinstance(environment, dict):
        raise ValueError("the harm summary records no environment, so no hardware kind")
    if environment.get("device_type") == "cuda":
        return f"{_slug(str(environment.get('gpu')))}-sm{_slug(str(environment.get('capability')))}"
    isa = "+".join(_slug(f) for f in str(environment.get("cpu_isa") or "").split(",") if f) or "baseline"
    kernels = _slug(str(environment.get("cpu_capability") or "unknown"))
    return f"{_slug(str(environment.get('cpu_vendor') or 'cpu'))}-{isa}-kernels-{kernels}"


def environment_note(old: object, new: object) -> str:
    """One line saying where the snapshot and this run were made, and what differs."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return "the snapshot records no environment (made before environments were recorded)"
    # A key the snapshot does not record (made by an earlier version) is not a difference.
    changed = [k for k in sorted(old) if k != "described" and old.get(k) != new.get(k)]
    where = f"snapshot made with {old.get('described')}; this run: {new.get('described')}"
    if not changed:
        return where + " (same environment: the model's numbers changed)"
    return where + f" (differs in {', '.join(changed)}: the environment alone can move numbers)"


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def settings_tag(settings: RunSettings) -> str:
    """Snapshot name suffix carrying everything that selects the summary's content: device,
    protocol and budgets, prompt file and filter, the long-context stage's length, stretches and
    probes (a digest of the rest of its settings), variants and their options. Runs that differ in
    any of these keep their own snapshot files."""
    from quant_fixtures.inputs.prompts import suite_sha256

    ppl, prompts, load = settings.perplexity, settings.prompts, settings.load
    budget = f"ppl{ppl.max_tokens or 'all'}" + (f"-stride{ppl.stride}" if ppl.stride else "")
    if prompts.skip:
        selection = "noprompts"
    else:
        cats = "all" if not prompts.categories else "+".join(prompts.categories)
        if prompts.categories and (len(cats) > 40 or not re.fullmatch(r"[A-Za-z0-9_.+-]+", cats)):
            cats = f"cats{_short(','.join(prompts.categories))}"  # any name, a safe and short file name
        selection = (
            f"prompts{suite_sha256(prompts.path)[:8]}-{cats}-mnt{prompts.max_new_tokens_cap or 'own'}"
            f"-k{prompts.top_k}{'' if prompts.use_chat_template else '-plain'}"
        )
    variants = "+".join(settings.variants)
    long = settings.long_context
    long_shape = (long.chunk_tokens, long.probe_lengths, long.probe_depths, long.probe_keys, long.bucket_edges)
    long_tag = "-nolong" if long.skip else f"-long{long.max_length}x{long.stretches}-{_short(repr(long_shape))}"
    extras = "".join(
        [
            f"-nf4c{load.nf4_compute_dtype}" if load.nf4_compute_dtype else "",
            "-nf4dq" if load.nf4_double_quant else "",
        ]
    )
    return f"{load.device_type}-ctx{ppl.ctx}-{budget}-{selection}{long_tag}-{load.weight_dtype}-{variants}{extras}"
