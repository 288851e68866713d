"""Evidence that per-layer attribution ranks the layers that matter (issue 32), as a record.

    python benchmarks/attribution_evidence.py [--record benchmarks/attribution-record.json]
                                              [--windows 4] [--ctx 256] [--random-sets 20] [--variant nf4]

On the embedded SmolLM2-135M-Instruct (CPU): the layer attribution of a variant over ``--windows``
WikiText-2 windows of ``--ctx`` tokens; then the KL of the variant with its top-3 ranked layers in
16 bits against the same for ``--random-sets`` random 3-layer sets (the top 3 should lower KL more
than their median), and a recommendation for a limit of half the variant's KL, whose measured KL is
compared with its prediction (within 20 % is the issue's bar). Every KL is measured, exact over
the vocabulary, against the FP16 pass; the record says which commit and machine gave it.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from quant_fixtures.compute.attribution import (  # noqa: E402
    attribute_layers,
    read_against,
    recommend,
    restored_layers,
)
from quant_fixtures.config import load_config  # noqa: E402
from quant_fixtures.inputs.wikitext import load_wikitext2_test, tokenize_text  # noqa: E402
from quant_fixtures.metrics.perplexity import nonoverlapping_windows  # noqa: E402
from quant_fixtures.models.loading import load_model  # noqa: E402
from quant_fixtures.models.sources import resolve_model  # noqa: E402
from quant_fixtures.settings import LoadSettings  # noqa: E402
from quant_fixtures.variants import VARIANTS  # noqa: E402

MODEL = "smollm2-135m"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--record", type=Path, default=Path("benchmarks/attribution-record.json"))
    parser.add_argument("--cache-dir", type=Path, default=Path("~/.cache/quant_fixtures").expanduser())
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--ctx", type=int, default=256)
    parser.add_argument("--random-sets", type=int, default=20)
    parser.add_argument("--variant", default="nf4")
    args = parser.parse_args()
    spec = load_config().models[MODEL]
    resolved = resolve_model(spec, args.cache_dir)
    options = LoadSettings("cpu")
    fp16 = load_model(spec, resolved, VARIANTS["fp16"], options)
    quantized = load_model(spec, resolved, VARIANTS[args.variant], options).model
    ids = tokenize_text(fp16.tokenizer, load_wikitext2_test("vendored").text)
    windows = nonoverlapping_windows(ids.numel(), args.ctx, args.windows * args.ctx)
    started = time.perf_counter()
    attribution = attribute_layers(fp16.model, quantized, ids, windows, batch_size=len(windows))
    attribution_s = time.perf_counter() - started

    def kl_with(kept: list[int]) -> float:
        with restored_layers(fp16.model, quantized, kept):
            return read_against(quantized, attribution.reference, ids, windows, len(windows))[0].mean

    top3 = [h.layer for h in attribution.ranked()[:3]]
    n_layers = len(attribution.layers)
    rng = random.Random(0)
    random_sets = [sorted(rng.sample(range(n_layers), 3)) for _ in range(args.random_sets)]
    top3_kl = kl_with(top3)
    random_kls = [kl_with(s) for s in random_sets]
    limit = attribution.whole.mean / 2
    advice = recommend(attribution, limit, fp16.model, quantized, ids, windows, batch_size=len(windows))
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    record = {
        "commit": head or None,
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
        "model": MODEL,
        "variant": args.variant,
        "budget": {"windows": len(windows), "ctx": args.ctx, "scored_positions": attribution.positions},
        "kl": "KL(FP16 || configuration), exact over the vocabulary, mean over scored positions",
        "whole_kl": attribution.whole.mean,
        "whole_ci": attribution.whole.ci,
        "attribution_seconds": round(attribution_s, 1),
        "passes": 2 + 2 * n_layers,
        "additivity": attribution.additivity(),
        "layers": [
            {"layer": h.layer, "quantized_alone": h.quantized_alone.mean, "restored_alone": h.restored_alone.mean}
            for h in attribution.layers
        ],
        "top3": {"layers": top3, "kl": top3_kl},
        "random_3_sets": {"sets": random_sets, "kl": random_kls, "median_kl": float(np.median(random_kls))},
        "top3_beats_random_median": top3_kl < float(np.median(random_kls)),
        "recommendation": {
            "limit": limit,
            "keep": advice.keep,
            "modules": advice.modules,
            "predicted": advice.predicted,
            "measured": advice.measured.mean,
            "measured_over_predicted": advice.measured.mean / advice.predicted if advice.predicted else None,
            "within_20pct": bool(advice.predicted and abs(advice.measured.mean / advice.predicted - 1) <= 0.2),
        },
    }
    args.record.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: record[k] for k in ("whole_kl", "attribution_seconds", "top3", "recommendation")}, indent=1))
    print(f"random median {record['random_3_sets']['median_kl']:.5f}; wrote {args.record}")


if __name__ == "__main__":
    main()
