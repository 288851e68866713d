"""Tolerance-aware JSON snapshots of a model's harm summary (syrupy).

The serializer stores exact numbers (nothing is rounded, so values near a tolerance boundary do
not flip); only the comparison is tolerant. A number "changed" only when it moved by more than
the larger of its configured tolerance ([snapshot_tolerances]) and the statistical uncertainty
the suite measured for it (the half-width of its 95 % CI, in either run); a count of flips changed
only when an exact binomial test says the two counts differ (p < 0.05). The environment each
snapshot was made in is stored beside it and named when a comparison fails, so drift of the
environment can be told from harm of the model. `pytest --snapshot-update` accepts a new snapshot.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable

from syrupy.extensions.json import JSONSnapshotExtension

from quant_fixtures.config import SNAPSHOT_METRICS
from quant_fixtures.metrics.stats import counts_differ_p_value

FLIPS_ALPHA = 0.05  # two flip counts differ when the exact binomial test rejects equal rates at this level
UNCERTAINTY = "uncertainty"  # per variant: CI half-widths, used as tolerances, never compared
ENVIRONMENT = "environment"  # top level: where the numbers were measured, never compared


def _half_width(pair: Any) -> float | None:
    return None if not pair else (pair[1] - pair[0]) / 2.0


def harm_summary(documents: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What a release diff should show: settings, the environment, then per variant its gate
    verdicts, numbers and their measured uncertainty (no timings, paths or versions)."""
    from quant_fixtures.environment import describe, numerics_key

    first = next(iter(documents.values()))
    p, kl = first["perplexity"], first.get("kl_divergence")
    settings = {"device_type": first["environment"]["device"].split(":")[0], "ctx": p["ctx"],
                "ppl_method": p["method"], "ppl_tokens": p["tokens"], "dataset_sha256": p["dataset_sha256"],
                "prompts": kl["method_settings"] if kl else None}
    variants = {}
    for variant, doc in documents.items():
        p, kl, flips = doc["perplexity"], doc.get("kl_divergence"), doc.get("flips")
        values = {"ppl": p["ppl"], "delta_ppl_pct": p["delta_ppl_pct"],
                  "kl_mean": kl and kl["mean"], "kl_p99": kl and kl["p99"],
                  "top1_agreement": kl and kl["top1_agreement"], "flips": flips and flips["flips"],
                  "footprint_gb": doc["memory"]["footprint_gb"], "reduction_pct": doc["memory"]["reduction_pct"]}
        delta_hw = _half_width(p.get("delta_ppl_pct_ci95"))
        uncertainty = {  # 95 % CI half-widths (the variant's PPL moves with ΔPPL: FP16 PPL is fixed)
            "delta_ppl_pct": delta_hw, "ppl": None if delta_hw is None else p["fp16_ppl"] * delta_hw / 100.0,
            "kl_mean": kl and _half_width(kl["ci95"]), "kl_p99": kl and _half_width(kl.get("p99_ci95")),
            "top1_agreement": kl and _half_width(kl["top1_agreement_ci95"])}
        gates = {g["metric"]: "pass" if g["passed"] else "FAIL" for g in doc["gates"]}
        variants[variant] = {"gates": gates, **{k: values[k] for k in SNAPSHOT_METRICS},
                             "checkable_prompts": flips and flips["checkable_prompts"],
                             UNCERTAINTY: {k: v for k, v in uncertainty.items() if v is not None}}
    env = first["environment"]
    return {"settings": settings, "variants": variants,
            ENVIRONMENT: {"described": describe(env), **numerics_key(env, ("torch", "transformers", "bitsandbytes"))}}


def _tolerance(metric: str, old: float, tolerances: dict[str, dict[str, float]],
               uncertainty: tuple[dict[str, Any], dict[str, Any]]) -> tuple[float, str]:
    """The allowed |new - old| and where it comes from."""
    tol = tolerances.get(metric, {})
    configured = max(tol.get("abs", 0.0), tol.get("rel", 0.0) * abs(old))
    measured = max((u.get(metric) or 0.0 for u in uncertainty), default=0.0)
    if measured > configured:
        return measured, "the 95 % CI half-width"
    return configured, "the configured tolerance"


def _number_difference(path: str, metric: str | None, new: float, old: float,
                       tolerances: dict[str, dict[str, float]], uncertainty: tuple[dict, dict]) -> str | None:
    if metric == "flips" and isinstance(new, int) and isinstance(old, int):
        allowed = tolerances.get("flips", {}).get("abs", 0.0)
        p_value = counts_differ_p_value(new, old)
        if abs(new - old) <= allowed or p_value >= FLIPS_ALPHA:
            return None
        return f"{path}: {new} vs snapshot {old} (exact binomial test p = {p_value:.3g} < {FLIPS_ALPHA})"
    if metric not in tolerances or not (math.isfinite(new) and math.isfinite(old)):
        return None if new == old else f"{path}: {new!r} vs snapshot {old!r} (must be equal)"
    allowed, source = _tolerance(metric, old, tolerances, uncertainty)
    if abs(new - old) <= allowed:
        return None
    return (f"{path}: {new:.6g} vs snapshot {old:.6g} (moved {new - old:+.4g}, more than {allowed:.4g}, "
            f"{source})")


def snapshot_differences(new: Any, old: Any, tolerances: dict[str, dict[str, float]], path: str = "",
                         uncertainty: tuple[dict, dict] = ({}, {})) -> list[str]:
    """Every difference beyond tolerance, one line each (empty: the snapshot matches)."""
    metric = path.rsplit(".", 1)[-1] if path else None
    if isinstance(new, dict) and isinstance(old, dict):
        if new.keys() != old.keys():
            return [f"{path or 'summary'}: keys {sorted(new)} vs snapshot {sorted(old)}"]
        pair = (new.get(UNCERTAINTY) or {}, old.get(UNCERTAINTY) or {}) if UNCERTAINTY in new else uncertainty
        lines: list[str] = []
        for key in new:
            if key in (UNCERTAINTY, ENVIRONMENT):
                continue
            lines += snapshot_differences(new[key], old[key], tolerances, f"{path}.{key}" if path else key, pair)
        return lines
    if isinstance(new, list) and isinstance(old, list):
        if len(new) != len(old):
            return [f"{path}: {len(new)} items vs snapshot {len(old)}"]
        return [line for i, (a, b) in enumerate(zip(new, old))
                for line in snapshot_differences(a, b, tolerances, f"{path}[{i}]", uncertainty)]
    if isinstance(new, bool) or isinstance(old, bool):  # True == 1 in Python; not here
        return [] if type(new) is type(old) and new == old else [f"{path}: {new!r} vs snapshot {old!r}"]
    if isinstance(new, (int, float)) and isinstance(old, (int, float)):
        line = _number_difference(path, metric, new, old, tolerances, uncertainty)
        return [line] if line else []
    return [] if new == old else [f"{path}: {new!r} vs snapshot {old!r}"]


def within_tolerance(new: Any, old: Any, tolerances: dict[str, dict[str, float]]) -> bool:
    return not snapshot_differences(new, old, tolerances)


def environment_note(old: Any, new: Any) -> str:
    """One line saying where the snapshot and this run were made, and what differs."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return "the snapshot records no environment (made before environments were recorded)"
    changed = [k for k in sorted(set(old) | set(new)) if k != "described" and old.get(k) != new.get(k)]
    where = f"snapshot made with {old.get('described')}; this run: {new.get('described')}"
    if not changed:
        return where + " (same environment: the model's numbers changed)"
    return where + f" (differs in {', '.join(changed)}: the environment alone can move numbers)"


def tolerant_json_extension(tolerances: dict[str, dict[str, float]],
                            owned_stems: Iterable[str] | None = None) -> type[JSONSnapshotExtension]:
    """A JSON snapshot extension class bound to these tolerances (syrupy instantiates the class).

    With ``owned_stems``, the extension claims only those snapshot files: snapshots made with
    other settings, models or variants are invisible to this run, so `--snapshot-update` never
    deletes them as unused."""
    owned = None if owned_stems is None else set(owned_stems)

    class TolerantJSONExtension(JSONSnapshotExtension):
        def matches(self, *, serialized_data: Any, snapshot_data: Any) -> bool:
            try:
                return within_tolerance(json.loads(serialized_data), json.loads(snapshot_data), tolerances)
            except (TypeError, ValueError):  # no snapshot yet, or not JSON
                return False

        def owns_snapshot_collection(self, *, filepath: str, test_location: Any) -> bool:
            if owned is not None and Path(filepath).name.removesuffix(".json") not in owned:
                return False
            return super().owns_snapshot_collection(filepath=filepath, test_location=test_location)

    return TolerantJSONExtension


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def settings_tag(options: Any) -> str:
    """Snapshot name suffix carrying everything that selects the summary's content: device,
    protocol and budgets, prompt file and filter, variants and their options. Runs that differ in
    any of these keep their own snapshot files."""
    from quant_fixtures.inputs.prompts import suite_sha256

    ppl = f"ppl{options.ppl_max_tokens or 'all'}" + (f"-stride{options.ppl_stride}" if options.ppl_stride else "")
    if options.skip_prompts:
        prompts = "noprompts"
    else:
        cats = "all" if not options.categories else "+".join(options.categories)
        if options.categories and (len(cats) > 40 or not re.fullmatch(r"[A-Za-z0-9_.+-]+", cats)):
            cats = f"cats{_short(','.join(options.categories))}"  # any name, a safe and short file name
        prompts = (f"prompts{suite_sha256(options.prompts_path)[:8]}-{cats}-mnt{options.max_new_tokens_cap or 'own'}"
                   f"-k{options.top_k}{'' if options.use_chat_template else '-plain'}")
    variants = "+".join(options.variants)
    extras = "".join([f"-nf4c{options.nf4_compute_dtype}" if options.nf4_compute_dtype else "",
                      "-nf4dq" if options.nf4_double_quant else "",
                      "-gateupper" if options.gate_on == "upper" else ""])
    return f"{options.device.split(':')[0]}-ctx{options.ctx}-{ppl}-{prompts}-{options.weight_dtype}-{variants}{extras}"
