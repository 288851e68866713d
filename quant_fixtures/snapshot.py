"""Tolerance-aware JSON snapshots of a model's harm summary (syrupy).

The serializer stores exact numbers (nothing is rounded, so values near a tolerance boundary do
not flip); only the comparison is tolerant: both sides are parsed and numbers compared with the
per-metric absolute/relative tolerances from the suite config. `pytest --snapshot-update` accepts
a new snapshot after a deliberate change.
"""

from __future__ import annotations

import json
import math
from typing import Any

from syrupy.extensions.json import JSONSnapshotExtension

from .config import SNAPSHOT_METRICS

def harm_summary(documents: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What a release diff should show: settings, then per variant its gate verdicts and numbers
    (no timings, paths or versions)."""
    first = next(iter(documents.values()))
    p, kl = first["perplexity"], first.get("kl_divergence")
    settings = {"device_type": first["environment"]["device"].split(":")[0], "ctx": p["ctx"],
                "ppl_method": p["method"], "ppl_tokens": p["tokens"], "dataset_sha256": p["dataset_sha256"],
                "prompts": kl["method_settings"] if kl else None}
    variants = {}
    for variant, doc in documents.items():
        kl, flips = doc.get("kl_divergence"), doc.get("flips")
        values = {"ppl": doc["perplexity"]["ppl"], "delta_ppl_pct": doc["perplexity"]["delta_ppl_pct"],
                  "kl_mean": kl and kl["mean"], "kl_p99": kl and kl["p99"],
                  "top1_agreement": kl and kl["top1_agreement"], "flips": flips and flips["flips"],
                  "footprint_gb": doc["memory"]["footprint_gb"], "reduction_pct": doc["memory"]["reduction_pct"]}
        gates = {g["metric"]: "pass" if g["passed"] else "FAIL" for g in doc["gates"]}
        variants[variant] = {"gates": gates, **{k: values[k] for k in SNAPSHOT_METRICS}}
    return {"settings": settings, "variants": variants}


def within_tolerance(new: Any, old: Any, tolerances: dict[str, dict[str, float]], key: str | None = None) -> bool:
    """Structural equality, with numbers under a known metric key compared within its tolerance."""
    if isinstance(new, dict) and isinstance(old, dict):
        return new.keys() == old.keys() and all(within_tolerance(new[k], old[k], tolerances, k) for k in new)
    if isinstance(new, list) and isinstance(old, list):
        return len(new) == len(old) and all(within_tolerance(a, b, tolerances, key) for a, b in zip(new, old))
    if isinstance(new, bool) or isinstance(old, bool):  # True == 1 in Python; not here
        return type(new) is type(old) and new == old
    if isinstance(new, (int, float)) and isinstance(old, (int, float)):
        if key not in tolerances:
            return new == old
        if not (math.isfinite(new) and math.isfinite(old)):
            return new == old
        diff, tol = abs(new - old), tolerances[key]
        return diff <= tol.get("abs", 0.0) or diff <= tol.get("rel", 0.0) * abs(old)
    return new == old


def tolerant_json_extension(tolerances: dict[str, dict[str, float]]) -> type[JSONSnapshotExtension]:
    """A JSON snapshot extension class bound to these tolerances (syrupy instantiates the class)."""

    class TolerantJSONExtension(JSONSnapshotExtension):
        def matches(self, *, serialized_data: Any, snapshot_data: Any) -> bool:
            try:
                return within_tolerance(json.loads(serialized_data), json.loads(snapshot_data), tolerances)
            except (TypeError, ValueError):  # no snapshot yet, or not JSON
                return False

    return TolerantJSONExtension


def settings_tag(options: Any) -> str:
    """Snapshot name suffix: runs with other budgets or devices keep their own snapshot files."""
    from .prompts import suite_sha256

    ppl = f"ppl{options.ppl_max_tokens or 'all'}" + (f"-stride{options.ppl_stride}" if options.ppl_stride else "")
    if options.skip_prompts:
        prompts = "noprompts"
    else:
        cats = "-".join(options.categories) if options.categories else "all"
        prompts = (f"prompts{suite_sha256(options.prompts_path)[:8]}-{cats}-mnt{options.max_new_tokens_cap or 'own'}"
                   f"-k{options.top_k}{'' if options.use_chat_template else '-plain'}")
    return f"{options.device.split(':')[0]}-ctx{options.ctx}-{ppl}-{prompts}-{options.weight_dtype}"
