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
import math
import re
from typing import Any

from quant_fixtures.metrics.registry import METRICS, SNAPSHOT_METRICS
from quant_fixtures.metrics.stats import counts_differ_p_value
from quant_fixtures.report.schema import EvaluationDocument
from quant_fixtures.settings import RunSettings

FLIPS_ALPHA = 0.05  # two flip counts differ when the exact binomial test rejects equal rates at this level
UNCERTAINTY = "uncertainty"  # per variant: CI half-widths, used as tolerances, never compared
ENVIRONMENT = "environment"  # top level: where the numbers were measured, never compared


def harm_summary(documents: dict[str, EvaluationDocument]) -> dict[str, Any]:
    """What a release diff should show: settings, the environment, then per variant its gate
    verdicts, the registry's snapshot metrics and their measured uncertainty (no timings, paths or
    versions)."""
    from quant_fixtures.environment import describe, numerics_key

    first = next(iter(documents.values()))
    p, kl = first.perplexity, first.kl_divergence
    settings = {"device_type": first.environment["device"].split(":")[0], "ctx": p.ctx,
                "ppl_method": p.method, "ppl_tokens": p.tokens, "dataset_sha256": p.dataset_sha256,
                "prompts": kl.method_settings if kl else None}
    variants = {}
    for variant, doc in documents.items():
        uncertainty = {name: METRICS[name].uncertainty(doc) for name in SNAPSHOT_METRICS}  # 95 % CI half-widths
        variants[variant] = {"gates": {g.metric: "pass" if g.passed else "FAIL" for g in doc.gates},
                             **{name: METRICS[name].value(doc) for name in SNAPSHOT_METRICS},
                             "checkable_prompts": doc.flips.checkable_prompts if doc.flips else None,
                             UNCERTAINTY: {k: v for k, v in uncertainty.items() if v is not None}}
    env = first.environment
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
    spec = METRICS.get(metric or "")
    if spec is not None and spec.is_count and isinstance(new, int) and isinstance(old, int):
        allowed = tolerances.get(metric, {}).get("abs", 0.0)
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


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def settings_tag(settings: RunSettings) -> str:
    """Snapshot name suffix carrying everything that selects the summary's content: device,
    protocol and budgets, prompt file and filter, variants and their options. Runs that differ in
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
        selection = (f"prompts{suite_sha256(prompts.path)[:8]}-{cats}-mnt{prompts.max_new_tokens_cap or 'own'}"
                     f"-k{prompts.top_k}{'' if prompts.use_chat_template else '-plain'}")
    variants = "+".join(settings.variants)
    extras = "".join([f"-nf4c{load.nf4_compute_dtype}" if load.nf4_compute_dtype else "",
                      "-nf4dq" if load.nf4_double_quant else "",
                      "-gateupper" if settings.gates.on == "upper" else ""])
    return f"{load.device_type}-ctx{ppl.ctx}-{budget}-{selection}-{load.weight_dtype}-{variants}{extras}"
